"""python -m train.import_vmoe: checkpoints written by the authors' vmoe code (tests/data/vmoe, made by
tools/make_vmoe_fixtures.py) give vmoe's logits; bad input is refused before anything is written."""

from __future__ import annotations

import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from train import load_model
from train.evaluate import evaluate_run
from train.import_vmoe import UnsupportedCheckpointError, build_config, import_checkpoint, infer, main, to_model
from train.vmoe_checkpoint import VmoeCheckpointError, params_of, read_arrays

DATA = pathlib.Path(__file__).parent / "data" / "vmoe"
# what the arrays cannot say, as tools/make_vmoe_fixtures.py built each model (vmoe's group_size: 2 images)
SETS = {
    "tc_k1_token_every2": ("model.factor=1", "model.group_images=2"),
    "tc_k2_gap_prelogits_state": ("model.factor=2", "model.group_images=2"),
    "tc_k2_gap_prelogits_state_old": ("model.factor=2", "model.group_images=2"),
    "ec_gap_last2_old": ("model.router=softmax_expert_choice", "model.factor=2", "model.group_images=2"),
    "tc_k1_token_every2_old": ("model.factor=1", "model.group_images=2"),
    "soft_gap_every2": (),  # Soft MoE: router, factor (c = S E / T) and normalization read from the arrays
}
EVAL_SETS = ("data.name=synthetic", "data.num_classes=7", "data.heldout_classes=2", "data.augment=false",
             "batch_size=8", "fewshot_shots=2")


def _model(name: str):
    fields, arrays = infer(params_of(read_arrays(DATA / name)), name)
    config = build_config(fields, "vmoe-b16-authors", SETS[name], name)
    return to_model(arrays, config), config


@pytest.mark.parametrize("name", sorted(SETS))
def test_logits_equal_vmoes(name):
    model, _ = _model(name)
    expected = np.load(DATA / f"{name}.npz")
    logits, _ = model(jnp.asarray(expected["x"]), inference=True)
    # seen: max abs difference 1.4e-6 or less over the six fixtures (logits of order 1)
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], rtol=0, atol=1e-5)


def test_architecture_is_read_from_the_arrays():
    _, every_2 = _model("tc_k1_token_every2")
    m = every_2.model
    assert (m.width, m.depth, m.num_heads, m.mlp_dim, m.num_experts, m.patch_size, m.image_size, m.channels) == (
        8, 4, 2, 16, 4, 4, 8, 3)
    assert (m.pool, m.representation_size, m.num_classes, m.moe_layers, m.moe_block_indices) == (
        "cls", None, 5, None, (1, 3))
    _, last_2 = _model("ec_gap_last2_old")
    assert (last_2.model.pool, last_2.model.moe_layers) == ("gap", (2, 3))
    _, state = _model("tc_k2_gap_prelogits_state")
    assert (state.model.representation_size, state.model.depth) == (6, 2)
    # Soft MoE: mu (D, E, S) = (8, 4, 2) on T = 4 tokens per image: c = S E / T = 2, vmoe's normalized router
    _, soft = _model("soft_gap_every2")
    assert (soft.model.router, soft.model.factor, soft.model.soft_moe_normalize) == ("soft_moe", 2.0, True)


def test_training_state_and_params_only():
    state = read_arrays(DATA / "tc_k2_gap_prelogits_state")
    assert {"step", "params", "opt_state", "rngs"} <= set(state)
    assert params_of(state) is state["params"]
    params = read_arrays(DATA / "tc_k1_token_every2.index")  # the .index path names the checkpoint too
    assert params_of(params) is params and "Encoder" in params


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imported") / "run"
    _, step = import_checkpoint(DATA / "tc_k2_gap_prelogits_state", workdir,
                                sets=SETS["tc_k2_gap_prelogits_state"] + EVAL_SETS)
    return workdir, step


def test_imported_workdir_is_a_trained_run(imported):
    workdir, step = imported
    assert step == 1  # the training state's step
    model, _ = load_model(workdir)
    expected = np.load(DATA / "tc_k2_gap_prelogits_state.npz")
    logits, _ = model(jnp.asarray(expected["x"]), inference=True)
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], rtol=0, atol=1e-5)
    result = evaluate_run(workdir)
    assert result["step"] == 1 and result["num_images"] > 0 and 0 <= result["accuracy"] <= 1
    assert 0 <= result["fewshot"]["accuracy"] <= 1


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    for path in DATA.glob(f"{name}.*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / name


def _refused(tmp_path, checkpoint, error, match, sets=()):
    workdir = tmp_path / "out"
    with pytest.raises(error, match=match):
        import_checkpoint(checkpoint, workdir, sets=sets)
    assert not workdir.exists()
    assert main([str(checkpoint), "--workdir", str(workdir), *[f"--set={s}" for s in sets]]) == 2
    assert not workdir.exists()


def test_unrepresentable_architecture_is_refused_naming_the_array(tmp_path):
    _refused(tmp_path, DATA / "refused_map_head", UnsupportedCheckpointError, "array 'MapHead/")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.index").write_bytes(b"\x00not msgpack at all" * 3)
    _refused(tmp_path, tmp_path / "junk", VmoeCheckpointError, "junk.index")
    _refused(tmp_path, tmp_path / "nothing_here", VmoeCheckpointError, "nothing_here")


def test_truncated_shard(tmp_path):
    prefix = _copy("tc_k1_token_every2", tmp_path)
    shard = tmp_path / "tc_k1_token_every2.data-00001-of-00002"
    shard.write_bytes(shard.read_bytes()[:-100])
    _refused(tmp_path, prefix, VmoeCheckpointError, r"data-00001-of-00002. is truncated")


def test_missing_shard(tmp_path):
    prefix = _copy("tc_k1_token_every2", tmp_path)
    (tmp_path / "tc_k1_token_every2.data-00000-of-00002").unlink()
    _refused(tmp_path, prefix, VmoeCheckpointError, "data-00000-of-00002.*missing")


def test_set_contradicting_the_arrays(tmp_path):
    _refused(tmp_path, DATA / "tc_k1_token_every2", ValueError, r"model.num_experts = 8.*model.num_experts = 4",
             sets=("model.num_experts=8",))


def test_old_layout_training_state_is_read_by_vmoes_trainstate_order():
    # written by vmoe's pre-2022-06 writer (tools/make_vmoe_fixtures.py): arrays numbered step, params, opt_state, rngs
    state = read_arrays(DATA / "tc_k2_gap_prelogits_state_old")
    assert sorted(state) == ["params", "rngs", "step"]  # the optimizer state checked, not returned
    assert int(state["step"]) == 1 and state["rngs"]["gating"].dtype == np.uint32


def _without_version(name: str, tmp_path: pathlib.Path, edit=None) -> pathlib.Path:
    import msgpack

    prefix = _copy(name, tmp_path)
    index = tmp_path / f"{name}.index"
    content = msgpack.unpackb(index.read_bytes(), ext_hook=msgpack.ExtType, raw=False, strict_map_key=False)
    content.pop("version", None)  # the old layout: vmoe's own index, without its version key
    if edit is not None:
        edit(content["index"])
    index.write_bytes(msgpack.packb(content, use_bin_type=True))
    return prefix


def test_old_layout_training_state_numbered_otherwise_is_refused_not_guessed(tmp_path):
    # a version-20220622 state (arrays numbered in sorted order: opt_state, params, rngs, step) with its version key
    # removed: read as the old layout, Adam's count would be the step and its moments the params; refused instead
    prefix = _without_version("tc_k2_gap_prelogits_state", tmp_path)
    _refused(tmp_path, prefix, VmoeCheckpointError, "not what the index records|the shards do not match the index")


def test_old_layout_state_of_another_object_is_refused(tmp_path):
    prefix = _without_version("tc_k2_gap_prelogits_state_old", tmp_path,
                              edit=lambda index: index.update(extra=index["step"]))  # fmt: skip
    _refused(tmp_path, prefix, VmoeCheckpointError, r"fields \['extra', 'opt_state', 'params', 'rngs', 'step'\]")


def test_arrays_numbered_otherwise_than_the_index_says_are_refused(tmp_path):
    # two arrays of one shape swapped in the index: their data lie in other shards than it records for them
    def swap(index):
        norm = index["params"]["Encoder"]["encoderblock_0"]["LayerNorm_0"]
        norm["bias"], norm["scale"] = norm["scale"], norm["bias"]

    prefix = _without_version("tc_k2_gap_prelogits_state_old", tmp_path, edit=swap)
    _refused(tmp_path, prefix, VmoeCheckpointError, "not what the index records for 'params/Encoder/encoderblock_0/")
