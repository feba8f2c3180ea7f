"""What an implementation covers: adapters of third-party libraries implement part of the spec's API.

An implementation that declares nothing covers everything (``reference``, ``optimized``, a complete port). An
adapter declares ``COVERS``, a mapping from the spec's function names it implements with the library's own code
to ``None`` (every call) or, for ``route``, a tuple of the routers the library provides. Every other API name
of the adapter delegates to the reference, and a property whose calls reach only delegated functions is
reported ``n/a``, never ``passed``: a pass must mean the library's code was checked.

An adapter raises ``NotCovered`` for an input its library cannot take at all (k = 2 for a top-1 router, a
capacity factor the library has no way to express); the runner discards that example, as Hypothesis's
``assume`` would, and a property all of whose examples are outside the library's reach is ``n/a``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

from reference import ROUTERS

# The spec's API: the names an implementation exposes (conformance/__init__.py lists them for users).
API = (
    "ROUTERS", "capacity", "softmax_affinity", "sinkhorn_affinity", "sparse_ot_affinity", "token_choice_allocation",
    "expert_choice_allocation", "soft_moe_routing", "route", "mlp_experts", "moe_layer", "importance_loss",
    "load_loss",
)  # fmt: skip


class NotCovered(Exception):
    """Raised by an adapter for an input outside what its library implements; the example is discarded."""


def declared(impl) -> Mapping[str, tuple[str, ...] | None] | None:
    """The implementation's ``COVERS`` (validated), or None if it declares nothing (it covers everything)."""
    covers = getattr(impl, "COVERS", None)
    if covers is None:
        return None
    if not isinstance(covers, Mapping) or not covers:
        raise ValueError(f"{impl.__name__}.COVERS must be a non-empty mapping of API names; got {covers!r}")
    for name, routers in covers.items():
        if name not in API:
            raise ValueError(f"{impl.__name__}.COVERS names {name!r}, which is not in the spec's API {API}")
        if routers is None:
            continue
        if name != "route":
            raise ValueError(f"{impl.__name__}.COVERS[{name!r}] must be None (only route is covered per router)")
        unknown = [r for r in routers if r not in ROUTERS]
        if isinstance(routers, str) or unknown or not routers:
            raise ValueError(f"{impl.__name__}.COVERS['route'] must be a tuple of routers from {ROUTERS}; "
                             f"got {routers!r}")  # fmt: skip
    return covers


def is_covered(covers, name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a call ``impl.name(*args, **kwargs)`` runs the implementation's own code."""
    if covers is None:
        return True
    if name not in covers:
        return False
    routers = covers[name]
    if routers is None:
        return True
    router = args[0] if args else kwargs.get("router")
    return router in routers


def describe(covers) -> str:
    """One line: what the implementation covers."""
    if covers is None:
        return "everything"
    return ", ".join(name if r is None else f"{name} ({', '.join(r)})" for name, r in covers.items())


def check_api(impl) -> None:
    """An implementation that declares no ``COVERS`` claims the whole API: a ValueError lists every name of it the
    module lacks (an adapter's ``COVERS`` says what it implements; the rest is delegated)."""
    if declared(impl) is not None:
        return
    missing = [name for name in API if not hasattr(impl, name)]
    if missing:
        raise ValueError(f"{impl.__name__} declares no COVERS (so it claims the whole API) but lacks {len(missing)} "
                         f"of its {len(API)} names: {', '.join(missing)}; implement them, or declare COVERS as an "
                         "adapter does (conformance/_coverage.py)")  # fmt: skip


def require_library(impl) -> str | None:
    """An adapter's library must be installed before any work: returns its installed version (None for an
    implementation that names no ``LIBRARY``), or raises ValueError saying how to install it."""
    library = getattr(impl, "LIBRARY", None)
    if library is None:
        return None
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        install = getattr(impl, "INSTALL", None) or f"pip install '{library}=={getattr(impl, 'VERSION', None)}'"
        raise ValueError(
            f"{impl.__name__} checks the library {library}, which is not installed: {install} (the version its "
            f"findings were traced in; constraints/adapters.txt), or run tox -e adapters"
        ) from None
