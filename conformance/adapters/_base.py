"""What every adapter shares: the delegation to the reference, the record of what a failure means, tensors.

An adapter module maps one third-party library onto the spec's API, faithfully: it converts layouts (the
library's (E, C) or (T, E) conventions to the spec's (T, E, C)) and turns randomness off where the library
offers a switch, and never changes what the library computes. It declares:

- ``LIBRARY`` (the distribution's name on the package index), ``VERSION`` (the version the adapter and its
  findings were checked against; ``constraints/adapters.txt`` pins it), ``FRAMEWORK`` ("PyTorch" or "JAX");
- ``INSTALL`` (optional): the install command, where plain ``pip install LIBRARY==VERSION`` is not enough;
- ``DTYPE``: the dtype the library computes in, which ``python -m conformance`` judges it by unless told
  otherwise (most libraries route in float32 whatever their inputs);
- ``COVERS``: the spec's functions it implements with the library's code (see ``conformance._coverage``);
- ``SETTINGS``: one line per setting the adapter chose (a switch for determinism, a capacity factor);
- ``FINDINGS``: for every property the library fails, a ``Finding``: the cause, the library's line, and
  whether it is a bug or a legitimate variant of the spec.

Everything else is the reference's (``complete``) and counts as ``n/a`` in the report. The library is imported
on the first call, not when the adapter is imported: listing adapters never needs the libraries installed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import reference

from .._coverage import API, NotCovered


@dataclasses.dataclass(frozen=True)
class Finding:
    """Why a property fails on a library.

    ``properties``: the property names this explains (and ``routers``, if it holds only for some; None: all).
    ``verdict``: "bug" (the library contradicts what it documents or what the paper it cites says),
    "variant" (a documented, deliberate difference from Algorithm 1/2 or eqs. (1)-(11)), or "no validation" (the
    library accepts an input the spec rejects; not a difference of routing).
    ``cause``: what the library does, in one or two sentences. ``where``: file and line(s) in the pinned version.
    """

    properties: tuple[str, ...]
    verdict: str
    cause: str
    where: str
    routers: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.verdict not in ("bug", "variant", "no validation"):
            raise ValueError(f"verdict must be 'bug', 'variant' or 'no validation'; got {self.verdict!r}")

    def explains(self, prop: str, router: str) -> bool:
        return prop in self.properties and (self.routers is None or router in self.routers)


def complete(namespace: dict) -> None:
    """Fill every API name the adapter does not define with the reference's function (a delegation)."""
    for name in API:
        namespace.setdefault(name, getattr(reference, name))


def lazy(module: str):
    """A function returning ``importlib.import_module(module)``, imported once, on the first call."""
    return functools.cache(lambda: importlib.import_module(module))


def torch_tensor(value, dtype="float32"):
    """A NumPy array-like as a CPU torch tensor of ``dtype`` (the library's compute dtype)."""
    import numpy as np
    import torch

    return torch.as_tensor(np.asarray(value, dtype=np.float64)).to(getattr(torch, dtype))


def add_noise(logits, noise):
    """``logits + noise`` for a library that takes logits and has no noise input of its own (the spec adds its
    noise to the logits, Choice [noise-placement]); noise of another shape has no library input: NotCovered."""
    if noise is None:
        return logits
    noise = torch_tensor(noise, str(logits.dtype).removeprefix("torch."))
    if noise.shape != logits.shape:
        shapes = f"{tuple(noise.shape)} vs {tuple(logits.shape)}"
        raise NotCovered(f"noise of another shape than the logits the library takes ({shapes})")
    return logits + noise


def explain(adapter, outcomes: list):
    """Pair each failure with the Findings that explain it; returns (explained [(outcome, [findings])],
    unexplained outcomes, stale findings). A failure can have several causes (a capacity rounded up hides an
    order of dropping behind it): every Finding that names the failed (property, router) explains it, and a
    Finding is stale only if it names nothing that failed."""
    explained, unexplained, used = [], [], set()
    for o in outcomes:
        if o.status != "failed":
            continue
        matches = [f for f in adapter.FINDINGS if f.explains(o.property, o.router)]
        if matches:
            explained.append((o, matches))
            used.update(id(f) for f in matches)
        else:
            unexplained.append(o)
    stale = [f for f in adapter.FINDINGS if id(f) not in used]
    return explained, unexplained, stale
