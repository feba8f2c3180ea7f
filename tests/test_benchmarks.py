"""The benchmark scripts run end to end (in their --quick mode, whose ratios mean nothing) and write their files."""

import json
import subprocess
import sys
from pathlib import Path

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
         "--routers", "sinkhorn_token_choice", "soft_moe", "--out", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert [r["router"] for r in rows] == ["sinkhorn_token_choice", "soft_moe"]
    assert all(r["ratio"] > 0 for r in rows)


def test_parameter_counts_by_hand():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import equinox as eqx
    import jax
    from memory import parameter_counts

    from optimized import ViTMoE
    from train.presets import resolve

    # tiny: width 32, MLP 64, E = 4 experts, 8x8x1 images in 4x4 patches (4 tokens, 16 values), 10 classes.
    # embedding: 16*32 + 32 + 4*32 = 672; attention (either block): 2*32 + 32*96 + 96 + 32*32 + 32 + 2*32 = 4352;
    # MLP: 32*64 + 64 + 64*32 + 32 = 4192; router 32*4 = 128; head: 2*32 + 32*10 + 10 = 394.
    # other = 672 + 4352 + 4192 + 4352 + 128 + 394 = 14090; experts: 4 * (32*64 + 64 + 64*32 + 32) = 16768.
    config = resolve("tiny").model
    assert parameter_counts(config) == {"total": 30858, "expert": 16768, "other": 14090}
    leaves = jax.tree.leaves(eqx.filter(ViTMoE(config, key=jax.random.key(0)), eqx.is_array))
    assert sum(leaf.size for leaf in leaves) == 30858


def test_memory_quick_compiles_the_sharded_step(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--out", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [(r["mesh_data"], r["mesh_expert"]) for r in rows] == [(4, 1), (2, 2), (1, 4)]
    # sharding the experts shrinks what each device holds
    assert rows[0]["arguments"] > rows[1]["arguments"] > rows[2]["arguments"]
    assert rows[2]["params_per_device"] == 14090 + 16768 // 4
