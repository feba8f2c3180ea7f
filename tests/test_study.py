"""The router study (``train.study``): statistics by hand, the paper's tables, the report's logic, and the whole
pipeline in ``--quick`` mode (train, resume without retraining, CSV, report, plots)."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from train import paper, study
from train.study.pilot import PILOT_SEEDS, control_differences
from train.workdir import ConfigMismatchError

# ------------------------------------------------------------------------------------------------ statistics


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sample sd 1, t(0.975, df=2) = 4.302653; half-width 4.302653 / sqrt(3) = 2.484138.
    mean, half, n = study.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(2.484138, abs=1e-6)
    # one value: no interval; NaNs (diverged runs) are not counted
    assert study.mean_ci([0.5, math.nan])[:1] == (0.5,) and math.isnan(study.mean_ci([0.5])[1])
    assert study.mean_ci([])[2] == 0


def _row(configuration, seed, test, fewshot=None, status="finished"):
    return {"configuration": configuration, "seed": seed, "status": status, "test_accuracy": test,
            "fewshot_accuracy": test if fewshot is None else fewshot}  # fmt: skip


def test_paired_difference_is_within_seed():
    # seed 0: A = 0.5, B = 0.4; seed 1: A = 0.7, B = 0.6 -> differences 0.1, 0.1 (a between-seed shift of 0.2
    # that an unpaired comparison would count as noise cancels out).
    rows = [_row("soft_moe-c1", 0, 0.5), _row("soft_moe-c1", 1, 0.7),
            _row("softmax_token_choice-c1", 0, 0.4), _row("softmax_token_choice-c1", 1, 0.6)]  # fmt: skip
    diffs = study.paired_difference(rows, ["soft_moe-c1"], ["softmax_token_choice-c1"], "test_accuracy")
    assert diffs == pytest.approx([0.1, 0.1])
    # identical non-zero differences: no spread, p = 0
    assert study.paired_test(diffs) == 0.0 and study.paired_test([0.0, 0.0]) == 1.0
    # a seed missing on one side is left out, not imputed; a configuration not in the study gives None
    rows.append(_row("soft_moe-c1", 2, 0.9))
    assert len(study.paired_difference(rows, ["soft_moe-c1"], ["softmax_token_choice-c1"], "test_accuracy")) == 2
    assert study.paired_difference(rows, ["soft_moe-c1"], ["dense"], "test_accuracy") is None


def test_paired_t_and_holm_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641, df 2: two-sided p = 0.07418
    assert study.paired_test([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-5)
    # Holm: sorted 0.01, 0.03, 0.04 -> 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, max(0.04 x 1, 0.06) = 0.06
    assert study.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a NaN (a contrast without data) is not part of the family: 0.02 x 2 = 0.04, max(0.5 x 1, 0.04) = 0.5
    adjusted = study.holm([0.5, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    # 0.8 x 2 = 1.6, capped at 1; max(0.9 x 1, 1) = 1: never above 1, never below an earlier step
    assert study.holm([0.9, 0.8]) == [1.0, 1.0]


def test_minimum_detectable_difference_is_exact():
    # The central-t shortcut (t(0.975, 4) + t(0.8, 4)) / sqrt(5) = 1.662476 (n = 5, m = 1) and, at m = 5,
    # (t(0.995, 4) + t(0.8, 4)) / sqrt(5) = 2.479826 understate it; the exact values solve P(|T| > t_c) = 0.8 for
    # T noncentral t(4, delta sqrt(5) / sd).
    exact = study.minimum_detectable_difference(1.0, 5, 1)
    assert exact == pytest.approx(1.681997, abs=1e-5) and exact > 1.662476 + 0.01
    assert study.minimum_detectable_difference(1.0, 5, 5) == pytest.approx(2.628974, abs=1e-5)
    assert study.minimum_detectable_difference(2.0, 5, 1) == pytest.approx(2 * exact)  # linear in sd
    assert math.isnan(study.minimum_detectable_difference(1.0, 1, 1))
    # By simulation: 40,000 paired t tests of 5 seeds at a true difference of the exact value reject 80% of the
    # time (standard error 0.2 points); at the shortcut's value, less (about 78.7%).
    from scipy import stats

    rng = np.random.default_rng(0)
    for delta, lo, hi in ((exact, 0.79, 0.81), (1.662476, 0.775, 0.795)):
        d = rng.normal(delta, 1.0, (40_000, 5))
        t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(5))
        power = np.mean(np.abs(t) > stats.t.ppf(0.975, 4))
        assert lo < power < hi, (delta, power)


def _constructed_rows(spec, level, noise, wobble):
    rows = []
    for seed, eps in noise.items():
        for configuration in study.configurations(spec):
            rows.append(_row(configuration, seed, level[configuration] + eps + wobble.get(configuration, 0) * (
                1 if seed % 2 else -1)))  # fmt: skip
    return rows


def test_contrasts_are_declared_by_the_design():
    # the paper's numbering: (ii) Expert Choice beats Token Choice, (iii) Soft MoE beats the sparse routers
    keys = [(c.key, c.factor, c.stage) for c in study.contrasts(study.StudySpec())]
    assert keys == [("moe-dense", 1, 1), ("learned-agnostic", 1, 1), ("ii", 1, 2), ("iii", 1, 2)]
    full = [(c.key, c.factor) for c in study.contrasts(study.full_spec(factors=(0.5, 1)))]
    assert full == [(k, f) for f in (0.5, 1) for k in ("moe-dense", "learned-agnostic", "ii", "iii",
                                                      "sinkhorn-softmax", "figure3", "learned-hash")]  # fmt: skip
    (ii,) = [c for c in study.contrasts(study.full_spec(factors=(0.5,))) if c.key == "ii"]
    assert ii.a == ("softmax_expert_choice-c0.5", "sinkhorn_expert_choice-c0.5",
                    "sparsity_constrained_expert_choice-c0.5")  # fmt: skip
    assert ii.b == ("softmax_token_choice-c0.5", "sinkhorn_token_choice-c0.5")


def test_regime_configs():
    # A capacity below 1: Token Choice keeps k = 1 at capacity factor 0.5, Expert Choice takes c = 0.5; the dense
    # control has one expert's MLP; the content-agnostic control draws its logits at random; the hash is frozen.
    spec = study.regime_spec("routing", steps=5, seeds=(0,), hash_arm=True)
    assert spec.factors == (0.5,) and "model.depth=2" in spec.overrides
    configs = {run.configuration: study.run_config(spec, run, 5, 1e-3) for run in study.plan_runs(spec)}
    assert list(configs) == ["softmax_token_choice-c0.5", "softmax_expert_choice-c0.5", "soft_moe-c0.5",
                             "agnostic-c0.5", "hash-c0.5", "dense"]  # fmt: skip
    tc = configs["softmax_token_choice-c0.5"].model
    assert (tc.factor, tc.capacity_factor, tc.depth, tc.mlp_dim) == (1, 0.5, 2, 32)
    assert configs["softmax_expert_choice-c0.5"].model.factor == 0.5
    assert configs["agnostic-c0.5"].model.random_routing and configs["agnostic-c0.5"].model.capacity_factor == 0.5
    assert configs["hash-c0.5"].model.freeze_router and not configs["hash-c0.5"].model.random_routing
    dense = configs["dense"].model
    assert dense.dense and dense.capacity_factor is None and dense.mlp_dim == 32
    data = configs["dense"].data
    assert (data.families, data.variants, data.distractors) == (8, 32, 4)
    # A Token Choice buffer: Token Choice at k = 1 (learned and content-agnostic) gets C = 2T/E, Expert Choice
    # and Soft MoE keep c = 1; with both blocks MoE the dense control is still a plain ViT, laid out and keyed as
    # the MoE arms (their moe_layers), so that a seed gives it their attention and embeddings.
    spec = study.regime_spec("routing-both-tc2", steps=5, seeds=(0,))
    configs = {run.configuration: study.run_config(spec, run, 5, 1e-3).model for run in study.plan_runs(spec)}
    capacity = {name: (m.factor, m.capacity_factor) for name, m in configs.items()}
    assert capacity == {"softmax_token_choice-c1": (1, 2), "softmax_expert_choice-c1": (1, None),
                        "soft_moe-c1": (1, None), "agnostic-c1": (1, 2), "dense": (1, None)}  # fmt: skip
    assert configs["softmax_token_choice-c1"].moe_layers == (0, 1) == configs["dense"].moe_layers
    assert configs["dense"].dense and configs["dense"].moe_block_indices == ()
    with pytest.raises(ValueError, match="token_choice_capacity: 0 is not a positive number"):
        dataclasses.replace(spec, token_choice_capacity=0).validate()


def test_analysis_on_constructed_results():
    # EC 0.60, TC 0.55, Soft MoE 0.64, dense 0.50, content-agnostic 0.52, plus a per-seed shift shared by every
    # arm (cancels within seed); Sinkhorn TC wobbles +-0.005 by seed around Softmax TC, so it cannot resolve.
    spec = study.StudySpec(routers=("softmax_token_choice", "sinkhorn_token_choice", "softmax_expert_choice",
                                    "soft_moe"), seeds=(0, 1, 2, 3, 4))  # fmt: skip
    level = {"softmax_token_choice-c1": 0.55, "sinkhorn_token_choice-c1": 0.55, "softmax_expert_choice-c1": 0.60,
             "soft_moe-c1": 0.64, "agnostic-c1": 0.52, "dense": 0.50}  # fmt: skip
    noise = {0: 0.004, 1: -0.003, 2: 0.001, 3: 0.0, 4: 0.002}
    rows = _constructed_rows(spec, level, noise, {"sinkhorn_token_choice-c1": 0.005})
    result = study.analyse(rows, spec, "test_accuracy")
    found = {f["contrast"].key: f for f in result["contrasts"]}
    # (ii) per seed: EC 0.60 - TC (0.55 + 0.55 -+ 0.005) / 2 = 0.0525 (even seeds), 0.0475 (odd seeds)
    assert found["ii"]["diffs"] == pytest.approx([0.0525, 0.0475, 0.0525, 0.0475, 0.0525])
    assert found["ii"]["verdict"] == "**supported**" and result["stage1_passed"]
    # MoE - dense is learned Softmax Token Choice - dense, 0.55 - 0.50, not the mean over the routers (0.085 -+
    # 0.00125): exactly the control the pilot gates on, computed by the pilot's own function
    assert found["moe-dense"]["diffs"] == pytest.approx([0.05] * 5)
    for seed, diff in enumerate(found["moe-dense"]["diffs"]):
        accuracy = {r["configuration"]: r["test_accuracy"] for r in rows if r["seed"] == seed}
        assert 100 * diff == pytest.approx(control_differences(accuracy, 1)["moe-dense"])
    assert found["learned-agnostic"]["diffs"] == pytest.approx([0.03] * 5)
    assert found["learned-agnostic"]["verdict"] == "**supported**"
    # Sinkhorn - Softmax TC is descriptive: an interval, no p-value
    assert found["sinkhorn-softmax"]["verdict"] == "descriptive" and math.isnan(found["sinkhorn-softmax"]["p"])
    assert [f["m"] for f in result["contrasts"]] == [2, 2, 2, 2, 1] and result["n"] == 5
    # each contrast's own exact MDD: (ii)'s differences have sd 0.0027386 -> 2 tests, 5 seeds
    assert found["ii"]["mdd"] == pytest.approx(study.minimum_detectable_difference(np.std(found["ii"]["diffs"],
                                                                                          ddof=1), 5, 2))  # fmt: skip
    # the paper's side of (ii) for B/32 JFT, c = 1: EC 43.83 - TC (41.23 + 41.63) / 2 = +2.40
    assert found["ii"]["paper"]["B/32"] == "+2.40"
    assert all(f["p_holm"] >= f["p"] for f in result["contrasts"] if f["stage"])
    # Stage 1 fails when content-agnostic routing is as good as learned routing: stage 2 is not tested.
    level["agnostic-c1"] = 0.55
    rows = _constructed_rows(spec, level, noise, {"sinkhorn_token_choice-c1": 0.005, "agnostic-c1": 0.004})
    failed = {f["contrast"].key: f for f in study.analyse(rows, spec, "test_accuracy")["contrasts"]}
    assert failed["learned-agnostic"]["verdict"] == "not resolved"
    assert failed["ii"]["verdict"].startswith("not tested") and math.isnan(failed["ii"]["p"])
    # Stage 1 fails when Token Choice is no better than dense, however far Expert Choice and Soft MoE are above it
    # (the mean of the routers - dense would be +0.06 here): the MoE - dense control is the pilot's. Dense wobbles
    # -+0.003 by seed: TC - dense is +0.003 on seeds 0, 2, 4 and -0.003 on 1, 3, a mean of +0.0006.
    level.update({"softmax_token_choice-c1": 0.50, "sinkhorn_token_choice-c1": 0.50, "agnostic-c1": 0.45})
    rows = _constructed_rows(spec, level, noise, {"dense": 0.003})
    failed = {f["contrast"].key: f for f in study.analyse(rows, spec, "test_accuracy")["contrasts"]}
    assert failed["moe-dense"]["mean"] == pytest.approx(0.0006)
    assert failed["moe-dense"]["verdict"] == "not resolved" and failed["learned-agnostic"]["verdict"] == "**supported**"
    assert failed["iii"]["verdict"].startswith("not tested")
    # The 10-shot metric is descriptive throughout.
    fewshot = study.analyse_all(rows, spec)["fewshot_accuracy"]
    assert {f["verdict"] for f in fewshot["contrasts"]} == {"descriptive"}


# ----------------------------------------------------------------------------------------------- paper data


def test_paper_tables():
    rows = paper.load()
    assert len(rows) == 72 and {r.table for r in rows} == {1, 2, 3, 4, 6, 8}
    jft_b32 = paper.lookup(rows, "jft_precision_at_1", "B/32", "soft_moe", 1)
    assert (jft_b32.table, jft_b32.accuracy, jft_b32.tpu_v3_days) == (1, pytest.approx(0.4523), 36.95)
    assert paper.lookup(rows, "jft_precision_at_1", "B/16", "sparsity_constrained_expert_choice", 2).tpu_v3_days == (
        279.89
    )
    assert paper.lookup(rows, "imagenet_10shot", "L/16", "sinkhorn_expert_choice", 2).accuracy == pytest.approx(0.7819)
    assert math.isnan(paper.lookup(rows, "imagenet_10shot", "B/32", "soft_moe", 2).tpu_v3_days)
    missing = {(r.table, r.router, r.factor) for r in rows if math.isnan(r.accuracy)}
    assert missing == {(3, "sparsity_constrained_expert_choice", 1), (3, "soft_moe", 2),
                       (8, "sparsity_constrained_expert_choice", 1), (8, "soft_moe", 2)}  # fmt: skip
    with pytest.raises(KeyError, match="no imagenet_10shot"):
        paper.lookup(rows, "imagenet_10shot", "H/14", "soft_moe", 1)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"routers": ("softmax_token_choice", "top2")}, "unknown router 'top2'"),
        ({"factors": (0,)}, "0 is not a positive number"),
        ({"factors": (1.5,)}, "above 1 a factor is k"),
        ({"regime": "nope"}, "unknown regime 'nope'"),
        ({"seeds": (1, 1)}, "distinct"),
        ({"steps": 0}, "--steps must be >= 5"),
        ({"routers": ("soft_moe",), "ablation": True, "controls": False}, "add sinkhorn_token_choice"),
        ({"routers": ("soft_moe",)}, "routing controls"),
        ({"learning_rate": float("nan")}, "--learning-rate must be a positive finite number"),
        ({"overrides": ("model.width=abc",)}, "model.width=abc"),
    ],
)
def test_bad_study_options_fail_before_training(tmp_path, changes, message):
    spec = study.StudySpec(**{"preset": "tiny", "steps": 5, "seeds": (0,), **changes})
    with pytest.raises(ValueError, match=message):
        study.execute(spec, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_reports_bad_options(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--preset", "tiny", "--routers", "top2"])
    assert exit_info.value.code == 2
    assert "unknown router 'top2'" in capsys.readouterr().err
    # the default study runs only in the regime its pilot accepted
    with pytest.raises(SystemExit):
        study.main(["--workdir", str(tmp_path)])
    assert "run `python -m train.study --pilot" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------- pipeline


def test_quick_study_end_to_end(tmp_path, capsys):
    spec = study.quick_spec()
    out = study.run_study(spec, tmp_path, progress=False)

    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    per_seed = ["softmax_token_choice-c1", "soft_moe-c1", "agnostic-c1", "dense"]
    assert [r["name"] for r in table] == [f"{c}-s{s}" for s in (0, 1) for c in per_seed]
    for r in table:
        assert r["status"] == "finished"
        assert 0 <= float(r["test_accuracy"]) <= 1 and 0 <= float(r["fewshot_accuracy"]) <= 1
        assert float(r["train_seconds"]) > 0 and float(r["images_per_second"]) > 0
        assert float(r["timed_train_seconds"]) == pytest.approx(5 * float(r["step_seconds"]))  # 5 steps
        # evaluated at steps 1..5 (eval_every = 5 // 5): the gain over the last 20% is step 5 minus step 4
        curve = study.test_curve(tmp_path / "runs" / r["name"])
        assert sorted(curve) == [1, 2, 3, 4, 5]
        assert float(r["convergence_gain"]) == pytest.approx(curve[5] - curve[4])
        assert len(r["fewshot_draws"].split(";")) == 5  # the probe's five shot draws
    dense = [r for r in table if r["configuration"] == "dense"]
    assert all(r["control"] == "dense" and r["dropped_fraction"] == "nan" for r in dense)
    timing = json.loads((tmp_path / "step_times.json").read_text())
    assert timing["rounds"] == 2 and set(timing["step_seconds"]) == set(per_seed)

    report = out["report"].read_text()
    # the design and what it resolves come before the findings
    assert report.index("### What this design can resolve") < report.index("## Controls") < report.index(
        "## The paper's findings")  # fmt: skip
    assert "| MoE beats a dense ViT of one expert's per-token compute | 1 (control) | 2 |" in report  # 2 seeds
    soft = [float(r["test_accuracy"]) for r in table if r["configuration"] == "soft_moe-c1"]
    mean, half, _ = study.mean_ci(soft)
    # our number beside the paper's, in the row of the configuration: Table 1 gives Soft MoE (c = 1) 45.23%
    assert f"| Soft MoE, c=1 | {100 * mean:.2f} ± {100 * half:.2f} | " in report and "| 45.23 | 67.37 |" in report
    # the learned-minus-random control, within seed
    learned = {r["seed"]: float(r["test_accuracy"]) for r in table if r["configuration"] == "softmax_token_choice-c1"}
    random = {r["seed"]: float(r["test_accuracy"]) for r in table if r["configuration"] == "agnostic-c1"}
    diff, half, _ = study.mean_ci([learned[s] - random[s] for s in learned])
    assert f"| upstream test accuracy | {100 * diff:+.2f} ± {100 * half:.2f} | 2 |" in report

    import matplotlib.image

    pictures = [tmp_path / "plots" / name for name in ("contrasts.png", "accuracy_vs_time.png", "convergence.png")]
    for configuration in ("softmax_token_choice-c1", "soft_moe-c1", "agnostic-c1"):
        pictures += [tmp_path / "plots" / "routing" / configuration / n for n in ("expert_usage.png",
                                                                                  "routing_maps.png")]  # fmt: skip
    assert not (tmp_path / "plots" / "routing" / "dense").exists()  # a dense model has no routers
    for path in pictures:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert np.ptp(image[..., :3]) > 0.5  # not a blank canvas
        assert path.relative_to(tmp_path).as_posix() in report or path.parent.name == "plots"

    # Run again through the CLI: every run is reused, nothing retrains.
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.jsonl")}
    logs[tmp_path / "step_times.json"] = (tmp_path / "step_times.json").stat().st_mtime_ns  # timing reused too
    assert study.main(["--quick", "--workdir", str(tmp_path), "--no-pictures"]) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert "trained 0 of 8 runs" in (tmp_path / "report.md").read_text()
    assert capsys.readouterr().err.count("finished earlier, reused") == 8

    # The same directory with different options is refused before anything trains.
    with pytest.raises(ConfigMismatchError, match="steps: 5 -> 10"):
        study.execute(dataclasses.replace(spec, steps=10), tmp_path, progress=False)


def test_pilot_gates_the_study(tmp_path, monkeypatch):
    # Two tiny regimes; a margin no run can meet rejects both, and no study runs from a rejecting pilot.
    monkeypatch.setitem(study.REGIMES, "tiny-a", study.Regime("tiny", (), 1, "tiny at c = 1"))
    monkeypatch.setitem(study.REGIMES, "tiny-b", study.Regime("tiny", (), 0.5, "tiny at c = 0.5"))
    spec = study.StudySpec()
    with pytest.raises(study.PilotError, match="rejected every regime"):
        study.run_pilot(spec, tmp_path, regimes=("tiny-a", "tiny-b"), steps=5, margin=1000, progress=False)
    pilot = json.loads((tmp_path / "pilot.json").read_text())
    assert pilot["status"] == "rejected" and [r["regime"] for r in pilot["regimes"]] == ["tiny-a", "tiny-b"]
    report = (tmp_path / "pilot.md").read_text()
    assert "no regime passed" in report and report.count("| rejected |") == 4  # 2 regimes x 2 seeds
    with pytest.raises(ValueError, match="rejected every candidate"):
        study.pilot_study_spec(tmp_path)
    # A regime is rejected as soon as a control is below the margin: after the learned router and the dense ViT
    # of the first seed, the rest are not trained.
    first = PILOT_SEEDS[0]
    assert sorted(p.name for p in (tmp_path / "pilot" / "tiny-b").iterdir()) == [
        f"dense-s{first}", f"softmax_token_choice-c0.5-s{first}"]
    # A rerun under the same rule, seeds and schedule keeps the rows pilot.json records and trains none of their
    # runs, even where the runs are gone (a fresh checkout holds pilot.json, not the runs): nothing is recreated.
    recorded = pilot["regimes"]
    (tmp_path / "pilot").rename(tmp_path / "kept")
    with pytest.raises(study.PilotError, match="rejected every regime"):
        study.run_pilot(spec, tmp_path, regimes=("tiny-a", "tiny-b"), steps=5, margin=1000, progress=False)
    assert not (tmp_path / "pilot").exists()
    assert json.loads((tmp_path / "pilot.json").read_text())["regimes"] == recorded
    assert (tmp_path / "pilot.md").read_text() == report
    (tmp_path / "kept").rename(tmp_path / "pilot")
    # A margin every run meets accepts the first regime (its runs reused; the rows recorded under the other
    # margin are not), declares the MDD, and gates the study.
    result = study.run_pilot(spec, tmp_path, regimes=("tiny-a", "tiny-b"), steps=5, margin=-1000, progress=False)
    assert result["regime"] == "tiny-a" and len(result["regimes"]) == 1
    # The round under the other margin is kept whole as an earlier round, in pilot.json and pilot.md.
    assert [(r["margin"], [row["regime"] for row in r["regimes"]]) for r in result["earlier"]] == [
        (1000, ["tiny-a", "tiny-b"])]
    assert result["earlier"][0]["regimes"] == recorded
    report = (tmp_path / "pilot.md").read_text()
    assert "Outcome: **accepted**: regime `tiny-a`" in report and "## Earlier round 1 (every regime rejected)" in report
    assert report.count("| rejected |") == 4 and report.count("| accepted |") == 2
    # The controls' figures are within-seed differences of the runs' accuracies, in points.
    for seed, d in result["regimes"][0]["controls"].items():
        acc = result["regimes"][0]["accuracy"][seed]
        assert d["learned-agnostic"] == pytest.approx(100 * (acc["softmax_token_choice-c1"] - acc["agnostic-c1"]))
        assert d["moe-dense"] == pytest.approx(100 * (acc["softmax_token_choice-c1"] - acc["dense"]))
    d = result["declared"]
    assert d["mdd_points"] == pytest.approx(study.minimum_detectable_difference(d["sd_points"], 10, 2))
    assert study.pilot_study_spec(tmp_path).regime == "tiny-a"
    assert study.schedule(study.pilot_study_spec(tmp_path), tmp_path) == (5, 2e-3, "the pilot (pilot.json)")
    # A rerun of the accepting round keeps its earlier round as it was.
    again = study.run_pilot(spec, tmp_path, regimes=("tiny-a", "tiny-b"), steps=5, margin=-1000, progress=False)
    assert again["earlier"] == result["earlier"] and (tmp_path / "pilot.md").read_text() == report


def test_docstring_examples():
    import doctest

    from train import visualize

    for module in (study, visualize):
        result = doctest.testmod(module)
        assert result.failed == 0 and (module is not study or result.attempted >= 1)


def test_sinkhorn_diagnosis_on_trained_token_choice_runs(tmp_path):
    from train import train_and_evaluate
    from train.presets import resolve

    spec = study.StudySpec(preset="tiny", steps=5, seeds=(0,), routers=study.TOKEN_CHOICE, controls=False)
    rows = []
    for router in study.TOKEN_CHOICE:
        workdir = tmp_path / router
        train_and_evaluate(resolve("tiny", router=router, steps=2), workdir, progress=False)
        rows.append({"configuration": f"{router}-c1", "seed": 0, "status": "finished", "workdir": str(workdir)})
    found = study.sinkhorn_diagnosis(rows, spec, iterations=(20, 200), images=64)
    assert [(d["router"], d["sinkhorn_iters"]) for d in found] == [("softmax_token_choice", None),
                                                                  ("sinkhorn_token_choice", 20),
                                                                  ("sinkhorn_token_choice", 200)]  # fmt: skip
    assert all(0 <= d["dropped_fraction"] <= 1 and d["load_cv"] >= 0 for d in found)
    assert found[0]["plan_error"] == 0  # Softmax Token Choice solves no transport problem
    assert found[2]["plan_error"] <= found[1]["plan_error"]  # Sinkhorn iterations only bring the plan closer
    text = "\n".join(study.diagnosis_text(found))
    assert "| Sinkhorn Token Choice | 1 | 200 |" in text and "At k = 1" in text
