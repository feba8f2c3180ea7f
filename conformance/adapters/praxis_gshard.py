"""praxis (Pax, JAX): the GShard gating functions of ``praxis/gshard_utils.py`` as the spec's ``route``.

praxis is the layer library of Google's Pax. Its MoE feed-forward layer (``TransformerFeedForwardMoe``,
``praxis/layers/transformers.py``) computes gating logits ``einsum('gsm,me->gse', inputs, gate)`` for G groups
of S tokens and hands them to ``gshard_utils.compute_gating``, which calls one of the functions covered here:

- ``softmax_token_choice``: ``top2_gating_on_logits`` for k = 2 (the layer's default ``gating_func='top2'``,
  GShard's Algorithm 2), ``topk_gating_on_logits`` for any other k (the library's only top-1 / top-k gating;
  ``compute_gating`` does not offer it). Both return ``(aux_loss, combine, dispatch, summaries)`` with
  combine and dispatch of shape [G, S, E, C]; the adapter returns ``(dispatch[0], combine[0])``: G = 1, S = T,
  the same (T, E, C) layout as the spec, nothing else changed.
- ``softmax_expert_choice``: ``expert_choice_gating_on_logits`` (``gating_func='expert_choice'``, Zhou et al.
  2022). It returns ``(0, gate, perm)``: ``gate`` [G, E, C] the top-C softmax values of each expert (in
  increasing order) and ``perm`` [G, E, C, S] (int32) the one-hot of the token in each slot. The layer combines with
  ``einsum('gecm,gecs,gec->gsm', expert_out, perm, gate)``; the adapter writes the same tensors in the spec's
  layout: ``dispatch[t, e, c] = perm[0, e, c, t]`` and ``combine[t, e, c] = perm[0, e, c, t] * gate[0, e, c]``
  (a product with a one-hot: a change of layout, not of values). Dispatch stays int32, combine float32.
  ``expert_choice_gating_on_logits_v2`` (``gating_func='expert_choice_v2'``, slots in token order) is not mapped.

The logits are ``x @ W`` computed as the layer does (``einsum('gsm,me->gse')`` in float32, the library's
compute dtype), plus the spec's ``noise`` added to them (the gating functions take logits: that is where a
caller's noise goes). Everything else (``capacity``, the affinities, the allocation functions on given scores,
``moe_layer``, the losses) is the reference's and reported n/a: praxis has no standalone capacity function, its
gating functions take logits (not arbitrary scores), and its aux loss is GShard's ``mean(density * proxy) E^2``,
not Appendix A's importance or load loss.

Settings (see ``SETTINGS``): the capacity is given as the library's capacity factor, the interface the layer
documents as preferred (``unadjusted_expert_capacity_factor``, ``(E * C) / S``; ``expert_capacity_dim`` is
"Internal"), with ``expert_capacity_dim = 0`` as the layer passes it: k for Token Choice (the spec's
``C = round(k T / E)``), c for Expert Choice. ``second_expert_policy='all'`` (deterministic, so no PRNG key);
``legacy_mtf_behavior``, ``gating_logit_cap`` and ``mask_dtype`` at the library's defaults (the layer passes the
same); paddings all zeros (every token is real).

Importing ``gshard_utils``: praxis 1.4.0 pins jax 0.4.26 and TensorFlow, so it is installed without its
dependencies, and ``praxis.pytypes`` (imported by ``gshard_utils`` for one type annotation) needs ``clu`` and
``lingvo``. If ``praxis.pytypes`` cannot be imported, a stand-in providing only the annotation names
(``SplitDimsMapping``, ``JTensor``, as ``pytypes`` defines them) is placed in ``sys.modules`` while
``gshard_utils`` is imported, and removed afterwards. The gating code runs unmodified.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types

import numpy as np

import reference

from ._base import Finding, complete

LIBRARY = "praxis"
VERSION = "1.4.0"
FRAMEWORK = "JAX"
DTYPE = "float32"
# Its setup.py or its pinned dependencies need this (tox.ini, testenv:adapters, says why).
INSTALL = "pip install --no-deps 'praxis==1.4.0'"
COVERS = {"route": ("softmax_token_choice", "softmax_expert_choice")}

SETTINGS = (
    "capacity_factor = k for softmax_token_choice and c for softmax_expert_choice, expert_capacity_dim = 0: the "
    "layer's preferred sizing (unadjusted_expert_capacity_factor = E*C/S, 2.0 by default for top-2) and the "
    "expert_capacity_dim it passes by default; the library computes its capacity from them",
    "second_expert_policy='all' (the default): the second expert is the greedy argmax, no randomness, prng_key=None",
    "legacy_mtf_behavior=True (the default, and what TransformerFeedForwardMoe always passes): top-2 gates "
    "renormalized",
    "gating_logit_cap=0.0, mask_dtype=int32 (defaults; the layer's too); fprop_dtype=float32 (the layer casts its "
    "logits to float32 before gating)",
    "k = 2 through top2_gating_on_logits (the layer's 'top2'); other k through topk_gating_on_logits",
    "paddings: zeros of shape [1, T] (one group, every token real); logits einsum('gsm,me->gse') in float32",
    "praxis.pytypes replaced by a stand-in (SplitDimsMapping, JTensor) while gshard_utils is imported, if the "
    "real one cannot be imported (it needs clu and lingvo, absent: praxis is installed with --no-deps)",
)

FINDINGS = (
    Finding(
        properties=(
            "route_capacity",
            "route_equivalence",
            "low_precision_inputs_route_like_the_reference",
            "route_defaults_as_users_call_them",
            "identical_tokens_tie_exactly",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="Token Choice capacity: C = int(S * capacity_factor / E) rounded up to a multiple of 4 ('to avoid "
        "possible padding'), not round(k T / E): T = 10, E = 4 gives C = 4 for k = 1 (spec 2) and 8 for k = 2 "
        "(spec 5), T = 2, E = 2, k = 1 gives C = 4 (spec 1); the extra slots take tokens the spec drops. The "
        "docstring promises 'at least S * capacity_factor / E' (the int() before rounding up can break even that: "
        "S = 9, E = 2 gives 4 < 4.5). expert_capacity_dim = C with no capacity factor would give the spec's C; the "
        "layer calls that internal",
        where="praxis/gshard_utils.py:179-188, 500-507 (praxis 1.4.0)",
        routers=("softmax_token_choice",),
    ),
    Finding(
        properties=("route_capacity", "route_equivalence"),
        verdict="variant",
        cause="Top-2 gates renormalized: combine holds p_i / (p_1 + p_2 + 1e-9), not softmax(logits) (GShard's "
        "Algorithm 2; legacy_mtf_behavior=True, the default and what TransformerFeedForwardMoe always passes). "
        "Equal to the softmax only for E = 2; no option gives the spec's weights (legacy_mtf_behavior=False "
        "renormalizes too, after dropping; topk_gating_on_logits always does)",
        where="praxis/gshard_utils.py:261-265 (praxis 1.4.0)",
        routers=("softmax_token_choice",),
    ),
    Finding(
        properties=("route_capacity", "route_equivalence", "low_precision_inputs_route_like_the_reference"),
        verdict="bug",
        cause="Expert Choice capacity: int(S // E * capacity_factor), the integer division first, and "
        "expert_capacity_dim ignored: T = 10, E = 4 gives C = 4 for c = 2 (spec round(5) = 5) and 8 for c = 4 "
        "(spec 10). Its docstring says capacity_factor 'increases expert_capacity_dim to at least (group_size * "
        "capacity_factor) / experts_dim' (5 here), and expert_choice_gating_on_logits_v2 in the same file computes "
        "int(S * capacity_factor / E) before rounding up (lines 897-901)",
        where="praxis/gshard_utils.py:794-795 (praxis 1.4.0)",
        routers=("softmax_expert_choice",),
    ),
    Finding(
        properties=(
            "route_equivalence",
            "low_precision_inputs_route_like_the_reference",
            "route_defaults_as_users_call_them",
            "identical_tokens_tie_exactly",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="Expert Choice slot order reversed: top_k sorts ascending (lax.sort_key_val) and keeps the last C, so "
        "slot 0 of an expert holds its C-th best token and slot C-1 its best (Algorithm 2: slot c holds the "
        "(c+1)-th best); among equal scores the higher token index wins at the cut (eight identical tokens, E = 2, "
        "C = 4: each expert takes tokens 4-7, the spec 0-3). Apart from such ties the tokens and weights of each "
        "expert, hence the layer's output, are the spec's; jax.lax.top_k (descending, lower index first) would give "
        "the spec's order",
        where="praxis/gshard_utils.py:718-723, 798 (praxis 1.4.0)",
        routers=("softmax_expert_choice",),
    ),
    Finding(
        properties=("rejects_bad_input_like_the_reference", "refuses_at_every_entry_point"),
        verdict="no validation",
        cause="The gating functions check no input: NaN tokens give NaN gates, and since the dispatch tensor is the "
        "combine tensor cast to bool (NaN is true), every token is dispatched to every slot of every expert with "
        "weight NaN (T = 4, E = 2, k = 1: 8 dispatches per token), where the spec raises a ValueError; Expert "
        "Choice fills its C slots with NaN weights",
        where="praxis/gshard_utils.py:498, 652 (topk_gating_on_logits; top2_gating_on_logits: 177, 401; "
        "expert_choice_gating_on_logits: 789) (praxis 1.4.0)",
    ),
    Finding(
        properties=("refuses_at_every_entry_point",),
        verdict="no validation",
        cause="k and the capacity factor are not checked (T = 4, E = 2). Token Choice: k = 3 > E runs, its third "
        "pick expert 0 again with gate 0, and k = 0 stops only at a bare assert (AssertionError, not ValueError). "
        "Expert Choice keeps its ascending sort from index -bucket_size on (a check on bucket_size is commented "
        "out): c = 3 (C = 6 > T) keeps all 4 tokens, c = 0.1 (C = 0, from index -0) all 4 too, c = -1 (C = -2) the "
        "best 2, where the spec raises a ValueError",
        where="praxis/gshard_utils.py:479, 555-559 (topk_gating_on_logits); 794-798, 723 "
        "(expert_choice_gating_on_logits, top_k) (praxis 1.4.0)",
        routers=("softmax_token_choice", "softmax_expert_choice"),
    ),
)


@functools.cache
def _gshard():
    """``praxis.gshard_utils``, imported on the first call (with a stand-in ``praxis.pytypes`` if needed)."""
    try:
        importlib.import_module("praxis.pytypes")
    except ImportError:
        from collections.abc import Sequence

        import jax

        stand_in = types.ModuleType("praxis.pytypes")
        stand_in.JTensor = jax.Array
        stand_in.SplitDimsMapping = Sequence[Sequence[int | str] | int | str | None] | None
        sys.modules["praxis.pytypes"] = stand_in
        try:
            return importlib.import_module("praxis.gshard_utils")
        finally:
            del sys.modules["praxis.pytypes"]
    return importlib.import_module("praxis.gshard_utils")


def _logits(x, weight, noise):
    """G`SE logits, G = 1: the layer's ``einsum('gsm,me->gse')`` in float32, plus the spec's noise."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.asarray(np.asarray(x), jnp.float32)[None]
    gate = jnp.asarray(np.asarray(weight), jnp.float32)
    logits = jnp.einsum("gsm,me->gse", tokens, gate, precision=jax.lax.Precision.HIGHEST)
    if noise is not None:
        logits = logits + jnp.asarray(np.asarray(noise), jnp.float32)
    return logits


def route(router, x, weight, *, factor=None, noise=None):
    """The spec's ``route`` through praxis's gating for the two softmax routers; the others are the reference's."""
    if router not in COVERS["route"]:
        return reference.route(router, x, weight, factor=factor, noise=noise)
    import jax.numpy as jnp

    gshard = _gshard()
    logits = _logits(x, weight, noise)
    num_experts = logits.shape[-1]
    factor = 1 if factor is None else factor  # the spec's default factor
    if router == "softmax_token_choice":
        paddings = jnp.zeros(logits.shape[:2], jnp.float32)
        if factor == 2:
            _, combine, dispatch, _ = gshard.top2_gating_on_logits(
                paddings, logits, num_experts, 0, jnp.float32, second_expert_policy="all", capacity_factor=factor
            )
        else:
            _, combine, dispatch, _ = gshard.topk_gating_on_logits(
                paddings, logits, num_experts, 0, jnp.float32, capacity_factor=factor, k=factor
            )
        return dispatch[0], combine[0]  # [G, S, E, C] with G = 1: the spec's (T, E, C)
    _, gate, perm = gshard.expert_choice_gating_on_logits(logits, num_experts, 0, jnp.float32, capacity_factor=factor)
    dispatch = jnp.transpose(perm[0], (2, 0, 1))  # [E, C, S] -> (T, E, C)
    return dispatch, dispatch * gate[0][None]  # the layer's einsum('gecs,gec->...') in the spec's layout


complete(globals())
