"""The presets (configs as code) and ``resolve``: a preset with the command line's options applied.

Each preset's docstring gives its command, the expected time on its hardware and the expected result.
``python -m train --preset NAME`` runs one; ``resolve("digits", router=..., overrides=("model.width=64",))`` is the
same from Python. Imports ``train.config``.
"""

from __future__ import annotations

from optimized import ROUTERS, VARIANTS, ViTMoEConfig

from .config import Config, DataConfig, override


def digits() -> Config:
    """scikit-learn's 8x8 digits, upscaled to 16x16, a 4-block ViT with MoE on blocks 1 and 3 (E = 8).

    Command: ``python -m train`` (the default). Measured on 2 CPU cores in a fresh virtualenv (2026-12-03): test
    accuracy 97.78% and 10-shot linear-probe accuracy 97.60% (mean of 5 draws) with Softmax Expert Choice
    (c = 1), 1000 steps of batch 64; 3 min 7 s wall and 448 images/s while the test suite ran on the same cores
    (1 min 43 s and 1196 images/s on idle cores, 2026-11-23).
    """
    model = ViTMoEConfig(
        **VARIANTS["mini"], image_size=16, channels=1, num_classes=10, router="softmax_expert_choice",
        factor=1, group_images=8,
    ).replace(patch_size=4, width=96, mlp_dim=192, num_heads=4)  # fmt: skip
    return Config(
        model=model, data=DataConfig("digits", image_size=16, channels=1), steps=1000, batch_size=64,
        learning_rate=2e-3, warmup_steps=100, eval_every=500, log_every=25, checkpoint_every=500,
    )  # fmt: skip


def synthetic() -> Config:
    """Procedural images of 100 classes; 80 for pre-training, 20 held out for the 10-shot probe (like JFT then
    ImageNet in the paper).

    Command: ``python -m train --preset synthetic``. Measured on 2 CPU cores (2026-11-22): 2 min 37 s wall,
    744 images/s, test accuracy 65.5% on the 80 pre-training classes (chance 1.25%; nearest class mean on raw
    pixels: 68%), 10-shot probe 72.0% on the 20 held-out classes (raw pixels: 69%). Those figures predate
    evaluation in hash order, the data order drawn from ``seed`` and the probe's 5 draws (2026-12-03), and were
    not re-measured since. Small models underfit it, and raw pixels beat them: the router study uses ``parts``.
    """
    model = ViTMoEConfig(
        **VARIANTS["mini"], image_size=16, channels=1, num_classes=80, router="softmax_expert_choice",
        factor=1, group_images=8,
    ).replace(patch_size=4, width=96, mlp_dim=192, num_heads=4)  # fmt: skip
    return Config(
        model=model, data=DataConfig("synthetic", image_size=16, channels=1, num_classes=100, heldout_classes=20),
        steps=1500, batch_size=64, learning_rate=2e-3, eval_every=500, checkpoint_every=500,
    )  # fmt: skip


def parts() -> Config:
    """Classes composed of parts (``train.data``, ``parts``): 100 pre-training classes, the 10-shot probe on 50
    held-out ones; the router study's task. A 4-block ViT (width 96, MLPs and experts of hidden width 64) on 32x32
    images, patch 8: one part per token, E = 8 experts.

    Command: ``python -m train --preset parts``. 1500 steps at a peak learning rate of 2e-3: the study's pilot
    (``studies/parts/pilot.md``) found no setting within its budget (1500 or 2000 steps; 1e-3, 2e-3 or 4e-3) at
    which test accuracy gains less than 0.5 points over the last 20% of steps (at 2000 steps and 2e-3: +0.7 points
    for Softmax Token Choice, +1.4 for the dense ViT; at 4e-3 the dense ViT stays at chance), and 1500 steps is
    what the default study's 60 minutes on 2 CPU cores allow. Pixel baselines are at chance (nearest class mean,
    a linear classifier, the 10-shot probe on pixels): the classes are bags of parts at random places, so a model
    must recognize parts wherever they are. Measured in the default study (2 CPU cores, 2026-12-03, pixel noise
    0.25): about 72 s of training per run; Softmax Token Choice reaches 83.9 +- 3.2% upstream and 73.8 +- 3.1%
    10-shot over 5 seeds, the dense ViT 81.9 +- 4.9% and 71.7 +- 5.0%.
    """
    model = ViTMoEConfig(
        **VARIANTS["mini"], image_size=32, channels=1, num_classes=100, router="softmax_token_choice",
        factor=1, group_images=8,
    ).replace(patch_size=8, width=96, mlp_dim=64, num_heads=4)  # fmt: skip
    return Config(
        model=model, data=DataConfig("parts", image_size=32, channels=1, num_classes=150, heldout_classes=50),
        steps=1500, batch_size=64, learning_rate=2e-3, warmup_steps=100, eval_every=300, checkpoint_every=500,
    )  # fmt: skip


def cifar10() -> Config:
    """CIFAR-10 from a local python-format directory: ``python -m train --preset cifar10 --set data.path=DIR``.

    A ViT-S/4-sized model on 32x32 images; on 2 CPU cores expect about 1.5 s per step (use a GPU).
    """
    model = ViTMoEConfig(
        **VARIANTS["S/16"], image_size=32, channels=3, num_classes=10, num_experts=8, group_images=8,
    ).replace(patch_size=4, depth=6)  # fmt: skip
    return Config(
        model=model, data=DataConfig("cifar10", image_size=32, channels=3), steps=20000, batch_size=128,
        learning_rate=1e-3, warmup_steps=1000, weight_decay=0.05, eval_every=2000, checkpoint_every=1000,
    )  # fmt: skip


def imagefolder() -> Config:
    """A folder of class subfolders of images, streamed (decoded on the fly, Inception crop + flip):
    ``python -m train --preset imagefolder --set data.path=DIR --set model.num_classes=N``. 32x32 RGB by default;
    change ``data.image_size`` and ``model.image_size``; ``--set data.workers=N`` decodes in N processes; shards
    written by ``python -m train.prepare`` read with ``--set data.name=arrayrecord``."""
    return cifar10().replace(data=DataConfig("imagefolder", image_size=32, channels=3, augment=True))


def _paper(variant: str) -> Config:
    model = ViTMoEConfig(
        **VARIANTS[variant], image_size=224, channels=3, num_classes=1000, num_experts=32, factor=1,
        group_images=8, router="softmax_expert_choice",
    )  # fmt: skip
    return Config(
        model=model, data=DataConfig("arrayrecord", image_size=224, channels=3, augment=True, workers=8),
        steps=300_000, batch_size=4096,
        learning_rate=1e-3, warmup_steps=10_000, weight_decay=0.1, eval_every=10_000, checkpoint_every=2_000,
        log_every=100,
    )  # fmt: skip


def vmoe_b32() -> Config:
    """The paper's B/32 (E = 32, MoE on every other block, c = 1 or k = 1): a machine with accelerators.

    ``python -m train.prepare --from IMAGENET_DIR --to SHARDS --shards 1024`` once, then
    ``python -m train --preset vmoe-b32 --set data.path=SHARDS --router sinkhorn_expert_choice`` (or
    ``--set data.name=imagefolder --set data.path=IMAGENET_DIR`` to stream the folder itself). 224 px, batch 4096,
    Inception crop + flip, 8 decoding workers per host. The paper trained on JFT-300M (not public); your own
    data stands in for it.
    """
    return _paper("B/32")


def vmoe_b16() -> Config:
    """The paper's B/16, E = 32 (accelerators). ``python -m train --preset vmoe-b16 --set data.path=SHARDS``."""
    return _paper("B/16")


def vmoe_l16() -> Config:
    """The paper's L/16, E = 32 (accelerators). ``python -m train --preset vmoe-l16 --set data.path=SHARDS``."""
    return _paper("L/16")


def tiny() -> Config:
    """A seconds-long smoke configuration used by the tests: ``python -m train --preset tiny``."""
    model = ViTMoEConfig(**VARIANTS["micro"], image_size=8, channels=1, num_classes=10, group_images=2)
    return Config(
        model=model, data=DataConfig("digits", image_size=8, channels=1), steps=4, batch_size=8,
        learning_rate=3e-3, warmup_steps=1, eval_every=2, log_every=1, checkpoint_every=2, fewshot_shots=5,
    )  # fmt: skip


PRESETS = {
    "digits": digits,
    "synthetic": synthetic,
    "parts": parts,
    "cifar10": cifar10,
    "imagefolder": imagefolder,
    "vmoe-b32": vmoe_b32,
    "vmoe-b16": vmoe_b16,
    "vmoe-l16": vmoe_l16,
    "tiny": tiny,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def resolve(
    preset_name: str = "digits",
    *,
    router: str | None = None,
    factor: float | None = None,
    seed: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    overrides: tuple[str, ...] = (),
) -> Config:
    """A preset with the command line's options and overrides applied, validated."""
    config = preset(preset_name)
    if router is not None:
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; valid routers: {', '.join(ROUTERS)}")
        config = config.replace(model=config.model.replace(router=router))
    if factor is not None:
        factor = int(factor) if float(factor).is_integer() else float(factor)
        config = config.replace(model=config.model.replace(factor=factor))
    for name, value in (("seed", seed), ("steps", steps), ("batch_size", batch_size)):
        if value is not None:
            config = config.replace(**{name: value})
    for assignment in overrides:
        config = override(config, assignment)
    config.validate()
    return config
