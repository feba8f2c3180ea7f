"""The study's statistics: paired differences within seed, intervals, paired t tests in two stages (the controls,
then the paper's findings), Holm, and what the design can resolve (the exact minimum detectable difference),
for every pre-declared contrast (``design.contrasts``).

``analyse_all`` is the one analysis of a study's rows; the plots and the report are drawn from it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from .. import paper
from .design import StudySpec, contrasts
from .results import finished

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8  # for the minimum detectable difference
METRIC_LABELS = {"test_accuracy": "upstream test accuracy", "fewshot_accuracy": "10-shot accuracy"}
PAPER_METRICS = {"test_accuracy": "jft_precision_at_1", "fewshot_accuracy": "imagenet_10shot"}


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided 95% Student t interval, n); half-width NaN for fewer than 2 values."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(values[0]), math.nan, 1
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half), n


def paired_difference(rows, side_a, side_b, metric) -> list[float] | None:
    """Per seed: mean of ``metric`` over side A's configurations minus the mean over side B's.

    A side is a list of configuration names (``Run.configuration``). Every configuration runs every seed, so the
    difference is taken within each seed (a paired design); only seeds where every configuration finished count.
    None if a configuration is not part of the study.
    """
    by_config = [{r["seed"]: r[metric] for r in finished(rows, c)} for c in (*side_a, *side_b)]
    if not side_a or not side_b or any(not values for values in by_config):
        return None
    seeds = sorted(set.intersection(*(set(v) for v in by_config)))
    a, b = by_config[: len(side_a)], by_config[len(side_a) :]
    return [float(np.mean([v[s] for v in a]) - np.mean([v[s] for v in b])) for s in seeds]


def paired_test(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t test (``scipy.stats.ttest_1samp`` of the within-seed differences).

    Choice: the paired t test rather than the exact sign-flip test: with n seeds the sign-flip test cannot give
    a p-value below 2 / 2^n (0.0625 for 5 seeds), so it could never reject at 5%, let alone after Holm.
    Identical differences (zero spread) give p = 0 if they are not 0, else 1.
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.ptp(d) == 0:
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN).

    Sorted ascending, the i-th smallest of m (i from 0) is multiplied by m - i, running maxima keep the order,
    capped at 1: reject every hypothesis whose adjusted p-value is below alpha, with the family-wise error at
    most alpha.

    >>> holm([0.01, 0.04, 0.03])  # 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; max(0.04 x 1, 0.06) = 0.06
    [0.03, 0.06, 0.06]
    """
    index = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(index)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_difference(sd: float, n: int, m: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean paired difference this design detects with probability ``power``, exactly.

    A two-sided paired t test over ``n`` seeds at the strictest level Holm applies to a family of ``m`` tests
    (alpha / m) rejects when ``|T| > t_c = t_{1 - alpha / (2 m), n - 1}``; under a true difference delta, T is
    noncentral t with n - 1 degrees of freedom and noncentrality ``delta sqrt(n) / sd``. The answer is the
    delta at which ``P(|T| > t_c) = power`` (``scipy.stats.nct``, solved by bisection). ``sd`` is the standard
    deviation of the within-seed differences. (The central-t shortcut ``(t_c + t_{power, n - 1}) sd / sqrt(n)``
    is smaller: with 5 seeds and a family of 4, where it says 4.22 the exact value is 4.45.)

    >>> round(minimum_detectable_difference(1.0, 10, 2), 3)
    1.139
    """
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - alpha / (2 * m), df)

    def shortfall(delta):
        nc = delta * math.sqrt(n) / sd
        wrong_sign = stats.nct.cdf(-critical, df, nc)  # rejecting on the wrong side: tiny, and scipy 1.17
        # returns NaN for it where it is below about 1e-11 (df 4, nc 7.5), so NaN counts as 0 there
        return stats.nct.sf(critical, df, nc) + (0.0 if math.isnan(wrong_sign) else wrong_sign) - power

    high = 2 * (critical + stats.t.ppf(power, df)) * sd / math.sqrt(n)
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10 * sd))


def analyse(rows: list[dict], spec: StudySpec, metric: str, *, tested: bool = True) -> dict:
    """Every contrast on ``metric``, tested in two stages (``tested``; else every contrast is descriptive).

    Stage 1, the controls: paired t tests, Holm over the controls. Stage 2, the paper's findings: tested only if
    every control is **supported** (Holm over the findings); otherwise each is "not tested". Stage 0 contrasts are
    descriptive: an interval, no test. Each contrast carries the sd of its within-seed differences and its own
    exact minimum detectable difference (``minimum_detectable_difference`` at Holm's strictest level of its
    family; one test for a descriptive contrast). The "mdd" of the result is the largest over the tested ones.
    """
    results = paper.load()
    found = []
    for c in contrasts(spec):
        diffs = paired_difference(rows, c.a, c.b, metric)
        mean, half, n = mean_ci(diffs or [])
        papers = {}
        for arch in paper.ARCHITECTURES:
            d = _paper_difference(results, PAPER_METRICS[metric], arch, c.paper_a, c.paper_b, c.factor)
            papers[arch] = "n/r" if d is None else f"{100 * d:+.2f}"
        sd = float(np.std(diffs, ddof=1)) if diffs and len(diffs) > 1 else math.nan
        stage = c.stage if tested else 0
        found.append({"contrast": c, "stage": stage, "diffs": diffs, "mean": mean, "half": half, "n": n, "sd": sd,
                      "p": paired_test(diffs) if diffs and stage else math.nan, "p_holm": math.nan,
                      "paper": papers})  # fmt: skip
    controls = [f for f in found if f["stage"] == 1]
    findings = [f for f in found if f["stage"] == 2]
    for f, adjusted in zip(controls, holm([f["p"] for f in controls]), strict=True):
        f["p_holm"] = adjusted
        f["verdict"] = _verdict(f["mean"], adjusted, f["n"])
    passed = bool(controls) and all(f["verdict"] == "**supported**" for f in controls)
    if passed or not controls:  # without controls (--no-controls) the findings are tested on their own
        for f, adjusted in zip(findings, holm([f["p"] for f in findings]), strict=True):
            f["p_holm"] = adjusted
            f["verdict"] = _verdict(f["mean"], adjusted, f["n"])
    else:
        for f in findings:
            f["p"] = math.nan
            f["verdict"] = "not tested: stage 1 (the controls) did not pass"
    for f in found:
        family = len(controls) if f["stage"] == 1 else len(findings) if f["stage"] == 2 else 1
        f["m"] = max(family, 1)
        f["mdd"] = minimum_detectable_difference(f["sd"], f["n"], f["m"])
        if f["stage"] == 0:
            f["verdict"] = "descriptive" if f["n"] >= 2 else "no interval: fewer than 2 seeds"
    n = min((f["n"] for f in found if f["n"]), default=0)
    tested_mdds = [f["mdd"] for f in found if f["stage"] and not math.isnan(f["mdd"])]
    return {"metric": metric, "contrasts": found, "n": n, "stage1_passed": passed, "tested": tested,
            "mdd": max(tested_mdds) if tested_mdds else math.nan}  # fmt: skip


def analyse_all(rows: list[dict], spec: StudySpec) -> dict[str, dict]:
    """``analyse`` for every metric of the study (``METRIC_LABELS``): upstream accuracy is tested in two stages;
    the 10-shot metric is descriptive (Choice: the paper's findings are tested on one metric, upstream, so that
    the stage-2 family is the paper's findings and nothing else)."""
    return {metric: analyse(rows, spec, metric, tested=metric == "test_accuracy") for metric in METRIC_LABELS}


def _verdict(mean: float, p_holm: float, n: int) -> str:
    if n < 2:
        return "no interval: fewer than 2 seeds"
    if p_holm < ALPHA:
        return "**supported**" if mean > 0 else "**contradicted**"
    return "not resolved"


def _paper_difference(results, metric, arch, side_a, side_b, factor) -> float | None:
    if not side_a or not side_b:
        return None

    def mean(side):
        try:
            values = [paper.lookup(results, metric, arch, r, factor).accuracy for r in side]
        except KeyError:
            return math.nan
        return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))

    diff = mean(side_a) - mean(side_b)
    return None if math.isnan(diff) else diff
