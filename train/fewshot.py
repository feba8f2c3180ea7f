"""``python -m train.fewshot --workdir DIR``: the 10-shot linear probe of a trained run, from its last checkpoint.

``--capacity-factor F`` probes the trained model with its MoE layers at capacity C = round(F T / E) instead of
the training one (``ViTMoE.with_capacity``; F in the units of ``--factor``: k for Token Choice, c for Expert
Choice).
"""

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


def evaluate_workdir(workdir, overrides: tuple[str, ...] = (), *, capacity_factor: float | None = None) -> dict:
    """The probe of the run in ``workdir`` at its last checkpoint; ``overrides`` may change the mesh
    (``mesh.data=N``, ``mesh.expert=N``) to evaluate on other devices than the run trained on, and
    ``capacity_factor`` the MoE layers' capacity (``ViTMoE.with_capacity``; None: the training capacity)."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a training workdir")
    config = Config.from_dict(json.loads(config_path.read_text()))
    for assignment in overrides:
        if not assignment.strip().startswith("mesh."):
            raise ValueError(f"--set {assignment}: only mesh.data and mesh.expert can change for an evaluation")
        config = override(config, assignment)
    model, config, step = load_trained(workdir, config, capacity_factor=capacity_factor)
    mesh = make_mesh(config)
    model = jax.device_put(model, optimized.shardings(model, mesh))
    with jax.set_mesh(mesh):
        result = fewshot(model, load_data(config), config, batch_sharding(mesh))
    return {"step": step, "capacity_factor": model.capacity_factor, **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.fewshot", description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="mesh.FIELD=N",
                        help="evaluate under another device mesh, e.g. --set mesh.expert=1")  # fmt: skip
    parser.add_argument("--capacity-factor", type=float, metavar="F",
                        help="run the MoE layers at capacity C = round(F T / E) (units of --factor: k or c; "
                             "default: the training capacity)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        result = evaluate_workdir(args.workdir, tuple(args.set), capacity_factor=args.capacity_factor)
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    draws = ", ".join(f"{100 * a:.2f}" for a in result["draw_accuracies"])
    at = "" if result["capacity_factor"] is None else f" at capacity factor {result['capacity_factor']:g}"
    print(f"step {result['step']}{at}: {result['shots']}-shot linear-probe accuracy {100 * result['accuracy']:.2f}% "
          f"(mean of {len(result['draw_accuracies'])} draws: {draws}; {result['num_classes']} classes, "
          f"{result['num_test']} test images)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
