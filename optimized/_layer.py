"""Experts, the MoE layer (eq. 2) on compact routing, auxiliary losses, router metrics, and ``MoELayer``."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import float_array, integer, positive_real, row_stochastic, same_shape
from ._route import (
    CAPACITY_RULES,
    COMBINE_FROM,
    SINKHORN_ROUTERS,
    TOKEN_CHOICE_ROUTERS,
    check_router,
    sparse_capacity,
    sparse_routing,
    vmoe_capacity,
)
from ._routing import Routing, capacity, router_dtype, soft_moe_logits, soft_moe_tensors

# ------------------------------------------------------------------------------------------------- experts


class MLPExperts(eqx.Module):
    """E two-layer MLP experts with stacked weights: ``MLP_r(u) = gelu(u @ w1[r] + b1[r]) @ w2[r] + b2[r]``.

    GELU in its tanh form (``jax.nn.gelu``'s default). ``experts(r, inputs)`` runs one expert on (n, D);
    ``experts.batched(slots)`` runs all of them at once on (E, C, D) as two batched matmuls.
    """

    w1: Float[Array, "E D H"]
    b1: Float[Array, "E H"]
    w2: Float[Array, "E H D"]
    b2: Float[Array, "E D"]

    def __check_init__(self):
        num_experts, width, hidden = self.w1.shape
        same_shape("b1", self.b1, (num_experts, hidden), "(E, H)")
        same_shape("w2", self.w2, (num_experts, hidden, width), "(E, H, D)")
        same_shape("b2", self.b2, (num_experts, width), "(E, D)")

    def __call__(self, r: int, inputs: Float[Array, "n D"]) -> Float[Array, "n D"]:
        r = integer("r", r, minimum=0, maximum=self.w1.shape[0] - 1, what=" (an expert index)")
        return _one_expert(self, r, inputs)

    def batched(self, slots: Float[Array, "E C D"], *, written_out_backward: bool = True) -> Float[Array, "E C D"]:
        """All experts on (E, C, D) slots. ``written_out_backward=False`` uses autodiff's backward: needed
        inside ``shard_map`` (expert parallelism), where the weight gradient must also be summed over the
        ``data`` axis, which autodiff does and the written-out backward does not."""
        dtype = slots.dtype
        matmul = _batched_matmul if written_out_backward else functools.partial(jnp.einsum, "ecd,edh->ech")
        hidden = matmul(slots, self.w1.astype(dtype)) + self.b1[:, None, :].astype(dtype)
        hidden = jax.nn.gelu(hidden)
        return matmul(hidden, self.w2.astype(dtype)) + self.b2[:, None, :].astype(dtype)


@jax.custom_vjp
def _batched_matmul(x: Float[Array, "E C D"], w: Float[Array, "E D H"]) -> Float[Array, "E C H"]:
    """``einsum("ecd,edh->ech", x, w)`` with its weight gradient computed as ``x[r]^T @ g[r]`` for each expert r.

    Choice: the backward pass is written out so that XLA on CPU gets both of its products as plain batched
    (M, K) x (K, N) matmuls, which it runs in its fast path (YNNPACK); autodiff's transpose of the einsum asks
    for the weight gradient as a product of transposed operands, which goes to the slower Eigen path.
    """
    return jnp.einsum("ecd,edh->ech", x, w)


def _batched_matmul_forward(x, w):
    return _batched_matmul(x, w), (x, w)


def _batched_matmul_backward(residuals, g):
    x, w = residuals
    dx = jnp.einsum("ech,edh->ecd", g, w)
    dw = jnp.matmul(x.transpose(0, 2, 1), g)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_batched_matmul.defvjp(_batched_matmul_forward, _batched_matmul_backward)


@eqx.filter_jit
def _one_expert(experts: MLPExperts, r, inputs):
    return jax.nn.gelu(inputs @ experts.w1[r] + experts.b1[r]) @ experts.w2[r] + experts.b2[r]


def mlp_experts(w1, b1, w2, b2) -> MLPExperts:
    """E MLP experts with stacked weights w1 (E, D, H), b1 (E, H), w2 (E, H, D), b2 (E, D)."""
    return MLPExperts(
        float_array("w1", w1, "(E, D, H)"),
        float_array("b1", b1, "(E, H)"),
        float_array("w2", w2, "(E, H, D)"),
        float_array("b2", b2, "(E, D)"),
    )


def moe_layer(x, dispatch, combine, experts) -> Float[Array, "T D"]:
    """Eq. (2) on dense routing tensors: ``y[t] = sum_{r,c} combine[t,r,c] MLP_r(X^T dispatch[:, r, c])``."""
    x = float_array("x", x, "(T, D)")
    dispatch = float_array("dispatch", dispatch, "(T, E, C)")
    combine = float_array("combine", combine, "(T, E, C)")
    if dispatch.shape[0] != x.shape[0]:
        raise ValueError(f"dispatch must have shape (T, E, C) with T = {x.shape[0]}, got {dispatch.shape}")
    same_shape("combine", combine, dispatch.shape, "(T, E, C) of dispatch")
    if not callable(experts):
        raise TypeError(f"experts must be callable as experts(r, inputs), got {type(experts).__name__}")
    if isinstance(experts, MLPExperts):
        return _dense_moe_layer(x, dispatch, combine, experts)
    slots = jnp.einsum("tec,td->ecd", dispatch, x)
    outputs = jnp.stack([jnp.asarray(experts(r, slots[r])) for r in range(dispatch.shape[1])])
    return jnp.einsum("tec,ecd->td", combine, outputs)


@eqx.filter_jit
def _dense_moe_layer(x, dispatch, combine, experts: MLPExperts):
    slots = jnp.einsum("tec,td->ecd", dispatch, x)  # X^T D[:, r, c] for every slot
    return jnp.einsum("tec,ecd->td", combine, experts.batched(slots))


def apply_routing(x: Float[Array, "T D"], routing: Routing, experts: MLPExperts) -> Float[Array, "T D"]:
    """Eq. (2) on a compact routing: gather tokens into (E, C, D) slots, run the experts, weighted scatter-add.

    O(E C D) data movement around the experts' matmuls, instead of the O(T E C D) one-hot einsums of
    GShard / V-MoE. Empty slots hold token index T: the gather clamps it (any row will do, its weight is 0)
    and the scatter drops it.
    """
    return scatter_slots(experts.batched(gather_slots(x, routing)), routing, x.shape[0])


def gather_slots(x: Float[Array, "T D"], routing: Routing) -> Float[Array, "E C D"]:
    """The experts' input buffers: ``slots[r, c] = x[token_index[r, c]]`` (an empty slot gets any token)."""
    return jnp.take(x, routing.token_index, axis=0, mode="clip")


def scatter_slots(outputs: Float[Array, "E C D"], routing: Routing, num_tokens: int) -> Float[Array, "T D"]:
    """``y[t] = sum over the slots (r, c) holding t of weight[r, c] * outputs[r, c]``; empty slots add nothing."""
    width = outputs.shape[-1]
    gate = jnp.where(routing.valid, routing.weight, 0).astype(outputs.dtype)
    weighted = (outputs * gate[..., None]).reshape(-1, width)
    return jnp.zeros((num_tokens, width), outputs.dtype).at[routing.token_index.reshape(-1)].add(weighted, mode="drop")


# -------------------------------------------------------------------------------------------------- losses


@jax.jit
def _cv_squared(values):
    return jnp.var(values) / jnp.mean(values) ** 2


def importance_loss(gates) -> jax.Array:
    """Appendix A: squared coefficient of variation (population) of the experts' summed gates ``gates.sum(0)``.

    ``gates`` are routing probabilities, softmax(logits): when they are concrete, an entry < 0 or a row not
    summing to 1 (within 1e-9, 1e-5 or 1e-2 for 64-, 32- or 16-bit floats) is an error, as in the spec.
    """
    probabilities = float_array("gates", gates, "(T, E)")
    row_stochastic("gates", gates)  # on concrete values only; then the mean importance is T/E > 0
    return _cv_squared(jax.jit(jnp.sum, static_argnames="axis")(probabilities, axis=0))


@functools.partial(jax.jit, static_argnames=("k",))
def _load(logits, noisy_logits, noise_std, k):
    threshold = jax.lax.top_k(noisy_logits, k)[0][:, -1]  # k-th largest noisy logit of each token
    z = (threshold[:, None] - logits) / noise_std
    return jax.scipy.special.ndtr(-z).sum(axis=0)  # 1 - Phi(z), summed over tokens


def load_loss(logits, noisy_logits, noise_std: float, k: int) -> jax.Array:
    """Appendix A, eqs. (12)-(15): squared CV of ``load[r] = sum_t 1 - Phi((threshold_t - logits[t, r]) / std)``."""
    logits = float_array("logits", logits, "(T, E)")
    noisy_logits = float_array("noisy_logits", noisy_logits, "(T, E)")
    same_shape("noisy_logits", noisy_logits, logits.shape, "(T, E) of logits")
    noise_std = positive_real("noise_std", noise_std)
    k = integer("k", k, minimum=1, maximum=logits.shape[1], what=" (experts per token, at most E)")
    load = _load(logits, noisy_logits, noise_std, k)
    if not isinstance(load, jax.core.Tracer) and float(jnp.mean(load)) == 0:
        raise ValueError("the coefficient of variation of the expert loads is undefined: their mean is 0")
    return _cv_squared(load)


# ------------------------------------------------------------------------------------------------- metrics

METRIC_NAMES = (
    "dropped_fraction",  # tokens processed by no expert
    "experts_per_token_mean",
    "experts_per_token_min",
    "experts_per_token_max",
    "slot_fill",  # fraction of the E * C slots holding a token
    "load_cv",  # coefficient of variation of the number of tokens per expert
    "combine_weight_min",  # over the used slots
    "combine_weight_max",
    "plan_error",  # OT routers: the plan's marginal error (see sparse_routing); 0 otherwise
    "importance_loss",
    "load_loss",
    "expert_load",  # (E,) fraction of each expert's slots holding a token (Soft MoE: 1)
)


def routing_metrics(routing: Routing, num_tokens: int) -> dict[str, jax.Array]:
    """Cheap per-group statistics of a compact routing (O(E C + T) work)."""
    valid = routing.valid
    per_token = (
        jnp.zeros(num_tokens, jnp.float32)
        .at[routing.token_index.reshape(-1)]
        .add(valid.reshape(-1).astype(jnp.float32), mode="drop")
    )
    per_expert = valid.sum(axis=1).astype(jnp.float32)
    weight = routing.weight.astype(jnp.float32)
    any_valid = jnp.any(valid)
    return {
        "dropped_fraction": jnp.mean(per_token == 0),
        "experts_per_token_mean": jnp.mean(per_token),
        "experts_per_token_min": jnp.min(per_token),
        "experts_per_token_max": jnp.max(per_token),
        "slot_fill": jnp.mean(valid),
        "load_cv": jnp.std(per_expert) / jnp.maximum(jnp.mean(per_expert), 1e-9),
        "combine_weight_min": jnp.where(any_valid, jnp.min(jnp.where(valid, weight, jnp.inf)), 0.0),
        "combine_weight_max": jnp.where(any_valid, jnp.max(jnp.where(valid, weight, -jnp.inf)), 0.0),
        "expert_load": jnp.mean(valid, axis=1).astype(jnp.float32),
    }


def soft_metrics(combine: Float[Array, "T E S"]) -> dict[str, jax.Array]:
    """Soft MoE: every token reaches every slot, so nothing is dropped and every expert sees every token."""
    num_experts = combine.shape[1]
    combine = combine.astype(jnp.float32)
    return {
        "dropped_fraction": jnp.zeros(()),
        "experts_per_token_mean": jnp.full((), float(num_experts)),
        "experts_per_token_min": jnp.full((), float(num_experts)),
        "experts_per_token_max": jnp.full((), float(num_experts)),
        "slot_fill": jnp.ones(()),
        "load_cv": jnp.zeros(()),
        "combine_weight_min": jnp.min(combine),
        "combine_weight_max": jnp.max(combine),
        "expert_load": jnp.ones(num_experts),
    }


# ------------------------------------------------------------------------------------------------ MoELayer


SINKHORN_STYLES = ("paper", "vmoe")
ROUTER_INITS = ("normal", "lecun")
EXPERT_INITS = ("independent", "shared")
DEFAULT_AUX_WEIGHT = 0.005  # importance and load loss weights: V-MoE's 0.005 each (vmoe_paper/common.py:242-243)


def _l2_normalize(x, axis):
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-6)


def _capacity_at(
    router: str,
    group_size: int,
    num_experts: int,
    built: int,
    capacity_factor: float,
    rule: str = "round",
    vmoe_factor: float = 1.05,
) -> int:
    """C = capacity(T, E, capacity_factor) for ``router``; ``built`` is the layer's C (Soft MoE: its S slots).

    Under ``rule="vmoe"``: Token Choice C = vmoe_capacity(T * capacity_factor, E, vmoe_factor) (capacity_factor
    in the units of k), Expert Choice C = vmoe_capacity(T, E, capacity_factor).
    """
    if rule == "vmoe" and router in TOKEN_CHOICE_ROUTERS:
        slots = vmoe_capacity(group_size * capacity_factor, num_experts, vmoe_factor)
    elif rule == "vmoe":
        slots = vmoe_capacity(group_size, num_experts, capacity_factor)
    else:
        slots = capacity(group_size, num_experts, capacity_factor)
    if router == "soft_moe":
        if slots != built:
            raise ValueError(
                f"capacity_factor = {capacity_factor} gives S = round({capacity_factor} * {group_size} / "
                f"{num_experts}) = {slots} slots per expert, but this Soft MoE layer has S = {built}: its slots are "
                f"trained parameters phi (D, E, S), so their number cannot change without new parameters"
            )
    elif slots > group_size:
        raise ValueError(
            f"capacity_factor = {capacity_factor} gives capacity C = {slots} > T = {group_size} tokens per group: "
            f"an expert holds each token at most once, so C <= T (capacity_factor <= E = {num_experts} gives C = T)"
        )
    return slots


def _replace_static(module: eqx.Module, **changes) -> eqx.Module:
    """A copy of ``module`` with some static fields changed and the very same arrays.

    ``eqx.tree_at`` reaches only a module's leaves, and ``dataclasses.replace`` would run ``__init__`` (new
    weights); so the copy is made the way a pytree is rebuilt (flatten, unflatten), then its static fields set.
    """
    leaves, treedef = jax.tree_util.tree_flatten(module)
    copy = jax.tree_util.tree_unflatten(treedef, leaves)
    for name, value in changes.items():
        object.__setattr__(copy, name, value)
    return copy


RANDOM_LOGIT_SCALE = 10.0  # random_routing: the spread of its random logits (see MoELayer._random_dispatch)


class MoELayer(eqx.Module):
    """One MoE layer: a router and E expert MLPs with stacked weights, on one routing group (T, D) -> (T, D).

    Sparse routers route a group of T tokens chosen by the caller (the ViT flattens several images into a
    group); Soft MoE routes each image on its own, so its group is one image and T its number of patches.
    ``factor`` is the router's hyperparameter: k (experts per token) for Token Choice, c for Expert Choice
    and Soft MoE. The capacity is ``C = capacity(T, E, capacity_factor) = round(capacity_factor * T / E)``
    (sec. 3.1), a static field computed from ``group_size`` = T when the layer is built; ``capacity_factor``
    defaults to ``factor``, which gives the paper's C = round(k T / E) and C = round(c T / E). For Soft MoE C is
    the number of slots per expert, S. ``layer.with_capacity(capacity_factor)`` is the same trained layer run
    at another capacity (evaluation at a larger capacity than training, as V-MoE does).

    ``__call__(x, *, key=None, inference=False)`` returns ``(y, aux)`` where ``aux`` holds ``"loss"`` (the
    weighted auxiliary loss, 0 except for Token Choice) and every entry of ``METRIC_NAMES``.

    Choice: Softmax Token Choice adds noise N(0, noise_std^2) to its logits in training (default standard
    deviation noise_std = 1/E, as V-MoE) and none at inference; the importance loss is taken on the softmax
    of the clean logits and the load loss compares clean and noisy logits (Appendix A, and V-MoE's router).
    Sinkhorn Token Choice gets the importance loss only (it has no noise). The defaults (``None``) weigh each
    loss 0.005 (V-MoE's 0.01 total).
    Choice: ``sinkhorn_style="paper"`` (the default) gives the Sinkhorn routers no noise, as the paper's text
    (Sinkhorn balances by itself); ``"vmoe"`` follows the authors' released router code
    (``vmoe/projects/sparsity_constrained_ot/kl_projection_routing.py``): noise N(0, noise_std^2) on the logits
    in training for both Sinkhorn routers, the plan computed from the noisy logits; Sinkhorn Token Choice
    combines with the softmax of the clean logits (``:108``) and its loss weights default to 0 (``:53-54``;
    the importance and load losses are still computed and weighed if given), Sinkhorn Expert Choice combines
    with the softmax of the noisy logits (``:221``) and has no loss.
    Choice: ``expert_choice_noise_std`` adds N(0, std^2) noise to Softmax Expert Choice's logits in training
    (dispatch and combine both from the noisy softmax), as vmoe's ``NoisyTopItemsPerExpertRouter``
    (``vmoe/nn/routing.py:220-228``); the default 0 is the paper's text (no noise for Expert Choice), None is
    vmoe's default 1/E (its ``noise_std=1.0`` times 1/E). The other routers ignore it.
    Choice: ``router_init="normal"`` starts W from N(0, 0.02^2) rather than zero, so that Expert Choice does
    not begin with every expert choosing the same tokens by the tie rule; ``"lecun"`` is vmoe's (flax
    ``nn.Dense``'s default, ``jax.nn.initializers.lecun_normal()``: a truncated normal of std 1/sqrt(D) for W;
    for Soft MoE's phi (D, E, S) the same initializer, as vmoe's ``soft_moe/router.py:49``, std 1/sqrt(D E)).
    Choice: ``expert_init="independent"`` draws each expert's weights on its own; ``"shared"`` gives all E
    experts of the layer one draw (vmoe's ``split_rngs=False``, ``vmoe/configs/vmoe_paper/common.py:237``).
    Choice: ``capacity_rule="round"`` is the paper's C = round(factor T / E); ``"vmoe"`` the authors' configs
    (``optimized._route.vmoe_capacity``), with ``vmoe_capacity_factor`` their Token Choice
    ``dispatcher.capacity_factor``.
    """

    router: str = eqx.field(static=True)
    group_size: int = eqx.field(static=True)
    num_experts: int = eqx.field(static=True)
    factor: float = eqx.field(static=True)
    capacity_factor: float = eqx.field(static=True)
    capacity: int = eqx.field(static=True)
    k: int = eqx.field(static=True)
    noise_std: float = eqx.field(static=True)
    importance_weight: float = eqx.field(static=True)
    load_weight: float = eqx.field(static=True)
    sinkhorn_iters: int = eqx.field(static=True)
    sparse_ot_iters: int = eqx.field(static=True)
    sparse_ot_learning_rate: float = eqx.field(static=True)
    combine_from: str = eqx.field(static=True)
    soft_moe_normalize: bool = eqx.field(static=True)
    sinkhorn_style: str = eqx.field(static=True)
    expert_choice_noise_std: float = eqx.field(static=True)
    capacity_rule: str = eqx.field(static=True)
    vmoe_capacity_factor: float = eqx.field(static=True)
    random_routing: bool = eqx.field(static=True)
    router_weight: Array  # W (D, E) for sparse routers, phi (D, E, S) for Soft MoE
    experts: MLPExperts
    scale: Array | None  # Soft MoE normalization scale, when soft_moe_normalize

    def __init__(
        self,
        router: str,
        *,
        width: int,
        hidden: int,
        num_experts: int,
        group_size: int,
        factor: float = 1,
        capacity_factor: float | None = None,
        noise_std: float | None = None,
        importance_weight: float | None = None,
        load_weight: float | None = None,
        sinkhorn_iters: int = 20,
        sparse_ot_iters: int = 20,
        sparse_ot_learning_rate: float = 1e-2,
        combine_from: str = "softmax",
        soft_moe_normalize: bool = False,
        sinkhorn_style: str = "paper",
        expert_choice_noise_std: float | None = 0.0,
        router_init: str = "normal",
        expert_init: str = "independent",
        capacity_rule: str = "round",
        vmoe_capacity_factor: float = 1.05,
        random_routing: bool = False,
        key: PRNGKeyArray,
    ):
        self.router = check_router(router)
        if sinkhorn_style not in SINKHORN_STYLES:
            raise ValueError(f"sinkhorn_style must be one of {', '.join(SINKHORN_STYLES)}; got {sinkhorn_style!r}")
        if router_init not in ROUTER_INITS:
            raise ValueError(f"router_init must be one of {', '.join(ROUTER_INITS)}; got {router_init!r}")
        if expert_init not in EXPERT_INITS:
            raise ValueError(f"expert_init must be one of {', '.join(EXPERT_INITS)}; got {expert_init!r}")
        if capacity_rule not in CAPACITY_RULES:
            raise ValueError(f"capacity_rule must be one of {', '.join(CAPACITY_RULES)}; got {capacity_rule!r}")
        if capacity_rule == "vmoe" and router == "soft_moe":
            raise ValueError(
                "capacity_rule='vmoe' is for the sparse routers; Soft MoE's slots per expert are "
                "round(factor T / E) (vmoe's Soft MoE sets its number of slots directly)"
            )
        self.capacity_rule = capacity_rule
        self.vmoe_capacity_factor = positive_real("vmoe_capacity_factor", vmoe_capacity_factor)
        width = integer("width", width, minimum=1)
        hidden = integer("hidden", hidden, minimum=1)
        self.num_experts = integer("num_experts", num_experts, minimum=1)
        self.group_size = integer("group_size", group_size, minimum=1, what=" (tokens per routing group)")
        if router == "soft_moe":
            self.capacity = capacity(group_size, num_experts, positive_real("factor", factor))
            self.k = 0
        else:
            self.capacity, self.k = sparse_capacity(
                router, group_size, num_experts, factor, rule=capacity_rule, vmoe_factor=self.vmoe_capacity_factor
            )
        self.factor = factor
        self.capacity_factor = float(factor)
        if capacity_factor is not None:
            self.capacity_factor = positive_real("capacity_factor", capacity_factor)
            self.capacity = _capacity_at(
                self.router,
                self.group_size,
                self.num_experts,
                self.capacity,
                self.capacity_factor,
                self.capacity_rule,
                self.vmoe_capacity_factor,
            )
        self.noise_std = 1.0 / num_experts if noise_std is None else float(noise_std)
        if self.noise_std < 0 or not math.isfinite(self.noise_std):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
        self.expert_choice_noise_std = 1.0 / num_experts if expert_choice_noise_std is None else expert_choice_noise_std
        if not (math.isfinite(self.expert_choice_noise_std) and self.expert_choice_noise_std >= 0):
            raise ValueError(
                f"expert_choice_noise_std must be a finite number >= 0 or None (1/E), got {expert_choice_noise_std}"
            )
        self.expert_choice_noise_std = float(self.expert_choice_noise_std)
        # Choice: None weighs a loss by its router's default: 0 for Sinkhorn Token Choice in vmoe's style (vmoe's
        # KLProjectionNoisyTopExpertsPerItemRouter, kl_projection_routing.py:53-54), 0.005 otherwise.
        default = 0.0 if (sinkhorn_style == "vmoe" and router == "sinkhorn_token_choice") else DEFAULT_AUX_WEIGHT
        for name, value in (("importance_weight", importance_weight), ("load_weight", load_weight)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None (the router's default), got {value}")
        self.importance_weight = default if importance_weight is None else float(importance_weight)
        self.load_weight = default if load_weight is None else float(load_weight)
        self.sinkhorn_iters = integer("sinkhorn_iters", sinkhorn_iters, minimum=1)
        self.sparse_ot_iters = integer("sparse_ot_iters", sparse_ot_iters, minimum=1)
        self.sparse_ot_learning_rate = positive_real("sparse_ot_learning_rate", sparse_ot_learning_rate)
        if combine_from not in COMBINE_FROM:
            raise ValueError(f"combine_from must be one of {', '.join(COMBINE_FROM)}; got {combine_from!r}")
        if combine_from == "plan" and router not in SINKHORN_ROUTERS:
            raise ValueError(
                f"combine_from='plan' needs a Sinkhorn router ({', '.join(SINKHORN_ROUTERS)}), not {router!r}"
            )
        self.combine_from = combine_from
        self.soft_moe_normalize = bool(soft_moe_normalize)
        self.sinkhorn_style = sinkhorn_style
        if random_routing and router == "soft_moe":
            raise ValueError("random_routing=True needs a sparse router (it replaces the logits), not 'soft_moe'")
        self.random_routing = bool(random_routing)

        k_router, k1, k2 = jax.random.split(key, 3)
        if router == "soft_moe":
            shape = (width, num_experts, self.capacity)
            if router_init == "lecun":
                self.router_weight = jax.nn.initializers.lecun_normal()(k_router, shape)
            else:
                self.router_weight = jax.random.normal(k_router, shape) / math.sqrt(width)
        elif router_init == "lecun":
            self.router_weight = jax.nn.initializers.lecun_normal()(k_router, (width, num_experts))
        else:
            self.router_weight = 0.02 * jax.random.normal(k_router, (width, num_experts))
        self.scale = jnp.ones(()) if self.soft_moe_normalize else None
        init = jax.nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=0)
        draws = 1 if expert_init == "shared" else num_experts  # shared: one draw, repeated for every expert
        self.experts = MLPExperts(
            jnp.repeat(init(k1, (draws, width, hidden)), num_experts // draws, axis=0),
            jnp.zeros((num_experts, hidden)),
            jnp.repeat(init(k2, (draws, hidden, width)), num_experts // draws, axis=0),
            jnp.zeros((num_experts, width)),
        )

    def with_capacity(self, capacity_factor: float) -> MoELayer:
        """This layer run at ``C = capacity(T, E, capacity_factor)``: a copy holding the same arrays (not copies).

        The routing is the trained one with more (or fewer) slots per expert: Token Choice keeps its k and
        drops fewer tokens when C grows (none once C = T, at ``capacity_factor = E``); Expert Choice takes
        the C best tokens per expert instead of the trained number. ``capacity_factor`` is in the units of
        ``factor`` (C in multiples of T / E): ``layer.with_capacity(layer.factor)`` is the layer as trained,
        and V-MoE's capacity ratio r at k experts per token is ``capacity_factor = r * k``. The same layer is
        ``MoELayer(..., capacity_factor=capacity_factor)`` with these weights. Only static fields change, so
        this works on a stack of layers (the ViT's) and inside ``jax.jit``.

        Choice: a sparse router's C may not exceed T (an expert holds each token at most once: Expert Choice
        needs C <= T, and for Token Choice C = T already drops nothing), so a larger C is an error, not clipped.
        Choice: Soft MoE refuses any capacity_factor that changes its number of slots S per expert. Its slots
        are trained parameters, phi (D, E, S): more slots would need parameters that were never trained, and
        fewer would drop trained slots and renormalize the combine softmax over the rest, a different function,
        not the same layer at another capacity. (Repeating every slot m times keeps the output exactly, since
        each repeat gets 1/m of the combine weight, and so buys nothing.) A capacity_factor that rounds to the
        same S gives the same layer.

        >>> layer = MoELayer("softmax_expert_choice", width=8, hidden=16, num_experts=4, group_size=16,
        ...                  key=jax.random.key(0))
        >>> layer.capacity, layer.with_capacity(2).capacity
        (4, 8)
        """
        capacity_factor = positive_real("capacity_factor", capacity_factor)
        slots = _capacity_at(
            self.router,
            self.group_size,
            self.num_experts,
            self.capacity,
            capacity_factor,
            self.capacity_rule,
            self.vmoe_capacity_factor,
        )
        return _replace_static(self, capacity_factor=capacity_factor, capacity=slots)

    def __call__(
        self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None = None, inference: bool = False
    ) -> tuple[Float[Array, "T D"], dict[str, jax.Array]]:
        slots, state, aux = self.dispatch(x, key=key, inference=inference)
        return self.combine(self.experts.batched(slots), state), aux

    def dispatch(
        self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None = None, inference: bool = False
    ) -> tuple[Float[Array, "E C D"], Routing | Float[Array, "T E C"], dict[str, jax.Array]]:
        """Route one group and fill the experts' slot buffers: ``(slots, state, aux)``.

        ``state`` is what ``combine`` needs to bring the experts' outputs back to the tokens: the compact
        ``Routing`` for sparse routers, the (T, E, S) combine weights for Soft MoE. The layer is
        ``combine(experts.batched(slots), state)``; expert parallelism runs the experts in between on other
        devices (``optimized.moe_over_groups``).
        """
        if x.shape[0] != self.group_size:
            raise ValueError(f"x must have {self.group_size} tokens (the layer's group_size), got shape {x.shape}")
        if self.router == "soft_moe":
            return self._soft_dispatch(x)
        return self._sparse_dispatch(x, key, inference)

    def combine(self, outputs: Float[Array, "E C D"], state) -> Float[Array, "T D"]:
        """Weighted sum of the experts' slot outputs back into the group's T tokens (eq. 2)."""
        if self.router == "soft_moe":
            return jnp.einsum("tes,esd->td", state.astype(outputs.dtype), outputs)
        return scatter_slots(outputs, state, self.group_size)

    def token_expert_weights(
        self, x: Float[Array, "T D"], *, key: PRNGKeyArray | None = None, inference: bool = True
    ) -> Float[Array, "T E"]:
        """The weight with which each expert's output reaches each token of one group: (T, E).

        Sparse routers: ``w[t, r] = sum over the slots c of expert r holding token t of weight[r, c]``, so
        ``y[t] = sum_r w[t, r] MLP_r(x[t])`` (eq. 2); a token no expert took (dropped) has an all-zero row.
        Soft MoE: ``w[t, r] = sum_s combine[t, r, s]``, the share of token t's output that comes from expert r's
        slots (each row sums to 1; expert r's slots mix every token of the group, so this is not
        ``MLP_r(x[t])``). The routing is the one ``dispatch`` computes, with the same ``key`` and ``inference``.

        >>> layer = MoELayer("softmax_token_choice", width=8, hidden=16, num_experts=4, group_size=16,
        ...                  key=jax.random.key(0))
        >>> layer.token_expert_weights(jnp.ones((16, 8))).shape
        (16, 4)
        """
        _, state, _ = self.dispatch(x, key=key, inference=inference)
        if self.router == "soft_moe":
            return state.sum(axis=-1)
        gate = jnp.where(state.valid, state.weight, 0)
        experts = jnp.broadcast_to(jnp.arange(self.num_experts)[:, None], state.token_index.shape)
        weights = jnp.zeros((self.group_size, self.num_experts), gate.dtype)
        return weights.at[state.token_index, experts].add(gate, mode="drop")  # empty slots (index T) drop out

    def _soft_dispatch(self, x):
        phi = self.router_weight
        x32 = x.astype(router_dtype(x.dtype))
        if self.soft_moe_normalize:  # Puigcerver et al. (2023): l2-normalize tokens and slots, learned scale
            x32 = _l2_normalize(x32, axis=-1)
            phi = self.scale * _l2_normalize(phi, axis=0)
        dispatch, combine = soft_moe_tensors(soft_moe_logits(x32, phi))
        slots = jnp.einsum("tes,td->esd", dispatch.astype(x.dtype), x)
        aux = soft_metrics(combine) | {"plan_error": jnp.zeros(()), "importance_loss": jnp.zeros(())}
        aux |= {"load_loss": jnp.zeros(()), "loss": jnp.zeros(())}
        return slots, combine, aux

    def _sparse_dispatch(self, x, key, inference):
        # Choice: the router runs in float32 (or wider) even when the layer computes in bfloat16.
        dtype = router_dtype(x.dtype)
        if self.random_routing:
            return self._random_dispatch(x, key, dtype)
        logits = x.astype(dtype) @ self.router_weight.astype(dtype)
        clean_logits = logits
        noisy_router = self.router == "softmax_token_choice" or (
            self.sinkhorn_style == "vmoe" and self.router in SINKHORN_ROUTERS
        )
        std = self.expert_choice_noise_std if self.router == "softmax_expert_choice" else self.noise_std
        noisy = (noisy_router or self.router == "softmax_expert_choice") and not inference and std > 0
        if noisy:
            if key is None:
                raise ValueError(f"{self.router} needs a key in training (for its noise); pass key=...")
            logits = logits + std * jax.random.normal(key, logits.shape, dtype)
        # vmoe's Sinkhorn Token Choice: the plan from the noisy logits, the combine from the clean softmax
        vmoe_sinkhorn_tc = self.sinkhorn_style == "vmoe" and self.router == "sinkhorn_token_choice"
        routing, plan_error = sparse_routing(
            self.router,
            logits,
            self.capacity,
            self.k,
            sinkhorn_iters=self.sinkhorn_iters,
            sparse_ot_iters=self.sparse_ot_iters,
            sparse_ot_learning_rate=self.sparse_ot_learning_rate,
            combine_from=self.combine_from,
            combine_logits=clean_logits if vmoe_sinkhorn_tc and noisy else None,
        )
        zero = jnp.zeros((), jnp.float32)
        importance, load = zero, zero
        if self.router in TOKEN_CHOICE_ROUTERS:
            # Choice: the importance loss is taken on the softmax of the clean logits, Imp(X) = sum_t softmax(XW)
            # (Appendix A; also V-MoE's router, vmoe/nn/routing.py); the noise enters only the load loss.
            importance = _cv_squared(jax.nn.softmax(clean_logits, axis=-1).sum(axis=0))
            if noisy:
                load = _cv_squared(_load(clean_logits, logits, self.noise_std, self.k))
        aux = routing_metrics(routing, x.shape[0])
        aux |= {"plan_error": plan_error.astype(jnp.float32), "importance_loss": importance, "load_loss": load}
        aux["loss"] = self.importance_weight * importance + self.load_weight * load
        return gather_slots(x, routing), routing, aux

    def _random_dispatch(self, x, key, dtype):
        """The content-agnostic control: logits drawn afresh from ``key`` for every call, blind to the tokens.

        Choice: the logits are ``RANDOM_LOGIT_SCALE * N(0, 1)`` i.i.d. per token and expert, so each token's
        top-k experts are uniformly random and its softmax gate is close to 1 (the expert's output enters at full
        weight, as a confident learned router's would); the router's priorities (which tokens a full expert
        drops) are random too. A fresh draw every step in training; at inference the key the model is given
        (``jax.random.key(0)`` by default), so an evaluation is repeatable. No auxiliary losses.
        """
        if key is None:
            raise ValueError("random_routing needs a key (its assignment is drawn from it); pass key=...")
        logits = RANDOM_LOGIT_SCALE * jax.random.normal(key, (x.shape[0], self.num_experts), dtype)
        routing, plan_error = sparse_routing(
            self.router, logits, self.capacity, self.k, sinkhorn_iters=self.sinkhorn_iters,
            sparse_ot_iters=self.sparse_ot_iters, sparse_ot_learning_rate=self.sparse_ot_learning_rate,
            combine_from=self.combine_from,
        )  # fmt: skip
        zero = jnp.zeros((), jnp.float32)
        aux = routing_metrics(routing, x.shape[0])
        aux |= {"plan_error": plan_error.astype(jnp.float32), "importance_loss": zero, "load_loss": zero}
        aux["loss"] = zero
        return gather_slots(x, routing), routing, aux
