"""The registry of properties, the context they run in, and the small helpers every group uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from reference import ROUTERS

from .._checks import host, precision

# The groups, in the order the suite runs them: the cheap invariants first, the trainable layer's properties
# (which catch a broken layer first), the comparisons with the reference, the edges (exact ties, exp's range,
# stopping rules), the bad-input refusals last.
GROUPS = (
    "capacity", "allocation", "normalization", "training", "layer", "gradients", "equivalence", "ties", "extremes",
    "stopping", "bad_input",
)  # fmt: skip
SPARSE = ROUTERS[:5]
TOKEN_CHOICE = ROUTERS[:2]
EXPERT_CHOICE = ROUTERS[2:5]


@dataclasses.dataclass
class Context:
    impl: object  # the implementation under test (wrapped by the recorder)
    ref: object  # the reference (wrapped by the recorder)
    impl_raw: object  # the unwrapped modules, for invariants that need no recording
    ref_raw: object
    dtype: np.dtype  # the --dtype asked for: the implementation is judged at least this coarsely

    def both(self):
        """The implementation first, then the reference: invariants are checked on each."""
        return (("impl", self.impl), ("reference", self.ref))

    def precision(self, who, *outputs) -> np.dtype:
        """The dtype ``who``'s outputs are judged by: their own (read before any conversion to float64), and
        for the implementation at least as coarse as the ``--dtype`` asked for. The reference is float64."""
        return precision(*outputs, floor=self.dtype if who == "impl" else None)


@dataclasses.dataclass(frozen=True)
class Property:
    name: str
    group: str
    check: Callable  # check(ctx, case, router)
    strategy: Callable  # strategy(router) -> SearchStrategy of cases
    routers: tuple[str, ...] | None = None  # None: router-independent
    examples: tuple = ()  # hand-worked cases, run before the generated ones
    needs: str | None = None  # an attribute the implementation must have (else: not applicable)
    # Which API functions a property calls depends on the drawn case (not only on the router): an adapter's
    # examples that reach only delegated functions are then discarded one by one (see _runner.run_property).
    calls_vary: bool = False
    # The share of the profile's examples this property draws (at least 10): for the costly ones (a trainable
    # layer compiled per shape, gradients) and those every drawn case exercises fully (defaults, exp's range,
    # copies of tokens), whose kills rest on explicit examples and on any drawn case.
    share: float = 1.0


PROPERTIES: list[Property] = []


def prop(group, strategy, routers=None, examples=(), needs=None, calls_vary=False, share=1.0):
    def register(fn):
        PROPERTIES.append(
            Property(fn.__name__, group, fn, strategy, routers, tuple(examples), needs, calls_vary, share)
        )
        return fn

    return register


def f64(value):
    return host(value).astype(np.float64)


def case_logits(case):
    """The logits every matrix of ``route`` sees: x @ W, plus the case's noise (Choice [noise-placement])."""
    logits = case["x"] @ case["weight"]
    return logits if case["noise"] is None else logits + case["noise"]


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# Hand-worked cases, their arithmetic in comments.
