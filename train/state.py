"""The one place a model and its optimizer state are built from a config.

``init_model(config, key)`` is the ViT-MoE of ``config.model``; ``make_optimizer(config)`` the optimizer and its
learning-rate schedule; ``init_state(config, key)`` all of them at once, as training starts. Checkpoints restore
into the shapes these give. Imports ``train.config`` only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import optax

from optimized import ViTMoE

from .config import Config


class State(NamedTuple):
    """What training starts from: the model and its optimizer state, with the optimizer and its schedule."""

    model: ViTMoE
    opt_state: Any
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule


def make_optimizer(config: Config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with warmup, cosine decay and global-norm clipping; with ``model.freeze_router`` the routers'
    weights get no update at all (no gradient step, no weight decay): the fixed random-routing control."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, config.steps),
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.end_learning_rate_fraction,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )
    if config.model.freeze_router and not config.model.dense:
        optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, _router_labels)
    return optimizer, schedule


def _router_labels(params):
    def label(path, _):
        return "frozen" if any(getattr(k, "name", None) == "router_weight" for k in path) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def init_model(config: Config, key=None) -> ViTMoE:
    """The model of ``config.model`` initialized from ``key`` (default ``jax.random.key(0)``: a template whose
    arrays a checkpoint overwrites)."""
    return ViTMoE(config.model, key=jax.random.key(0) if key is None else key)


def init_state(config: Config, key=None) -> State:
    """The model initialized from ``key`` (as ``init_model``) and a fresh optimizer state for it."""
    model = init_model(config, key)
    optimizer, schedule = make_optimizer(config)
    return State(model, optimizer.init(eqx.filter(model, eqx.is_array)), optimizer, schedule)
