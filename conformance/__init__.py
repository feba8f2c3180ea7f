"""The conformance suite: Hypothesis properties that hold an implementation of the six routers to the reference.

An implementation is any importable module exposing the spec's API names (``ROUTERS``, ``capacity``,
``softmax_affinity``, ``sinkhorn_affinity``, ``sparse_ot_affinity``, ``token_choice_allocation``,
``expert_choice_allocation``, ``soft_moe_routing``, ``route``, ``mlp_experts``, ``moe_layer``,
``importance_loss``, ``load_loss``), taking NumPy arrays and returning array-likes. ``reference`` and
``optimized`` are the first two. Run ``python -m conformance --help``; see ``conformance/README.md``.

This package imports ``reference`` and, when asked to, the implementation under test; it is the only part
of the project that holds both.
"""

from ._checks import TOLERANCES as TOLERANCES
from ._coverage import API as API
from ._coverage import NotCovered as NotCovered
from ._properties import PROPERTIES as PROPERTIES
from ._runner import PROFILES as PROFILES
from ._runner import Outcome as Outcome
from ._runner import failure_report as failure_report
from ._runner import run as run
from ._runner import table as table
