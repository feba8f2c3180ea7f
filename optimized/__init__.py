"""The optimized backend: the six routers, the MoE layer and the ViT-MoE in JAX + Equinox.

Same API as ``reference`` (name for name, same semantics, same ``Choice:`` decisions), on JAX arrays,
jit-compatible with capacity, k and iteration counts static. It never imports ``reference``: the two are
independent derivations from the paper, which is what makes their agreement mean something.

Expert parallelism (``make_mesh``, ``shardings``, ``moe_over_groups``): under a (``data``, ``expert``) device
mesh set with ``jax.set_mesh``, the ViT's MoE layers run their experts sharded over ``expert`` and move the
slot buffers with two ``all_to_all`` per layer; without one, they are a ``vmap`` over routing groups.

Dimensions: T tokens in a routing group, D model width, H expert hidden width, E experts,
C capacity (slots per expert), S Soft MoE slots per expert, K (k) experts per token, B images, G groups.
"""

from ._gradients import layer_gradients as layer_gradients
from ._layer import METRIC_NAMES as METRIC_NAMES
from ._layer import MLPExperts as MLPExperts
from ._layer import MoELayer as MoELayer
from ._layer import apply_routing as apply_routing
from ._layer import gather_slots as gather_slots
from ._layer import importance_loss as importance_loss
from ._layer import load_loss as load_loss
from ._layer import mlp_experts as mlp_experts
from ._layer import moe_layer as moe_layer
from ._layer import scatter_slots as scatter_slots
from ._parallel import DATA as DATA
from ._parallel import EXPERT as EXPERT
from ._parallel import check_expert_parallel as check_expert_parallel
from ._parallel import is_expert_leaf as is_expert_leaf
from ._parallel import make_mesh as make_mesh
from ._parallel import moe_over_groups as moe_over_groups
from ._parallel import shardings as shardings
from ._route import ROUTERS as ROUTERS
from ._route import route as route
from ._route import sparse_routing as sparse_routing
from ._routing import Routing as Routing
from ._routing import capacity as capacity
from ._routing import dense_routing as dense_routing
from ._routing import expert_choice_allocation as expert_choice_allocation
from ._routing import expert_choice_routing as expert_choice_routing
from ._routing import sinkhorn_affinity as sinkhorn_affinity
from ._routing import soft_moe_routing as soft_moe_routing
from ._routing import softmax_affinity as softmax_affinity
from ._routing import sparse_ot_affinity as sparse_ot_affinity
from ._routing import token_choice_allocation as token_choice_allocation
from ._routing import token_choice_routing as token_choice_routing
from ._vit import VARIANTS as VARIANTS
from ._vit import ViTMoE as ViTMoE
from ._vit import ViTMoEConfig as ViTMoEConfig
from ._vit import with_layout as with_layout
