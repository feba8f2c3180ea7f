"""Adapter of lucidrains' st-moe-pytorch (``st_moe_pytorch``): ST-MoE top-n gating with a capacity, in PyTorch.

The library's router is ``TopNGating(dim, num_gates=E, top_n=k, ...)`` (``st_moe_pytorch/st_moe_pytorch.py``,
lines 335-547), transcribed from tensor2tensor's ``moe.py``: ``forward(x)`` on tokens (B, T, D) computes
``softmax(to_gates(x))`` (``to_gates`` is a bias-free ``nn.Linear(D, E)``), takes each token's top k experts,
renormalizes those k gates to sum to 1, places first choices of all tokens before second choices (Algorithm 1's
order) in each expert's buffer of ``expert_capacity = max(min(T, int(T * capacity_factor / E)), 4)`` slots, and
returns ``(dispatch_tensor, combine_tensor, balance_loss, router_z_loss)``, the tensors (B, T, E, C). ``MoE``
calls it and nothing else on the router side, so the gating module is the library's router.

Covered: ``route("softmax_token_choice", x, W, factor=k, noise=...)``, nothing else (the library has one router and
no allocation function taking scores). Mapping: ``to_gates.weight`` is W transposed, (E, D); the tokens are one
group, ``x[None]`` (1, T, D); the returned tensors' batch axis of one is dropped, giving the spec's (T, E, C)
dispatch and combine. The library takes a capacity factor: it is given k, the spec's Token Choice capacity
``round(k T / E)`` being a factor of 1 per choice, and computes its capacity itself.

Noise: the library draws its own Gumbel noise (``noise_gates=True``) and takes no given noise. Since the gate
sees its input only through ``to_gates``, the spec's noise (T, E) enters through that Linear: the input is
``[x, I_T]`` (T, D + T) and the weight ``[W; noise]`` (D + T, E), so ``to_gates`` computes ``x @ W + noise``
(exactly: the suite's values are on a dyadic grid) and everything after it is the library's.

k = 1 is outside the library (``TopNGating`` asserts ``top_n >= 2``): such calls raise ``NotCovered``.
"""

from __future__ import annotations

import numpy as np

import reference

from .._coverage import NotCovered
from . import _base
from ._base import Finding, complete

LIBRARY = "st-moe-pytorch"
VERSION = "0.1.8"
FRAMEWORK = "PyTorch"
DTYPE = "float32"

COVERS = {"route": ("softmax_token_choice",)}

SETTINGS = (
    "TopNGating(D, num_gates=E, top_n=k, threshold_eval=0.0, capacity_factor_eval=k), every other argument at "
    "its default; module.eval() (the eval threshold and capacity factor; no balance or z-loss) and torch.no_grad()",
    "threshold_eval=0.0 turns the random second-expert policy off: a choice i >= 2 is kept when a uniform draw "
    "u < gate_i / max(threshold, eps) = gate_i / 1e-9, true for every gate above 1e-9 (all the suite draws), so "
    "the draw never decides; the spec's Algorithm 1 always requests all k choices",
    "capacity_factor_eval=k: the spec's C = round(k T / E) is a capacity factor of 1 per choice; the library "
    "computes its own capacity from it (the default, 2.0, equals k = 2, the only k it can take here)",
    "forward(x, noise_gates=False) (its default): no Gumbel noise; the spec's noise is folded into to_gates as "
    "[x, I_T] @ [W; noise] (see the docstring)",
    "float32: the module's default parameter dtype; the suite's float64 inputs are cast to float32",
)

FINDINGS = (
    Finding(
        properties=(
            "route_capacity",
            "route_equivalence",
            "identical_tokens_tie_exactly",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="TopNGating renormalizes each token's top-k gates to sum to 1 before placing them in the combine "
        "tensor (gates / sum of the top-k gates, as GShard and tensor2tensor's moe.py, which it transcribes), so "
        "combine holds softmax(logits)[t, r] / (sum of t's top-k probabilities) where the spec's Algorithm 1 puts "
        "softmax(logits)[t, r]; no option turns it off. (The suite's first message, a dispatch not exactly 0/1, "
        "is the straight-through line 525 evaluating (dispatch + combine) - combine in float32, off by one "
        "rounding; with straight_through_dispatch_tensor=False dispatch is exact and the combine difference "
        "remains.) With identical tokens, and with every logit shifted by 800, dispatch equals the reference's "
        "and combine its combine / the top-2 sum to 4e-8 (0.496 = 0.251 / 0.506).",
        where="st_moe_pytorch/st_moe_pytorch.py:452-455,502,513-518 (st-moe-pytorch 0.1.8)",
        routers=("softmax_token_choice",),
    ),
    Finding(
        properties=("refuses_at_every_entry_point",),
        verdict="no validation",
        cause="TopNGating checks k only with assert top_n >= 2, so k = 0 and k = 1.5 (below 2, not for being "
        "fractional) raise AssertionError where the spec raises ValueError and TypeError respectively, and it never "
        "checks k against E: k = 3 with E = 2 reaches torch.topk, whose RuntimeError (selected index k out of "
        "range) is the only refusal.",
        where="st_moe_pytorch/st_moe_pytorch.py:365,428 (st-moe-pytorch 0.1.8); colt5_attention/topk.py:27 "
        "(colt5-attention 0.11.2)",
        routers=("softmax_token_choice",),
    ),
)

_st_moe = _base.lazy("st_moe_pytorch.st_moe_pytorch")
_torch = _base.lazy("torch")


def route(router, x, weight, *, factor=None, noise=None):
    """``route("softmax_token_choice", ...)`` through ``TopNGating``; every other router is the reference's."""
    if router != "softmax_token_choice":  # the library's only router: the rest is delegated, reported n/a
        return reference.route(router, x, weight, factor=factor, noise=noise)
    torch = _torch()
    k = 1 if factor is None else factor
    if k == 1:
        raise NotCovered("TopNGating asserts top_n >= 2: k = 1 is outside the library")
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    num_tokens, num_experts = x.shape[0], weight.shape[1]
    if noise is not None:  # fold the noise into the gate's Linear: [x, I] @ [W; noise] = x @ W + noise
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (num_tokens, num_experts):
            raise NotCovered(f"noise of shape {noise.shape} cannot be folded into the gate's (T, E) logits")
        x = np.concatenate([x, np.eye(num_tokens)], axis=1)
        weight = np.concatenate([weight, noise], axis=0)
    gating = (
        _st_moe()
        .TopNGating(x.shape[1], num_gates=num_experts, top_n=k, threshold_eval=0.0, capacity_factor_eval=k)
        .eval()
    )
    gating.load_state_dict({"to_gates.weight": _base.torch_tensor(weight.T, DTYPE)}, strict=False)
    with torch.no_grad():
        dispatch, combine, _, _ = gating(_base.torch_tensor(x, DTYPE)[None])
    return dispatch[0], combine[0]


complete(globals())
