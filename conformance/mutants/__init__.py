"""Deliberately broken implementations: the conformance suite must report every one of them as failing.

Each module here is ``reference`` with one bug, of the kind a port is likely to have. ``MUTANTS`` lists
their module names; ``tests/test_conformance.py`` runs the suite (``ci`` profile) on each and asserts it
fails. Run one by hand: ``python -m conformance --impl conformance.mutants.ties_to_higher_index``.
"""

MUTANTS = (
    "ties_to_higher_index",
    "capacity_off_by_one",
    "softmax_over_tokens",
    "sinkhorn_plan_combine",
    "token_order_reversed",
    "token_major_order",
    "soft_moe_combine_per_expert",
    "sinkhorn_rows_first",
    "load_loss_wrong_threshold",
    "sparse_ot_without_bias_correction",
    "combine_without_weights",
    "sinkhorn_one_iteration_short",
    "route_ignores_noise",
    "zero_plan_slots_to_higher_index",
    "sinkhorn_default_15_iterations",
    "sinkhorn_columns_once",
    "token_choice_drops_whole_token",
    "dropped_tokens_pass_through",
    "noise_at_inference",
    "importance_on_noisy_logits",
    "sinkhorn_exp_overflow",
    # The edges (issue 24): the layer in training, defaults, refusals through every entry point, exp's range,
    # exact ties between identical tokens, stopping rules, gradients.
    "noise_std_one_over_sqrt_e",
    "load_loss_scale_misplaced",
    "route_default_k_2",
    "expert_choice_clips_capacity",
    "softmax_without_max_subtraction",
    "sparse_projection_ties_to_higher_index",
    "sinkhorn_stops_on_mean_error",
    "soft_moe_dispatch_without_gradient",
    # Found by the mutation score: a kill that depended on Hypothesis's draws.
    "soft_moe_width_refusal_index_error",
)
