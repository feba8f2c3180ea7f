"""The reference: a NumPy transcription of the six routers of Liu, Blondel, Riquelme & Puigcerver (TMLR 2024).

It is the project's specification: float64, obvious loops, each line traceable to an equation or an
algorithm line of "Routers in Vision Mixture of Experts: An Empirical Study". It imports only NumPy and
SciPy, never anything else of this project. Every place where the paper is silent is marked in the code
with ``Choice``, a short key in brackets and the reason, and listed under that key in ``reference/README.md``
(``tests/test_reference_choices.py`` keeps the two lists equal).

Dimensions: T tokens in a routing group, D model width, H expert hidden width, E experts,
C capacity (slots per expert), S Soft MoE slots per expert, K (k) experts per token.
"""

from ._affinity import sinkhorn_affinity as sinkhorn_affinity
from ._affinity import softmax_affinity as softmax_affinity
from ._allocation import capacity as capacity
from ._allocation import expert_choice_allocation as expert_choice_allocation
from ._allocation import token_choice_allocation as token_choice_allocation
from ._layer import mlp_experts as mlp_experts
from ._layer import moe_layer as moe_layer
from ._losses import importance_loss as importance_loss
from ._losses import load_loss as load_loss
from ._route import ROUTERS as ROUTERS
from ._route import route as route
from ._soft_moe import soft_moe_routing as soft_moe_routing
from ._sparse_ot import project_simplex as project_simplex
from ._sparse_ot import project_sparse_simplex as project_sparse_simplex
from ._sparse_ot import sparse_ot_affinity as sparse_ot_affinity

__all__ = [
    "ROUTERS",
    "capacity",
    "expert_choice_allocation",
    "importance_loss",
    "load_loss",
    "mlp_experts",
    "moe_layer",
    "project_simplex",
    "project_sparse_simplex",
    "route",
    "sinkhorn_affinity",
    "soft_moe_routing",
    "softmax_affinity",
    "sparse_ot_affinity",
    "token_choice_allocation",
]
