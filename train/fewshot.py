"""``python -m train.fewshot --workdir DIR``: the 10-shot linear probe of a trained run, from its last checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

import optimized

from . import checkpoint
from .config import Config, override
from .loop import batch_sharding, fewshot, load_data, load_trained, make_mesh


def evaluate_workdir(workdir, overrides: tuple[str, ...] = ()) -> dict:
    """The probe of the run in ``workdir`` at its last checkpoint; ``overrides`` may change the mesh
    (``mesh.data=N``, ``mesh.expert=N``) to evaluate on other devices than the run trained on."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a training workdir")
    config = Config.from_dict(json.loads(config_path.read_text()))
    for assignment in overrides:
        if not assignment.strip().startswith("mesh."):
            raise ValueError(f"--set {assignment}: only mesh.data and mesh.expert can change for an evaluation")
        config = override(config, assignment)
    model, config, step = load_trained(workdir, config)
    mesh = make_mesh(config)
    model = jax.device_put(model, optimized.shardings(model, mesh))
    with jax.set_mesh(mesh):
        result = fewshot(model, load_data(config), config, batch_sharding(mesh))
    return {"step": step, **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.fewshot", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="mesh.FIELD=N",
                        help="evaluate under another device mesh, e.g. --set mesh.expert=1")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        result = evaluate_workdir(args.workdir, tuple(args.set))
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    draws = ", ".join(f"{100 * a:.2f}" for a in result["draw_accuracies"])
    print(f"step {result['step']}: {result['shots']}-shot linear-probe accuracy {100 * result['accuracy']:.2f}% "
          f"(mean of {len(result['draw_accuracies'])} draws: {draws}; {result['num_classes']} classes, "
          f"{result['num_test']} test images)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
