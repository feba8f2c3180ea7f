"""ViT-MoE: a Vision Transformer with an MoE layer on every other block (V-MoE's Every-2, sec. 3.1).

    images (B, H, W, ch) -> patches (B, N, P*P*ch) -> tokens (B, N, D) -> pairs of blocks -> pool
        -> [pre-logits: Dense + tanh, if representation_size] -> head
    pair: [MLP block, MoE block]; the MoE blocks are 1, 3, 5, ... counting from 0
    MoE block: tokens (B, N, D) -> groups (G, T, D) -> MoELayer (vmapped over groups) -> (B, N, D)

Other MoE placements (``config.moe_layers``, e.g. vmoe's "Last 2") run a plain sequence of blocks instead of
the pairs (see ``ViTMoE``).

Sparse routers route groups of ``group_images`` images' tokens flattened together (T = group_images * N);
Soft MoE routes each image on its own (T = N). The pairs are identical, so they are built with
``eqx.filter_vmap`` (their arrays stacked) and run with ``jax.lax.scan``, unrolled unless
``config.scan_layers`` (a rolled scan: compile time does not grow with depth, but the step is slower on CPU).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._backward import _layer_norm, _matmul, _qkv
from ._checks import integer, positive_real, real_in
from ._layer import DEFAULT_AUX_WEIGHT, EXPERT_INITS, METRIC_NAMES, ROUTER_INITS, MoELayer
from ._parallel import moe_over_groups
from ._route import CAPACITY_RULES, check_router

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POOLS = ("gap", "cls")


@dataclasses.dataclass(frozen=True)
class ViTMoEConfig:
    """Architecture of a ViT-MoE. Defaults: B/32 with 32 experts, as in the paper."""

    image_size: int = 224
    patch_size: int = 32
    channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    router: str = "softmax_expert_choice"
    num_experts: int = 32
    factor: float = 1  # k for Token Choice, c for Expert Choice and Soft MoE
    capacity_factor: float | None = None  # C = round(capacity_factor * T / E) in training; None: factor (the
    # paper's C). Below k it makes Token Choice drop tokens (MoELayer's capacity_factor)
    group_images: int = 8  # sparse routers: images whose tokens form one routing group
    pool: str = "gap"
    noise_std: float | None = None  # Softmax Token Choice training noise; None means 1/E
    importance_weight: float | None = None  # None: the router's default, 0.005 (0 for vmoe-style Sinkhorn TC)
    load_weight: float | None = None
    sinkhorn_iters: int = 20
    sparse_ot_iters: int = 20
    sparse_ot_learning_rate: float = 1e-2
    combine_from: str = "softmax"  # "plan": the Sinkhorn "without softmax combine" ablation (Figure 3)
    soft_moe_normalize: bool = False
    sinkhorn_style: str = "paper"  # "vmoe": training noise for both Sinkhorn routers, load loss for Sinkhorn TC
    dense: bool = False  # True: a plain ViT (every block an MLP), the dense baseline
    random_routing: bool = False  # True: sparse routers route by random logits drawn afresh each call, blind to
    # the tokens (MoELayer.random_routing): the content-agnostic control
    freeze_router: bool = False  # True: the router weights keep their random initialization (the training loop
    # gives them no update): the fixed random-routing control
    dtype: str = "float32"  # compute dtype of the matmuls: "float32" or "bfloat16"
    scan_layers: bool = False  # True: Every-2's pairs of blocks, stacked, run as a rolled jax.lax.scan (compile time
    # flat in depth); False: the blocks in sequence, unrolled (faster on CPU; see ViTMoE)
    batch_chunks: int | None = None  # the attention and MLPs run on this many slices of the batch, independent
    # of each other (the MoE layers on the whole batch); None: on one CPU device 4 (or 2) slices of at least 256
    # tokens each, else 1 (see _Block.__call__)
    # The authors' choices (google-research/vmoe) as switches; each default is the paper's reading (README, "ours vs
    # vmoe"). See MoELayer for the router ones.
    expert_init: str = "independent"  # "shared": all experts of a layer start from one draw (vmoe's split_rngs=False)
    router_init: str = "normal"  # N(0, 0.02^2); "lecun": lecun-normal, std 1/sqrt(D) (vmoe's nn.Dense default)
    expert_choice_noise_std: float | None = 0.0  # Softmax Expert Choice training noise; None means 1/E (vmoe's)
    representation_size: int | None = None  # an int: Dense(representation_size) + tanh pre-logits before the head
    moe_layers: tuple[int, ...] | None = None  # None: Every-2 (blocks 1, 3, 5, ...); else 0-based MoE block indices
    # With dense = True, moe_layers names the MoE model this dense one is the control of: every block is an MLP,
    # laid out and keyed as that model's blocks, so that from one key both get the same patch embedding, position
    # embedding, attention and layer norms (only the MLPs differ from the experts). Choice: a paired control; a
    # dense model keyed as Every-2 would start from other attention weights than an MoE model on blocks 0 and 1.
    capacity_rule: str = "round"  # C = round(factor T / E); "vmoe": vmoe's ceil, then up to a multiple of 4
    vmoe_capacity_factor: float = 1.05  # capacity_rule "vmoe", Token Choice: C = ceil(1.05 k T / E), up to mult. of 4
    head_bias_init: float = 0.0  # the head's bias starts here (vmoe's head_bias_init: -10 or -log(classes))

    def __post_init__(self):
        # config.json stores a tuple as a list: back to a tuple (the config is a static, hashable field of the model)
        if isinstance(self.moe_layers, list):
            object.__setattr__(self, "moe_layers", tuple(self.moe_layers))

    def replace(self, **changes) -> ViTMoEConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (1 if self.pool == "cls" else 0)

    @property
    def group_size(self) -> int:
        """Tokens per routing group: one image for Soft MoE, ``group_images`` images for sparse routers."""
        return self.num_tokens if self.router == "soft_moe" else self.group_images * self.num_tokens

    def loss_weights(self) -> tuple[float, float]:
        """The importance and load loss weights the MoE layers use: ``importance_weight`` and ``load_weight``, a
        None read as the router's default (``MoELayer``: 0 for Sinkhorn Token Choice in vmoe's style, else 0.005)."""
        vmoe_sinkhorn_tc = self.sinkhorn_style == "vmoe" and self.router == "sinkhorn_token_choice"
        default = 0.0 if vmoe_sinkhorn_tc else DEFAULT_AUX_WEIGHT
        return tuple(default if w is None else float(w) for w in (self.importance_weight, self.load_weight))

    @property
    def every_2(self) -> bool:
        """True when the MoE blocks are V-MoE's Every-2, 1, 3, 5, ... (or the model is dense with no
        ``moe_layers``): the pairs layout."""
        return self.moe_layers is None or self.moe_layers == tuple(range(1, self.depth, 2))

    @property
    def moe_block_indices(self) -> tuple[int, ...]:
        """The 0-based indices of the blocks with an MoE layer (none for the dense baseline)."""
        if self.dense:
            return ()
        return tuple(range(1, self.depth, 2)) if self.moe_layers is None else self.moe_layers

    def validate(self) -> None:
        check_router(self.router)
        for name in ("image_size", "patch_size", "channels", "width", "num_heads", "mlp_dim", "num_classes"):
            integer(name, getattr(self, name), minimum=1)
        integer("group_images", self.group_images, minimum=1)
        integer("depth", self.depth, minimum=1)
        if self.batch_chunks is not None:
            integer("batch_chunks", self.batch_chunks, minimum=1)
        self._validate_moe_layers()
        if self.every_2 and (self.depth < 2 or self.depth % 2):
            raise ValueError(
                f"depth must be even and >= 2 (MoE on every other block, in pairs), got {self.depth}; "
                "for another placement set moe_layers"
            )
        if self.scan_layers and not self.every_2:
            raise ValueError(
                f"scan_layers = True scans the stacked pairs of Every-2; moe_layers = {self.moe_layers!r} runs the "
                "blocks as a sequence: set scan_layers = False"
            )
        for name, values in (("router_init", ROUTER_INITS), ("expert_init", EXPERT_INITS),
                             ("capacity_rule", CAPACITY_RULES)):  # fmt: skip
            if getattr(self, name) not in values:
                raise ValueError(f"{name} must be one of {', '.join(values)}; got {getattr(self, name)!r}")
        if self.capacity_rule == "vmoe" and self.router == "soft_moe" and not self.dense:
            raise ValueError("capacity_rule='vmoe' is for the sparse routers; soft_moe sizes its slots with 'round'")
        positive_real("vmoe_capacity_factor", self.vmoe_capacity_factor)
        if self.expert_choice_noise_std is not None:
            real_in("expert_choice_noise_std", self.expert_choice_noise_std, 0.0)
        if self.representation_size is not None:
            integer("representation_size", self.representation_size, minimum=1)
        real_in("head_bias_init", self.head_bias_init, -math.inf)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be a multiple of num_heads {self.num_heads}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {self.pool!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        positive_real("factor", self.factor)
        if self.capacity_factor is not None:
            positive_real("capacity_factor", self.capacity_factor)
        if self.random_routing and self.router == "soft_moe" and not self.dense:
            raise ValueError("random_routing=True needs a sparse router (it replaces the logits), not 'soft_moe'")
        positive_real("sparse_ot_learning_rate", self.sparse_ot_learning_rate)
        for name in ("importance_weight", "load_weight"):
            if getattr(self, name) is not None:
                real_in(name, getattr(self, name), 0.0)
        if self.noise_std is not None:
            real_in("noise_std", self.noise_std, 0.0)

    def _validate_moe_layers(self) -> None:
        layers = self.moe_layers
        if layers is None:
            return
        if not isinstance(layers, tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise TypeError(f"moe_layers must be a tuple of block indices (int) or None, got {layers!r}")
        if not layers:
            raise ValueError("moe_layers must name at least one block (for no MoE layer at all use dense = True)")
        if list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= self.depth:
            raise ValueError(
                f"moe_layers must be strictly increasing 0-based block indices in [0, depth - 1 = {self.depth - 1}], "
                f"got {layers!r}"
            )


def _variant(width, depth, heads, mlp, patch, **extra):
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch, **extra)


# Named sizes. The paper's models are B/32, B/16 and L/16 with E = 32 (sec. 3.1); Ti and S are the usual
# smaller ViTs; "mini" and "micro" train in minutes on 2 CPU cores.
VARIANTS: dict[str, dict] = {
    "Ti/16": _variant(192, 12, 3, 768, 16),
    "S/32": _variant(384, 12, 6, 1536, 32),
    "S/16": _variant(384, 12, 6, 1536, 16),
    "B/32": _variant(768, 12, 12, 3072, 32),
    "B/16": _variant(768, 12, 12, 3072, 16),
    "L/16": _variant(1024, 24, 16, 4096, 16),
    "mini": _variant(128, 4, 4, 256, 4, num_experts=8),
    "micro": _variant(32, 2, 2, 64, 4, num_experts=4),
}


_xavier = jax.nn.initializers.xavier_uniform()


class _Block(eqx.Module):
    """Pre-norm encoder block: x + Attn(LN(x)); then x + MLP(LN(x)) or x + MoE(LN(x))."""

    num_heads: int = eqx.field(static=True)
    group_images: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)
    batch_chunks: int | None = eqx.field(static=True)
    ln1: Array
    qkv_w: Array
    qkv_b: Array
    out_w: Array
    out_b: Array
    ln2: Array
    mlp: tuple[Array, Array, Array, Array] | None
    moe: MoELayer | None

    def __init__(self, config: ViTMoEConfig, use_moe: bool, *, key):
        d, h = config.width, config.mlp_dim
        k_qkv, k_out, k1, k2, k_moe = jax.random.split(key, 5)
        self.num_heads = config.num_heads
        self.group_images = 1 if config.router == "soft_moe" else config.group_images
        self.dtype = config.dtype
        self.batch_chunks = config.batch_chunks
        self.ln1 = jnp.stack([jnp.ones(d), jnp.zeros(d)])
        self.qkv_w, self.qkv_b = _xavier(k_qkv, (d, 3 * d)), jnp.zeros(3 * d)
        self.out_w, self.out_b = _xavier(k_out, (d, d)), jnp.zeros(d)
        self.ln2 = jnp.stack([jnp.ones(d), jnp.zeros(d)])
        if use_moe:
            self.mlp = None
            self.moe = MoELayer(
                config.router,
                width=d,
                hidden=h,
                num_experts=config.num_experts,
                group_size=config.group_size,
                factor=config.factor,
                capacity_factor=config.capacity_factor,
                noise_std=config.noise_std,
                importance_weight=config.importance_weight,
                load_weight=config.load_weight,
                sinkhorn_iters=config.sinkhorn_iters,
                sparse_ot_iters=config.sparse_ot_iters,
                sparse_ot_learning_rate=config.sparse_ot_learning_rate,
                combine_from=config.combine_from,
                soft_moe_normalize=config.soft_moe_normalize,
                sinkhorn_style=config.sinkhorn_style,
                expert_choice_noise_std=config.expert_choice_noise_std,
                router_init=config.router_init,
                expert_init=config.expert_init,
                capacity_rule=config.capacity_rule,
                vmoe_capacity_factor=config.vmoe_capacity_factor,
                random_routing=config.random_routing,
                key=k_moe,
            )
        else:
            self.mlp = (_xavier(k1, (d, h)), jnp.zeros(h), _xavier(k2, (h, d)), jnp.zeros(d))
            self.moe = None

    def _attention(self, x):
        dtype = DTYPES[self.dtype]
        b, n, d = x.shape
        heads = self.num_heads
        h = _layer_norm(x, *self.ln1).astype(dtype)
        q, k, v = _qkv(h, self.qkv_w.astype(dtype), self.qkv_b.astype(dtype), heads)  # Choice: see _qkv
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // heads)
        attn = jax.nn.softmax(logits, axis=-1).astype(dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
        return x + (_matmul(out, self.out_w.astype(dtype)) + self.out_b.astype(dtype)).astype(jnp.float32)

    def _mlp(self, x):
        dtype = DTYPES[self.dtype]
        h = _layer_norm(x, *self.ln2).astype(dtype)
        w1, b1, w2, b2 = (a.astype(dtype) for a in self.mlp)
        return x + (_matmul(jax.nn.gelu(_matmul(h, w1) + b1), w2) + b2).astype(jnp.float32)

    def _chunks(self, batch: int, tokens: int) -> int:
        """How many independent slices of the batch the attention and the MLP run on (``batch_chunks``)."""
        if self.batch_chunks is not None:
            if batch % self.batch_chunks:
                raise ValueError(
                    f"the batch of {batch} images must be a multiple of batch_chunks = {self.batch_chunks}"
                )
            return self.batch_chunks
        if jax.default_backend() != "cpu" or jax.device_count() != 1:
            return 1
        # Choice: a slice keeps at least 256 tokens (matmul rows). At the B/32 size of bench_vs_vmoe.py (batch 8,
        # 50 tokens) 4 slices of 100 rows made the Soft MoE step 0.93x vmoe's and its memory above vmoe's; whole,
        # it was 0.98x and below.
        return next(c for c in (4, 2, 1) if batch % c == 0 and (c == 1 or batch // c * tokens >= 256))

    def __call__(self, x: Float[Array, "B N D"], key, inference: bool):
        # Choice: the attention and the MLP run on slices of the batch (by default on one CPU device, see _chunks), as
        # independent computations; each image's numbers are those of the whole batch (the same products, row
        # by row), the weight gradients are sums over the slices. XLA's CPU runtime runs independent operations
        # side by side on its threads, and one batch's chain of dependent matmuls leaves the cores idle between
        # them. Measured at the small size of benchmarks/bench_vs_vmoe.py (``--whole-batch``, one run, 9
        # interleaved rounds): the step with the batch whole / in 4 slices, dense 1.10, Expert Choice 0.96, Token
        # Choice 1.05, Soft MoE 1.05 (benchmarks/results/vs_vmoe.md). The MoE layer routes the whole batch (its
        # groups, its noise and its metrics unchanged). On GPU/TPU, or with several devices (a sharded batch), it
        # is 1: one batch, one kernel per product.
        parts = [self._attention(p) for p in jnp.split(x, self._chunks(*x.shape[:2]))]
        if self.moe is None:
            return jnp.concatenate([self._mlp(p) for p in parts]), None
        x = jnp.concatenate(parts)
        h = _layer_norm(x, *self.ln2).astype(DTYPES[self.dtype])
        b, n, d = h.shape
        groups = self._groups(h)
        keys = jax.random.split(key, groups.shape[0])
        y, aux = moe_over_groups(self.moe, groups, keys, inference)  # vmap, or expert-parallel under a mesh
        metrics = {  # over the groups: min of minima, max of maxima, mean of the rest
            name: (jnp.min if name.endswith("_min") else jnp.max if name.endswith("_max") else jnp.mean)(value, axis=0)
            for name, value in aux.items()
        }
        return x + y.reshape(b, n, d).astype(jnp.float32), metrics

    def _groups(self, h: Float[Array, "B N D"]) -> Float[Array, "G T D"]:
        """The routing groups of the MoE layer: ``group_images`` consecutive images' tokens flattened together."""
        b, n, d = h.shape
        if b % self.group_images:
            raise ValueError(
                f"the batch of {b} images must be a multiple of group_images = {self.group_images} "
                "(images per routing group)"
            )
        return h.reshape(b // self.group_images, self.group_images * n, d)

    def token_expert_weights(self, x: Float[Array, "B N D"], key, inference: bool) -> Float[Array, "B N E"]:
        """``MoELayer.token_expert_weights`` of the tokens entering this MoE block, on the groups and keys
        ``__call__`` routes (the attention and the layer norm run again: this is for inspection, not training)."""
        b, n, _ = x.shape
        groups = self._groups(_layer_norm(self._attention(x), *self.ln2).astype(DTYPES[self.dtype]))
        keys = jax.random.split(key, groups.shape[0])
        weights = jax.vmap(lambda g, k: self.moe.token_expert_weights(g, key=k, inference=inference))(groups, keys)
        return weights.reshape(b, n, -1)


class _Pair(eqx.Module):
    first: _Block  # an MLP block
    second: _Block  # the MoE block (an MLP block too for the dense baseline)

    def __call__(self, x, key, inference):
        x, _ = self.first(x, key, inference)
        return self.second(x, key, inference)


def _new_pair(config: ViTMoEConfig, *, key) -> _Pair:
    k1, k2 = jax.random.split(key)
    return _Pair(_Block(config, False, key=k1), _Block(config, not config.dense, key=k2))


def _unstack(pairs: _Pair) -> tuple[_Block, ...]:
    """The stacked pairs as the sequence of their blocks: pair i's first block at 2i, its second at 2i + 1."""
    count = jax.tree.leaves(pairs)[0].shape[0]
    take = lambda i: lambda a: a[i] if eqx.is_array(a) else a  # noqa: E731
    return tuple(block for i in range(count) for block in jax.tree.map(take(i), (pairs.first, pairs.second)))


def _stack(blocks: tuple[_Block, ...]) -> _Pair:
    """``_unstack``'s inverse: blocks 0, 2, 4, ... stacked as the pairs' first blocks, 1, 3, 5, ... as their second."""
    stack = lambda *a: jnp.stack(a) if eqx.is_array(a[0]) else a[0]  # noqa: E731
    return _Pair(jax.tree.map(stack, *blocks[0::2]), jax.tree.map(stack, *blocks[1::2]))


LAYOUTS = ("stacked", "sequence")


def with_layout(tree, layout: str):
    """``tree`` with every ``ViTMoE`` in it (a model, its arrays as ``eqx.filter`` gives them, or an optimizer state
    holding those) in ``layout``: "stacked" (Every-2's pairs, every array with a leading axis of depth / 2) or
    "sequence" (the depth blocks in order). The same numbers, copied into the other arrangement.

    >>> model = ViTMoE(ViTMoEConfig(**VARIANTS["micro"], image_size=8, channels=1, num_classes=3, group_images=1),
    ...                key=jax.random.key(0))
    >>> model.layout, with_layout(model, "stacked").layout
    ('sequence', 'stacked')
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")

    def one(model):
        if not isinstance(model, ViTMoE) or model.layout == layout:
            return model
        if layout == "stacked":
            if not model.config.every_2:
                raise ValueError(f"only Every-2 models can be stacked in pairs; moe_layers = {model.config.moe_layers}")
            parts = (_stack(model.blocks), None)
        else:
            parts = (None, _unstack(model.pairs))
        return eqx.tree_at(lambda m: (m.pairs, m.blocks), model, parts, is_leaf=lambda x: x is None)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, ViTMoE))


class ViTMoE(eqx.Module):
    """A Vision Transformer with MoE layers on blocks 1, 3, 5, ... (Every-2), any of the six routers.

    ``model(images, key=..., inference=False)`` maps a batch (B, H, W, ch) to class logits (B, classes) and
    ``aux``: ``aux["loss"]`` is the summed auxiliary loss of the MoE layers and ``aux["moe"]`` maps each
    name of ``METRIC_NAMES`` to an array with one value per MoE layer. ``model.features(images)`` is the
    pre-head representation (after the final layer norm, pooling and the pre-logits layer if any) used by the
    few-shot linear probe; ``model.expert_weights(images)`` (L, B, N, E) shows what the routers did, for the
    plots of ``train.visualize``. B must be a multiple of ``config.group_images`` for the sparse routers.

    Choice: two layouts of the blocks (``model.layout``, ``with_layout`` converts). "sequence": a plain tuple of
    the ``depth`` blocks (``blocks``; ``pairs`` is None) run by a Python loop; the default, and the only layout of
    placements other than Every-2 (e.g. vmoe's "Last 2", ``moe_layers=(9, 11)`` on 12 blocks). "stacked": with
    Every-2 and ``config.scan_layers``, the pairs of blocks with their arrays stacked (``pairs``; ``blocks`` is
    None), run by a rolled ``jax.lax.scan`` whose compile time does not grow with depth. Stacked arrays cost the
    step a copy of every pair's weights out of the stack and of its gradients back into it: on CPU the unrolled
    stacked step took 1.04x the sequence's time and 77 MiB more temporaries (Soft MoE, benchmarks/results/
    vs_vmoe.md). Both layouts start from the same weights (the sequence is built stacked and unstacked) and use
    the same noise keys (one per pair with Every-2), so they are one function; checkpoints written in either
    layout load in both (``train.checkpoint``).
    """

    config: ViTMoEConfig = eqx.field(static=True)
    patch_w: Array
    patch_b: Array
    pos_embed: Array
    cls_token: Array | None
    pairs: _Pair | None  # Every-2: stacked, every array has a leading axis of depth / 2
    blocks: tuple[_Block, ...] | None  # any other MoE placement: the depth blocks in order
    final_ln: Array
    pre_logits_w: Array | None  # (D, representation_size), when config.representation_size
    pre_logits_b: Array | None
    head_w: Array
    head_b: Array

    def __init__(self, config: ViTMoEConfig, *, key: PRNGKeyArray):
        config.validate()
        self.config = config
        k_patch, k_pos, k_pre_logits, k_pairs = jax.random.split(key, 4)
        patch_dim = config.patch_size**2 * config.channels
        self.patch_w = _xavier(k_patch, (patch_dim, config.width))
        self.patch_b = jnp.zeros(config.width)
        self.pos_embed = 0.02 * jax.random.normal(k_pos, (config.num_tokens, config.width))
        self.cls_token = jnp.zeros(config.width) if config.pool == "cls" else None
        if config.every_2:
            keys = jax.random.split(k_pairs, config.depth // 2)
            pairs = eqx.filter_vmap(lambda k: _new_pair(config, key=k))(keys)
            self.pairs, self.blocks = (pairs, None) if config.scan_layers else (None, _unstack(pairs))
        else:
            keys = jax.random.split(k_pairs, config.depth)
            moe = config.moe_block_indices
            self.blocks = tuple(_Block(config, i in moe, key=k) for i, k in enumerate(keys))
            self.pairs = None
        self.final_ln = jnp.stack([jnp.ones(config.width), jnp.zeros(config.width)])
        features = config.width
        if config.representation_size is None:
            self.pre_logits_w = self.pre_logits_b = None
        else:  # Choice: lecun-normal kernel and zero bias, as flax's nn.Dense (vmoe's and vit_jax's pre_logits)
            features = config.representation_size
            self.pre_logits_w = jax.nn.initializers.lecun_normal()(k_pre_logits, (config.width, features))
            self.pre_logits_b = jnp.zeros(features)
        self.head_w = jnp.zeros((features, config.num_classes))  # zero-initialized head, as ViT
        self.head_b = jnp.full(config.num_classes, config.head_bias_init, jnp.float32)  # not weakly typed

    @property
    def layout(self) -> str:
        """How the blocks are held: "stacked" (pairs) or "sequence" (see the class docstring)."""
        return "stacked" if self.pairs is not None else "sequence"

    def _moe_blocks(self) -> list[int]:
        """Positions in ``blocks`` of the MoE blocks (the sequence layout only)."""
        return [i for i, block in enumerate(self.blocks) if block.moe is not None]

    @property
    def capacity_factor(self) -> float | None:
        """The capacity factor its MoE layers run at (``config.factor`` unless ``with_capacity`` changed it);
        None for the dense baseline."""
        if self.config.dense:
            return None
        if self.pairs is not None:
            return self.pairs.second.moe.capacity_factor
        return self.blocks[self._moe_blocks()[0]].moe.capacity_factor

    def with_capacity(self, capacity_factor: float) -> ViTMoE:
        """This model with every MoE layer at ``C = capacity(T, E, capacity_factor)``; the same arrays, not copies.

        ``MoELayer.with_capacity`` applied to all MoE layers at once (they are stacked: one static capacity for
        all), for evaluating a trained model at a capacity other than its training one, e.g. Expert Choice
        trained at c = 1 evaluated at ``model.with_capacity(2)``. ``capacity_factor`` is in the units of
        ``config.factor`` (k for Token Choice, c for Expert Choice): ``model.with_capacity(config.factor)`` is
        the model as trained. Soft MoE accepts only a factor that keeps its number of slots.

        Choice: ``config`` is left as built: it describes the architecture the weights were trained with (and
        ``load_trained`` rebuilds from it); the capacity in use is ``model.capacity_factor``.
        Choice: a dense model (``config.dense``) has no capacity to change; asking is an error, not a no-op.
        """
        if self.config.dense:
            raise ValueError(
                f"with_capacity({capacity_factor!r}): a dense model (config.dense = True) has no MoE layers"
            )
        if self.pairs is not None:
            moe = self.pairs.second.moe.with_capacity(capacity_factor)
            return eqx.tree_at(lambda model: model.pairs.second.moe, self, moe)
        where = self._moe_blocks()
        layers = [self.blocks[i].moe.with_capacity(capacity_factor) for i in where]
        return eqx.tree_at(lambda model: [model.blocks[i].moe for i in where], self, layers)

    def _tokens(self, images):
        cfg = self.config
        if images.ndim != 4 or images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise ValueError(
                f"images must have shape (B, {cfg.image_size}, {cfg.image_size}, {cfg.channels}), got {images.shape}"
            )
        b, p = images.shape[0], cfg.patch_size
        side = cfg.image_size // p
        patches = images.reshape(b, side, p, side, p, cfg.channels).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, side * side, p * p * cfg.channels).astype(jnp.float32)
        x = _matmul(patches, self.patch_w) + self.patch_b
        if self.cls_token is not None:
            x = jnp.concatenate([jnp.broadcast_to(self.cls_token, (b, 1, cfg.width)), x], axis=1)
        return x + self.pos_embed

    def _scan(self, images, key, step):
        """Run ``step(pair, x, key) -> (x, output)`` over the stacked pairs of blocks with ``jax.lax.scan``, from
        the images' tokens; one key per pair (split from ``key``, default ``jax.random.key(0)``)."""
        keys = jax.random.split(jax.random.key(0) if key is None else key, self.config.depth // 2)
        params, static = eqx.partition(self.pairs, eqx.is_array)

        def body(x, layer):
            layer_params, layer_key = layer
            return step(eqx.combine(layer_params, static), x, layer_key)

        # Choice: unrolled by default (``scan_layers=False``). A rolled scan stacks each pair's activations for
        # the backward pass into (depth / 2, ...) buffers (zero-filled, then written slice by slice and copied)
        # and keeps XLA from fusing across pairs: on CPU the whole step took ~1.2x longer and 1.6x the temporary
        # memory (benchmarks/results/vs_vmoe.md). The rolled scan compiles in a time that does not grow with
        # depth, which is worth it for deep models (L/16) or when compile time dominates; on GPU/TPU measure both.
        unroll = 1 if self.config.scan_layers else self.config.depth // 2
        return jax.lax.scan(body, self._tokens(images), (params, keys), unroll=unroll)

    def _sequence(self, images, key, step):
        """The sequence layout's ``_scan``: ``step(block, x, key) -> (x, output)`` over ``blocks`` in a Python loop,
        one key per block (per pair with Every-2, as ``_scan``); the outputs of the MoE blocks stacked (None when
        there are none)."""
        key = jax.random.key(0) if key is None else key
        if self.config.every_2:
            pair_keys = jax.random.split(key, self.config.depth // 2)
            keys = [pair_keys[i // 2] for i in range(self.config.depth)]
        else:
            keys = jax.random.split(key, self.config.depth)
        x, outputs = self._tokens(images), []
        for block, block_key in zip(self.blocks, keys, strict=True):
            x, output = step(block, x, block_key)
            if block.moe is not None:
                outputs.append(output)
        return x, (jax.tree.map(lambda *a: jnp.stack(a), *outputs) if outputs else None)

    def features(
        self, images: Float[Array, "B H W ch"], *, key: PRNGKeyArray | None = None, inference: bool = True
    ) -> tuple[Float[Array, "B F"], dict]:
        """Pre-head representation (B, F) and the auxiliary outputs: F = D, or ``representation_size`` when the
        model has a pre-logits layer (then this is its output, ``tanh(pooled @ W + b)``, as vmoe's few-shot
        features)."""
        if self.pairs is not None:
            x, metrics = self._scan(images, key, lambda pair, x, k: pair(x, k, inference))
        else:
            x, metrics = self._sequence(images, key, lambda block, x, k: block(x, k, inference))
        x = _layer_norm(x, *self.final_ln)
        pooled = x[:, 0] if self.config.pool == "cls" else x.mean(axis=1)
        if self.pre_logits_w is not None:
            pooled = jnp.tanh(pooled @ self.pre_logits_w + self.pre_logits_b)
        if metrics is None:  # the dense baseline
            metrics = {name: jnp.zeros((0,)) for name in (*METRIC_NAMES, "loss")}
            metrics["expert_load"] = jnp.zeros((0, self.config.num_experts))
        aux = {"loss": jnp.sum(metrics.pop("loss")), "moe": metrics}
        return pooled, aux

    def expert_weights(
        self, images: Float[Array, "B H W ch"], *, key: PRNGKeyArray | None = None, inference: bool = True
    ) -> Float[Array, "L B N E"]:
        """For each of the L MoE layers, the weight with which each expert's output reaches each patch.

        The forward pass of ``features`` (same groups, same keys), returning at every MoE block the
        ``MoELayer.token_expert_weights`` of the tokens entering it, reshaped to (B, N, E): for sparse routers
        the combine weight of each expert that processed the patch (an all-zero row: a dropped patch), for Soft
        MoE each expert's share of the patch's output (rows sum to 1). N counts patches only: with
        ``pool="cls"`` the class token's row is left out. Routing depends on which images share a group, so
        pass the batch in the order whose routing you want to see (evaluation: ``train.loop._in_batches``).
        A separate code path: ``features`` and ``__call__`` are unchanged.
        """
        if self.config.dense:
            raise ValueError("expert_weights: a dense model (config.dense = True) has no routers and no experts")

        def step(pair, x, k):
            x, _ = pair.first(x, k, inference)
            weights = pair.second.token_expert_weights(x, k, inference)
            return pair.second(x, k, inference)[0], weights

        def block_step(block, x, k):
            weights = block.token_expert_weights(x, k, inference) if block.moe is not None else None
            return block(x, k, inference)[0], weights

        if self.pairs is not None:
            _, weights = self._scan(images, key, step)
        else:
            _, weights = self._sequence(images, key, block_step)
        return weights[:, :, 1:] if self.config.pool == "cls" else weights

    def __call__(
        self, images: Float[Array, "B H W ch"], *, key: PRNGKeyArray | None = None, inference: bool = False
    ) -> tuple[Float[Array, "B classes"], dict]:
        cfg = self.config
        noisy = (
            cfg.router == "softmax_token_choice"
            or (cfg.sinkhorn_style == "vmoe" and "sinkhorn" in cfg.router)
            or (cfg.router == "softmax_expert_choice" and cfg.expert_choice_noise_std != 0)
        )
        if not inference and key is None and noisy and not self.config.dense:
            raise ValueError(f"training {self.config.router} needs a key for its noise: pass key=...")
        pooled, aux = self.features(images, key=key, inference=inference)
        return pooled @ self.head_w + self.head_b, aux
