"""Hand-worked cases for capacity, Algorithm 1 (Token Choice) and Algorithm 2 (Expert Choice)."""

import numpy as np
import pytest

import reference as R


def placements(dispatch):
    """The set of (token, expert, slot) triples where dispatch is 1, after checking dispatch is 0/1."""
    assert set(np.unique(dispatch)) <= {0.0, 1.0}
    return {tuple(int(i) for i in idx) for idx in np.argwhere(dispatch == 1.0)}


@pytest.mark.parametrize(
    ("tokens", "experts", "factor", "expected"),
    [
        (1568, 32, 1, 49),  # 8 images x 196 patches / 32 experts = 49 exactly
        (196, 32, 2, 12),  # 2 * 196 / 32 = 12.25 -> 12
        (5, 2, 1, 2),  # 2.5 -> 2: halves round to even
        (7, 2, 1, 4),  # 3.5 -> 4: halves round to even
        (10, 4, 1.3, 3),  # 13 / 4 = 3.25 -> 3
    ],
)
def test_capacity_rounds_half_to_even(tokens, experts, factor, expected):
    assert R.capacity(tokens, experts, factor) == expected


def test_capacity_below_one_names_the_numbers():
    # round(1 * 3 / 32) = round(0.09375) = 0
    with pytest.raises(ValueError, match=r"round\(1.0 \* 3 / 32\) = 0"):
        R.capacity(3, 32, 1)


def test_token_choice_k2_first_choices_before_second_and_full_expert_drops():
    # Token  scores (e0, e1)  1st  2nd
    #   t0   0.9  0.1         e0   e1
    #   t1   0.2  0.8         e1   e0
    #   t2   0.3  0.7         e1   e0
    # C = 2. Round i = 1 (first choices): t0 -> (e0, slot 0); t1 -> (e1, slot 0); t2 -> (e1, slot 1): e1 full.
    # Round i = 2 (second choices): t0 -> e1 is full, dropped; t1 -> (e0, slot 1); t2 -> e0 is full, dropped.
    # Token-major order would have given t0 the slot (e1, 0) and dropped t2's first choice instead.
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    dispatch, combine = R.token_choice_allocation(scores, capacity=2, k=2)
    assert placements(dispatch) == {(0, 0, 0), (1, 1, 0), (2, 1, 1), (1, 0, 1)}
    assert combine[0, 0, 0] == 0.9 and combine[1, 1, 0] == 0.8 and combine[2, 1, 1] == 0.7
    assert combine[1, 0, 1] == 0.2
    assert np.count_nonzero(combine) == 4


def test_token_choice_k1_drops_when_expert_full():
    # Everybody wants e0 (C = 2): t0 and t1 are placed in slots 0, 1; t2 is dropped; e1 stays empty.
    scores = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]])
    dispatch, combine = R.token_choice_allocation(scores, capacity=2, k=1)
    assert placements(dispatch) == {(0, 0, 0), (1, 0, 1)}
    np.testing.assert_array_equal(combine[:, 0, :], [[0.6, 0.0], [0.0, 0.7], [0.0, 0.0]])


def test_token_choice_ties_prefer_lower_expert_and_weights_give_combine():
    # Token 0 has equal scores for e0, e1, e2: its first choice is e0, its second e1.
    scores = np.array([[0.5, 0.5, 0.5]])
    weights = np.array([[0.1, 0.2, 0.3]])
    dispatch, combine = R.token_choice_allocation(scores, capacity=1, k=2, weights=weights)
    assert placements(dispatch) == {(0, 0, 0), (0, 1, 0)}
    np.testing.assert_array_equal(combine[0, :, 0], [0.1, 0.2, 0.0])


def test_expert_choice_with_ties():
    # Expert e0 scores tokens [0.5, 0.9, 0.5, 0.1]: slot 0 <- t1 (0.9); slot 1 <- the tie 0.5 between t0 and
    # t2 goes to the lower index t0. Expert e1 scores all tokens 0.3: slots <- t0, t1.
    scores = np.array([[0.5, 0.3], [0.9, 0.3], [0.5, 0.3], [0.1, 0.3]])
    dispatch, combine = R.expert_choice_allocation(scores, capacity=2)
    assert placements(dispatch) == {(1, 0, 0), (0, 0, 1), (0, 1, 0), (1, 1, 1)}
    assert combine[1, 0, 0] == 0.9 and combine[0, 0, 1] == 0.5 and combine[0, 1, 0] == 0.3


def test_expert_choice_fills_every_slot_and_uses_weights():
    rng = np.random.default_rng(0)
    scores, weights = rng.random((6, 3)), rng.random((6, 3))
    dispatch, combine = R.expert_choice_allocation(scores, capacity=4, weights=weights)
    np.testing.assert_array_equal(dispatch.sum(axis=0), np.ones((3, 4)))  # every slot holds one token
    for r in range(3):
        chosen = np.argmax(dispatch[:, r, :], axis=0)
        np.testing.assert_array_equal(chosen, np.argsort(-scores[:, r])[:4])  # best four, in order
        np.testing.assert_array_equal(combine[chosen, r, np.arange(4)], weights[chosen, r])


def test_expert_choice_capacity_above_tokens_is_an_error():
    with pytest.raises(ValueError, match=r"capacity must be at most the number of tokens T = 2.*got 3"):
        R.expert_choice_allocation(np.zeros((2, 2)), capacity=3)
