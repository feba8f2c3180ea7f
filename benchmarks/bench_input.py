"""The input pipeline (``train.data``): memory that does not grow with the dataset, and speed.

Three measurements, printed as ratios measured in one run and written to ``--out`` (input.json, input.md):

(a) Peak RSS of a training run streaming an image folder of ``--small`` vs ``--large`` 224 px JPEGs (train/
    sub-folder; the same 200-image test/ sub-folder for both), ``--steps`` steps of the tiny model at 32 px
    (the loader decodes 224 px files and crops and resizes them), batch 8, ``data.workers=0``, each run in its
    own process (its ``ru_maxrss``). Target (issue 12): the two differ by less than 200 MB.
(b) Training images/s on the ``digits`` preset reading batches through the loader (``TrainLoader`` + global
    arrays) vs indexing the in-memory arrays directly (what training did before the loader), the same jitted
    step, blocks of steps alternating; ratio of medians. Target: >= 0.95.
(c) Decode + Inception crop + flip + value range of 224 px JPEGs to 224 px: images/s in this process and per
    grain worker process (``--workers``).
(d) Beside it, the training step of the ``vmoe-b32`` preset (the paper's B/32, E = 32, 224 px, AdamW) on this
    CPU at a batch of ``--b32-batch`` images (the preset's 4096 does not fit here): images/s of training, and
    how many decode workers at the rate of (c) keep up with it. ``--b32-batch 0`` skips it (it needs about
    16 GB of RAM: 967M parameters, their gradients and AdamW's two moments).

    python benchmarks/bench_input.py [--small 2000] [--large 20000] [--steps 300] [--rounds 6]
        [--decode-images 512] [--workers 1 2] [--b32-batch 8] [--out benchmarks/results] [--quick]

Every image is generated here (smooth colour fields with noise, one colour per class, JPEG quality 90) in a
temporary directory; nothing is downloaded. Choose smaller sizes for a quick look (``--quick``: sizes whose
figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_jpegs(root: Path, count: int, classes: int = 10, size: int = 224, seed: int = 0) -> None:
    """``count`` distinct size x size JPEGs in ``classes`` class folders under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, (classes, 3)).astype(np.float32)
    ramp = np.linspace(-30, 30, size, dtype=np.float32)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % classes
        angle = rng.uniform(0, 2 * np.pi)
        field = np.cos(angle) * ramp[None, :, None] + np.sin(angle) * ramp[:, None, None]
        noise = rng.normal(0, 12, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        pixels = np.clip(base[c] + field + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{c:02d}" / f"{i:07d}.jpg", quality=90)


def _rss_child(path: str, steps: int, workdir: str) -> None:
    """Runs in a subprocess: train on the folder, print the peak RSS (MB) of this process as JSON."""
    import resource

    import train
    from train.presets import resolve

    overrides = ("data.name=imagefolder", f"data.path={path}", "data.channels=3", "model.channels=3",
                 "data.image_size=32", "model.image_size=32", "model.num_classes=10", "data.augment=true",
                 "fewshot_shots=2", "fewshot_draws=1", f"eval_every={steps}", f"checkpoint_every={steps}",
                 f"log_every={steps}")  # fmt: skip
    config = resolve("tiny", steps=steps, batch_size=8, overrides=overrides)
    start = time.perf_counter()
    summary = train.train_and_evaluate(config, workdir, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"peak_rss_mb": peak, "seconds": seconds, "test_accuracy": summary["test_accuracy"]}))


def peak_rss(tmp: Path, small: int, large: int, steps: int) -> dict:
    out = {}
    for name, count in (("small", small), ("large", large)):
        folder = tmp / f"folder_{count}"
        t0 = time.perf_counter()
        write_jpegs(folder / "train", count)
        write_jpegs(folder / "test", 200, seed=1)
        written = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20
        result = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(folder), str(steps), str(tmp / f"run_{count}")],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        record = json.loads(result.stdout.strip().splitlines()[-1])
        out[name] = {"images": count, "folder_mb": round(size_mb, 1), "write_seconds": round(written, 1), **record}
        print(f"(a) {count} JPEGs ({size_mb:.0f} MB): peak RSS {record['peak_rss_mb']:.0f} MB, "
              f"{record['seconds']:.1f} s for {steps} steps", flush=True)  # fmt: skip
        shutil.rmtree(folder)
    out["difference_mb"] = out["large"]["peak_rss_mb"] - out["small"]["peak_rss_mb"]
    return out


def loader_vs_memory(steps: int, rounds: int) -> dict:
    """Median seconds per step, loader vs direct indexing, same jitted step, alternating blocks."""
    import equinox as eqx
    import jax

    from optimized import ViTMoE
    from train.data import BatchOrder, TrainLoader, from_dataset
    from train.input_pipeline import load_data
    from train.presets import resolve
    from train.sharding import batch_sharding, global_batch, make_mesh
    from train.state import make_optimizer
    from train.trainer import make_step

    config = resolve("digits")
    dataset = load_data(config)
    sharding = batch_sharding(make_mesh(config))
    model = ViTMoE(config.model, key=jax.random.key(0))
    optimizer, _ = make_optimizer(config)
    state = [model, optimizer.init(eqx.filter(model, eqx.is_array))]
    step_fn = make_step(optimizer, 0.0, config.model.num_classes)
    order = BatchOrder(len(dataset.train_labels), config.batch_size, config.seed)
    loader = TrainLoader(from_dataset(dataset).train, config.batch_size, config.seed)

    def run(step, images, labels):
        state[0], state[1], metrics = step_fn((images, labels, jax.random.key(step)), state[0], state[1])
        jax.block_until_ready(metrics["loss"])

    def memory_block(first):
        t0 = time.perf_counter()
        for step in range(first, first + steps):
            idx = order.indices(step)
            run(step, jax.device_put(dataset.train_images[idx], sharding),
                jax.device_put(dataset.train_labels[idx], sharding))
        return (time.perf_counter() - t0) / steps

    def loader_block(first):
        t0 = time.perf_counter()
        for step, (x, y) in zip(range(first, first + steps), loader.batches(first, first + steps), strict=True):
            run(step, global_batch(x, sharding, config.batch_size), global_batch(y, sharding, config.batch_size))
        return (time.perf_counter() - t0) / steps

    with jax.set_mesh(make_mesh(config)):
        memory_block(0)  # compile
        memory, streamed = [], []
        for r in range(rounds):
            memory.append(memory_block(r * steps))
            streamed.append(loader_block(r * steps))
    m, s = statistics.median(memory), statistics.median(streamed)
    ratio = m / s  # images/s of the loader over images/s in memory
    print(f"(b) digits, batch {config.batch_size}: in memory {config.batch_size / m:.0f} images/s, through the "
          f"loader {config.batch_size / s:.0f} images/s: ratio {ratio:.3f} (target >= 0.95)", flush=True)
    return {"batch_size": config.batch_size, "steps_per_block": steps, "rounds": rounds,
            "memory_images_per_second": config.batch_size / m, "loader_images_per_second": config.batch_size / s,
            "ratio": ratio, "paired_ratios": [a / b for a, b in zip(memory, streamed, strict=True)]}  # fmt: skip


def decode_rate(tmp: Path, images: int, workers: list[int]) -> dict:
    from train.data import ImageFolderSource, TrainLoader, read_image_folder, train_ops

    folder = tmp / "decode"
    write_jpegs(folder, max(images, 64))
    data = read_image_folder(folder, test_fraction=0.01)
    source = ImageFolderSource(data.train_files, data.train_labels)
    batch = 32
    steps = max(images // batch, 2)
    out = {"image_size": 224, "batch": batch, "images": steps * batch, "rows": []}
    for w in [0, *workers]:
        loader = TrainLoader(source, batch, seed=0, preprocess=train_ops(224, 3, augment=True), workers=w)
        iterator = loader.batches(0, steps + 1)
        next(iterator)  # workers started, first batch made
        t0 = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        rate = steps * batch / (time.perf_counter() - t0)
        per_worker = rate / max(w, 1)
        out["rows"].append({"workers": w, "images_per_second": rate, "per_worker": per_worker})
        print(f"(c) decode + augment 224 px JPEGs, {w} workers ({'in this process' if w == 0 else 'grain'}): "
              f"{rate:.0f} images/s, {per_worker:.0f} per worker", flush=True)  # fmt: skip
        del iterator
    return out


def b32_step(batch: int, repeats: int = 3) -> dict:
    """Seconds per training step of the vmoe-b32 preset at ``batch`` images (median of ``repeats`` after one
    compiling step), on random 224 px images."""
    import equinox as eqx
    import jax

    from optimized import ViTMoE
    from train.presets import preset
    from train.state import make_optimizer
    from train.trainer import make_step

    config = preset("vmoe-b32")
    config = config.replace(batch_size=batch, model=config.model.replace(group_images=min(batch, 8)))
    model = ViTMoE(config.model, key=jax.random.key(0))
    optimizer, _ = make_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = make_step(optimizer, config.label_smoothing, config.model.num_classes)
    rng = np.random.default_rng(0)
    images = jax.numpy.asarray(rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32))
    labels = jax.numpy.asarray(rng.integers(0, 1000, batch).astype(np.int32))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        model, opt_state, metrics = step((images, labels, jax.random.key(i)), model, opt_state)
        float(metrics["loss"])
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    print(f"(d) vmoe-b32 training step, batch {batch}: {seconds:.2f} s ({batch / seconds:.1f} images/s)", flush=True)
    return {"batch": batch, "seconds_per_step": seconds, "images_per_second": batch / seconds,
            "compile_and_first_step_seconds": times[0]}  # fmt: skip


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "input.json").write_text(json.dumps(results, indent=2))
    a, b, c = results["rss"], results["loader"], results["decode"]
    lines = [
        f"# Input pipeline (cpu, {os.cpu_count()} cores, python {platform.python_version()})",
        "",
        f"Command: `{results['command']}`",
        "",
        "(a) Peak RSS of a training run streaming an image folder (tiny model at 32 px, batch 8, "
        f"{results['args']['steps']} steps, workers 0):",
        "",
        "| JPEGs (224 px) | folder (MB) | peak RSS (MB) | seconds |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {a[k]['images']} | {a[k]['folder_mb']} | {a[k]['peak_rss_mb']:.0f} | {a[k]['seconds']:.1f} |"
          for k in ("small", "large")),
        "",
        f"Difference: {a['difference_mb']:.0f} MB (target < 200 MB): "
        f"{'met' if a['difference_mb'] < 200 else 'NOT met'}.",
        "",
        f"(b) digits preset, batch {b['batch_size']}, {b['rounds']} alternating blocks of {b['steps_per_block']} "
        f"steps: in memory {b['memory_images_per_second']:.0f} images/s, through the loader "
        f"{b['loader_images_per_second']:.0f} images/s; ratio {b['ratio']:.3f} (target >= 0.95): "
        f"{'met' if b['ratio'] >= 0.95 else 'NOT met'}. Paired block ratios: "
        + ", ".join(f"{r:.2f}" for r in b["paired_ratios"]) + ".",
        "",
        f"(c) Decode + Inception crop + flip + value range, 224 px JPEG to 224 px, batches of {c['batch']}:",
        "",
        "| workers | images/s | per worker |",
        "| ---: | ---: | ---: |",
        *(f"| {r['workers']} | {r['images_per_second']:.0f} | {r['per_worker']:.0f} |" for r in c["rows"]),
        "",
    ]  # fmt: skip
    if results.get("b32"):
        d = results["b32"]
        per_worker = min(r["per_worker"] for r in c["rows"] if r["workers"] > 0)
        lines += [
            f"(d) Beside it, the `vmoe-b32` training step on this CPU at batch {d['batch']}: "
            f"{d['seconds_per_step']:.2f} s per step, {d['images_per_second']:.1f} images/s; one decode worker "
            f"({per_worker:.0f} images/s) feeds {per_worker / d['images_per_second']:.0f} times that. On an "
            "accelerator, size `data.workers` as (training images/s) / (images/s per worker) for real photographs, "
            "which decode more slowly than these generated JPEGs.",
            "",
        ]  # fmt: skip
    (out / "input.md").write_text("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each RSS run")
    parser.add_argument("--rounds", type=int, default=6, help="(b): alternating blocks of each kind")
    parser.add_argument("--block", type=int, default=50, help="(b): steps per block")
    parser.add_argument("--decode-images", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--b32-batch", type=int, default=8, help="(d): 0 skips the vmoe-b32 step")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the figures")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.steps, args.rounds, args.block, args.decode_images = 40, 80, 5, 1, 3, 64
        args.workers, args.b32_batch = [1], 0
    results = {"command": " ".join(["python", "benchmarks/bench_input.py", *sys.argv[1:]]), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        results["rss"] = peak_rss(Path(tmp), args.small, args.large, args.steps)
        results["loader"] = loader_vs_memory(args.block, args.rounds)
        results["decode"] = decode_rate(Path(tmp), args.decode_images, args.workers)
    results["b32"] = b32_step(args.b32_batch) if args.b32_batch else None
    write_results(Path(args.out), results)
    print(f"(a) peak RSS difference {results['rss']['difference_mb']:.0f} MB; (b) loader / memory "
          f"{results['loader']['ratio']:.3f}; written to {args.out}/input.md")


if __name__ == "__main__":
    main()
