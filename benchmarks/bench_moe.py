"""Speed of the JAX MoE layer (``optimized``) as ratios: against its own experts, a one-hot einsum layer, the
other routers, and the NumPy reference.

What is measured (float32, CPU, one routing group; "step" = jit of ``jax.value_and_grad`` of a scalar
``sum(y**2)`` (+ the layer's auxiliary loss) with respect to the parameters and the input):

1. layer vs experts: the step of ``MoELayer("softmax_expert_choice")`` on T = 8 images x 196 tokens = 1568,
   D = 384, H = 1536, E = 32, at c = 1 and c = 2, divided by the step of the experts alone
   (``experts.batched`` on (E, C, D) slots, gradient w.r.t. the experts and the slots). The difference is
   the price of routing, gather and scatter. Target: at most 1.15.
2. einsum baseline: the same layer written the GShard / V-MoE way (dense (T, E, C) one-hot dispatch and
   combine tensors and two einsums around the experts), divided by our layer's step (a speed-up) and by
   the experts' step (the overhead the compact routing removes).
3. routers: each router's layer step divided by Softmax Expert Choice's, at factor 1 (k = 1, c = 1) and 2.
   Soft MoE routes one image at a time, so it is timed as ``jax.vmap`` of a layer with group_size = 196 over
   the 8 images, against the sparse layer on the 1568-token group. Targets: the Sinkhorn routers at most
   1.1, Sparsity-Constrained Expert Choice at most 1.3.
4. reference vs optimized: ``reference.route`` (NumPy, float64, loops) divided by jitted ``optimized.route``
   (forward only, dense (T, E, C) outputs) at T = 1024, E = 32, D = 64, factor 1 (Soft MoE: S = 32 slots per
   expert); a speed-up.

Run it (the full run takes a few minutes on 2 CPU cores; ``--quick`` shrinks every shape, times factor 1
only and 2 rounds, and takes about 20 s, almost all of it compiling the 14 functions; its ratios mean nothing):

    python benchmarks/bench_moe.py [--quick] [--out benchmarks/results] [--repeats N]

It prints one markdown table per section and writes them to ``<out>/moe.md``, with every sample in
``<out>/moe.json``; progress goes to stderr.

How to read it: a ratio A / B is median(A) / median(B), where the repeats of the cases compared alternate
(A, B, A, B, ...) after each case has been compiled and run once, so that a slow patch of a shared machine
hits both sides. "paired range" is the smallest and largest A_i / B_i of the same round: when it is wide
the machine was busy and the ratio is soft. Absolute times (ms) depend on this machine and are given only
to show the scale; compare ratios across machines, not milliseconds.

Dimensions: T tokens in a routing group, D model width, H expert hidden width, E experts,
C capacity (slots per expert), S Soft MoE slots per expert, B images.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import optimized
import reference

BASELINE = "softmax_expert_choice"
TARGETS = {  # router -> largest acceptable step time relative to BASELINE (section 3)
    "sinkhorn_token_choice": 1.1,
    "sinkhorn_expert_choice": 1.1,
    "sparsity_constrained_expert_choice": 1.3,
}
LAYER_VS_EXPERTS_TARGET = 1.15


@dataclasses.dataclass(frozen=True)
class Config:
    """Shapes and repeat counts of a run."""

    images: int = 8  # B; a sparse routing group holds all their tokens
    patches: int = 196  # tokens per image (224 / 16 squared)
    width: int = 384  # D
    hidden: int = 1536  # H
    experts: int = 32  # E
    repeats: int = 15  # timed rounds per comparison (sections 1-3)
    route_tokens: int = 1024  # section 4
    route_width: int = 64
    route_experts: int = 32
    reference_repeats: int = 3  # rounds for section 4, where the reference is slow
    min_sample_seconds: float = 0.05  # a fast call is repeated until one sample takes at least this long
    factors: tuple[int, ...] = (1, 2)  # c for Expert Choice, k for Token Choice, S = capacity(T, E, factor)

    @property
    def tokens(self) -> int:  # T of the sparse layer's group
        return self.images * self.patches


FULL = Config()
QUICK = Config(
    images=2,
    patches=16,
    width=32,
    hidden=64,
    experts=4,
    repeats=2,
    route_tokens=32,
    route_width=8,
    route_experts=4,
    reference_repeats=1,
    min_sample_seconds=0.002,
    factors=(1,),  # each layer compiles in 1-2 s whatever its size: compilation is most of a quick run
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ timing


@dataclasses.dataclass
class Case:
    """One thing to time: ``fn(*args)``, whose result is waited for with ``jax.block_until_ready``."""

    label: str
    fn: Callable[..., Any]
    args: tuple
    shapes: dict[str, int]


@dataclasses.dataclass
class Timing:
    samples: list[float]  # seconds per call, one per round
    calls_per_sample: int
    first_call_seconds: float  # includes compilation

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _run(case: Case) -> None:
    jax.block_until_ready(case.fn(*case.args))


def interleaved(cases: list[Case], repeats: int, min_sample_seconds: float) -> list[Timing]:
    """Time ``cases`` in ``repeats`` rounds, each round running every case once in the given order.

    Each case is first called once (compilation) and once more (to size its sample: a call faster than
    ``min_sample_seconds`` is repeated within a sample and the sample divided by the count). The garbage
    collector is off while sampling, as in ``timeit``.
    """
    first, calls = [], []
    for case in cases:
        start = time.perf_counter()
        _run(case)
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        _run(case)
        calls.append(max(1, math.ceil(min_sample_seconds / max(time.perf_counter() - start, 1e-9))))
    samples: list[list[float]] = [[] for _ in cases]
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for case, number, out in zip(cases, calls, samples, strict=True):
                start = time.perf_counter()
                for _ in range(number):
                    _run(case)
                out.append((time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return [Timing(s, n, f) for s, n, f in zip(samples, calls, first, strict=True)]


# -------------------------------------------------------------------------------------------------- cases


def _loss_and_grad(loss: Callable[..., jax.Array]) -> Callable[..., Any]:
    """jit of ``value_and_grad`` with respect to the first two arguments (parameters and input)."""
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


class Cases:
    """Builds the timed functions once per configuration and reuses them (a jitted function compiles once)."""

    def __init__(self, config: Config):
        self.config = config
        self.key = jax.random.key(0)
        k_tokens, k_slots = jax.random.split(jax.random.key(1))
        self.x = jax.random.normal(k_tokens, (config.tokens, config.width), jnp.float32)  # (T, D)
        self.slots_key = k_slots
        self._layers: dict[tuple[str, float], optimized.MoELayer] = {}

    def layer(self, router: str, factor) -> optimized.MoELayer:
        """The MoE layer of ``router``: on the whole group (T tokens), or on one image for Soft MoE."""
        if (router, factor) not in self._layers:
            cfg = self.config
            self._layers[router, factor] = optimized.MoELayer(
                router,
                width=cfg.width,
                hidden=cfg.hidden,
                num_experts=cfg.experts,
                group_size=cfg.patches if router == "soft_moe" else cfg.tokens,
                factor=factor,
                key=jax.random.key(2),
            )
        return self._layers[router, factor]

    def _shapes(self, layer: optimized.MoELayer) -> dict[str, int]:
        cfg = self.config
        shapes = {"T": layer.group_size, "D": cfg.width, "H": cfg.hidden, "E": cfg.experts}
        if layer.router == "soft_moe":
            return {"B": cfg.images, **shapes, "S": layer.capacity}
        return {**shapes, "C": layer.capacity, **({"k": layer.k} if layer.k else {})}

    @functools.cache  # noqa: B019 (one Cases per run; the cache is what keeps compilations shared)
    def layer_step(self, router: str, factor) -> Case:
        """Forward + backward of ``MoELayer`` in training mode; Soft MoE vmapped over the B images."""
        layer = self.layer(router, factor)
        params, static = eqx.partition(layer, eqx.is_inexact_array)

        def loss(params, x, key):
            layer = eqx.combine(params, static)
            if layer.router == "soft_moe":
                images = x.reshape(self.config.images, self.config.patches, -1)  # (B, T, D)
                keys = jax.random.split(key, images.shape[0])
                y, aux = jax.vmap(lambda xi, ki: layer(xi, key=ki, inference=False))(images, keys)
                return jnp.sum(y**2) + jnp.sum(aux["loss"])
            y, aux = layer(x, key=key, inference=False)
            return jnp.sum(y**2) + aux["loss"]

        return Case(f"layer {router}", _loss_and_grad(loss), (params, self.x, self.key), self._shapes(layer))

    @functools.cache  # noqa: B019
    def experts_step(self, factor) -> Case:
        """Forward + backward of the experts alone on (E, C, D) slots of the BASELINE layer."""
        layer = self.layer(BASELINE, factor)
        slots = jax.random.normal(self.slots_key, (layer.num_experts, layer.capacity, self.config.width))

        def loss(experts, slots):
            return jnp.sum(experts.batched(slots) ** 2)

        return Case("experts alone", _loss_and_grad(loss), (layer.experts, slots), self._shapes(layer))

    @functools.cache  # noqa: B019
    def einsum_step(self, factor) -> Case:
        """Forward + backward of the BASELINE layer written with dense one-hot (T, E, C) tensors (GShard, V-MoE)."""
        layer = self.layer(BASELINE, factor)
        params, static = eqx.partition(layer, eqx.is_inexact_array)

        def loss(params, x):
            layer = eqx.combine(params, static)
            logits = x @ layer.router_weight  # (T, E)
            routing, _ = optimized.sparse_routing(layer.router, logits, layer.capacity, layer.k)
            dispatch, combine = optimized.dense_routing(routing, x.shape[0])  # (T, E, C) each
            slots = jnp.einsum("tec,td->ecd", dispatch, x)
            outputs = layer.experts.batched(slots)
            y = jnp.einsum("tec,ecd->td", combine, outputs)
            return jnp.sum(y**2)  # Expert Choice has no auxiliary loss

        return Case("einsum layer", _loss_and_grad(loss), (params, self.x), self._shapes(layer))

    def route_cases(self, router: str) -> tuple[Case, Case]:
        """``reference.route`` (float64 NumPy) and jitted ``optimized.route`` (float32) on the same values."""
        cfg = self.config
        rng = np.random.default_rng(3)
        x = rng.normal(size=(cfg.route_tokens, cfg.route_width))
        if router == "soft_moe":
            slots = optimized.capacity(cfg.route_tokens, cfg.route_experts, 1)
            weight = rng.normal(size=(cfg.route_width, cfg.route_experts, slots)) / math.sqrt(cfg.route_width)
        else:
            weight = rng.normal(size=(cfg.route_width, cfg.route_experts)) / math.sqrt(cfg.route_width)
        shapes = {"T": cfg.route_tokens, "D": cfg.route_width, "E": cfg.route_experts}
        shapes["S" if router == "soft_moe" else "C"] = optimized.capacity(cfg.route_tokens, cfg.route_experts, 1)
        numpy_route = functools.partial(reference.route, router, factor=1)
        jax_route = jax.jit(functools.partial(optimized.route, router, factor=1))
        args32 = (jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32))
        return (
            Case("reference.route", numpy_route, (x, weight), shapes),
            Case("optimized.route", jax_route, args32, shapes),
        )


# ------------------------------------------------------------------------------------------------ records


def _side(case: Case, timing: Timing) -> dict:
    return {
        "label": case.label,
        "shapes": case.shapes,
        "median_seconds": timing.median,
        "samples_seconds": timing.samples,
        "calls_per_sample": timing.calls_per_sample,
        "first_call_seconds": timing.first_call_seconds,
    }


def record(section: str, name: str, a: Case, ta: Timing, b: Case, tb: Timing, target_max=None) -> dict:
    """A comparison ``a / b`` with both sides' samples; ``met`` is None when there is no target."""
    ratio = ta.median / tb.median
    paired = [sa / sb for sa, sb in zip(ta.samples, tb.samples, strict=True)]
    return {
        "section": section,
        "name": name,
        "shapes": a.shapes,
        "a": _side(a, ta),
        "b": _side(b, tb),
        "ratio": ratio,
        "paired_ratio_min": min(paired),
        "paired_ratio_max": max(paired),
        "target_max": target_max,
        "met": None if target_max is None else ratio <= target_max,
    }


def _report(rec: dict) -> None:
    target = ""
    if rec["target_max"] is not None:
        target = f" (target <= {rec['target_max']}: {'met' if rec['met'] else 'MISSED'})"
    progress(f"      {rec['name']}: {rec['ratio']:.3f}{target}")


# ----------------------------------------------------------------------------------------------- sections

SECTIONS = {
    "layer_vs_experts": (
        "1. Layer vs experts",
        "Step (forward + backward) of `MoELayer` (softmax_expert_choice) / step of its experts alone on the same "
        "(E, C, D) slots: the cost of routing, gather and scatter. Target: at most 1.15.",
    ),
    "einsum_baseline": (
        "2. One-hot einsum baseline (GShard / V-MoE)",
        "Step of the same layer with dense (T, E, C) dispatch/combine einsums / step of our layer (a speed-up), "
        "and / step of the experts alone.",
    ),
    "routers": (
        "3. Routers",
        "Step of each router's layer / step of softmax_expert_choice's, same group of B images' tokens. Soft "
        "MoE: `jax.vmap` over the B images of a layer routing one image (each expert gets B x S rows against C). "
        "Targets: Sinkhorn at most 1.1, sparsity-constrained at most 1.3.",
    ),
    "reference_vs_optimized": (
        "4. Reference vs optimized",
        "`reference.route` (NumPy, float64) / jitted `optimized.route` (float32), forward only, dense outputs: "
        "a speed-up.",
    ),
}


def run(config: Config) -> list[dict]:
    cases = Cases(config)
    records: list[dict] = []
    factors = config.factors
    total = 2 * len(factors) + len(factors) + len(optimized.ROUTERS)
    step = 0

    def group(section: str, what: str, timed: list[Case], repeats: int) -> list[Timing]:
        nonlocal step
        step += 1
        progress(f"[{step}/{total}] {SECTIONS[section][0]}: {what} ({len(timed)} cases, {repeats} rounds)")
        start = time.perf_counter()
        timings = interleaved(timed, repeats, config.min_sample_seconds)
        first = ", ".join(f"{c.label} {t.first_call_seconds:.1f}" for c, t in zip(timed, timings, strict=True))
        progress(f"      done in {time.perf_counter() - start:.1f} s (first calls, with compilation, s: {first})")
        return timings

    def add(rec: dict) -> None:
        records.append(rec)
        _report(rec)

    for c in factors:
        layer, experts = cases.layer_step(BASELINE, c), cases.experts_step(c)
        t_layer, t_experts = group("layer_vs_experts", f"c = {c}", [layer, experts], config.repeats)
        add(
            record(
                "layer_vs_experts",
                f"layer / experts, c = {c}",
                layer,
                t_layer,
                experts,
                t_experts,
                LAYER_VS_EXPERTS_TARGET,
            )
        )

    for c in factors:
        einsum, layer, experts = cases.einsum_step(c), cases.layer_step(BASELINE, c), cases.experts_step(c)
        t_einsum, t_layer, t_experts = group("einsum_baseline", f"c = {c}", [einsum, layer, experts], config.repeats)
        add(record("einsum_baseline", f"einsum / layer, c = {c}", einsum, t_einsum, layer, t_layer))
        add(record("einsum_baseline", f"einsum / experts, c = {c}", einsum, t_einsum, experts, t_experts))

    for factor in factors:
        routers = [BASELINE] + [r for r in optimized.ROUTERS if r != BASELINE]
        timed = [cases.layer_step(r, factor) for r in routers]
        timings = group("routers", f"factor {factor}", timed, config.repeats)
        for router, case, timing in zip(routers[1:], timed[1:], timings[1:], strict=True):
            add(
                record(
                    "routers",
                    f"{router} / {BASELINE}, factor {factor}",
                    case,
                    timing,
                    timed[0],
                    timings[0],
                    TARGETS.get(router),
                )
            )

    for router in optimized.ROUTERS:
        numpy_case, jax_case = cases.route_cases(router)
        t_numpy, t_jax = group("reference_vs_optimized", router, [numpy_case, jax_case], config.reference_repeats)
        add(record("reference_vs_optimized", f"{router}: reference / optimized", numpy_case, t_numpy, jax_case, t_jax))
    return records


# ------------------------------------------------------------------------------------------------- output


def _shapes_text(shapes: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in shapes.items())


def markdown(records: list[dict], metadata: dict) -> str:
    lines = [
        "# MoE layer benchmark",
        "",
        f"`{metadata['command']}` on {metadata['device']} ({metadata['cpu_count']} cores), jax "
        f"{metadata['jax_version']}, {metadata['date']}; {metadata['repeats']} interleaved rounds "
        f"({metadata['reference_repeats']} in section 4), medians; wall time {metadata['wall_seconds']:.0f} s; "
        f"load average {metadata['load_average_start']} at start, {metadata['load_average_end']} at end.",
        "",
        "A / B = median(A) / median(B); paired range = min and max of A_i / B_i over the rounds. Times in ms on "
        "this machine, for scale only.",
    ]
    for section, (title, explanation) in SECTIONS.items():
        rows = [r for r in records if r["section"] == section]
        if not rows:
            continue
        lines += ["", f"## {title}", "", explanation, ""]
        lines += [
            "| A / B | shapes (A) | ratio | paired range | A (ms) | B (ms) | target | met |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            target = "" if r["target_max"] is None else f"<= {r['target_max']}"
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(
                f"| {r['name']} | {_shapes_text(r['shapes'])} | {r['ratio']:.3f} | "
                f"{r['paired_ratio_min']:.3f} - {r['paired_ratio_max']:.3f} | "
                f"{1e3 * r['a']['median_seconds']:.2f} | {1e3 * r['b']['median_seconds']:.2f} | {target} | {met} |"
            )
    return "\n".join(lines) + "\n"


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, factor 1, 2 rounds: to exercise the script")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for moe.json and moe.md (default: benchmarks/results)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison (sections 1-3)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be at least 1, got {args.repeats}")
        config = dataclasses.replace(config, repeats=args.repeats)
    if jax.config.jax_enable_x64:
        raise RuntimeError("this benchmark measures float32; unset JAX_ENABLE_X64")

    device = jax.devices()[0]
    load_start = _load_average()
    start = time.perf_counter()
    records = run(config)
    metadata = {
        "command": " ".join(["python", "benchmarks/bench_moe.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.platform}: {_processor()}",
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python_version": platform.python_version(),
        "jax_version": jax.__version__,
        "equinox_version": eqx.__version__,
        "numpy_version": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dtype": "float32",
        "repeats": config.repeats,
        "reference_repeats": config.reference_repeats,
        "min_sample_seconds": config.min_sample_seconds,
        "config": dataclasses.asdict(config),
        "wall_seconds": time.perf_counter() - start,
        "load_average_start": load_start,
        "load_average_end": _load_average(),
    }
    table = markdown(records, metadata)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moe.json").write_text(json.dumps({"metadata": metadata, "records": records}, indent=2) + "\n")
    (args.out / "moe.md").write_text(table)
    print(table)
    progress(f"wrote {args.out / 'moe.json'} and {args.out / 'moe.md'}")
    return records


if __name__ == "__main__":
    main()
