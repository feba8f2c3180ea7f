"""DeepSpeed's MoE gating (``deepspeed.moe.sharded_moe``) held to the spec: Softmax Token Choice and the capacity.

DeepSpeed (``pip install deepspeed``) ships the GShard/Switch gates of its ``MoE`` layer as plain functions of the
router logits: ``top1gating``, ``top2gating`` and ``topkgating`` (k > 2). Each applies the softmax itself, picks
every token's top-k experts, computes a capacity from a capacity factor and drops the requests that overflow it,
and returns ``(l_aux, combine_weights, dispatch_mask, exp_counts)``, both tensors (T, E, C) in the spec's layout
(DeepSpeed's "s, e, c": tokens, experts, slots). ``TopKGate.forward`` (the module every ``MoE`` layer uses) calls
top1gating for k = 1, top2gating for k = 2 and topkgating otherwise, on ``logits = x @ W`` in float32; this adapter
makes the same calls.

Covered (the library's own code):

- ``route("softmax_token_choice", x, W, factor=k, noise=...)``: ``logits = x @ W`` as ``TopKGate`` computes it
  (``F.linear`` of the float32 tokens with the float32 weight ``W.T``, the ``wg.weight`` layout), plus ``noise``
  when given (the spec adds it to the logits before everything, and the gates take logits: the sum is exactly what
  the spec softmaxes); then the gate of ``TopKGate.forward`` for this k. ``dispatch`` is the gate's
  ``dispatch_mask`` (bool, as returned), ``combine`` its ``combine_weights`` (float32). The other five routers are
  not in DeepSpeed and go to the reference.
- ``capacity(T, E, factor)``: the library's ``_capacity``, the function every gate sizes its buffers with, called
  as they call it (a (T, E) gates tensor, whose shape is all it reads; the factor as a tensor; the minimum below).
  The gates pass ``capacity_factor * k``, so the spec's factor k for Token Choice is that product at a capacity
  factor of 1.

Not covered: DeepSpeed's ``l_aux`` is the Switch/GShard balancing loss ``E * sum_e mean_t(p) * mean_t(mask)`` (with
other scalings for k = 2 and k > 2), not Appendix A's importance or load loss, so it is not mapped; everything
else delegates to the reference (``n/a`` in the report).

Settings (``SETTINGS`` says the same, one line each): capacity factor 1 (the spec's ``C = round(k T / E)`` is a
capacity factor of 1 per choice; the library multiplies by k itself), ``min_capacity = 0`` (the spec has no
minimum; the gates require the argument; ``TopKGate``'s default of 8 would raise every k = 1 capacity of the suite's
groups, 3 or 4, to 8, and ``MoE``'s 4 would raise 3 to 4), ``drop_tokens=True`` (the library's default: capacity
is enforced), and the randomness off: ``noisy_gate_policy=None``, ``use_rts=False`` (no random token selection), and
``top2_2nd_expert_sampling=False`` (the second expert by argmax, not Gumbel sampling). ``ep_group=None``: one
process. Importing deepspeed on a CPU-only machine logs a warning that it chose its CPU accelerator; nothing had to
be set for it.
"""

from __future__ import annotations

import reference

from . import _base
from ._base import Finding, complete

LIBRARY = "deepspeed"
VERSION = "0.19.8"
FRAMEWORK = "PyTorch"
DTYPE = "float32"  # TopKGate.forward casts the tokens and the gate weight to float32; the gates compute in it
# Its setup.py or its pinned dependencies need this (tox.ini, testenv:adapters, says why).
INSTALL = "pip install torch && pip install --no-build-isolation 'deepspeed==0.19.8'"

COVERS = {"capacity": None, "route": ("softmax_token_choice",)}

CAPACITY_FACTOR = 1.0
MIN_CAPACITY = 0

SETTINGS = (
    "capacity_factor=1.0: the spec's Token Choice capacity round(k T / E) is a capacity factor of 1 per choice; "
    "the gates multiply it by k themselves (top2gating: capacity_factor * 2; topkgating: capacity_factor * k)",
    "min_capacity=0: the spec has no minimum capacity; the gates take it as a required argument (top1gating's own "
    "assertion message suggests 0); TopKGate's default 8 (MoE's 4) would raise the suite's small capacities (3 to 8)",
    "drop_tokens=True (the default): the capacity is enforced, as in the spec",
    "noisy_gate_policy=None: no Gumbel noise on the top-1 choice (the spec's noise is passed explicitly instead)",
    "use_rts=False: no Random Token Selection in top1gating (its default is True, a uniform draw per token)",
    "top2_2nd_expert_sampling=False: top2gating picks the second expert by argmax, not by Gumbel sampling (its "
    "default is True)",
    "ep_group=None: a single process, no expert parallelism",
    "logits = F.linear(x, W.T) in float32, as TopKGate.forward computes them (wg.weight is W.T); noise, when given, "
    "is added to these logits, which the gates then softmax",
)

_WHERE = "deepspeed/moe/sharded_moe.py:{} (deepspeed 0.19.8)"

FINDINGS = (
    Finding(
        properties=("route_capacity", "route_equivalence"),
        verdict="variant",
        cause="top2gating renormalizes the two kept gate values to sum to 1 (gates1_s /= gates1_s + gates2_s, a lone "
        "survivor gets 1.0), GShard's top-2 gate which TopKGate's docstring cites; the spec's combine is the softmax "
        "probability itself (eqs. 1-3). Identical when E = 2 and nothing is dropped. No option turns it off "
        "(topkgating, k > 2, normalizes the same way).",
        where=_WHERE.format("384-392"),
        routers=("softmax_token_choice",),
    ),
    Finding(
        properties=(
            "capacity_function",
            "route_capacity",
            "route_equivalence",
            "low_precision_inputs_route_like_the_reference",
            "route_defaults_as_users_call_them",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="_capacity rounds up, max(ceil(T / E * capacity_factor * k), min_capacity) (Switch/GShard's convention), "
        "where the spec rounds to nearest, round(k T / E): T = 10, E = 4, k = 1 gives 3 slots, not 2 (different "
        "shapes and fewer drops), and capacity(1, 1, 0.5) is 1 where the spec raises. No rounding option exists.",
        where=_WHERE.format("152-162"),
    ),
    Finding(
        properties=("rejects_bad_input_like_the_reference", "refuses_at_every_entry_point"),
        verdict="no validation",
        cause="capacity(3, 32, 1): ceil(3 / 32) = 1, so a group too small for its experts gets capacity 1 instead "
        "of an error (the spec's Choice [capacity-below-one] raises; the gates accept any T >= min_capacity). The "
        "gates check no input either: a W of the wrong width fails inside TopKGate's matmul with torch's "
        "RuntimeError, not an error naming the argument; NaN tokens are routed (top1gating's gates * mask1_float "
        "keeps NaN where the mask is 0, so dispatch_mask = combine_weights.bool() is True in all 16 entries for "
        "T = 4, E = 2, C = 2, combine NaN); k = 3 > E and k = 0 fail inside topkgating's torch.topk and F.one_hot "
        "(num_classes = capacity 0) with RuntimeError, where the spec's route raises ValueError.",
        where=_WHERE.format("158-162, 311-317, 433, 500"),
    ),
    Finding(
        properties=(
            "route_equivalence",
            "low_precision_inputs_route_like_the_reference",
            "identical_tokens_tie_exactly",
            "route_defaults_as_users_call_them",
            "logits_beyond_exp_overflow",
        ),
        verdict="bug",
        cause="With use_rts=False, top1gating keeps an over-full expert's tokens by torch.topk over the 0/1 mask "
        "(mask1_rand = mask1), so which of the tied requests survive is torch.topk's unspecified tie order, neither "
        "position nor probability: 8 tokens all choosing one expert of capacity 4 keep tokens 4-7 (topk returns "
        "6, 5, 4, 7), six identical tokens choosing e0 of capacity 4 (T = 12, E = 3) keep tokens 0, 1, 4, 5 where "
        "the spec keeps 0-3 (with or without a +-800 shift of the logits), and in T = 4, E = 2 token 0 (p = 0.88) "
        "is dropped for token 3 (p = 0.73). The library's own top2gating (torch.lt(locations, capacity)) and "
        "topkgating's drop_policy='position' keep requests in token order, as GShard (cited by TopKGate's "
        "docstring) and Algorithm 1 do; the result here depends on torch's topk kernel. Except for the identical "
        "tokens, masked in the ci run by the capacity finding (it shows once the T = 10, E = 4 cases are set aside).",
        where=_WHERE.format("266-287"),
        routers=("softmax_token_choice",),
    ),
)

_sharded_moe = _base.lazy("deepspeed.moe.sharded_moe")


def capacity(num_tokens, num_experts, factor):
    """``_capacity(gates, factor, min_capacity)``: ``max(ceil(T / E * factor), min_capacity)``, as a Python int."""
    import torch

    gates = torch.zeros((num_tokens, num_experts), dtype=torch.float32)  # _capacity reads only its shape
    # The gates pass torch.tensor(capacity_factor * k), a float: the spec's factor is that product.
    slots = _sharded_moe()._capacity(gates, torch.tensor(float(factor)), torch.tensor(MIN_CAPACITY))
    return int(slots)


def route(router, x, weight, *, factor=None, noise=None):
    """Softmax Token Choice through DeepSpeed's gate for k = ``factor`` (None: 1); other routers: the reference."""
    if router not in COVERS["route"]:
        return reference.route(router, x, weight, factor=factor, noise=noise)
    import torch
    import torch.nn.functional as F

    moe = _sharded_moe()
    k = 1 if factor is None else factor
    wg_weight = _base.torch_tensor(weight).T  # TopKGate.wg.weight is (E, D)
    logits = F.linear(_base.torch_tensor(x), weight=wg_weight, bias=None)  # as TopKGate.forward
    logits = _base.add_noise(logits, noise)
    with torch.no_grad():
        if k == 1:  # TopKGate.forward's dispatch on k
            _, combine, dispatch, _ = moe.top1gating(
                logits, CAPACITY_FACTOR, MIN_CAPACITY, None, noisy_gate_policy=None, drop_tokens=True,
                use_rts=False, ep_group=None,
            )  # fmt: skip
        elif k == 2:
            _, combine, dispatch, _ = moe.top2gating(
                logits, CAPACITY_FACTOR, MIN_CAPACITY, drop_tokens=True, ep_group=None,
                top2_2nd_expert_sampling=False,
            )  # fmt: skip
        else:
            _, combine, dispatch, _ = moe.topkgating(
                logits, k, CAPACITY_FACTOR, MIN_CAPACITY, drop_tokens=True, ep_group=None
            )
    return dispatch, combine


complete(globals())
