"""A trained model from its workdir: ``load_model`` (and ``load_trained``, with its step).

Reads the model-only checkpoint item, never the optimizer state. Imports ``train.checkpoint``, ``train.state``
and ``train.workdir``; never the trainer.
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoint
from .config import Config
from .state import init_model
from .workdir import config_differences, saved_config


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
    model, config, _ = _load(Path(workdir), step, config, capacity_factor)
    return model, config


def load_trained(workdir, config: Config | None = None, *, capacity_factor: float | None = None,
                 step: int | None = None):  # fmt: skip
    """``(model, config, step)``: ``load_model`` with the step it loaded (default: the last complete one)."""
    return _load(Path(workdir), step, config, capacity_factor)


def _load(workdir: Path, step: int | None, config: Config | None, capacity_factor: float | None):
    config = saved_config(workdir) if config is None else config
    model = init_model(config)
    if capacity_factor is not None:
        model = model.with_capacity(capacity_factor)  # static fields only: the restore below fills the arrays
    if step is not None:
        if step not in checkpoint.complete_steps(workdir):
            raise FileNotFoundError(f"no complete checkpoint of step {step} in {checkpoint.directory_of(workdir)} "
                                    f"(complete: {checkpoint.complete_steps(workdir) or 'none'})")  # fmt: skip
        meta = {"step": step, "path": checkpoint.directory_of(workdir) / str(step)}
        return _restore(meta, model, config), config, step
    # Choice: a training in the workdir deletes its oldest step once a newer one is recorded; a step deleted while
    # it was being read is not an error: the newest complete step is taken again.
    for attempt in range(5):
        meta = checkpoint.latest(workdir, report=attempt == 0)
        if meta is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoint.directory_of(workdir)}")
        try:
            return _restore(meta, model, config), config, meta["step"]
        except Exception:
            if Path(meta["path"]).exists():
                raise
    raise FileNotFoundError(f"the checkpoints of {workdir} were deleted as fast as they were read (a training with "
                            "keep_checkpoints=1?); try again, or pass a step kept by keep_checkpoints_every")


def _restore(meta: dict, model, config: Config):
    """The model item of checkpoint ``meta``; one that does not fit ``model`` is refused naming the fields of the
    model config it was trained with (saved with it) that differ from ``config``."""
    try:
        return checkpoint.restore(meta, model, items=("model",))
    except checkpoint.CorruptCheckpointError as err:
        saved = checkpoint.recorded_config(meta) if "does not fit" in str(err) else None
        diffs = [d for d in config_differences(saved, config) if d.startswith("model.")] if saved else []
        if not diffs:
            raise
        raise checkpoint.CorruptCheckpointError(
            f"checkpoint {meta['path']} holds a model of another config than the one given (its {checkpoint.CONFIG} "
            f"-> given: {'; '.join(diffs[:10])}); evaluate it with the config it was trained with"
        ) from None
