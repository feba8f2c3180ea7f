"""``python -m train.visualize --workdir DIR``: pictures of what the routers of one trained run do.

Two PNGs in the manner of the routing analyses of the V-MoE paper (Riquelme et al. 2021), from the run's last
checkpoint on its test split (``train.routing_plots``; a finished run already has them, drawn from its final
weights):

    plots/expert_usage.png  per MoE layer, a classes x experts heatmap: how much of each class goes to each expert
    plots/routing_maps.png  a few test images; per MoE layer, each patch in the colour of its main expert
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

import optimized

from . import checkpoint
from .input_pipeline import load_data
from .routing_plots import draw_routing
from .sharding import batch_sharding, make_mesh
from .trained import load_trained
from .workdir import plots_dir, saved_config


def visualize_run(
    workdir, *, out=None, num_images: int = 6, progress: bool = True, dataset=None, max_streamed: int = 1024
) -> list[Path]:
    """Write ``expert_usage.png`` and ``routing_maps.png`` for the run in ``workdir`` (its last checkpoint, its
    test split) into ``out`` (default ``workdir/plots``); returns their paths. ``dataset``: the run's data, if
    already loaded (``train.input_pipeline.load_data(config)``). See ``train.routing_plots.draw_routing``.
    """
    for name, value in (("num_images", num_images), ("max_streamed", max_streamed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    workdir = Path(workdir)
    config = saved_config(workdir)
    if config.model.dense:
        raise ValueError(f"the run in {workdir} is dense (model.dense = True): a dense model has no routers to show")
    model, config, step = load_trained(workdir, config)
    dataset = load_data(config) if dataset is None else dataset
    mesh = make_mesh(config)
    model = jax.device_put(model, optimized.shardings(model, mesh))
    if progress:
        print(f"routing the test images of {workdir} (step {step})", file=sys.stderr)
    with jax.set_mesh(mesh):
        return draw_routing(model, config, dataset, plots_dir(workdir) if out is None else out, step=step,
                            sharding=batch_sharding(mesh), num_images=num_images, max_streamed=max_streamed,
                            progress=progress)  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workdir", required=True, help="a training workdir (config.json, checkpoints/)")
    parser.add_argument("--images", type=int, default=6, help="test images in the routing maps (default 6)")
    parser.add_argument("--out", default=None, help="where to write the PNGs (default WORKDIR/plots)")
    args = parser.parse_args(argv)
    try:
        paths = visualize_run(args.workdir, out=args.out, num_images=args.images)
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
