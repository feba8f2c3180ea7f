"""The benchmark scripts run end to end (in their --quick mode, whose ratios mean nothing) and write their files."""

import json
import subprocess
import sys
from pathlib import Path

from optimized import ROUTERS

ROOT = Path(__file__).resolve().parent.parent


def test_bench_moe_quick_writes_json_and_markdown(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_moe.py"), "--quick", "--out", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    records = json.loads((tmp_path / "moe.json").read_text())
    assert "layer vs experts" in (tmp_path / "moe.md").read_text().lower()
    assert records


def test_bench_train_runs_on_the_tiny_preset(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--preset", "tiny", "--rounds", "1",
         "--out", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert [r["router"] for r in rows] == list(ROUTERS)
    assert all(r["ratio"] > 0 for r in rows)
