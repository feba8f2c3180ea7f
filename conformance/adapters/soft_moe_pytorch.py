"""Adapter of lucidrains' soft-moe-pytorch (``soft_moe_pytorch.SoftMoE``): Soft MoE, eqs. (10)-(11), in PyTorch.

The library is one ``nn.Module``, ``SoftMoE(dim, num_experts=E, num_slots=S)``, whose ``forward(x)`` takes a batch
of images' tokens (B, T, D) and returns the layer's output (B, T, D); the routing tensors are local variables of
``forward`` (``soft_moe_pytorch/soft_moe.py``, lines 332-354):

    x = self.norm(x)                                        # RMSNorm: l2norm(x) * sqrt(D) * gamma (gamma = 1)
    slot_embeds = self.slot_norm(self.slot_embeds)          # the same on the slot embeddings, (E, S, D)
    logits = einsum('b n d, e s d -> b n e s', x, slot_embeds)                  # eq. (10), on normalized inputs
    dispatch_weights = logits.softmax(dim = 1)                                  # eq. (11), over tokens n
    combine_weights = rearrange(logits, 'b n e s -> b n (e s)').softmax(dim = -1)   # eq. (11), over all slots

Covered: ``soft_moe_routing(x, phi)`` and ``route("soft_moe", x, phi, factor=...)``; nothing else of the spec's API
(the library has no sparse router, no allocation function and no layer taking given routing tensors: its
``forward`` composes routing, the experts and the combination, so ``moe_layer`` cannot be fed the spec's tensors).

How the tensors are obtained, without changing the computation: the module is built as a user would build it,
``SoftMoE(D, num_experts=E, num_slots=S)``, the spec's phi (D, E, S) is loaded into its ``slot_embeds``
(E, S, D) with ``load_state_dict`` (phi permuted, never rescaled), and ``forward`` is run on the image
``x[None]`` (1, T, D) under a ``torch.overrides.TorchFunctionMode`` that only records the results of the two
``Tensor.softmax`` calls of ``forward`` (it calls each function unchanged and returns its result). The first is
the dispatch tensor (1, T, E, S), which is the spec's (T, E, S) dispatch; the second the combine tensor
(1, T, E * S) with the slot axis flattened expert-major by ``rearrange(... '(e s)')``, reshaped back to the spec's
(T, E, S). The experts' random initial weights affect neither tensor.

Mapping: the spec's phi[:, r, c] is ``slot_embeds[r, c, :]``; the spec's S (phi's last axis, or
``round(c T / E)`` when ``route`` is given a factor c, the integer capacity the call implies) is passed as
``num_slots`` (the library takes an integer slot count, or ``seq_len`` and then uses ``seq_len // E``).

What differs from eqs. (10)-(11) is in ``FINDINGS``: the library normalizes the tokens and the slot embeddings
before eq. (10) (its default; the Soft MoE paper's normalization, with RMSNorm's scale sqrt(D) in place of a
learned scalar), so its logits are ``D cos(x_t, phi[:, r, c])`` instead of ``x_t . phi[:, r, c]``.
"""

from __future__ import annotations

import numpy as np

import reference

from .._coverage import NotCovered
from . import _base
from ._base import Finding, complete

LIBRARY = "soft-moe-pytorch"
VERSION = "0.1.9"
FRAMEWORK = "PyTorch"
DTYPE = "float32"

COVERS = {"soft_moe_routing": None, "route": ("soft_moe",)}

SETTINGS = (
    "SoftMoE(D, num_experts=E, num_slots=S) with every other argument at its default (RMSNorm on tokens and "
    "slots, dropout 0, no GEGLU); S is phi's last axis, or round(c T / E) for route's factor c (the library "
    "takes an integer slot count, not a factor)",
    "slot_embeds set to phi permuted to (E, S, D) with load_state_dict (a shape mismatch is torch's error)",
    "module.eval() and torch.no_grad(); forward(x, add_noise=False) (its default): no Gumbel noise on the logits",
    "float32: the module's default parameter dtype; the suite's float64 inputs are cast to float32",
    "the tokens are one image, x[None] of shape (1, T, D): a 2-D input would be read as T images of one token",
)

FINDINGS = (
    Finding(
        properties=(
            "soft_moe_routing_equivalence",
            "route_equivalence",
            "low_precision_inputs_route_like_the_reference",
            "route_defaults_as_users_call_them",
            "logits_beyond_exp_overflow",
        ),
        verdict="variant",
        cause="SoftMoE.forward normalizes the tokens and the slot embeddings before eq. (10): self.norm and "
        "self.slot_norm are RMSNorm, l2norm(v) * sqrt(D) * gamma with gamma initialized to 1, so the logits are "
        "D * cos(x_t, phi[:, r, c]) instead of eq. (10)'s x_t . phi[:, r, c]. Deliberate: its comment (line 330) cites "
        "the normalization Puigcerver et al. (2023) propose (l2-normalized X and Phi with a learned scalar scale), "
        "done here as RMSNorm with a per-dimension gamma. No option turns it off (use_layernorm=True swaps in "
        "LayerNorm, still not eq. (10)). So |logits| <= D and phi's scale is lost: at D = 1, x = [[1], [2]], "
        "phi = [[[1], [-1]]] (or 256 times that) both tokens normalize to 1 and dispatch is 0.5 everywhere, where "
        "eq. (11) gives 0.27 and 0.73 (at 256: 6.6e-112 and 1); the reference on the normalized x and phi matches "
        "the library to 5e-8.",
        where="soft_moe_pytorch/soft_moe.py:70-77,297-300,330-335 (soft-moe-pytorch 0.1.9)",
    ),
    Finding(
        properties=("rejects_bad_input_like_the_reference", "refuses_at_every_entry_point"),
        verdict="no validation",
        cause="SoftMoE checks neither its inputs nor its slot embeddings: slot_embeds is a plain (E, S, D) "
        "Parameter, so phi of the wrong width D, or an S that disagrees with the slot count round(c T / E) the "
        "factor implies, is refused only by torch's load_state_dict, with a RuntimeError (size mismatch for "
        "slot_embeds) where the spec raises ValueError. Nor does it check num_slots or x: factor -1 gives "
        "num_slots = -2, refused only by torch.randn (RuntimeError: negative dimension), and NaN tokens are "
        "routed without an error, into NaN dispatch and combine weights.",
        where="soft_moe_pytorch/soft_moe.py:290-301,311-335 (soft-moe-pytorch 0.1.9); "
        "torch/nn/modules/module.py:2443,2639 (torch 2.13.0)",
    ),
)

_soft_moe = _base.lazy("soft_moe_pytorch")
_torch = _base.lazy("torch")


def _softmax_recorder():
    """A TorchFunctionMode that runs every torch function unchanged and keeps the results of softmax calls."""
    torch = _torch()

    class SoftmaxRecorder(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.results = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", None) == "softmax":
                self.results.append(out)
            return out

    return SoftmaxRecorder()


def _library_routing(x, phi, num_slots: int):
    """The library's (dispatch, combine), each (T, E, S) float32, with ``slot_embeds`` = phi (D, E, S)."""
    torch = _torch()
    x = _base.torch_tensor(x, DTYPE)
    phi = _base.torch_tensor(phi, DTYPE)
    if x.ndim != 2 or phi.ndim != 3:
        raise ValueError(f"x must be (T, D) and phi (D, E, S); got shapes {tuple(x.shape)} and {tuple(phi.shape)}")
    num_tokens, width = x.shape
    num_experts = phi.shape[1]
    module = _soft_moe().SoftMoE(width, num_experts=num_experts, num_slots=num_slots).eval()
    module.load_state_dict({"slot_embeds": phi.permute(1, 2, 0).contiguous()}, strict=False)
    recorder = _softmax_recorder()
    with torch.no_grad(), recorder:
        module(x[None])
    if len(recorder.results) != 2:
        raise RuntimeError(f"SoftMoE.forward made {len(recorder.results)} softmax calls; the adapter expects 2")
    dispatch, combine = recorder.results  # (1, T, E, S) over tokens; (1, T, E * S) over slots, '(e s)' order
    return dispatch[0], combine[0].reshape(num_tokens, num_experts, num_slots)


def soft_moe_routing(x, phi):
    """Soft MoE (dispatch, combine), each (T, E, S), from ``SoftMoE.forward`` with slot embeddings phi."""
    return _library_routing(x, phi, np.shape(phi)[-1])


def route(router, x, weight, *, factor=None, noise=None):
    """``route("soft_moe", ...)`` through the library; every other router is the reference's (n/a)."""
    if router != "soft_moe":  # the library has no sparse router: delegated, reported n/a (COVERS)
        return reference.route(router, x, weight, factor=factor, noise=noise)
    if noise is not None:
        raise NotCovered("SoftMoE.forward takes no given noise (only its own Gumbel noise, add_noise=True)")
    num_slots = np.shape(weight)[-1]
    if factor is not None:  # the integer slot count the spec's factor implies, as its user would pass it
        num_slots = round(factor * np.shape(x)[0] / np.shape(weight)[1])
    return _library_routing(x, weight, num_slots)


complete(globals())
