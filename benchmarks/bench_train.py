"""Training-step time of the ViT-MoE divided by that of the dense ViT with the same per-token compute.

The dense baseline is the same preset with ``model.dense=True`` (every block an MLP of the same width), so
with k = 1 or c = 1 each token passes through one MLP per block in both models; the ratio is the price of
routing (and of the extra expert parameters' optimizer updates). One jitted training step (forward, loss plus
auxiliary losses, gradient, AdamW update) on one batch of the preset, float32, CPU. The steps of the two
models alternate (MoE, dense, MoE, dense, ...) after compiling, and the ratio is median / median.

    python benchmarks/bench_train.py [--preset digits] [--rounds 20] [--routers ...] [--out benchmarks/results]

Target (issue 5): at most 1.3 for every router, default preset, 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from optimized import ROUTERS, ViTMoE
from train.input_pipeline import load_data
from train.presets import resolve
from train.state import make_optimizer
from train.trainer import make_step


def _stepper(config, images, labels):
    model = ViTMoE(config.model, key=jax.random.key(0))
    optimizer, _ = make_optimizer(config)
    state = [model, optimizer.init(eqx.filter(model, eqx.is_array))]
    step_fn = make_step(optimizer, 0.0, config.model.num_classes)

    def run(i):
        state[0], state[1], metrics = step_fn((images, labels, jax.random.key(i)), state[0], state[1])
        jax.block_until_ready(metrics["loss"])

    run(0)  # compile
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=ROUTERS, help="default: all six")
    args = parser.parse_args(argv)
    base = resolve(args.preset)
    data = load_data(base)
    images = jax.numpy.asarray(data.train_images[: base.batch_size])
    labels = jax.numpy.asarray(data.train_labels[: base.batch_size])
    dense = _stepper(base.replace(model=base.model.replace(dense=True)), images, labels)
    rows = []
    for router in args.routers:
        print(f"timing {router} ...", file=sys.stderr, flush=True)
        moe = _stepper(base.replace(model=base.model.replace(router=router, factor=1)), images, labels)
        times = {"moe": [], "dense": []}
        for i in range(args.rounds):
            for name, fn in (("moe", moe), ("dense", dense)):
                t0 = time.perf_counter()
                fn(i + 1)
                times[name].append(time.perf_counter() - t0)
        ratio = statistics.median(times["moe"]) / statistics.median(times["dense"])
        rows.append({
            "router": router, "factor": 1, "moe_ms": 1e3 * statistics.median(times["moe"]),
            "dense_ms": 1e3 * statistics.median(times["dense"]), "ratio": ratio, "target": 1.3, "met": ratio <= 1.3,
            "paired_range": [min(a / b for a, b in zip(times["moe"], times["dense"], strict=True)),
                             max(a / b for a, b in zip(times["moe"], times["dense"], strict=True))],
        })  # fmt: skip
    lines = [
        f"# Training step: ViT-MoE / dense ViT ({args.preset} preset, batch {base.batch_size}, {args.rounds} "
        f"interleaved rounds, {jax.devices()[0].platform}, jax {jax.__version__})",
        "",
        "| router (factor 1) | MoE step (ms) | dense step (ms) | ratio | paired range | target | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lo, hi = r["paired_range"]
        lines.append(f"| {r['router']} | {r['moe_ms']:.1f} | {r['dense_ms']:.1f} | {r['ratio']:.3f} | "
                     f"{lo:.2f} - {hi:.2f} | <= 1.3 | {'yes' if r['met'] else 'no'} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.md").write_text(table + "\n")
    (out / "train_step.json").write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
