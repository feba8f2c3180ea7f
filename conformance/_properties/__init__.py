"""The properties: invariants every implementation must satisfy, then equivalence with the reference.

Each property draws one case from its strategy and checks it. Invariant properties (groups ``capacity``,
``allocation``, ``normalization``, ``layer``) run on the implementation under test *and* on the reference
before anything is compared; ``equivalence`` properties compare the two; ``bad_input`` checks that both
reject the same invalid calls with the same exception type.

Ties. Scores given directly (allocation functions) are on a dyadic grid, so ties are exact in every dtype and
decided by the documented rule (lower index first), which is therefore tested exactly. Where a *computed*
matrix decides a choice (Sinkhorn and sparse-OT plans inside ``route``), two implementations can round a
near-tie differently; there the comparison is tie-robust: Expert Choice is accepted when each slot's token
has, by the reference's scores, the same score as the reference's token up to the dtype's tie margin;
Token Choice cases whose reference scores hold a near-tie among a token's top k + 1 are discarded with
``assume`` (the allocation is then exact). A float tie never decides a verdict. Exact ties the spec decides
stay decided: the exact zeros of a sparse-OT plan fill the remaining Expert Choice slots by the lower token
index, checked wherever rounding cannot move those zeros.

Precision. Every check judges the implementation by the dtype of its outputs as returned (before this module
converts them to float64), or by the ``--dtype`` asked for (``Context.dtype``) if coarser: tolerances, tie
margins and convergence floors all come from ``_checks``' tables for that dtype. The reference is float64.
"""

from . import (  # noqa: F401  (they register their properties)
    allocation,
    bad_input,
    capacity,
    defaults,
    equivalence,
    extremes,
    gradients,
    layer,
    normalization,
    stopping,
    ties,
    training,
)
from ._base import GROUPS
from ._base import PROPERTIES as PROPERTIES
from ._base import Context as Context
from ._base import Property as Property

# The suite runs (and stops at its first failure) group by group, in the order of GROUPS; within a group, in the
# order the properties are defined.
PROPERTIES.sort(key=lambda p: GROUPS.index(p.group))

