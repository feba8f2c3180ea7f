"""The whole training step of our ViT-MoE beside the authors' V-MoE (google-research/vmoe, Flax), in one process.

Same architecture and parameter count on both sides, float32, jitted; the step is the forward pass,
cross-entropy + auxiliary loss, the backward pass and an ``optax.adam`` update. vmoe runs with its einsum
dispatcher in float32, capacity ``round`` (no multiple-of-4 padding), no batch priority; Soft MoE is
normalized as vmoe's ``SoftRouter`` does (``soft_moe_normalize=True`` on our side) with a float32 dispatcher
on both sides (vmoe's ``Bfloat16Dispatcher`` wrapper is replaced by the identity in this process) and without
vmoe's optional similarity metrics. Three programs are timed per row, each interleaved ours, vmoe, ours, vmoe,
... after compiling: the forward pass (loss only), ``value_and_grad`` (forward + backward), and the whole step;
medians and the ratio vmoe / ours of the medians, plus the compiled step's memory (``memory_analysis()``).
The row "ours, train.trainer.make_step" times the project's own training step (routing metrics, gradient norm,
donation) on the same model, against the same vmoe step.

vmoe is not on PyPI: point ``--vmoe`` (or ``VMOE_PATH``) at a clone of google-research/vmoe. It imports
``vit_jax`` (google-research/vision_transformer, also not on PyPI): ``--vit-jax`` / ``VIT_JAX_PATH``, unless it is
importable already. vmoe needs flax and ml_collections; install them in a separate environment, not in the
project's (this script is no test dependency):

    python -m venv /tmp/venv-vmoe && /tmp/venv-vmoe/bin/pip install -e . flax ml_collections
    PYTHONPATH=. /tmp/venv-vmoe/bin/python benchmarks/bench_vs_vmoe.py --vmoe ../vmoe --vit-jax ../vision_transformer

Sizes: ``small`` (issue 23's table: 64 px, patch 8, width 256, depth 6, 4 heads, MLP 1024, E = 8, groups of
4 images, batch 32, 100 classes, class token) and ``b32`` (B/32: 224 px, patch 32, width 768, depth 12, 12 heads,
MLP 3072, E = 8, groups of 4 images, batch 8, 1000 classes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

SIZES = {
    "small": dict(image_size=64, patch_size=8, width=256, depth=6, num_heads=4, mlp_dim=1024, num_experts=8,
                  group_images=4, batch=32, num_classes=100),
    "b32": dict(image_size=224, patch_size=32, width=768, depth=12, num_heads=12, mlp_dim=3072, num_experts=8,
                group_images=4, batch=8, num_classes=1000),
}  # fmt: skip
# (row name, our router or None for the dense ViT, factor)
ROWS = {
    "dense": ("dense ViT (no MoE)", None, 1),
    "ec1": ("Softmax Expert Choice, c = 1", "softmax_expert_choice", 1),
    "tc1": ("Softmax Token Choice, k = 1", "softmax_token_choice", 1),
    "soft1": ("Soft MoE, c = 1", "soft_moe", 1),
    "tc2": ("Softmax Token Choice, k = 2", "softmax_token_choice", 2),
    "ec2": ("Softmax Expert Choice, c = 2", "softmax_expert_choice", 2),
}
DEFAULT_ROWS = ("dense", "ec1", "tc1", "soft1")


def _import_vmoe(vmoe_path: str | None, vit_jax_path: str | None):
    """Put the vmoe clone (and vit_jax) on sys.path and import what the benchmark needs, or explain and exit."""
    if not vmoe_path:
        sys.exit("bench_vs_vmoe: no vmoe clone given: pass --vmoe PATH or set VMOE_PATH "
                 "(a clone of google-research/vmoe)")
    if not (Path(vmoe_path) / "vmoe" / "nn" / "vit_moe.py").is_file():
        sys.exit(f"bench_vs_vmoe: --vmoe {vmoe_path!r} is not a clone of google-research/vmoe (no vmoe/nn/vit_moe.py)")
    sys.path.insert(0, str(Path(vmoe_path).resolve()))
    if vit_jax_path:
        sys.path.insert(0, str(Path(vit_jax_path).resolve()))
    try:
        import vmoe.nn.vit_moe as vit_moe
        from vmoe.projects.soft_moe import router as soft_router
    except ImportError as error:
        sys.exit(f"bench_vs_vmoe: vmoe does not import ({error}); it needs flax, ml_collections and vit_jax "
                 "(--vit-jax PATH to a clone of google-research/vision_transformer)")  # fmt: skip
    # Choice: a float32 dispatcher on both sides: vmoe's SoftRouter always wraps its dispatcher in
    # Bfloat16Dispatcher; in this process that wrapper is the identity, as our layer computes in float32.
    soft_router.Bfloat16Dispatcher = lambda dispatcher: dispatcher
    return vit_moe


# --------------------------------------------------------------------------------------------------- ours


def our_config(size: dict, router: str | None, factor, batch_chunks: int | None = None):
    from optimized import ViTMoEConfig

    return ViTMoEConfig(
        image_size=size["image_size"], patch_size=size["patch_size"], width=size["width"], depth=size["depth"],
        num_heads=size["num_heads"], mlp_dim=size["mlp_dim"], num_classes=size["num_classes"],
        router=router or "softmax_expert_choice", num_experts=size["num_experts"], factor=factor,
        group_images=size["group_images"], pool="cls", soft_moe_normalize=router == "soft_moe", dense=router is None,
        batch_chunks=batch_chunks,
    )  # fmt: skip


def ours(size: dict, router: str | None, factor, batch_chunks: int | None = None) -> dict:
    """Our model, its parameters and its loss ``loss(params, images, labels, key)``."""
    from optimized import ViTMoE

    model = ViTMoE(our_config(size, router, factor, batch_chunks), key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, images, labels, key):
        logits, aux = eqx.combine(params, static)(images, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + aux["loss"]

    return {"params": params, "loss": loss, "model": model}


# --------------------------------------------------------------------------------------------------- vmoe


def vmoe_model(vit_moe, size: dict, router: str | None, factor):
    tokens = (size["image_size"] // size["patch_size"]) ** 2 + 1
    dispatcher = dict(name="einsum", capacity_factor=1, capacity_ceil_or_round="round", capacity_multiple_of=None)
    moe = None
    if router == "softmax_token_choice":
        route = dict(name="NoisyTopExpertsPerItemRouter", num_selected_experts=factor, noise_std=1.0,
                     importance_loss_weight=0.005, load_loss_weight=0.005, gshard_loss_weight=0.0,
                     dispatcher=dict(dispatcher, batch_priority=False))  # fmt: skip
    elif router == "softmax_expert_choice":
        route = dict(name="NoisyTopItemsPerExpertRouter", noise_std=0.0,
                     dispatcher=dict(dispatcher, capacity_factor=factor))  # fmt: skip
    elif router == "soft_moe":
        route = dict(name="vmoe.projects.soft_moe.router.SoftRouter", capacity_factor=factor,
                     compute_similarity_metrics=False)  # fmt: skip
    if router is not None:
        group = tokens if router == "soft_moe" else size["group_images"] * tokens
        moe = dict(layers=tuple(range(1, size["depth"], 2)), num_experts=size["num_experts"], group_size=group,
                   router=route)  # fmt: skip
    encoder = dict(num_layers=size["depth"], mlp_dim=size["mlp_dim"], num_heads=size["num_heads"], dropout_rate=0.0,
                   attention_dropout_rate=0.0, moe=moe)  # fmt: skip
    return vit_moe.VisionTransformerMoe(
        num_classes=size["num_classes"], patch_size=(size["patch_size"],) * 2, hidden_size=size["width"],
        encoder=encoder, classifier="token", deterministic=False,
    )  # fmt: skip


def theirs(vit_moe, size: dict, router: str | None, factor, images) -> dict:
    module = vmoe_model(vit_moe, size, router, factor)
    key = jax.random.key(0)
    variables = module.init({"params": key, "gating": key, "dropout": key}, images[:1].repeat(size["batch"], 0))
    params = variables["params"]

    def loss(params, images, labels, key):
        logits, metrics = module.apply({"params": params}, images, rngs={"gating": key, "dropout": key})
        # vmoe's auxiliary loss is per group (G,); ours is the mean over groups, summed over the layers
        aux = jnp.mean(metrics["auxiliary_loss"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + aux

    return {"params": params, "loss": loss}


# ----------------------------------------------------------------------------------------------- programs


def programs(side: dict, images, labels, optimizer) -> dict:
    """Compiled forward, value_and_grad and step of one side, with the step's memory analysis."""
    loss = side["loss"]

    def step(params, opt_state, images, labels, key):
        value, grads = jax.value_and_grad(loss)(params, images, labels, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    params = side["params"]
    opt_state = optimizer.init(params)
    key = jax.random.key(1)
    args = (params, images, labels, key)
    compiled = {
        "forward": jax.jit(loss).lower(*args).compile(),
        "grad": jax.jit(jax.value_and_grad(loss)).lower(*args).compile(),
        "step": jax.jit(step).lower(params, opt_state, images, labels, key).compile(),
    }
    state = {"params": params, "opt_state": opt_state}

    def run(name, i):
        key = jax.random.key(i)
        if name == "step":
            state["params"], state["opt_state"], value = compiled["step"](
                state["params"], state["opt_state"], images, labels, key
            )
        else:
            value = compiled[name](state["params"], images, labels, key)
        jax.block_until_ready(value)

    for name in compiled:
        run(name, 0)  # warm up
    return {"run": run, "memory": _memory(compiled["step"]), "count": _count(params)}


def train_loop_step(model, images, labels, optimizer):
    """The project's own step, ``train.trainer.make_step`` (routing metrics, gradient norm, donated state)."""
    from train.trainer import make_step

    step_fn = make_step(optimizer, 0.0, model.config.num_classes)
    state = [model, optimizer.init(eqx.filter(model, eqx.is_array))]
    state[0] = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, state[0])  # donated: keep the original

    def run(_name, i):
        state[0], state[1], metrics = step_fn((images, labels, jax.random.key(i)), state[0], state[1])
        jax.block_until_ready(metrics["loss"])

    run("step", 0)
    return {"run": run}


def _memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    out = {name.removesuffix("_size_in_bytes"): int(getattr(analysis, name)) for name in fields}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _count(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _time(fns: dict, name: str, rounds: int) -> dict:
    times = {side: [] for side in fns}
    for i in range(rounds):
        for side, fn in fns.items():
            t0 = time.perf_counter()
            fn(name, i + 1)
            times[side].append(time.perf_counter() - t0)
    return {side: 1e3 * statistics.median(values) for side, values in times.items()}


def _load() -> str:
    try:
        return "load average over 1, 5, 15 min: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmoe", default=os.environ.get("VMOE_PATH"), help="clone of google-research/vmoe")
    parser.add_argument("--vit-jax", default=os.environ.get("VIT_JAX_PATH"), help="clone of vision_transformer")
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(DEFAULT_ROWS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=None, help="default: the size's batch")
    parser.add_argument("--no-train-loop", action="store_true", help="skip the train.trainer.make_step timing")
    parser.add_argument("--whole-batch", action="store_true",
                        help="also time our step with the batch whole (batch_chunks=1), interleaved")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default=None, help="result file stem; default vs_vmoe (small) or vs_vmoe_b32")
    args = parser.parse_args(argv)
    vit_moe = _import_vmoe(args.vmoe, args.vit_jax)
    size = dict(SIZES[args.size])
    if args.batch:
        size["batch"] = args.batch
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (size["batch"], size["image_size"], size["image_size"], 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, size["num_classes"], size["batch"]), jnp.int32)
    optimizer = optax.adam(1e-3)
    print(_load(), file=sys.stderr, flush=True)
    rows = []
    for row in args.rows:
        title, router, factor = ROWS[row]
        print(f"compiling {title} ...", file=sys.stderr, flush=True)
        side_ours, side_theirs = ours(size, router, factor), theirs(vit_moe, size, router, factor, images)
        p_ours = programs(side_ours, images, labels, optimizer)
        p_theirs = programs(side_theirs, images, labels, optimizer)
        if p_ours["count"] != p_theirs["count"]:
            raise RuntimeError(f"{title}: parameter counts differ: ours {p_ours['count']}, vmoe {p_theirs['count']}")
        fns = {"ours": p_ours["run"], "vmoe": p_theirs["run"]}
        if not args.no_train_loop:
            fns["train_loop"] = train_loop_step(side_ours["model"], images, labels, optimizer)["run"]
        if args.whole_batch:
            fns["ours_whole_batch"] = programs(ours(size, router, factor, 1), images, labels, optimizer)["run"]
        record = {"row": row, "model": title, "parameters": p_ours["count"],
                  "memory": {"ours": p_ours["memory"], "vmoe": p_theirs["memory"]}}  # fmt: skip
        for name in ("forward", "grad", "step"):
            timed = {side: fn for side, fn in fns.items() if name == "step" or side != "train_loop"}
            record[name] = _time(timed, name, args.rounds)
            record[name]["ratio"] = record[name]["vmoe"] / record[name]["ours"]
            if "ours_whole_batch" in record[name]:
                record[name]["ratio_whole_batch"] = record[name]["ours_whole_batch"] / record[name]["ours"]
            if "train_loop" in record[name]:
                record[name]["ratio_train_loop"] = record[name]["vmoe"] / record[name]["train_loop"]
            print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in record[name].items()), file=sys.stderr)
        rows.append(record)
        # the next row's models are built only once this row's are freed: at the b32 size two rows' parameters,
        # optimizer states and compiled programs together outgrew 24 GiB
        del side_ours, side_theirs, p_ours, p_theirs, fns
        gc.collect()
    lines = _table(args, size, rows)
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("vs_vmoe" if args.size == "small" else f"vs_vmoe_{args.size}")
    meta = {"size": args.size, "shape": size, "rounds": args.rounds, "jax": jax.__version__,
            "platform": jax.devices()[0].platform, "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_after": _load(),
            "command": "python benchmarks/bench_vs_vmoe.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / f"{stem}.table.md").write_text("\n".join(lines) + "\n")
    return 0


def _table(args, size, rows) -> list[str]:
    lines = [
        f"Size {args.size}, batch {size['batch']}, {args.rounds} interleaved rounds, medians, "
        f"{jax.devices()[0].platform}, jax {jax.__version__}; {_load()} (after the run).",
        "",
        "| model | vmoe ms/step | ours ms/step | vmoe / ours | train.loop step ms | vmoe / train.loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r["step"]
        loop = (f"{s['train_loop']:.0f} | {s['ratio_train_loop']:.2f}" if "train_loop" in s else "- | -")
        lines.append(f"| {r['model']} | {s['vmoe']:.0f} | {s['ours']:.0f} | {s['ratio']:.2f} | {loop} |")
    lines += ["", "| model | forward vmoe / ours ms | ratio | value_and_grad vmoe / ours ms | ratio |",
              "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        f, g = r["forward"], r["grad"]
        lines.append(f"| {r['model']} | {f['vmoe']:.0f} / {f['ours']:.0f} | {f['ratio']:.2f} | "
                     f"{g['vmoe']:.0f} / {g['ours']:.0f} | {g['ratio']:.2f} |")  # fmt: skip
    lines += ["", "| model | parameters | step memory vmoe MiB (temp) | step memory ours MiB (temp) |",
              "| --- | ---: | ---: | ---: |"]  # fmt: skip
    mib = 2.0**20
    for r in rows:
        mv, mo = r["memory"]["vmoe"], r["memory"]["ours"]
        lines.append(f"| {r['model']} | {r['parameters']:,} | "
                     f"{mv.get('total', 0) / mib:.1f} ({mv.get('temp', 0) / mib:.1f}) | "
                     f"{mo.get('total', 0) / mib:.1f} ({mo.get('temp', 0) / mib:.1f}) |")  # fmt: skip
    if rows and "ours_whole_batch" in rows[0]["step"]:
        lines += ["", "| model | ours, batch whole / in slices (default): forward | value_and_grad | step |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for r in rows:
            cells = " | ".join(f"{r[n]['ours_whole_batch']:.0f} / {r[n]['ours']:.0f} ({r[n]['ratio_whole_batch']:.2f})"
                               for n in ("forward", "grad", "step"))  # fmt: skip
            lines.append(f"| {r['model']} | {cells} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
