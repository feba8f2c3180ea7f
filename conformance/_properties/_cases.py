"""Hand-worked cases, their arithmetic in comments: the ``@example``s the properties run first."""

import numpy as np

# Algorithm 1, C = 2, k = 2: first choices t0->e0, t1->e1, t2->e1 (e1 now full); second choices t0->e1 refused,
# t1->e0 (slot 1), t2->e0 refused (full). Token-major order would have given t0 the slot (e1, 0) instead.
TC_HAND = {
    "scores": np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]),
    "weights": np.array([[0.5, 0.25], [0.125, 0.75], [1.0, 2.0]]),
    "capacity": 2,
    "k": 2,
}
# Algorithm 1, C = 1, k = 2, three experts: first choices t0->e0, t1->e0 refused (full); second choices t0->e1,
# t1->e2, which is empty: accepted (a refusal at one expert does not drop the token from the others).
TC_ROOM_HAND = {
    "scores": np.array([[0.6, 0.3, 0.1], [0.7, 0.1, 0.2]]),
    "weights": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
    "capacity": 1,
    "k": 2,
}
# Algorithm 2 with ties, C = 2: e0 scores [0.5, 0.9, 0.5, 0.1] -> t1, then the tie 0.5 goes to t0 (lower index);
# e1 scores all 0.25 -> t0, t1.
EC_HAND = {
    "scores": np.array([[0.5, 0.25], [0.9, 0.25], [0.5, 0.25], [0.1, 0.25]]),
    "weights": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]),
    "capacity": 2,
    "k": 1,
}
# Sinkhorn, T = E = 2, logits [[log 3, 0], [0, 0]], one iteration: columns -> [[3/4, 1/2], [1/4, 1/2]],
# rows -> [[3/5, 2/5], [1/3, 2/3]]. The column error after one iteration is |3/5 + 1/3 - 1| = 1/15.
SINKHORN_HAND = {"logits": np.log([[3.0, 1.0], [1.0, 1.0]]), "capacity": 1}
# Sinkhorn converging slowly: 3 tokens prefer e0 and 5 prefer e1, each by a logit gap of 6, but each column
# must carry T/E = 4, so one of the five must be moved across against e^6. After 20 iterations the column error
# is still 2.9e-3 and the 20th iteration changes the plan by about 13 times float32's tolerance: an
# implementation one iteration short fails here even in float32 (a correct float32 one is 1e3 times inside).
SINKHORN_SLOW = {"logits": np.array([[3.0, -3.0]] * 3 + [[-3.0, 3.0]] * 5), "capacity": 4}
# Sparsity-Constrained Expert Choice with C = T = 8 (c = E = 2): six tokens with logits (2, -2), two with
# (-2, 2). Column 0 of the sparse-OT plan: the projection of (alpha + S[:, 0]) / b with b = 4 has six entries
# near 0.245 summing to more than 1, so the threshold clips the two small ones: tokens 6 and 7 get exact zeros.
# Expert 0 fills its 8 slots with tokens 0-5, then the zeros 6, 7 in that order (the lower index first; a port
# filling the zeros by the higher index puts 7 before 6). The zeros are stable under rounding in both dtypes.
ZERO_PLAN_HAND = {
    "router": "sparsity_constrained_expert_choice",
    "x": np.array([[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0]] * 2),
    "weight": np.array([[2.0, -2.0], [-2.0, 2.0], [0.0, 0.0]]),
    "factor": 2,
    "noise": None,
    "experts": (np.zeros((2, 3, 4)), np.zeros((2, 4)), np.zeros((2, 4, 3)), np.zeros((2, 3))),
}
# Capacity where rounding decides: T = 10 tokens, E = 4 experts, factor 2 gives C = round(2 * 10 / 4) = 5 slots
# for every sparse router (Token Choice at k = 2, Expert Choice at c = 2). A port that divides first
# (10 // 4 * 2 = 4), truncates, or rounds up to a multiple of 4 (8) gets another C; without this case the kill
# depended on Hypothesis drawing a T not divisible by E.
CAPACITY_ROUTE_HAND = {
    "router": None,  # every sparse router
    "x": np.sin(np.arange(30.0)).reshape(10, 3),
    "weight": np.cos(np.arange(12.0)).reshape(3, 4),
    "factor": 2,
    "noise": None,
}
# Sparse OT with C = T: seven tokens at logits (0, 0) and one at (0, 0.125), one Adam step. The plan is balanced
# from the start (C = T, nothing clipped), so the gradient is 0 analytically: the reference computes exactly 0
# and stays at 0.5039 (t0, e0), a float32 port gets the rounding of its row sums, ~1e-7, which Adam turns into a
# step of the learning rate (0.50497). A tolerance model that only moves the logits misses this (the false
# alarm of issue 24); ``rounding_sensitivity`` moves the gradient too.
BALANCED_SPARSE_OT = ({"logits": np.array([[0.0, 0.0]] * 7 + [[0.0, 0.125]]), "capacity": 8}, 1)
# The same shape over 20 steps in float64 (a dev draw that failed before the uniform patterns below): six of eight
# tokens at (0, 0), C = T, the gradient 0 analytically at every step. The reference computes exactly 0 throughout;
# optimized's jitted loop rounds its row sums by ~1e-16, every token the same way, and Adam turns that into a plan
# 0.0035 away. The reference with every gradient entry moved by the same 4 roundings ends within 9e-5 of
# optimized's plan: rounding, not a fault, which only a uniform pattern in ``rounding_sensitivity`` reproduces.
BALANCED_SPARSE_OT_20 = (
    {"logits": np.array([[0.0, 0.0], [0.625, 2.75]] + [[0.0, 0.0]] * 5 + [[0.0, 0.6875]]), "capacity": 8},
    20,
)
