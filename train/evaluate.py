"""``python -m train.evaluate --workdir DIR``: the accuracy and the few-shot probe of a trained model.

Reads the model-only checkpoint (``train.load_model``), never the optimizer state. ``--split train`` measures the
training split instead of the test split (read with the evaluation ops: no augmentation); ``--capacity-factor C``
runs the MoE layers at capacity C = round(C T / E) instead of the training one (``ViTMoE.with_capacity``; C in the
units of ``--factor``: k for Token Choice, c for Expert Choice); ``--set mesh.data=N --set mesh.expert=M``
evaluates on another mesh. ``--probe-only`` runs the 10-shot probe alone, ``--no-probe`` the accuracy alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

import optimized

from . import checkpoint
from .config import override
from .evaluators import evaluate_accuracy, fewshot
from .input_pipeline import as_splits, load_data
from .sharding import batch_sharding, make_mesh
from .trained import load_trained
from .workdir import saved_config


def _config(workdir: Path, sets: tuple[str, ...]):
    """The saved config with the mesh overrides applied: where an evaluation runs, never what it computes."""
    config = saved_config(workdir)
    for assignment in sets:
        key = assignment.partition("=")[0].strip()
        if key == "model.factor":
            raise ValueError(f"--set {assignment}: the capacity of an evaluation is --capacity-factor "
                             f"{assignment.partition('=')[2].strip()}")  # fmt: skip
        if not key.startswith("mesh."):
            raise ValueError(f"--set {assignment}: an evaluation can change mesh.data and mesh.expert only (the "
                             "capacity with --capacity-factor)")  # fmt: skip
        config = override(config, assignment)
    return config


def evaluate_run(workdir, *, split: str = "test", sets: tuple[str, ...] = (), step: int | None = None,
                 capacity_factor: float | None = None, accuracy: bool = True, probe: bool = True) -> dict:  # fmt: skip
    """Accuracy on ``split`` (with ``accuracy``) and the few-shot probe (with ``probe``) of the run in ``workdir``,
    at checkpoint ``step`` (default: the last complete one) and ``capacity_factor`` (default: training's)."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if not (accuracy or probe):
        raise ValueError("nothing to evaluate: accuracy and probe are both off")
    workdir = Path(workdir)
    config = _config(workdir, sets)
    model, config, step = load_trained(workdir, config, capacity_factor=capacity_factor, step=step)
    mesh = make_mesh(config)
    sharding = batch_sharding(mesh)
    splits = as_splits(load_data(config))
    source = splits.test if split == "test" else splits.train
    model = jax.device_put(model, optimized.shardings(model, mesh))
    result = {"step": step, "split": split, "num_images": len(source), "capacity_factor": model.capacity_factor}
    with jax.set_mesh(mesh):
        if accuracy:
            result["accuracy"] = evaluate_accuracy(model, source, source.labels, config.batch_size, sharding,
                                                   splits.eval_ops, config.data.workers)  # fmt: skip
        if probe:
            result["fewshot"] = fewshot(model, splits, config, sharding)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--step", type=int, help="a checkpoint's step (default: the last complete one)")
    parser.add_argument("--capacity-factor", type=float, metavar="C",
                        help="run the MoE layers at capacity C = round(C T / E) (units of --factor: k or c; "
                             "default: the training capacity)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="mesh.FIELD=N",
                        help="evaluate under another device mesh, e.g. --set mesh.expert=1")  # fmt: skip
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-probe", action="store_true", help="accuracy only")
    which.add_argument("--probe-only", action="store_true", help="the few-shot probe only")
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.workdir, split=args.split, sets=tuple(args.set), step=args.step,
                              capacity_factor=args.capacity_factor, accuracy=not args.probe_only,
                              probe=not args.no_probe)  # fmt: skip
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    at = "" if result["capacity_factor"] is None else f" at capacity factor {result['capacity_factor']:g}"
    if "accuracy" in result:
        print(f"step {result['step']}{at}: {result['split']} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['num_images']} images)")  # fmt: skip
    if "fewshot" in result:
        probe = result["fewshot"]
        draws = ", ".join(f"{100 * a:.2f}" for a in probe["draw_accuracies"])
        print(f"step {result['step']}{at}: {probe['shots']}-shot linear probe {100 * probe['accuracy']:.2f}% (mean "
              f"of {len(probe['draw_accuracies'])} draws: {draws}; {probe['num_classes']} classes, "
              f"{probe['num_test']} test images)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
