"""Fine-tuning (``python -m train --init-from DIR_OR_CHECKPOINT``, ``train.finetune``): from a trained tiny run's
weights, from a workdir imported from vmoe and from a vmoe checkpoint directly."""

from __future__ import annotations

import json
import pathlib

import equinox as eqx
import jax
import numpy as np
import pytest
import scipy.ndimage

from train.__main__ import main
from train.finetune import from_source, initialize_from, resize_posemb
from train.import_vmoe import build_config, import_checkpoint, infer, to_model
from train.presets import resolve
from train.state import init_model
from train.trained import load_model
from train.trainer import train_and_evaluate
from train.vmoe_checkpoint import params_of, read_arrays

VMOE = pathlib.Path(__file__).parent / "data" / "vmoe"


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny, tiny_data):
    """A trained tiny run (4 steps): its workdir and model."""
    workdir = tmp_path_factory.mktemp("source")
    train_and_evaluate(tiny, workdir, progress=False, dataset=tiny_data)
    return workdir, load_model(workdir)[0]


def _arrays(model):
    return {
        jax.tree_util.keystr(p): np.asarray(a)
        for p, a in jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array))
    }


def test_resize_posemb_by_hand_and_as_vmoe_zooms():
    # 2x2 grid [[0, 2], [4, 6]] (one feature) to 3x3, corners kept: rows [0, 1, 2], [2, 3, 4], [4, 5, 6]
    grid = np.array([[0.0], [2.0], [4.0], [6.0]])
    np.testing.assert_array_equal(resize_posemb(grid, 2, 3, False)[:, 0], [0, 1, 2, 2, 3, 4, 4, 5, 6])
    # with a class token: its row stays first and unchanged
    with_cls = np.concatenate([[[9.0]], grid])
    np.testing.assert_array_equal(resize_posemb(with_cls, 2, 3, True)[:, 0], [9, 0, 1, 2, 2, 3, 4, 4, 5, 6])
    # vmoe's and vit_jax's resize is scipy.ndimage.zoom(grid, zoom, order=1): the same numbers, up and down
    rng = np.random.default_rng(0)
    for old, new in ((7, 12), (14, 24), (5, 3)):
        posemb = rng.normal(size=(old * old + 1, 4))
        expected = scipy.ndimage.zoom(posemb[1:].reshape(old, old, 4), (new / old, new / old, 1), order=1)
        got = resize_posemb(posemb, old, new, True)
        np.testing.assert_allclose(got[1:], expected.reshape(new * new, 4), atol=1e-6)
        np.testing.assert_allclose(got[0], posemb[0], atol=1e-6)


def test_initialize_from_takes_the_source_weights(source, tiny):
    workdir, trained = source
    config = tiny.replace(init_from=str(workdir))
    fresh = init_model(config, jax.random.key(123))
    model = initialize_from(fresh, config)
    got, theirs, new = _arrays(model), _arrays(trained), _arrays(fresh)
    assert got.keys() == theirs.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], theirs[name], err_msg=name)
    assert float(np.abs(theirs[".head_w"]).max()) > 0  # trained: the zero-initialized head moved
    assert not np.array_equal(got[".pos_embed"], new[".pos_embed"])  # not the fresh draw


def test_new_head_and_resized_posemb(source, tiny):
    workdir, trained = source
    config = resolve(
        "tiny",
        overrides=("model.num_classes=12", "model.image_size=16", "data.image_size=16", "model.head_bias_init=-1"),
    ).replace(init_from=str(workdir))
    model = initialize_from(init_model(config, jax.random.key(5)), config)
    np.testing.assert_array_equal(model.head_w, np.zeros((32, 12)))  # new: the config's zero kernel and bias init
    np.testing.assert_array_equal(model.head_b, np.full(12, -1.0))
    # 8 px / patch 4 = a 2x2 grid, to 16 px / patch 4 = 4x4 (pool "gap": no class token)
    assert model.pos_embed.shape == (16, 32)
    np.testing.assert_allclose(model.pos_embed, resize_posemb(trained.pos_embed, 2, 4, False), atol=1e-7)
    # 2x2 -> 4x4 by hand: output i reads input i * 1/3; the corners are the source's corners
    p = np.asarray(trained.pos_embed).reshape(2, 2, 32)
    q = np.asarray(model.pos_embed).reshape(4, 4, 32)
    for i, j in ((0, 0), (0, 3), (3, 0), (3, 3)):
        np.testing.assert_allclose(q[i, j], p[i // 3, j // 3], atol=1e-6)
    np.testing.assert_allclose(q[0, 1], p[0, 0] * 2 / 3 + p[0, 1] / 3, atol=1e-6)
    np.testing.assert_allclose(model.blocks[1].moe.experts.w1, trained.blocks[1].moe.experts.w1)


def test_init_from_command_line_starts_at_step_0(source, tmp_path, capsys):
    workdir, trained = source
    target = tmp_path / "ft"
    argv = ["--preset", "tiny", "--init-from", str(workdir), "--workdir", str(target), "--no-progress",
            "--steps", "1", "--set", "model.image_size=16", "--set", "data.image_size=16"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((target / "config.json").read_text())
    assert saved["init_from"] == str(workdir) and saved["model"]["image_size"] == 16
    first = json.loads((target / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1  # a fresh run: step 0, not the source's step 4
    model, _ = load_model(target)
    # one step of AdamW (learning rate warmed up from 0 over 1 step: the step at learning rate 0) from the source
    np.testing.assert_allclose(model.blocks[0].qkv_w, trained.blocks[0].qkv_w, atol=1e-6)
    np.testing.assert_allclose(model.pos_embed, resize_posemb(trained.pos_embed, 2, 4, False), atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.width=64",), "model.width is 32 there and 64 here"),
        (("model.depth=4",), "model.depth is 2 there and 4 here"),
        (("model.pool=cls",), "model.pool is 'gap' there and 'cls' here"),
        (("model.moe_layers=0",), r"model.moe_layers puts MoE on blocks \[1\] there and \[0\] here"),
        (("model.router=soft_moe",), "model.router is 'softmax_expert_choice' there and 'soft_moe' here"),
        (("model.representation_size=8",), "a pre-logits layer can be dropped"),
    ],
)
def test_refused_architectures_name_the_field(source, tmp_path, overrides, message):
    workdir, _ = source
    config = resolve("tiny", overrides=overrides).replace(init_from=str(workdir))
    target = tmp_path / "ft"
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, target, progress=False)
    assert not target.exists()  # refused before anything is written


def test_init_from_a_path_that_is_not_a_source(tmp_path):
    config = resolve("tiny")
    with pytest.raises(ValueError, match="no such directory, nor a vmoe checkpoint"):
        train_and_evaluate(config.replace(init_from=str(tmp_path / "missing")), tmp_path / "a", progress=False)
    (tmp_path / "ckpt.index").write_bytes(b"")  # an index file that is not one: refused naming it
    with pytest.raises(ValueError, match=r"ckpt.index. is truncated \(0 bytes\)"):
        train_and_evaluate(config.replace(init_from=str(tmp_path / "ckpt")), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"not a training workdir \(no config.json\)"):
        train_and_evaluate(config.replace(init_from=str(tmp_path)), tmp_path / "c", progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


# tests/data/vmoe/tc_k1_token_every2: width 8, depth 4, 2 heads, MLP 16, 4 experts on blocks 1 and 3, patch 4,
# 8 px RGB, class token, 5 classes; what the arrays cannot say, as the fixture's model had it (test_import_vmoe.py)
VMOE_SETS = ("model.factor=1", "model.group_images=2")
RUN = ["--preset", "tiny", "--no-progress", "--steps", "1"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imported") / "vmoe"
    import_checkpoint(VMOE / "tc_k1_token_every2", workdir, sets=VMOE_SETS)
    return workdir


def _sets(*assignments):
    return [arg for a in assignments for arg in ("--set", a)]


def test_init_from_takes_the_architecture_from_the_source(imported, tmp_path):
    # --preset tiny says width 32, 1 channel, GAP, 10 classes; the source says width 8, RGB, class token, 5 classes:
    # the model is the source's, the data (digits, 10 classes, 8 px) the preset's, its channels the source's
    target = tmp_path / "ft"
    assert main([*RUN, "--init-from", str(imported), "--workdir", str(target)]) == 0
    saved = json.loads((target / "config.json").read_text())
    source = json.loads((imported / "config.json").read_text())
    for name, value in source["model"].items():
        expected = {"num_classes": 10, "image_size": 8}.get(name, value)
        assert saved["model"][name] == expected, name
    assert (saved["data"]["name"], saved["data"]["channels"]) == ("digits", 3)
    model, _ = load_model(target)
    trained, _ = load_model(imported)
    got, theirs = _arrays(model), _arrays(trained)
    for name in got:  # one step at learning rate 0 (warmup from 0): the source's weights but the new head
        if name not in (".head_w", ".head_b"):
            np.testing.assert_allclose(got[name], theirs[name], atol=1e-6, err_msg=name)
    assert got[".head_w"].shape == (8, 10)


def test_init_from_a_vmoe_checkpoint_directly(tmp_path):
    # no workdir written for the source: the arrays read into memory, what they cannot say from --preset/--set
    target = tmp_path / "ft"
    argv = [*RUN, "--init-from", str(VMOE / "tc_k1_token_every2"), "--workdir", str(target), *_sets(*VMOE_SETS)]
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    fields, arrays = infer(params_of(read_arrays(VMOE / "tc_k1_token_every2")), "fixture")
    expected = _arrays(to_model(arrays, build_config(fields, "vmoe-b16-authors", VMOE_SETS, "fixture")))
    got = _arrays(load_model(target)[0])
    assert got.keys() == expected.keys()
    for name in got:
        if name not in (".head_w", ".head_b"):
            np.testing.assert_allclose(got[name], expected[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("source", "assignments", "message"),
    [
        ("imported", ("model.width=16",), "model.width is 8 there and 16 here"),
        ("imported", ("model.pool=gap",), "model.pool is 'cls' there and 'gap' here"),
        ("checkpoint", (*VMOE_SETS, "model.num_experts=8"), "model.num_experts is 4 there and 8 here"),
        ("checkpoint", (*VMOE_SETS, "model.channels=1", "data.channels=1"), "model.channels is 3 there and 1 here"),
        ("checkpoint", (*VMOE_SETS, "model.router=soft_moe"), "a sparse router's kernel W (D, E) there"),
    ],
)
def test_a_set_contradicting_the_source_is_refused_naming_both_values(
    imported, tmp_path, capsys, source, assignments, message
):
    path = imported if source == "imported" else VMOE / "tc_k1_token_every2"
    target = tmp_path / "ft"
    with pytest.raises(SystemExit):
        main([*RUN, "--init-from", str(path), "--workdir", str(target), *_sets(*assignments)])
    assert message in capsys.readouterr().err
    assert not target.exists()


def test_fine_tuning_fields_may_change_and_soft_moe_keeps_its_slots(imported):
    # vmoe's Soft MoE fixture: 8 px, patch 4, GAP: T = 4 tokens, E = 4, S = 2 slots (c = S E / T = 2); at 16 px
    # T = 16, so S = 2 needs c = 2 * 4 / 16 = 0.5
    config = resolve("tiny", overrides=("model.image_size=16", "data.image_size=16", "model.group_images=4"))
    config = from_source(config.replace(init_from=str(VMOE / "soft_gap_every2")),
                         ["model.image_size", "data.image_size", "model.group_images"])  # fmt: skip
    assert (config.model.router, config.model.factor, config.model.image_size) == ("soft_moe", 0.5, 16)
    assert config.model.group_images == 4  # named: the user's value
    # the imported workdir's router (vmoe-b16-authors: Softmax Token Choice, k = 1 here) unless named
    tiny = resolve("tiny", overrides=("model.router=softmax_expert_choice", "model.factor=2"))
    config = from_source(tiny.replace(init_from=str(imported)), [])
    assert (config.model.router, config.model.factor, config.model.width) == ("softmax_token_choice", 1, 8)
    config = from_source(tiny.replace(init_from=str(imported)), ["model.router", "model.factor"])
    assert (config.model.router, config.model.factor, config.model.width) == ("softmax_expert_choice", 2, 8)
