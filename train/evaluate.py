"""``python -m train.evaluate --workdir DIR``: the accuracy and the few-shot probe of a trained model.

Reads the model-only checkpoint (``train.load_model``), never the optimizer state. ``--split train`` measures the
training split instead of the test split (read with the evaluation ops: no augmentation); ``--set
model.factor=C`` runs the MoE layers at another capacity (``ViTMoE.with_capacity``, as ``python -m
train.fewshot --capacity-factor``); ``--set mesh.data=N --set mesh.expert=M`` evaluates on another mesh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

import optimized

from . import checkpoint
from .config import override
from .loop import _saved_config, as_splits, batch_sharding, evaluate_accuracy, fewshot, load_data, load_model, make_mesh


def _options(workdir: Path, sets: tuple[str, ...]):
    """The saved config with the mesh overrides applied, and the capacity factor asked for (None: training's)."""
    config = _saved_config(workdir)
    factor = None
    for assignment in sets:
        key, _, value = assignment.partition("=")
        if key.strip() == "model.factor":
            factor = float(value)
        elif key.strip().startswith("mesh."):
            config = override(config, assignment)
        else:
            raise ValueError(f"--set {assignment}: an evaluation can change model.factor, mesh.data and mesh.expert "
                             "only")  # fmt: skip
    return config, factor


def evaluate_run(workdir, *, split: str = "test", sets: tuple[str, ...] = (), step: int | None = None,
                 probe: bool = True) -> dict:  # fmt: skip
    """Accuracy on ``split`` and (with ``probe``) the few-shot probe of the run in ``workdir``."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    workdir = Path(workdir)
    config, factor = _options(workdir, sets)
    model, config = load_model(workdir, step, config=config, capacity_factor=factor)
    step = step if step is not None else checkpoint.latest(workdir)["step"]
    mesh = make_mesh(config)
    sharding = batch_sharding(mesh)
    splits = as_splits(load_data(config))
    source = splits.test if split == "test" else splits.train
    model = jax.device_put(model, optimized.shardings(model, mesh))
    with jax.set_mesh(mesh):
        accuracy = evaluate_accuracy(model, source, source.labels, config.batch_size, sharding, splits.eval_ops,
                                     config.data.workers)  # fmt: skip
        result = {"step": step, "split": split, "num_images": len(source), "accuracy": accuracy,
                  "capacity_factor": model.capacity_factor}  # fmt: skip
        if probe:
            result["fewshot"] = fewshot(model, splits, config, sharding)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--step", type=int, help="a checkpoint's step (default: the last complete one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model.factor=C, mesh.data=N or mesh.expert=N")  # fmt: skip
    parser.add_argument("--no-probe", action="store_true", help="accuracy only")
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.workdir, split=args.split, sets=tuple(args.set), step=args.step,
                              probe=not args.no_probe)  # fmt: skip
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    at = "" if result["capacity_factor"] is None else f" at capacity factor {result['capacity_factor']:g}"
    print(f"step {result['step']}{at}: {result['split']} accuracy {100 * result['accuracy']:.2f}% "
          f"({result['num_images']} images)")  # fmt: skip
    if "fewshot" in result:
        probe = result["fewshot"]
        print(f"{probe['shots']}-shot linear probe {100 * probe['accuracy']:.2f}% (mean of "
              f"{len(probe['draw_accuracies'])} draws; {probe['num_classes']} classes, {probe['num_test']} test "
              "images)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
