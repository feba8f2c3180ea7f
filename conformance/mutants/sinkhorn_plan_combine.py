"""Mutant: the Sinkhorn routers take their combine weights from the Sinkhorn plan, not from the softmax."""

import sys

from ._base import build

sys.modules[__name__] = build("sinkhorn_plan_combine", __doc__, sinkhorn_combine="plan")
