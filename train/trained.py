"""A trained model from its workdir: ``load_model`` (and ``load_trained``, with its step).

Reads the model-only checkpoint item, never the optimizer state. Imports ``train.checkpoint``, ``train.state``
and ``train.workdir``; never the trainer.
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoint
from .config import Config
from .state import init_model
from .workdir import saved_config


def load_model(workdir, step: int | None = None, *, config: Config | None = None,
               capacity_factor: float | None = None):  # fmt: skip
    """``(model, config)``: the trained model of the run in ``workdir``, from its model-only checkpoint item (the
    optimizer state is never read), checked by SHA-256. ``step`` None: the last complete checkpoint.

    ``config`` defaults to the workdir's ``config.json``; pass one to load the same weights into a model built
    differently (more Sinkhorn iterations: any change that keeps the arrays' shapes). ``capacity_factor`` runs the
    trained model at another capacity (``ViTMoE.with_capacity``); it is checked before the weights are read. The
    arrays land on one device; ``jax.device_put(model, optimized.shardings(model, mesh))`` spreads them.

        model, config = train.load_model("workdirs/digits-softmax_expert_choice-1-s0")
        logits, _ = model(images, inference=True)   # images: (B, H, W, channels), as train.data prepares them
    """
    workdir = Path(workdir)
    config = saved_config(workdir) if config is None else config
    model = init_model(config)
    if capacity_factor is not None:
        model = model.with_capacity(capacity_factor)  # static fields only: the restore below fills the arrays
    if step is None:
        meta = checkpoint.latest(workdir, report=True)
        if meta is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoint.directory_of(workdir)}")
    else:
        if step not in checkpoint.complete_steps(workdir):
            raise FileNotFoundError(f"no complete checkpoint of step {step} in {checkpoint.directory_of(workdir)} "
                                    f"(complete: {checkpoint.complete_steps(workdir) or 'none'})")  # fmt: skip
        meta = {"step": step, "path": checkpoint.directory_of(workdir) / str(step)}
    model = checkpoint.restore(meta, model, items=("model",))
    return model, config


def load_trained(workdir, config: Config | None = None, *, capacity_factor: float | None = None):
    """``(model, config, step)``: ``load_model`` at the last checkpoint, with its step."""
    workdir = Path(workdir)
    meta = checkpoint.latest(workdir)
    if config is None:
        config = saved_config(workdir)
    if capacity_factor is not None:
        init_model(config).with_capacity(capacity_factor)  # a bad factor: refused first
    if meta is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint.directory_of(workdir)}")
    model, config = load_model(workdir, meta["step"], config=config, capacity_factor=capacity_factor)
    return model, config, meta["step"]
