"""The golden cases: fixed seeds, small shapes, inputs on a dyadic grid, no near-tie deciding anything.

Every input is an integer over 8 or 16 within a few units, so it is exact in float32 as well as float64, and
a port reads exactly the numbers the reference saw. Discrete outputs (dispatch tensors, capacity) of a case
must not hinge on a near-tie of a *computed* quantity (softmax of computed logits, a Sinkhorn or sparse-OT
plan, a Sinkhorn stopping test, the support of the sparse-OT columns, the sign of an Adam gradient): the
guards below reject such inputs with ``NearTie`` and the search moves on to the next seed. Ties in scores
handed directly to the allocation functions are kept on purpose: they are exact, and decided by the
documented lower-index rule.

Dimensions: T tokens, D model width, H expert hidden width, E experts, C capacity, S Soft MoE slots.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import reference

# Consecutive computed scores that decide a choice must be more than GAP apart, or exactly equal.
GAP = 1e-3
# The same for the sparse-OT solver's top-C selections at each Adam step, in plan units. float32 rounding moves
# the duals by about 1e-6 over 20 steps: in 900 random draws replayed through optimized in float32, every draw
# whose smallest such gap exceeded 1e-5 gave the float64 plan to 2e-6.
SOLVER_GAP = 1e-4
# A Sinkhorn stopping test must not be within this fraction of tol.
TOL_MARGIN = 0.02
# Adam's constants in reference.sparse_ot_affinity (README choice sparse-ot-adam, as optax.adam).
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
MAX_SEED_TRIES = 1000

DISPATCH_COMBINE = (("dispatch", "exact"), ("combine", "close"))
SOFT_DISPATCH_COMBINE = (("dispatch", "close"), ("combine", "close"))


class Ref(NamedTuple):
    """An argument that is the case's input array ``name``."""

    name: str


class Call(NamedTuple):
    """An argument that is the result of calling the implementation's ``function(*args)``."""

    function: str
    args: tuple


@dataclasses.dataclass
class Case:
    function: str
    args: list
    kwargs: dict
    arrays: dict[str, np.ndarray]  # input arrays by their short name
    outputs: tuple[tuple[str, str], ...]  # (short name, "exact" | "close"), in the order the call returns them
    note: str = ""
    apply: list | None = None  # the call returns a function: call it with each argument list in turn
    name: str = ""  # set by first_passing from the Builder
    seed: int | None = None


class NearTie(Exception):
    """The drawn inputs put a computed near-tie in charge of a discrete decision: try another seed."""


class Builder(NamedTuple):
    """A named case drawn from a seeded generator; ``build`` raises ``NearTie`` to ask for the next seed."""

    name: str
    build: Callable[[np.random.Generator], Case]
    note: str = ""


# ------------------------------------------------------------------------------------------------ inputs


def grid(rng: np.random.Generator, shape, low: float, high: float, denominator: int) -> np.ndarray:
    """Uniform draws from ``{low, low + 1/denominator, ..., high}``: exact in float32."""
    return rng.integers(round(low * denominator), round(high * denominator) + 1, size=shape) / denominator


# ------------------------------------------------------------------------------------------------ guards


def require_separated(scores: np.ndarray, count: int, axis: int, what: str) -> None:
    """Along ``axis``, the ``count`` largest scores are each more than GAP from the next, or exactly equal to it."""
    ordered = -np.sort(-scores, axis=axis)
    top = np.take(ordered, np.arange(min(count, scores.shape[axis])), axis=axis)
    gaps = -np.diff(top, axis=axis)
    near = (gaps > 0) & (gaps <= GAP)
    if near.any():
        raise NearTie(f"{what}: two of the top {count} scores are {gaps[near].min():.2g} apart")


def sinkhorn_stopping_iteration(logits: np.ndarray, num_iters: int, tol: float) -> int:
    """The iteration at which ``sinkhorn_affinity(logits, num_iters=num_iters, tol=tol)`` stops, far from tol."""
    num_tokens, num_experts = logits.shape
    for i in range(1, num_iters + 1):
        plan = reference.sinkhorn_affinity(logits, num_iters=i)
        error = np.max(np.abs(plan.sum(axis=0) - num_tokens / num_experts))
        if abs(error - tol) <= TOL_MARGIN * tol:
            raise NearTie(f"Sinkhorn column error {error:.6g} after iteration {i} is within 2% of tol = {tol}")
        if error < tol:
            return i
    raise NearTie(f"Sinkhorn never reaches tol = {tol} in {num_iters} iterations")


def sparse_ot_guard(logits: np.ndarray, slots: int, *, num_iters: int = 20, learning_rate: float = 1e-2) -> np.ndarray:
    """Replay reference.sparse_ot_affinity's Adam steps and reject near-ties in its discrete decisions.

    At every step each column keeps its C largest entries of ``(alpha + S[:, r]) / b``: when the C-th gets mass,
    it must be more than SOLVER_GAP (in plan units) above the next, or equal to it. Adam divides by the root mean
    square of each token's gradients so far (its first step moves by ``lr * sign(grad)``): that divisor must
    exceed GAP, or float32 rounding of a near-zero gradient would decide the step. This rejects the degenerate
    inputs where every row of the plan sums to 1 exactly. In the final plan, a kept entry projected to exactly 0
    must be more than GAP (in plan units) below the threshold, or float32 could leave it a tiny positive that
    Expert Choice would prefer to the other zeros. Returns the plan, checked equal to the reference's.
    """
    utility = reference.softmax_affinity(logits)
    num_tokens, num_experts = logits.shape
    b = num_tokens / num_experts
    alpha = np.zeros(num_tokens)
    first = np.zeros(num_tokens)
    second = np.zeros(num_tokens)
    for step in range(1, num_iters + 2):
        values = (alpha[:, None] + utility) / b
        plan = np.stack([b * reference.project_sparse_simplex(values[:, r], slots) for r in range(num_experts)], 1)
        if slots < num_tokens:
            for r in range(num_experts):
                ordered = np.sort(values[:, r])[::-1]
                gap = b * (ordered[slots - 1] - ordered[slots])  # in plan units
                last_mass = plan[np.argsort(-values[:, r], kind="stable")[slots - 1], r]
                if 0 < gap <= SOLVER_GAP and last_mass > 0:
                    raise NearTie(
                        f"sparse OT step {step}, column {r}: the C-th kept entry (mass {last_mass:.2g}) "
                        f"is {gap:.2g} above the first dropped one"
                    )
        if step > num_iters:
            break
        grad = plan.sum(axis=1) - 1.0
        first = ADAM_B1 * first + (1 - ADAM_B1) * grad
        second = ADAM_B2 * second + (1 - ADAM_B2) * grad**2
        second_unbiased = second / (1 - ADAM_B2**step)
        if (np.sqrt(second_unbiased) <= GAP).any():
            raise NearTie(
                f"sparse OT step {step}: Adam divides by a gradient scale {np.sqrt(second_unbiased).min():.2g}"
            )
        alpha = alpha - learning_rate * (first / (1 - ADAM_B1**step)) / (np.sqrt(second_unbiased) + ADAM_EPS)
    for r in range(num_experts):  # a kept entry just below the threshold would be a tiny positive in float32
        kept = np.argsort(-values[:, r], kind="stable")[:slots]
        mass = plan[kept, r] / b
        theta = values[kept[mass > 0][0], r] - mass[mass > 0][0]
        margin = b * (theta - values[kept[mass == 0], r])
        if (margin <= GAP).any():
            raise NearTie(f"sparse OT: a zero of column {r} is {margin.min():.2g} below the projection threshold")
    expected = reference.sparse_ot_affinity(logits, slots, num_iters=num_iters, learning_rate=learning_rate)
    if not np.allclose(plan, expected, rtol=0, atol=1e-12):
        raise RuntimeError("the guard's replay of the sparse-OT solver no longer matches reference.sparse_ot_affinity")
    return plan


# ------------------------------------------------------------------------------------------------ cases


def capacity_cases() -> list[Case]:
    table = [
        (16, 4, 1, "16 / 4 = 4"),
        (16, 4, 2, "2 * 16 / 4 = 8"),
        (12, 4, 1.5, "1.5 * 12 / 4 = 4.5 rounds half to even: 4"),
        (12, 8, 1, "12 / 8 = 1.5 rounds half to even: 2"),
        (10, 4, 1, "10 / 4 = 2.5 rounds half to even: 2"),
        (14, 4, 1, "14 / 4 = 3.5 rounds half to even: 4"),
        (8, 2, 1.25, "1.25 * 8 / 2 = 5"),
        (16, 4, 0.25, "0.25 * 16 / 4 = 1"),
        (12, 2, 2, "2 * 12 / 2 = 12"),
    ]
    return [
        Case(
            "capacity",
            [t, e, f],
            {},
            {},
            (("capacity", "exact"),),
            note,
            name=f"capacity-T{t}-E{e}-f{f}".replace(".", "p"),
        )
        for t, e, f, note in table
    ]


def softmax_cases() -> list[Builder]:
    def build(shape, low, high, denominator, shift=0.0):
        def case(rng):
            logits = grid(rng, shape, low, high, denominator) + shift
            return Case("softmax_affinity", [Ref("logits")], {}, {"logits": logits}, (("affinity", "close"),))

        return case

    return [
        Builder("softmax_affinity-T8-E4", build((8, 4), -3, 3, 8)),
        Builder("softmax_affinity-T12-E2", build((12, 2), -4, 4, 16)),
        Builder(
            "softmax_affinity-T8-E4-shift100",
            build((8, 4), -3, 3, 8, 100.0),
            "logits near 100: exp overflows float32 unless the row maximum is subtracted",
        ),
    ]


SLOW_SINKHORN = np.array([[3.0, -3.0]] * 3 + [[-3.0, 3.0]] * 5)


def sinkhorn_cases() -> list[Builder]:
    def build(shape, kwargs):
        def case(rng):
            logits = grid(rng, shape, -2, 2, 8)
            note = ""
            if kwargs.get("tol") is not None:
                stop = sinkhorn_stopping_iteration(logits, kwargs["num_iters"], kwargs["tol"])
                if stop < 2 or stop >= kwargs["num_iters"]:
                    raise NearTie(f"stops at iteration {stop}: tol should end the loop early but not at once")
                note = f"stops after iteration {stop} of {kwargs['num_iters']}"
            return Case("sinkhorn_affinity", [Ref("logits")], kwargs, {"logits": logits}, (("plan", "close"),), note)

        return case

    return [
        Builder("sinkhorn_affinity-T12-E4-iters1", build((12, 4), {"num_iters": 1})),
        Builder("sinkhorn_affinity-T12-E4-iters20", build((12, 4), {"num_iters": 20}), "20 is the default"),
        Builder("sinkhorn_affinity-T12-E4-tol", build((12, 4), {"num_iters": 100, "tol": 1e-3})),
        Builder(
            "sinkhorn_affinity-T8-E2-slow-default",
            lambda rng: Case("sinkhorn_affinity", [Ref("logits")], {}, {"logits": SLOW_SINKHORN}, (("plan", "close"),)),
            "called without num_iters, as users call it (the default, 20); 3 tokens prefer e0 and 5 prefer e1 by 6: "
            "slow to converge, the 20th iteration still moves the plan by 13 times float32's tolerance",
        ),
    ]


def sparse_ot_cases() -> list[Builder]:
    def build(shape, slots, kwargs):
        def case(rng):
            logits = grid(rng, shape, -2, 2, 8)
            sparse_ot_guard(logits, slots, **kwargs)
            return Case("sparse_ot_affinity", [Ref("logits"), slots], kwargs, {"logits": logits}, (("plan", "close"),))

        return case

    return [
        Builder("sparse_ot_affinity-T16-E4-C4", build((16, 4), 4, {}), "C < T: at most 4 nonzeros per column"),
        Builder(
            "sparse_ot_affinity-T8-E2-C8",
            build((8, 2), 8, {"num_iters": 10, "learning_rate": 0.0625}),
            "C = T: no sparsity constraint",
        ),
    ]


def allocation_cases() -> list[Builder]:
    def allocation(function, shape, extra_args, weighted, coarse):
        def case(rng):
            scores = grid(rng, shape, 0, 0.5, 4) if coarse else grid(rng, shape, 0, 1, 16)
            arrays = {"scores": scores}
            kwargs = {}
            if weighted:
                arrays["weights"] = grid(rng, shape, 0, 1, 16)
                kwargs["weights"] = Ref("weights")
            return Case(function, [Ref("scores"), *extra_args], kwargs, arrays, DISPATCH_COMBINE)

        return case

    def token_choice(shape, slots, k, weighted, coarse=False):
        return allocation("token_choice_allocation", shape, [slots, k], weighted, coarse)

    def expert_choice(shape, slots, weighted, coarse=False):
        return allocation("expert_choice_allocation", shape, [slots], weighted, coarse)

    ties = "scores in {0, 1/4, 1/2}: many exact ties, decided by the lower-index rule"
    return [
        Builder("token_choice_allocation-k1-C2", token_choice((12, 4), 2, 1, False), "capacity 2 < 12/4: drops"),
        Builder("token_choice_allocation-k2-C4", token_choice((12, 4), 4, 2, False)),
        Builder("token_choice_allocation-k1-C2-weights", token_choice((12, 4), 2, 1, True)),
        Builder("token_choice_allocation-k2-C4-weights", token_choice((12, 4), 4, 2, True)),
        Builder("token_choice_allocation-k2-C4-ties", token_choice((12, 4), 4, 2, False, coarse=True), ties),
        Builder("expert_choice_allocation-C3", expert_choice((12, 4), 3, False)),
        Builder("expert_choice_allocation-C3-ties", expert_choice((12, 4), 3, False, coarse=True), ties),
        Builder("expert_choice_allocation-C12-weights", expert_choice((12, 2), 12, True), "C = T"),
    ]


def soft_moe_cases() -> list[Builder]:
    def build(tokens, experts, slots):
        def case(rng):
            arrays = {"x": grid(rng, (tokens, 3), -2, 2, 8), "phi": grid(rng, (3, experts, slots), -1, 1, 8)}
            return Case("soft_moe_routing", [Ref("x"), Ref("phi")], {}, arrays, SOFT_DISPATCH_COMBINE)

        return case

    return [
        Builder("soft_moe_routing-T8-E4-S2", build(8, 4, 2)),
        Builder("soft_moe_routing-T12-E2-S3", build(12, 2, 3)),
    ]


def choosing_matrix(router: str, logits: np.ndarray, slots: int) -> np.ndarray:
    """The matrix whose entries decide the allocation of ``router`` (README choice combine-weights)."""
    if router.startswith("softmax"):
        return reference.softmax_affinity(logits)
    if router.startswith("sinkhorn"):
        return reference.sinkhorn_affinity(logits)
    return sparse_ot_guard(logits, slots)


def route_case(router: str, factor: int, *, noisy: bool = False, tokens: int = 16, experts: int = 4):
    def case(rng):
        x = grid(rng, (tokens, 3), -2, 2, 8)
        if router == "soft_moe":
            phi = grid(rng, (3, experts, tokens // experts), -1, 1, 8)
            return Case(
                "route",
                [router, Ref("x"), Ref("weight")],
                {"factor": factor},
                {"x": x, "weight": phi},
                SOFT_DISPATCH_COMBINE,
                f"phi (D, E, S) = (3, {experts}, {tokens // experts})",
            )
        w = grid(rng, (3, experts), -1, 1, 8)
        arrays, kwargs = {"x": x, "weight": w}, {"factor": factor}
        logits = x @ w
        if noisy:
            arrays["noise"] = grid(rng, (tokens, experts), -1, 1, 16)
            kwargs["noise"] = Ref("noise")
            logits = logits + arrays["noise"]
        slots = reference.capacity(tokens, experts, factor)
        scores = choosing_matrix(router, logits, slots)
        if "token_choice" in router:
            require_separated(scores, factor + 1, axis=1, what=f"{router}: a token's top k + 1 scores")
        else:
            require_separated(scores, slots + 1, axis=0, what=f"{router}: an expert's top C + 1 scores")
        note = f"C = capacity({tokens}, {experts}, {factor}) = {slots}" + (", noisy logits" if noisy else "")
        return Case("route", [router, Ref("x"), Ref("weight")], kwargs, arrays, DISPATCH_COMBINE, note)

    return case


def route_cases() -> list[Builder]:
    builders = []
    for router in reference.ROUTERS:
        for factor in (1,) if router == "soft_moe" else (1, 2):
            builders.append(Builder(f"route-{router}-f{factor}", route_case(router, factor)))
    # Noise enters both the choosing plan and the combine weights of Sinkhorn Token Choice.
    builders.append(Builder("route-sinkhorn_token_choice-f1-noise", route_case("sinkhorn_token_choice", 1, noisy=True)))
    return builders


def expert_weights(rng, experts: int, width: int = 3, hidden: int = 4) -> dict[str, np.ndarray]:
    return {
        "w1": grid(rng, (experts, width, hidden), -1, 1, 8),
        "b1": grid(rng, (experts, hidden), -0.5, 0.5, 8),
        "w2": grid(rng, (experts, hidden, width), -1, 1, 8),
        "b2": grid(rng, (experts, width), -0.5, 0.5, 8),
    }


EXPERT_ARGS = (Ref("w1"), Ref("b1"), Ref("w2"), Ref("b2"))


def layer_cases() -> list[Builder]:
    def experts_case(experts):
        def case(rng):
            arrays = {**expert_weights(rng, experts), "inputs": grid(rng, (5, 3), -2, 2, 8)}
            return Case(
                "mlp_experts",
                list(EXPERT_ARGS),
                {},
                arrays,
                tuple((f"y{r}", "close") for r in range(experts)),
                "outputs y_r = experts(r, inputs)",
                apply=[[r, Ref("inputs")] for r in range(experts)],
            )

        return case

    def moe_case(router, factor):
        def case(rng):
            x = grid(rng, (12, 3), -2, 2, 8)
            shape = (3, 4, 3) if router == "soft_moe" else (3, 4)
            weight = grid(rng, shape, -1, 1, 8)
            dispatch, combine = reference.route(router, x, weight, factor=factor)
            arrays = {"x": x, "dispatch": dispatch, "combine": combine, **expert_weights(rng, 4)}
            note = f"dispatch, combine = reference.route({router!r}, x, weight, factor={factor}), weight not stored"
            return Case(
                "moe_layer",
                [Ref("x"), Ref("dispatch"), Ref("combine"), Call("mlp_experts", EXPERT_ARGS)],
                {},
                arrays,
                (("y", "close"),),
                note,
            )

        return case

    return [
        Builder("mlp_experts-E4", experts_case(4)),
        Builder("moe_layer-softmax_token_choice-f2", moe_case("softmax_token_choice", 2)),
        Builder("moe_layer-sparsity_constrained_expert_choice-f1", moe_case("sparsity_constrained_expert_choice", 1)),
        Builder("moe_layer-soft_moe-f1", moe_case("soft_moe", 1)),
    ]


def loss_cases() -> list[Builder]:
    def importance(tokens, experts):
        def case(rng):
            gates = rng.multinomial(16, np.full(experts, 1 / experts), size=tokens) / 16  # rows sum to 1
            return Case("importance_loss", [Ref("gates")], {}, {"gates": gates}, (("loss", "close"),))

        return case

    def load(tokens, experts, noise_std, k):
        def case(rng):
            logits = grid(rng, (tokens, experts), -2, 2, 8)
            noisy = logits + grid(rng, (tokens, experts), -1, 1, 16)
            return Case(
                "load_loss",
                [Ref("logits"), Ref("noisy_logits"), noise_std, k],
                {},
                {"logits": logits, "noisy_logits": noisy},
                (("loss", "close"),),
            )

        return case

    return [
        Builder("importance_loss-T8-E4", importance(8, 4)),
        Builder("importance_loss-T12-E2", importance(12, 2)),
        Builder("load_loss-T8-E4-k1", load(8, 4, 0.5, 1)),
        Builder("load_loss-T12-E4-k2", load(12, 4, 0.25, 2)),
    ]


# ------------------------------------------------------------------------------------------------ search


def first_passing(builder: Builder) -> Case:
    """Draw the case from seeds ``crc32(name), crc32(name) + 1, ...`` until its guards pass."""
    base = zlib.crc32(builder.name.encode())
    reasons = []
    for seed in range(base, base + MAX_SEED_TRIES):
        try:
            case = builder.build(np.random.default_rng(seed))
        except NearTie as err:
            reasons.append(str(err))
            continue
        case.name, case.seed = builder.name, seed
        case.note = "; ".join(part for part in (builder.note, case.note) if part)
        return case
    raise RuntimeError(
        f"no seed in [{base}, {base + MAX_SEED_TRIES}) passes the guards of {builder.name}: last reason: {reasons[-1]}"
    )


def all_cases() -> list[Case]:
    builders = [
        *softmax_cases(),
        *sinkhorn_cases(),
        *sparse_ot_cases(),
        *allocation_cases(),
        *soft_moe_cases(),
        *route_cases(),
        *layer_cases(),
        *loss_cases(),
    ]
    return capacity_cases() + [first_passing(b) for b in builders]
