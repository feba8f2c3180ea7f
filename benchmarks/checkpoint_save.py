"""How long a checkpoint save blocks training: synchronous vs asynchronous (``train.checkpoint.Checkpoints``).

    python benchmarks/checkpoint_save.py [--gib 1.0] [--repeats 3] [--dir /tmp/ckpt-bench]

The state is a stand-in of ``--gib`` GiB of random float32 arrays split 1:2 like a model and its AdamW moments (the
vmoe-b32 preset's model + AdamW state is about 11 GB; pass ``--gib 11`` on a machine with the memory to spare).
For each mode: ``save`` is the time the training loop waits in ``Checkpoints.save`` (the arrays copied off the
devices; with the synchronous mode, everything); ``commit`` the time until the step is committed and its SHA-256
record written (``finish``), which the loop waits for only at the next save or at the end. Writes
``checkpoint_save.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax

from train import checkpoint


def _state(gib: float):
    floats = int(gib * 2**30 / 4)
    chunk = 2**24  # 64 MiB arrays
    # random values: constant arrays would compress to nothing and time nothing real
    arrays = [jax.random.normal(jax.random.key(i), (min(chunk, floats - i),)) for i in range(0, floats, chunk)]
    split = len(arrays) // 3 or 1
    return arrays[:split], arrays[split:]


def measure(gib: float, repeats: int, directory: Path) -> dict:
    model, opt_state = _state(gib)
    jax.block_until_ready((model, opt_state))
    rows = {}
    for mode, asynchronous in (("sync", False), ("async", True)):
        saves, commits = [], []
        shutil.rmtree(directory, ignore_errors=True)
        checkpoints = checkpoint.Checkpoints(directory, keep=2, asynchronous=asynchronous)
        for step in range(1, repeats + 1):
            t0 = time.perf_counter()
            checkpoints.save(step, model, opt_state)
            t1 = time.perf_counter()
            checkpoints.finish()
            t2 = time.perf_counter()
            saves.append(t1 - t0)
            commits.append(t2 - t0)
        checkpoints.close()
        rows[mode] = {"save_seconds": saves, "commit_seconds": commits}
    shutil.rmtree(directory, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/ckpt-bench")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    rows = measure(args.gib, args.repeats, Path(args.dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_save.json").write_text(json.dumps({"gib": args.gib, "jax": jax.__version__, **rows}, indent=2))
    lines = [f"# Checkpoint save, {args.gib:g} GiB state (median of {args.repeats})", "",
             "| mode | training blocked in save | until committed + SHA-256 recorded |", "|---|---|---|"]  # fmt: skip
    for mode, r in rows.items():
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        lines.append(f"| {mode} | {med(r['save_seconds']):.2f} s | {med(r['commit_seconds']):.2f} s |")
    (out / "checkpoint_save.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
