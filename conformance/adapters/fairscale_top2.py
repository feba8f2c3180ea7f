"""fairscale's GShard top-2 gate (``fairscale.nn.moe.top2gate.top2gating``) held to the spec: Softmax Token Choice.

fairscale (``pip install fairscale``) ships the gate of its ``MOELayer`` as ``top2gating(logits)``: softmax of the
(T, E) router logits in float32, every token's first expert by argmax and its second by the Gumbel-max trick on
the logits (a sample, not the second-best expert), capacity ``2 T // E`` (it asserts ``T % E == 0``), requests
beyond it dropped in token order (all first choices before the second ones), and the two kept gate values
renormalized to sum to 1. It returns ``(l_aux, combine_weights, dispatch_mask)``, both tensors (T, E, C) in the
spec's layout ("s, e, c": tokens, experts, slots). ``Top2Gate.forward`` computes ``logits = wg(x)``, a bias-free
``Linear`` (float32 by default) whose weight is ``W.T``.

Covered (the library's own code): ``route("softmax_token_choice", x, W, factor=2, noise=...)``: ``logits = x @ W``
as ``Top2Gate`` computes it (``F.linear`` of the float32 tokens with ``W.T``), plus ``noise`` when given (the spec
adds it to the logits before everything; the gate takes logits), then ``top2gating``. ``dispatch`` is its
``dispatch_mask`` (bool), ``combine`` its ``combine_weights`` (float32, the logits' dtype). The gate has no k and no
capacity factor: k = 1 and groups with ``T % E != 0`` (which its assertion refuses) are ``NotCovered``. The capacity
is computed inline (no function to call), so ``capacity`` is the reference's; ``l_aux`` (``mean(me * ce)``, the
GShard balancing loss without its scaling) is not Appendix A's losses and is not mapped.

Settings: the Gumbel sample of the second expert has no switch, so each call runs with the CPU random generator
seeded to ``SEED`` inside ``torch.random.fork_rng`` (the caller's generator state is restored afterwards): the
result is deterministic, and the relabeling and equivalence properties see one fixed draw per input shape. The draw
is still a sample: where the second expert differs from the second-best one, that is the library's design.
"""

from __future__ import annotations

import reference

from .._coverage import NotCovered
from . import _base
from ._base import Finding, complete

LIBRARY = "fairscale"
VERSION = "0.4.13"
FRAMEWORK = "PyTorch"
DTYPE = (
    "float32"  # softmax in float32 (dtype=torch.float); outputs in the logits' dtype, float32 with Top2Gate's Linear
)
# Its setup.py or its pinned dependencies need this (tox.ini, testenv:adapters, says why).
INSTALL = "pip install torch && pip install --no-build-isolation 'fairscale==0.4.13'"

COVERS = {"route": ("softmax_token_choice",)}

SEED = 0

SETTINGS = (
    f"torch.manual_seed({SEED}) inside torch.random.fork_rng(devices=[]) around each call: top2gating samples the "
    "second expert with Gumbel noise (gumbel_rsample) and has no switch to turn it off; fork_rng restores the "
    "caller's random state",
    "k = 2 only: top2gating has no k (k = 1 is NotCovered)",
    "T % E == 0 only: top2gating asserts it (other groups are NotCovered); its capacity 2 T // E then equals the "
    "spec's round(2 T / E)",
    "logits = F.linear(x, W.T) in float32, as Top2Gate.forward computes them with its float32 Linear; noise, when "
    "given, is added to these logits",
)

_WHERE = "fairscale/nn/moe/top2gate.py:{} (fairscale 0.4.13)"

FINDINGS = (
    Finding(
        properties=(
            "relabeling_experts_permutes_the_expert_axis",
            "route_equivalence",
            "identical_tokens_tie_exactly",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="The second expert is a Gumbel-max sample, argmax(logits + Gumbel noise) over the other experts (the "
        "file's own comment: 'using Gumbel-max trick'), not the second-best expert of Algorithm 1; with the seed "
        "fixed, the noise is tied to column positions, so relabeling the experts changes the draw, and each row "
        "gets its own draw, so identical tokens part: 24 copies of logits (0, 0, 0, 0, 1/64, 1/32) all take e5 "
        "first, then e1, e1, e4, e3, e2, ... where the spec's second choice is e4 for all (the same draw at a "
        "+-800 shift). There is no switch to take the argmax instead.",
        where=_WHERE.format("53-58"),
        routers=("softmax_token_choice",),
    ),
    Finding(
        properties=(
            "route_capacity",
            "route_equivalence",
            "identical_tokens_tie_exactly",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="The two kept gate values are renormalized to sum to 1 (gates1_s /= gates1_s + gates2_s; a lone "
        "survivor gets 1.0), GShard's top-2 gate; the spec's combine is the softmax probability itself (eqs. 1-3): "
        "with the Gumbel draw set to 0, 24 copies of logits (0, 0, 0, 0, 1/64, 1/32) are dispatched as the spec's "
        "but combined with 0.496 and 0.504, not 0.168 and 0.171. No option turns it off.",
        where=_WHERE.format("80-87"),
        routers=("softmax_token_choice",),
    ),
)

_top2gate = _base.lazy("fairscale.nn.moe.top2gate")


def route(router, x, weight, *, factor=None, noise=None):
    """Softmax Token Choice with k = 2 through fairscale's ``top2gating``; other routers: the reference."""
    if router not in COVERS["route"]:
        return reference.route(router, x, weight, factor=factor, noise=noise)
    import torch
    import torch.nn.functional as F

    k = 1 if factor is None else factor
    if k != 2:
        raise NotCovered(f"fairscale's top2gating routes every token to exactly 2 experts; k = {k!r} asked")
    logits = F.linear(_base.torch_tensor(x), weight=_base.torch_tensor(weight).T, bias=None)  # as Top2Gate.forward
    tokens, experts = logits.shape
    if tokens % experts:
        raise NotCovered(f"top2gating asserts T % E == 0; T = {tokens}, E = {experts}")
    logits = _base.add_noise(logits, noise)
    gate = _top2gate()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        _, combine, dispatch = gate.top2gating(logits)
    return dispatch, combine


complete(globals())
