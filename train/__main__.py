"""``python -m train``: train a ViT-MoE (default: the digits preset), evaluate it, print a summary.

Several processes (hosts) train one run when each is started with the same command plus ``--coordinator
HOST:PORT --num-processes N --process-id I`` (or ``--distributed auto`` where JAX finds the cluster itself: TPU
VMs, SLURM, ...). SIGTERM or Ctrl-C saves a checkpoint at the end of the current step and exits with status 75;
the same command resumes.
"""

from __future__ import annotations

import argparse
import sys

from optimized import ROUTERS

from .checkpoint import CheckpointWriteError, CorruptCheckpointError
from .preemption import EXIT_STATUS, Preempted
from .presets import PRESETS, resolve


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--distributed", choices=["off", "auto"], default="off",
                       help="auto: jax.distributed.initialize() finds the cluster (TPU VM slice, SLURM, ...)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same on every process")
    group.add_argument("--num-processes", type=int, metavar="N")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")


def start_distributed(parser: argparse.ArgumentParser, args) -> None:
    """``jax.distributed.initialize`` from the command line's options, before anything touches a device."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed == "auto":
        if any(v is not None for v in explicit):
            parser.error("--distributed auto finds the cluster itself: give it no --coordinator/--num-processes/"
                         "--process-id")  # fmt: skip
        import jax

        jax.distributed.initialize()
        return
    if all(v is None for v in explicit):
        return
    if any(v is None for v in explicit):
        parser.error("--coordinator, --num-processes and --process-id go together")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id must be in [0, {args.num_processes}) and --num-processes >= 1, got "
                     f"{args.process_id} of {args.num_processes}")  # fmt: skip
    import jax

    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


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
    parser.add_argument(
        "--init-from",
        metavar="DIR_OR_CHECKPOINT",
        help="fine-tune: start from the weights of this trained workdir or vmoe checkpoint (PREFIX of PREFIX.index); "
        "the architecture is the source's, --set may change only what fine-tuning changes (a new head if the "
        "classes differ, the position embedding resized if the image size does; fresh optimizer, step 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = resolve(
            args.preset, router=args.router, factor=args.factor, seed=args.seed, steps=args.steps,
            batch_size=args.batch_size, overrides=tuple(args.set),
        )  # fmt: skip
        if args.init_from is not None:  # the model is the source's, but for what the command line names
            from .finetune import from_source

            named = [assignment.split("=", 1)[0] for assignment in args.set]
            named += [f"model.{name}" for name in ("router", "factor") if getattr(args, name) is not None]
            config = from_source(config.replace(init_from=args.init_from), named)
    except ValueError as err:
        parser.error(str(err))
    workdir = args.workdir or (f"workdirs/{args.preset}-{config.model.router}-{config.model.factor}-s{config.seed}")
    print(f"training {args.preset} with {config.model.router} (factor {config.model.factor}) in {workdir}",
          file=sys.stderr)  # fmt: skip
    start_distributed(parser, args)
    from .trainer import NonFiniteLossError, train_and_evaluate
    from .workdir import ConfigMismatchError, WorkdirInUseError

    try:
        summary = train_and_evaluate(config, workdir, progress=not args.no_progress)
    except Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_STATUS
    except KeyboardInterrupt:  # before the training loop's handlers are installed, or after a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigMismatchError, CorruptCheckpointError, CheckpointWriteError, NonFiniteLossError, WorkdirInUseError,
            FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import jax

    if jax.process_index() != 0:
        return 0
    from .summary import format_summary

    print(format_summary(summary))
    print(f"\nworkdir: {workdir} (config.json, metrics.jsonl, checkpoints/, plots/, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
