"""Import a checkpoint of the authors' V-MoE (google-research/vmoe) as a trained run's workdir.

    python -m train.import_vmoe CHECKPOINT --workdir DIR [--preset P] [--set key=value ...]

CHECKPOINT is the checkpoint's prefix (or its ``.index``): a params-only file or a training state, either index layout
(``train.vmoe_checkpoint``; an old-layout state only when the file agrees with vmoe's TrainState order).
The architecture is read from the arrays: width, depth, heads (the attention kernels are
(D, heads, D / heads)), MLP size, experts, patch size, channels, image size (from the position embedding's rows),
pooling (a ``cls`` array: class token; none: GAP), pre-logits, classes and the MoE blocks. What the arrays cannot say
(the router, k or c, images per routing group, the capacity rule, the data) comes from ``--preset`` (default
``vmoe-b16-authors``: Softmax Token Choice, k = 2, 8 images per group, vmoe's capacity rule) and ``--set``. A ``--set``
that contradicts the arrays, an array ViTMoE has no place for (MAP-head pooling, query/key norms, a router bias,
...), a missing position embedding: each is refused, naming the array, before anything is written.

The workdir is a trained run's: ``config.json`` and one checkpoint (step: the training state's, else 0) written by
``train.checkpoint`` with its SHA-256 record, so ``train.load_model``, ``python -m train.evaluate``, ``predict``,
``visualize`` and the few-shot probe use it. Choice: the checkpoint's optimizer item is a fresh optimizer state for
the imported model (vmoe's Adam state is not mapped); fine-tune with ``--init-from DIR`` (or ``--init-from CHECKPOINT``
without a workdir), which reads weights only.

Uses ``train.vmoe_checkpoint``, ``train.vmoe_model`` (the inference and the mapping), ``train.presets``,
``train.state``, ``train.checkpoint``, ``train.workdir``; never the trainer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .presets import PRESETS
from .vmoe_checkpoint import VmoeCheckpointError, params_of, read_arrays
from .vmoe_model import INFERRED as INFERRED
from .vmoe_model import UnsupportedCheckpointError as UnsupportedCheckpointError
from .vmoe_model import build_config as build_config
from .vmoe_model import infer as infer
from .vmoe_model import to_model as to_model

DEFAULT_PRESET = "vmoe-b16-authors"


def import_checkpoint(checkpoint, workdir, *, preset_name: str = DEFAULT_PRESET, sets: tuple[str, ...] = ()):
    """Read the vmoe checkpoint, check everything, then write the workdir; returns ``(config, step)``. Nothing is
    written when anything is refused."""
    workdir = Path(workdir)
    if preset_name not in PRESETS:
        raise ValueError(f"--preset {preset_name!r}: unknown; valid presets: {', '.join(PRESETS)}")
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ValueError(f"--workdir {str(workdir)!r} exists and is not an empty directory; an import writes a new "
                         "workdir")
    tree = read_arrays(checkpoint)
    params = params_of(tree)
    step = int(np.asarray(tree["step"])) if params is not tree and "step" in tree else 0
    fields, arrays = infer(params, str(checkpoint))
    config = build_config(fields, preset_name, tuple(sets), str(checkpoint))
    model = to_model(arrays, config)  # every check done: now write

    import equinox as eqx

    from . import checkpoint as ckpt
    from .state import make_optimizer
    from .workdir import check_or_write_config

    optimizer, _ = make_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    workdir.mkdir(parents=True, exist_ok=True)
    check_or_write_config(config, workdir)
    ckpt.save(workdir, step, model, opt_state, config_json=config.to_json())
    return config, step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.import_vmoe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkpoint", help="the vmoe checkpoint's prefix (PREFIX for PREFIX.index + shards)")
    parser.add_argument("--workdir", required=True, help="the new workdir to write (must not exist or be empty)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"what the arrays cannot say (default "
                        f"{DEFAULT_PRESET}); one of {', '.join(PRESETS)}")
    parser.add_argument("--set", action="append", default=[], metavar="key=value",
                        help="e.g. --set model.router=softmax_expert_choice --set model.factor=2")
    args = parser.parse_args(argv)
    try:
        config, step = import_checkpoint(args.checkpoint, args.workdir, preset_name=args.preset, sets=tuple(args.set))
    except (VmoeCheckpointError, ValueError) as err:
        print(f"python -m train.import_vmoe: {err}", file=sys.stderr)
        return 2
    m = config.model
    print(f"imported {args.checkpoint} -> {args.workdir} (step {step}): width {m.width}, depth {m.depth}, "
          f"{m.num_heads} heads, MLP {m.mlp_dim}, {m.num_experts} experts on blocks {m.moe_block_indices}, "
          f"patch {m.patch_size}, {m.image_size} px, pool {m.pool}, pre-logits {m.representation_size}, "
          f"{m.num_classes} classes, router {m.router} factor {m.factor}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
