"""``python -m train``: train a ViT-MoE (default: the digits preset), evaluate it, print a summary."""

from __future__ import annotations

import argparse
import sys

from optimized import ROUTERS

from .checkpoint import CorruptCheckpointError
from .config import PRESETS, resolve
from .loop import ConfigMismatchError, NonFiniteLossError, format_summary, train_and_evaluate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument("--preset", default="digits", help=f"one of: {', '.join(PRESETS)} (default: digits)")
    parser.add_argument("--router", help=f"one of: {', '.join(ROUTERS)}")
    parser.add_argument("--factor", type=float, help="k for Token Choice, c for Expert Choice and Soft MoE")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workdir", help="where the run lives (default: workdirs/<preset>-<router>-<factor>-s<seed>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set model.num_experts=16 --set learning_rate=3e-4",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    args = parser.parse_args(argv)
    try:
        config = resolve(
            args.preset, router=args.router, factor=args.factor, seed=args.seed, steps=args.steps,
            batch_size=args.batch_size, overrides=tuple(args.set),
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    workdir = args.workdir or (f"workdirs/{args.preset}-{config.model.router}-{config.model.factor}-s{config.seed}")
    print(f"training {args.preset} with {config.model.router} (factor {config.model.factor}) in {workdir}",
          file=sys.stderr)  # fmt: skip
    try:
        summary = train_and_evaluate(config, workdir, progress=not args.no_progress)
    except (ConfigMismatchError, CorruptCheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"\nworkdir: {workdir} (config.json, metrics.jsonl, checkpoints/, plots/, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
