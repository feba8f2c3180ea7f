"""Expert parallelism: the mesh and sharding helpers here, and the 8-device suite (``tests/multidevice``) in a
subprocess, since XLA fixes the number of simulated CPU devices when it starts."""

import jax
import pytest
from conftest import eight_device_output, start_eight_device_suite
from jax.sharding import PartitionSpec as P

import train
from optimized import EXPERT, ViTMoE, make_mesh, shardings, with_layout
from train.config import Config, override
from train.presets import resolve


def test_eight_device_suite():
    # started by conftest.py when collection finished (without xdist), so that it runs beside the rest of the suite
    process = start_eight_device_suite()
    returncode = process.wait(timeout=1800)
    output = eight_device_output()
    assert returncode == 0, output[-8000:]
    assert " passed" in output.splitlines()[-1] and "failed" not in output.splitlines()[-1], output[-3000:]


@pytest.mark.parametrize(
    ("data", "expert", "count", "message"),
    [
        (0, 3, 8, "mesh.expert = 3 does not divide the 8 devices"),
        (3, 2, 8, r"data 3 x expert 2 = 6 devices does not divide the 8 devices"),
        (0, 0, 8, "mesh.expert must be >= 1"),
        (-1, 1, 8, "mesh.data >= 0"),
    ],
)
def test_bad_meshes(data, expert, count, message):
    devices = [jax.devices()[0]] * count  # the checks run before the mesh is built
    with pytest.raises(ValueError, match=message):
        make_mesh(data, expert, devices)
    with pytest.raises(TypeError, match=r"mesh\.expert must be an integer"):
        make_mesh(1, 2.0, devices)


def test_one_device_mesh_and_expert_shardings():
    mesh = make_mesh(0, 1)
    assert dict(mesh.shape) == {"data": 1, "expert": 1}
    model = ViTMoE(resolve("tiny").model, key=jax.random.key(0))
    specs = shardings(model, mesh)
    # expert arrays split along E, their first axis; every other array is replicated
    assert specs.blocks[1].moe.experts.w1.spec == P(EXPERT)
    assert specs.blocks[1].moe.experts.b2.spec == P(EXPERT)
    assert specs.blocks[1].moe.router_weight.spec == P()
    assert specs.blocks[0].qkv_w.spec == P() and specs.head_w.spec == P()
    # the stacked pairs put the E axis second
    stacked = shardings(with_layout(model, "stacked"), mesh)
    assert stacked.pairs.second.moe.experts.w1.spec == P(None, EXPERT)
    assert stacked.pairs.second.moe.experts.b2.spec == P(None, EXPERT)


def test_mesh_options_and_old_configs():
    config = override(resolve("tiny"), "mesh.expert=2")
    assert config.mesh.expert == 2 and config.mesh.data == 0
    assert override(config, "mesh.data=4").mesh.data == 4
    with pytest.raises(ValueError, match=r"mesh\.expert = 3 does not divide model\.num_experts = 4"):
        resolve("tiny", overrides=("mesh.expert=3",))
    with pytest.raises(ValueError, match=r"unknown key; valid keys: mesh\.data, mesh\.expert"):
        resolve("tiny", overrides=("mesh.experts=2",))
    saved = config.to_dict()
    del saved["mesh"]  # a config.json written before meshes existed
    assert Config.from_dict(saved).mesh == train.config.MeshConfig()


def test_a_run_resumes_under_another_mesh(tmp_path):
    config = resolve("tiny").replace(steps=2)
    train.train_and_evaluate(override(config, "mesh.data=1"), tmp_path, stop_after=1, progress=False)
    summary = train.train_and_evaluate(config, tmp_path, progress=False)  # mesh.data=0: the mesh is not the run
    assert summary["steps"] == 2
    assert '"data": 0' in (tmp_path / "config.json").read_text()
