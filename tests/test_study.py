"""The router study (``train.study``): statistics by hand, the paper's tables, the report's logic, and the whole
pipeline in ``--quick`` mode (train, resume without retraining, CSV, report, plots)."""

import csv
import json
import math

import numpy as np
import pytest

from train import paper, study
from train.loop import ConfigMismatchError

# ------------------------------------------------------------------------------------------------ statistics


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sample sd 1, t(0.975, df=2) = 4.302653; half-width 4.302653 / sqrt(3) = 2.484138.
    mean, half, n = study.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(2.484138, abs=1e-6)
    # one value: no interval; NaNs (diverged runs) are not counted
    assert study.mean_ci([0.5, math.nan])[:1] == (0.5,) and math.isnan(study.mean_ci([0.5])[1])
    assert study.mean_ci([])[2] == 0


def _row(router, factor, seed, test, fewshot=None, combine="softmax", status="finished"):
    return {"router": router, "factor": factor, "seed": seed, "combine_from": combine, "status": status,
            "test_accuracy": test, "fewshot_accuracy": test if fewshot is None else fewshot}  # fmt: skip


def test_paired_difference_is_within_seed():
    # seed 0: A = 0.5, B = 0.4; seed 1: A = 0.7, B = 0.6 -> differences 0.1, 0.1 (a between-seed shift of 0.2
    # that an unpaired comparison would count as noise cancels out).
    rows = [_row("soft_moe", 1, 0, 0.5), _row("soft_moe", 1, 1, 0.7),
            _row("softmax_token_choice", 1, 0, 0.4), _row("softmax_token_choice", 1, 1, 0.6)]  # fmt: skip
    diffs = study.paired_difference(rows, [("soft_moe", "softmax")], [("softmax_token_choice", "softmax")], 1,
                                    "test_accuracy")  # fmt: skip
    assert diffs == pytest.approx([0.1, 0.1])
    text, says = study.verdict(diffs)
    # identical differences have zero spread: the interval is [0.1, 0.1], above 0
    assert "supported" in says and text.startswith("+10.00 ± 0.00")
    # a seed missing on one side is left out, not imputed
    rows.append(_row("soft_moe", 1, 2, 0.9))
    assert len(study.paired_difference(rows, [("soft_moe", "softmax")], [("softmax_token_choice", "softmax")], 1,
                                       "test_accuracy")) == 2  # fmt: skip
    assert study.paired_difference(rows, [("soft_moe", "softmax")], [("sinkhorn_expert_choice", "softmax")], 1,
                                   "test_accuracy") is None  # fmt: skip


def test_verdicts():
    assert "supported" in study.verdict([0.02, 0.03, 0.025])[1]
    assert "contradicted" in study.verdict([-0.02, -0.03, -0.025])[1]
    assert study.verdict([0.02, -0.01, 0.0])[1].startswith("not resolved")
    assert study.verdict([0.02])[1].startswith("direction only")
    assert study.verdict(None) == ("not measured", "not part of this study")


def test_findings_on_constructed_results():
    # EC routers score 0.60 + noise, TC 0.55 + noise, Soft MoE 0.64, Sinkhorn TC = Softmax TC up to +-0.005
    # alternating by seed (so (iii) cannot be resolved), and the plan-combine ablation 0.01 below Sinkhorn TC.
    noise = {0: 0.004, 1: -0.003, 2: 0.001}
    level = {"softmax_token_choice": 0.55, "sinkhorn_token_choice": 0.55, "softmax_expert_choice": 0.60,
             "sinkhorn_expert_choice": 0.60, "sparsity_constrained_expert_choice": 0.60, "soft_moe": 0.64}  # fmt: skip
    rows = []
    for seed, eps in noise.items():
        for factor in (1, 2):
            for router, base in level.items():
                wobble = (0.005 if seed % 2 else -0.005) if router == "sinkhorn_token_choice" else 0.0
                rows.append(_row(router, factor, seed, base + eps + wobble))
            sinkhorn = rows[-5]["test_accuracy"]
            rows.append(_row("sinkhorn_token_choice", factor, seed, sinkhorn - 0.01, combine="plan"))
    found = {(f["key"], f["factor"], f["metric"]): f for f in study.findings(rows, study.StudySpec())}
    assert "supported" in found["i", 1, "test_accuracy"]["verdict"]
    # (i) per seed: EC 0.60 - TC (0.55 + 0.55 -+ 0.005) / 2 = 0.0525, 0.0475, 0.0525 (seed noise cancels)
    assert found["i", 1, "test_accuracy"]["diffs"] == pytest.approx([0.0525, 0.0475, 0.0525])
    assert "supported" in found["ii", 2, "fewshot_accuracy"]["verdict"]
    assert found["ii", 2, "fewshot_accuracy"]["diffs"] == pytest.approx([0.04] * 3)
    assert found["iii", 1, "test_accuracy"]["verdict"].startswith("not resolved")
    assert "supported" in found["iv", 2, "test_accuracy"]["verdict"]
    # the paper's side of (i) for B/32 JFT, c = 1: EC (43.83 + 43.65 + 43.43) / 3 - TC (41.23 + 41.63) / 2 = +2.21
    assert found["i", 1, "test_accuracy"]["paper"] == {"B/32": "+2.21", "B/16": "+1.79", "L/16": "n/r"}


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
        ({"steps": 0}, "--steps must be >= 1"),
        ({"routers": ("soft_moe",)}, "add sinkhorn_token_choice"),
        ({"overrides": ("model.width=abc",)}, "model.width=abc"),
    ],
)
def test_bad_study_options_fail_before_training(tmp_path, changes, message):
    spec = study.StudySpec(**{"preset": "tiny", "steps": 2, "seeds": (0,), **changes})
    with pytest.raises(ValueError, match=message):
        study.execute(spec, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_reports_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--routers", "top2", "--no-ablation"])
    assert exit_info.value.code == 2
    assert "unknown router 'top2'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- pipeline


def test_quick_study_end_to_end(tmp_path, capsys):
    spec = study.quick_spec()
    out = study.run_study(spec, tmp_path, progress=False)

    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["sinkhorn_token_choice-c1-s0", "soft_moe-c1-s0",
                                          "sinkhorn_token_choice-c1-plan-s0"]  # fmt: skip
    for r in table:
        assert r["status"] == "finished"
        assert 0 <= float(r["test_accuracy"]) <= 1 and 0 <= float(r["fewshot_accuracy"]) <= 1
        assert float(r["train_seconds"]) > 0 and float(r["images_per_second"]) > 0
        assert float(r["timed_train_seconds"]) == pytest.approx(6 * float(r["step_seconds"]))  # 6 steps
        assert 0 <= float(r["dropped_fraction"]) <= 1
    timing = json.loads((tmp_path / "step_times.json").read_text())
    assert timing["rounds"] == 2 and set(timing["step_seconds"]) == {r["configuration"] for r in table}

    report = out["report"].read_text()
    soft = next(r for r in table if r["router"] == "soft_moe")
    # our number beside the paper's, in the row of the router: Table 1 gives Soft MoE (c = 1) 45.23%
    assert f"| Soft MoE | c=1 | {100 * float(soft['test_accuracy']):.2f} | " in report
    assert "| 45.23 | 50.00 | 58.51 | 36.95 |" in report
    # (iii) needs Softmax Token Choice, which the quick study leaves out; the paper side is still computed:
    # B/32 JFT k = 1: 41.63 - 41.23 = +0.40
    assert "| 1 | upstream test accuracy | not measured | not part of this study | +0.40 |" in report
    sinkhorn = next(r for r in table if r["name"] == "sinkhorn_token_choice-c1-s0")
    plan = next(r for r in table if r["combine_from"] == "plan")
    diff = 100 * (float(sinkhorn["test_accuracy"]) - float(plan["test_accuracy"]))
    assert f"| 1 | upstream test accuracy | {diff:+.2f} pts (1 seed) | direction only" in report

    import matplotlib.image

    for name in ("accuracy_vs_time.png", "ablation.png"):
        image = matplotlib.image.imread(tmp_path / "plots" / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert np.ptp(image[..., :3]) > 0.5  # not a blank canvas

    # Run again through the CLI: every run is reused, nothing retrains.
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.jsonl")}
    logs[tmp_path / "step_times.json"] = (tmp_path / "step_times.json").stat().st_mtime_ns  # timing reused too
    assert study.main(["--quick", "--workdir", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    assert "trained 0 of 3 runs" in (tmp_path / "report.md").read_text()
    assert capsys.readouterr().err.count("finished earlier, reused") == 3

    # The same directory with different options is refused before anything trains.
    with pytest.raises(ConfigMismatchError, match="steps: 6 -> 7"):
        study.execute(study.StudySpec(**{**spec.__dict__, "steps": 7}), tmp_path, progress=False)
