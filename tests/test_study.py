"""The router study (``train.study``): statistics by hand, the paper's tables, the report's logic, and the whole
pipeline in ``--quick`` mode (train, resume without retraining, CSV, report, plots)."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from train import paper, study
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


def test_minimum_detectable_difference_by_hand():
    # n = 5, m = 1: (t(0.975, 4) + t(0.8, 4)) * sd / sqrt(5) = (2.776445 + 0.940965) * 1 / 2.236068 = 1.662476
    assert study.minimum_detectable_difference(1.0, 5, 1) == pytest.approx(1.662476, abs=1e-5)
    # m = 5 contrasts: t(1 - 0.05 / 10, 4) = 4.604095: (4.604095 + 0.940965) / 2.236068 = 2.479826
    assert study.minimum_detectable_difference(1.0, 5, 5) == pytest.approx(2.479826, abs=1e-5)
    assert math.isnan(study.minimum_detectable_difference(1.0, 1, 1))


def _constructed_rows(spec, level, noise, wobble):
    rows = []
    for seed, eps in noise.items():
        for configuration in study.configurations(spec):
            rows.append(_row(configuration, seed, level[configuration] + eps + wobble.get(configuration, 0) * (
                1 if seed % 2 else -1)))  # fmt: skip
    return rows


def test_contrasts_are_declared_by_the_design():
    keys = [(c.key, c.factor) for c in study.contrasts(study.StudySpec())]
    assert keys == [("moe-dense", 1), ("learned-random", 1), ("i", 1), ("ii", 1), ("iii", 1)]
    full = [(c.key, c.factor) for c in study.contrasts(study.full_spec())]
    assert full == [(k, f) for f in (1, 2) for k in ("moe-dense", "learned-random", "i", "ii", "iii", "iv")]
    (i,) = [c for c in study.contrasts(study.StudySpec()) if c.key == "i"]
    assert i.a == ("softmax_expert_choice-c1",)
    assert i.b == ("softmax_token_choice-c1", "sinkhorn_token_choice-c1")


def test_analysis_on_constructed_results():
    # EC routers 0.60, TC 0.55, Soft MoE 0.64, dense 0.50, random 0.52, plus a per-seed shift shared by every
    # arm (cancels within seed); Sinkhorn TC wobbles +-0.005 by seed around Softmax TC, so (iii) cannot resolve.
    spec = study.StudySpec()
    level = {"softmax_token_choice-c1": 0.55, "sinkhorn_token_choice-c1": 0.55, "softmax_expert_choice-c1": 0.60,
             "sinkhorn_expert_choice-c1": 0.60, "soft_moe-c1": 0.64, "random-c1": 0.52, "dense": 0.50}  # fmt: skip
    noise = {0: 0.004, 1: -0.003, 2: 0.001, 3: 0.0, 4: 0.002}
    rows = _constructed_rows(spec, level, noise, {"sinkhorn_token_choice-c1": 0.005})
    result = study.analyse(rows, spec, "test_accuracy")
    found = {f["contrast"].key: f for f in result["contrasts"]}
    # (i) per seed: EC 0.60 - TC (0.55 + 0.55 -+ 0.005) / 2 = 0.0525 (even seeds), 0.0475 (odd seeds)
    assert found["i"]["diffs"] == pytest.approx([0.0525, 0.0475, 0.0525, 0.0475, 0.0525])
    assert found["i"]["verdict"] == "**supported**"
    # MoE - dense: mean of (0.55, 0.55 -+ 0.005, 0.60, 0.64) - 0.50 = 0.085 -+ 0.00125
    assert found["moe-dense"]["diffs"] == pytest.approx([0.08375, 0.08625, 0.08375, 0.08625, 0.08375])
    assert found["learned-random"]["diffs"] == pytest.approx([0.03] * 5)
    assert found["learned-random"]["verdict"] == "**supported**"
    assert found["iii"]["verdict"] == "not resolved"  # differences -0.005 / +0.005 alternate
    assert result["m"] == 5 and result["n"] == 5
    # the paper's side of (i) for B/32 JFT, c = 1: EC 43.83 - TC (41.23 + 41.63) / 2 = +2.40
    assert found["i"]["paper"]["B/32"] == "+2.40"
    # the Holm-adjusted p-value is never below the raw one
    assert all(f["p_holm"] >= f["p"] for f in result["contrasts"])


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
        ({"factors": (0,)}, "0 is not a positive integer"),
        ({"seeds": (1, 1)}, "distinct"),
        ({"steps": 0}, "--steps must be >= 5"),
        ({"routers": ("soft_moe",), "ablation": True, "controls": False}, "add sinkhorn_token_choice"),
        ({"routers": ("soft_moe",)}, "random-routing control"),
        ({"learning_rate": float("nan")}, "--learning-rate must be a positive finite number"),
        ({"overrides": ("model.width=abc",)}, "model.width=abc"),
    ],
)
def test_bad_study_options_fail_before_training(tmp_path, changes, message):
    spec = study.StudySpec(**{"preset": "tiny", "steps": 5, "seeds": (0,), **changes})
    with pytest.raises(ValueError, match=message):
        study.execute(spec, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_reports_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--routers", "top2"])
    assert exit_info.value.code == 2
    assert "unknown router 'top2'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- pipeline


def test_quick_study_end_to_end(tmp_path, capsys):
    spec = study.quick_spec()
    out = study.run_study(spec, tmp_path, progress=False)

    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    per_seed = ["softmax_token_choice-c1", "soft_moe-c1", "random-c1", "dense"]
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
    assert "| upstream test accuracy | 2 | 3 |" in report  # 2 seeds, 3 contrasts (two controls and (ii))
    soft = [float(r["test_accuracy"]) for r in table if r["configuration"] == "soft_moe-c1"]
    mean, half, _ = study.mean_ci(soft)
    # our number beside the paper's, in the row of the configuration: Table 1 gives Soft MoE (c = 1) 45.23%
    assert f"| Soft MoE, c=1 | {100 * mean:.2f} ± {100 * half:.2f} | " in report and "| 45.23 | 67.37 |" in report
    # the learned-minus-random control, within seed
    learned = {r["seed"]: float(r["test_accuracy"]) for r in table if r["configuration"] == "softmax_token_choice-c1"}
    random = {r["seed"]: float(r["test_accuracy"]) for r in table if r["configuration"] == "random-c1"}
    diff, half, _ = study.mean_ci([learned[s] - random[s] for s in learned])
    assert f"| upstream test accuracy | {100 * diff:+.2f} ± {100 * half:.2f} | 2 |" in report

    import matplotlib.image

    pictures = [tmp_path / "plots" / name for name in ("contrasts.png", "accuracy_vs_time.png", "convergence.png")]
    for configuration in ("softmax_token_choice-c1", "soft_moe-c1", "random-c1"):
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


def test_pilot_chooses_and_reports(tmp_path):
    spec = study.quick_spec()
    # A rule no run can meet (gain below -100 points): the pilot names every run and records what it tried.
    with pytest.raises(study.PilotError, match=r"softmax_token_choice-c1 \(5 steps, lr 0.003: [+-]"):
        study.run_pilot(spec, tmp_path, steps_candidates=(5,), learning_rates=(3e-3,), rule_points=-100,
                        progress=False)  # fmt: skip
    pilot = json.loads((tmp_path / "pilot.json").read_text())
    assert pilot["status"] == "not converged" and [r["arm"] for r in pilot["runs"]] == ["softmax_token_choice-c1",
                                                                                       "dense"]  # fmt: skip
    assert "not converged" in (tmp_path / "pilot.md").read_text()
    open_spec = dataclasses.replace(spec, steps=None, learning_rate=None)
    assert study.schedule(open_spec, tmp_path)[2].startswith("the tiny preset")  # a failed pilot is never used
    # A rule every run meets: the first steps candidate, and the learning rate with the best mean final accuracy
    # (the runs of lr 0.003 are reused from above).
    result = study.run_pilot(spec, tmp_path, steps_candidates=(5, 10), learning_rates=(3e-3, 1e-6), rule_points=100,
                             progress=False)  # fmt: skip
    means = {lr: np.mean([r["test_accuracy"] for r in result["runs"] if r["learning_rate"] == lr])
             for lr in (3e-3, 1e-6)}  # fmt: skip
    assert result["steps"] == 5 and result["learning_rate"] == max(means, key=means.get)
    assert study.schedule(open_spec, tmp_path) == (5, result["learning_rate"], "the pilot (pilot.json)")


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
