"""Hugging Face transformers' Switch Transformers router (``SwitchTransformersTop1Router``) as the spec's top-1 route.

The library: ``transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersTop1Router``,
the router of the Switch Transformers models (Fedus et al., 2021), which its docstring says follows Switch
Transformer and V-MoE: a bias-free ``nn.Linear`` ``classifier`` gives the logits, a softmax over experts the
probabilities, each token picks its argmax expert, and a cumulative sum over the sequence drops the tokens that
find their expert already holding ``expert_capacity`` tokens.

Covered: ``route("softmax_token_choice", x, W, factor=1)``, the paper's sec. 2.1 router with k = 1 (Algorithm 1
with a single pass over the tokens in order). Nothing else: the library has no Sinkhorn, no Expert Choice and no
Soft MoE; it exposes no function from scores to an allocation (the argmax and cumulative sum live inside
``forward``, after its own softmax), so ``token_choice_allocation`` is the reference's; its auxiliary losses
(Switch's load-balancing loss and router z-loss) are other quantities than Appendix A's importance and load
losses; its experts (``SwitchTransformersDenseActDense``) have no biases, so the spec's ``mlp_experts`` and
``moe_layer`` are not expressible with them either.

Mapping. One routing group of T tokens is one sequence of a batch of one: ``hidden_states`` is ``x[None]``,
(1, T, D). The router's ``classifier.weight`` (E, D) is set to ``W.T``. ``forward`` returns ``expert_index`` (1, T, E),
the one-hot choice with overflowing tokens masked out (dispatched or not), ``router_probs`` (1, T, 1), the
probability of each token's argmax expert, and ``router_logits``. The spec's tensors are read off them:
``dispatch[t, r, c] = 1`` where ``expert_index[0, t, r] = 1`` and ``c`` is the token's place in the library's own
cumulative count for expert r (``cumsum(expert_index, dim=tokens) - 1``, the ``token_priority`` of ``forward``
minus one); ``combine[t, r, c] = router_probs[0, t, 0]`` there, 0 elsewhere. The library's experts
(``SwitchTransformersExperts``) use exactly that: a token enters the expert of its masked one-hot and its output is
scaled by ``router_probs``; a dropped token gets nothing from the MoE branch (the residual of
``SwitchTransformersLayerFF`` carries it). The library never orders the tokens inside an expert; the slot index is
the order of the sequence, as in Algorithm 1.

Settings (``SETTINGS``): the router in eval mode, which only turns off its training-time jitter (a multiplicative
uniform noise on the tokens); ``expert_capacity`` set to the spec's C = capacity(T, E, 1), an integer as the config
takes it; the config's defaults otherwise (``router_dtype="float32"``, ``router_bias=False``,
``router_jitter_noise=0.01``, unused in eval). Tokens and the classifier weight are handed over in float32, the
router's dtype and that of a model loaded with the library's defaults; float16 inputs are handed over as they
are (a half-precision model), so the router's own up-cast to float32 and the cast of its
probabilities back to the input dtype ("selective precision") are what gets checked.

Not covered, raised as ``NotCovered``: k != 1 (a top-1 router), and the spec's ``noise``. The library has no
additive noise on the logits: its only noise is the jitter above, random, multiplicative and on the tokens. Noise
could be smuggled in by widening the tokens to ``[x, noise]`` and W to ``[[W], [I]]``, but that would only run the
same code on other logits, which the noise-free cases already do; it checks nothing of the library.
"""

from __future__ import annotations

import numpy as np

import reference

from .._coverage import NotCovered
from ._base import Finding, complete, lazy

LIBRARY = "transformers"
VERSION = "5.25.0"
FRAMEWORK = "PyTorch"
DTYPE = "float32"

COVERS = {"route": ("softmax_token_choice",)}

SETTINGS = (
    "router.eval(): turns off the only randomness, the training-time jitter (tokens multiplied by "
    "U(1 - router_jitter_noise, 1 + router_jitter_noise), modeling_switch_transformers.py:96-98); nothing else in "
    "the router depends on the mode",
    "expert_capacity = capacity(T, E, 1), the spec's C for k = 1: the config takes the capacity as an integer",
    "num_experts = E and d_model = D from W's shape; the classifier's weight set to W.T (nn.Linear stores (E, D))",
    "one routing group = one sequence of a batch of one: the router counts capacity per sequence (cumsum over dim -2)",
    "tokens and classifier weight in float32 (router_dtype's default, a default-loaded model); float16 inputs "
    "kept in their dtype, as a half-precision model holds them",
    "route's noise: NotCovered (the library has no additive logit noise; see the module docstring)",
    "factor k != 1: NotCovered (a top-1 router)",
)

FINDINGS = (
    Finding(
        properties=("rejects_bad_input_like_the_reference", "refuses_at_every_entry_point"),
        verdict="no validation",
        cause="SwitchTransformersTop1Router checks no input: NaN tokens are routed (argmax of NaN probabilities is "
        "expert 0; four NaN tokens fill its C = 2 slots with combine weight NaN and the rest are dropped), and a W "
        "of the wrong width fails inside the classifier's matmul with torch's RuntimeError, not an error naming "
        "the argument; the same through route, where the spec raises ValueError for both",
        where="transformers/models/switch_transformers/modeling_switch_transformers.py:73-104 (transformers 5.25.0)",
    ),
)

_torch = lazy("torch")
_switch = lazy("transformers.models.switch_transformers.modeling_switch_transformers")
_config = lazy("transformers.models.switch_transformers.configuration_switch_transformers")


def _tensor(value):
    """A NumPy array-like as a CPU tensor: float16 and float32 as they are, anything else in float32."""
    torch = _torch()
    array = np.asarray(value)
    if array.dtype.name not in ("float16", "float32"):
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array))


def _router(weight, expert_capacity: int):
    """A ``SwitchTransformersTop1Router`` with ``num_experts`` and ``d_model`` from W (D, E), its classifier's
    weight ``W.T``, the given ``expert_capacity`` and the config's defaults otherwise, in eval mode."""
    torch = _torch()
    w = _tensor(weight)
    width, num_experts = w.shape
    config = _config().SwitchTransformersConfig(d_model=width, num_experts=num_experts, expert_capacity=expert_capacity)
    module = _switch().SwitchTransformersTop1Router(config)
    module.classifier.weight = torch.nn.Parameter(w.T.contiguous(), requires_grad=False)
    return module.eval()


def route(router, x, weight, *, factor=None, noise=None):
    """The library's top-1 routing of one group of tokens as ``(dispatch, combine)``, each (T, E, C)."""
    if router not in COVERS["route"]:
        return reference.route(router, x, weight, factor=factor, noise=noise)
    if factor is not None and factor != 1:
        raise NotCovered(f"SwitchTransformersTop1Router routes each token to 1 expert; k = {factor!r} asked")
    if noise is not None:
        raise NotCovered("SwitchTransformersTop1Router takes no noise on the logits (only a multiplicative jitter)")
    torch = _torch()
    tokens = _tensor(x)
    num_tokens, num_experts = tokens.shape[0], np.shape(weight)[1]
    slots = reference.capacity(num_tokens, num_experts, 1)
    module = _router(weight, slots)
    with torch.inference_mode():
        expert_index, router_probs, _ = module(tokens[None])
    kept = expert_index[0]  # (T, E) one-hot of the argmax expert, 0 where the expert was already full
    place = torch.cumsum(kept, dim=0) - 1  # the library's token_priority - 1: the slot of a kept token
    slot = torch.nn.functional.one_hot(place.clamp(min=0), num_classes=slots)  # (T, E, C)
    dispatch = (slot * kept[:, :, None]).to(router_probs.dtype)
    # router_probs[0] is (T, 1): each token's probability at its argmax expert, taken where the token sits.
    combine = torch.where(dispatch == 1, router_probs[0][:, :, None], torch.zeros_like(dispatch))
    return dispatch, combine


complete(globals())
