"""The facts ``reference`` and ``optimized`` each define for themselves, pinned equal.

``optimized`` never imports ``reference`` (DESIGN.md: two independent derivations from the paper), so a few
facts are written twice on purpose. Each pair is pinned here: changing one side alone fails this test.
"""

import optimized
import optimized._checks
import optimized._route
import reference._checks
import reference._route


def test_row_sum_tolerances_agree():
    # How far a row of an affinity may sum from 1 before it is refused, per float width (64, 32, 16 bits).
    assert reference._checks.ROW_SUM_TOLERANCE == optimized._checks.ROW_SUM_TOLERANCE
    assert set(reference._checks.ROW_SUM_TOLERANCE) == {64, 32, 16}


def test_router_names_agree_in_order():
    # The six routers, in the paper's order: token choice first, then expert choice, then Soft MoE.
    assert reference._route.ROUTERS == optimized.ROUTERS
    assert reference._route.TOKEN_CHOICE_ROUTERS == optimized._route.TOKEN_CHOICE_ROUTERS
    assert reference._route.EXPERT_CHOICE_ROUTERS == optimized._route.EXPERT_CHOICE_ROUTERS
    assert len(optimized.ROUTERS) == 6 and optimized.ROUTERS[-1] == "soft_moe"
