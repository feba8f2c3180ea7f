"""Fine-tuning (``python -m train --init-from DIR``, ``train.finetune``): from a trained tiny run's weights."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import numpy as np
import pytest
import scipy.ndimage

from train.__main__ import main
from train.finetune import initialize_from, resize_posemb
from train.presets import resolve
from train.state import init_model
from train.trained import load_model
from train.trainer import train_and_evaluate


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


def test_init_from_a_path_that_is_not_a_workdir(tmp_path):
    config = resolve("tiny")
    with pytest.raises(ValueError, match="no such directory"):
        train_and_evaluate(config.replace(init_from=str(tmp_path / "missing")), tmp_path / "a", progress=False)
    (tmp_path / "ckpt.index").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a vmoe checkpoint, not a workdir; convert it first with python -m "
                       r"train.import_vmoe"):  # fmt: skip
        train_and_evaluate(config.replace(init_from=str(tmp_path / "ckpt")), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"not a training workdir \(no config.json\)"):
        train_and_evaluate(config.replace(init_from=str(tmp_path)), tmp_path / "c", progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")
