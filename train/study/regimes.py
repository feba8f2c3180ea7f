"""The candidate regimes of the router study: hypotheses about where routing decides, which the pilot
(``pilot.run_pilot``) accepts or rejects. A regime is a preset, its overrides and the capacity every arm runs at.

Imports nothing of ``train``; ``design`` builds a study from a regime (``design.regime_spec``).
"""

from __future__ import annotations

from typing import NamedTuple


class Regime(NamedTuple):
    """A candidate regime of the study: a preset, its overrides and the capacity every arm runs at; optionally the
    slots of Token Choice at k = 1 (``token_choice_capacity``, ``StudySpec``)."""

    preset: str
    overrides: tuple[str, ...]
    factor: float
    description: str
    token_choice_capacity: float | None = None


# Choice: the regimes the pilot weighs (hypotheses; the pilot decides, ``pilot.run_pilot``). All have one MoE
# layer early (depth 2: an MLP block, then the MoE block 1), small experts, 8 part families x 32 variants and 4
# distractors per image (about 35% of the cells background, against 67.5% in the previous study's task).
# "routing-c1": experts of hidden width 32 (a dense MLP of one expert's per-token compute holds fewer detectors
# than there are templates), capacity 1. "routing-small", "routing-tiny": experts of width 16, 8. "routing": 32 at
# capacity c = 0.5 (C = T / 2E: every sparse router must leave half the tokens out). "parts": the previous study's
# regime (4 blocks, MoE on 1 and 3, width 64, 4 families x 16 variants, 2 distractors, capacity 1).
_ROUTING = ("model.depth=2", "data.families=8", "data.variants=32", "data.distractors=4")
REGIMES = {
    "routing-c1": Regime("parts", (*_ROUTING, "model.mlp_dim=32"), 1, "depth 2 (MoE at block 1), experts of "
                         "hidden width 32, 8 part families x 32 variants, 4 distractors per image (about 35% "
                         "background), capacity 1"),
    "routing-small": Regime("parts", (*_ROUTING, "model.mlp_dim=16"), 1, "as `routing-c1` with experts (and the "
                            "dense MLP) of hidden width 16"),
    "routing-tiny": Regime("parts", (*_ROUTING, "model.mlp_dim=8"), 1, "as `routing-c1` with experts (and the "
                           "dense MLP) of hidden width 8"),
    "routing": Regime("parts", (*_ROUTING, "model.mlp_dim=32"), 0.5, "as `routing-c1` at capacity 0.5"),
    # Choice (added after the pilot rejected the four above, issue 26): more, narrower experts, so that the MoE
    # holds many more hidden units than a dense MLP of one expert's width (E = 16 x 8 = 128 against 8; with E = 8
    # of width 8 the MoE tracked the dense ViT, +0.36 points). E = 16, not 32: Soft MoE routes one image's 16
    # tokens, and at c = 1 it has one slot per expert only up to E = 16. Groups of 16 images (T = 256 tokens)
    # keep C = 16 slots per expert at c = 1, as E = 8 with 8-image groups had, so the sparse routers drop no more
    # for lack of slots than before.
    "routing-e16": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.num_experts=16", "model.group_images=16"),
                          1, "as `routing-tiny` (experts and dense MLP of hidden width 8) with E = 16 experts "
                          "and routing groups of 16 images (C = 16 slots per expert at capacity 1)"),
    # Choice: the same with experts of width 16 (E x H = 256 hidden units against the dense ViT's 16): at E = 8
    # this width came closest to the margin (+1.91 points).
    "routing-e16-w16": Regime("parts", (*_ROUTING, "model.mlp_dim=16", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` with experts (and the "
                              "dense MLP) of hidden width 16"),
    # Choice: a task where more of each image carries the label: 16 part families x 16 variants (256 templates,
    # as 8 x 32) and no distractors, so a class's 16 parts fill an image's 16 cells but for the ones missing
    # (each with chance 0.2: about 20% background), against `routing-e16`'s 8 parts and 4 distractors.
    "routing-e16-f16": Regime("parts", ("model.depth=2", "data.families=16", "data.variants=16",
                                        "data.distractors=0", "model.mlp_dim=8", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` on a task of 16 part "
                              "families x 16 variants and no distractors (about 20% background)"),
    # Choice (added after the E = 16 regimes failed): every Token Choice router the pilot trained dropped 19-28% of
    # its tokens at c = 1 (load CV about 0.45: the learned router favours some experts), and a dropped token skips
    # the MoE block's MLP, which the dense ViT gives every token. Here Token Choice at k = 1 has C = 2T / E slots
    # per expert (``StudySpec.token_choice_capacity``): each token still meets at most one expert of the dense
    # MLP's width, few are dropped. Experts of width 16, E = 8: the regime closest to the margin (+1.91 points).
    "routing-small-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=16"), 1, "as `routing-small` (E = 8 experts "
                                "of width 16) with Token Choice at k = 1 given C = 2T/E slots per expert (a "
                                "buffer: it drops few tokens; per-token compute still one expert)", 2),
    # Choice: as `routing-small-tc2` with both blocks MoE (``model.moe_layers=0,1``), against a dense ViT whose two
    # MLPs both have the experts' width: every MLP of the dense ViT (where width 8 -> 32 gains 9.7 points) has its
    # MoE counterpart, in case the first block's MLP is what limits the depth-2 model.
    "routing-both-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=16", "model.moe_layers=0,1"), 1, "as "
                               "`routing-small-tc2` with both blocks MoE (blocks 0 and 1)", 2),
    # Choice (added after `routing-small-tc2` passed MoE - dense, +2.79, but not learned - content-agnostic, +1.03,
    # at seed 100): with the buffer, random routing among 8 experts of width 16 came within 1 point of learned
    # routing. Among 16 experts of width 8 a random assignment gives each token a narrower, less specialized
    # expert, so learned routing should matter more there.
    "routing-e16-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` (E = 16 experts of width "
                              "8) with Token Choice at k = 1 given C = 2T/E slots per expert", 2),
    # Choice (added after `routing-e16-tc2` was rejected, +1.10 at seed 100): `routing-both-tc2` came closest
    # (seed 100: +4.52 and +12.63; seed 101: -1.34 and +5.93); at width 8 the dense ViT has the least capacity
    # (72.05% at seed 100, against 74.97% at 16 and 81.70% at 32), so an MoE in both blocks has the most to add.
    "routing-both-tiny-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.moe_layers=0,1"), 1, "as "
                                    "`routing-both-tc2` with experts (and the dense MLPs) of width 8", 2),
    # Choice (added after `routing-both-tiny-tc2` failed MoE - dense at seed 101, -4.25, where the dense ViT of
    # width 8 reached 80.90% against 72.05% at seed 100): at width 32 the dense ViT is nearer its ceiling (81.70%
    # at seed 100), so its between-seed swing may be smaller than at widths 8 and 16 (6.6-8.9 points).
    "routing-both-c1-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=32", "model.moe_layers=0,1"), 1, "as "
                                  "`routing-both-tc2` with experts (and the dense MLPs) of width 32", 2),
    # Choice (pilot round 3, added after round 2 at 3000 steps rejected `routing-both-tc2` and
    # `routing-both-tiny-tc2`: learned - content-agnostic +4.0 to +6.7 on every seed, MoE - dense +2.62/+0.35 and
    # +3.91/-1.30, the dense ViT of width 8 moving 85.61 -> 91.18 between seeds while Token Choice stayed at
    # 89.5-89.9): the MoE must hold clearly more than the dense ViT for MoE - dense to clear the dense ViT's
    # between-seed swing. With E = 16 experts of width 8 in both blocks each MoE layer has 128 hidden units
    # against the dense MLP's 8 (64 with E = 8); groups of 16 images keep C = 2T/E = 32 slots per expert.
    "routing-both-e16-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.moe_layers=0,1",
                                             "model.num_experts=16", "model.group_images=16"), 1,
                                   "as `routing-both-tiny-tc2` with E = 16 experts (of width 8) in both blocks "
                                   "and routing groups of 16 images", 2),
    # Choice (round 3, after `routing-both-e16-tc2`): a task with 4x the part templates (8 families x 128
    # variants, 1024 templates against 256), so that a class's parts are nearly its own and recognizing them takes
    # more detectors than the dense ViT's MLPs of width 8 hold; the MoE as in `routing-both-tiny-tc2`.
    "routing-both-tiny-v128-tc2": Regime("parts", ("model.depth=2", "data.families=8", "data.variants=128",
                                                   "data.distractors=4", "model.mlp_dim=8", "model.moe_layers=0,1"),
                                         1, "as `routing-both-tiny-tc2` on a task of 8 part families x 128 "
                                         "variants (1024 templates)", 2),
    # Choice (round 3, declared before its runs, 2026-12-05; exploratory runs in studies/routing/exploration.md):
    # experts of width 32, E = 16 in both blocks, against a dense ViT of width 32. Exploration found the dense
    # ViT's accuracy nearly flat in width up to 32 at one seed (91.2-91.6% at widths 8, 16, 32, seed 101) while
    # the MoE's rose (E = 16: 91.6% at width 16, 94.3% at 32); at width 32 learned Token Choice - dense was
    # +1.81, +2.62, +2.15 on seeds 100-102, the largest of the widths tried (16: +0.39, +2.21; 64: +1.72).
    "routing-both-e16-w32-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=32", "model.moe_layers=0,1",
                                                 "model.num_experts=16", "model.group_images=16"), 1,
                                       "as `routing-both-e16-tc2` with experts (and the dense MLPs) of width 32",
                                       2),
    # Choice (round 3, second): the same on 8 families x 64 variants (512 templates; exploration, seed 100:
    # +2.00 against +1.81 with 32 variants).
    "routing-both-e16-w32-v64-tc2": Regime("parts", ("model.depth=2", "data.families=8", "data.variants=64",
                                                     "data.distractors=4", "model.mlp_dim=32",
                                                     "model.moe_layers=0,1", "model.num_experts=16",
                                                     "model.group_images=16"), 1,
                                           "as `routing-both-e16-w32-tc2` on a task of 8 part families x 64 "
                                           "variants (512 templates)", 2),
    # Choice (round 5, declared before its runs, 2026-12-05; exploration in studies/routing/exploration.md): as
    # `routing-both-e16-w32-tc2` with a residual width of 64 instead of 96. With the paired dense control,
    # Token Choice - dense was +2.21 to +2.61 at width 96 (seeds 110, 111, 120, 121: +1.82 at 121) and +5.54, +4.44
    # at width 64 (exploratory seeds 100, 102): a narrower token leaves more of the work to the MLPs, where the
    # MoE adds capacity and the dense ViT does not.
    "routing-both-e16-w32-d64-tc2": Regime("parts", (*_ROUTING, "model.width=64", "model.mlp_dim=32",
                                                     "model.moe_layers=0,1", "model.num_experts=16",
                                                     "model.group_images=16"), 1,
                                           "as `routing-both-e16-w32-tc2` with tokens of width 64 (not 96)", 2),
    "parts": Regime("parts", (), 1, "the previous study's regime: depth 4 (MoE at blocks 1 and 3), hidden width "
                    "64, 4 families x 16 variants, 2 distractors (67.5% background), capacity 1"),
}
