"""The presets (configs as code) and ``resolve``: a preset with the command line's options applied.

Each preset's docstring gives its command, the expected time on its hardware and the expected result.
``python -m train --preset NAME`` runs one; ``resolve("digits", router=..., overrides=("model.width=64",))`` is the
same from Python. Imports ``train.config``.
"""

from __future__ import annotations

import math

from optimized import ROUTERS, VARIANTS, ViTMoEConfig

from .config import Config, DataConfig, override


def digits() -> Config:
    """scikit-learn's 8x8 digits, upscaled to 16x16, a 4-block ViT with MoE on blocks 1 and 3 (E = 8).

    Command: ``python -m train`` (the default). Measured on 2 CPU cores in a fresh virtualenv (2026-12-04, with
    the blocks held in sequence and q/k/v's written-out backward): test accuracy 97.78% and 10-shot linear-probe
    accuracy 97.73% (mean of 5 draws; 97.64% before the batch was cut in slices, ``ViTMoEConfig.batch_chunks``,
    2026-12-05; 97.47% before q/k/v's backward was written out; the same test accuracy each time)
    with Softmax Expert Choice (c = 1), 1000 steps of batch 64; 2 min 32 s wall while other jobs loaded the same
    cores (1 min 43 s and 1196 images/s on idle cores, 2026-11-23). Before the sequence layout the same command gave
    98.22% and 97.87%: the logged losses agree to the last digit at steps 25 and 50 and first differ at step 75, by
    2e-7 (float summation order in the compiled step), after which the trajectories drift apart; the 0.44-point
    gap in test accuracy is 2 of the 450 test images.
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


# The authors' V-MoE (google-research/vmoe; the checkout read for this, issue 25 names commit 942a78b). File:line
# references below are to vmoe/configs/vmoe_paper/ there: pretrain_imagenet21k.py (P) and common.py (C).
def _authors(variant: str, num_experts: int, k: int, num_classes: int, **extra) -> Config:
    """vmoe's V-MoE model from its config, every value read from vmoe's code (each noted where it is set):

    - ViT sizes: B = width 768, 12 blocks, 12 heads, MLP 3072 (P:133, 138-140; C:214, 219-221), the patch size
      from the description ("ViT-B/16"), 224 px images (P:109; C via its callers' image_size=224);
    - ``pool="cls"``: a class token (``classifier = 'token'``, P:134, C:215);
    - MoE on blocks 1, 3, ..., 11 (``Every 2``: ``range(1, 12, 2)``, P:146-148, C:227-229), our default Every-2;
    - Softmax Token Choice, k from the description (``num_selected_experts``, P:159, C:240), batch priority off
      (P:171, C:254; ours is choice-major, token order, the same);
    - training noise std 1/E (``noise_std = 1.0``, "Actually, it's 1.0 / num_experts", P:160, C:241):
      ``noise_std=None``;
    - importance and load loss weights 0.005 each (P:161-162, C:242-243);
    - 8 images per routing group (``group_size = 8 * num_patches``, with the class token, P:126-127, C:207-208);
    - capacity ``ceil(1.05 k T / E)`` up to a multiple of 4 (``capacity_factor = 1.05``, P:166, C:249, and
      ``vmoe/moe.py compute_capacity``'s defaults ``ceil``, ``multiple_of=4``): ``capacity_rule="vmoe"``;
    - all experts of a layer from one draw (``split_rngs = False``, P:156, C:237): ``expert_init="shared"``;
    - router kernel lecun-normal (``nn.Dense``'s default, ``vmoe/nn/routing.py:73``): ``router_init="lecun"``;
    - should the router be switched to Softmax Expert Choice (``--router softmax_expert_choice``): vmoe's
      Expert Choice noise, 1/E (``vmoe/nn/routing.py:200, 224``): ``expert_choice_noise_std=None``.
    Not reproduced (training recipe, not the model): vmoe's sigmoid cross-entropy (P:68), mixup, RandAugment,
    Adam's linear-decay schedule (P:195-205) and weight decay on kernels only, bfloat16 dispatch (P:165).
    """
    model = ViTMoEConfig(
        **VARIANTS[variant], image_size=224, channels=3, num_classes=num_classes, router="softmax_token_choice",
        num_experts=num_experts, factor=k, group_images=8, pool="cls", noise_std=None, importance_weight=0.005,
        load_weight=0.005, capacity_rule="vmoe", vmoe_capacity_factor=1.05, expert_init="shared",
        router_init="lecun", expert_choice_noise_std=None, **extra,
    )  # fmt: skip
    return _paper(variant).replace(model=model)


def vmoe_b16_authors() -> Config:
    """vmoe's released V-MoE B/16 pre-training on ImageNet-21k, ``'ViT-B/16, E=8, K=2, Every 2, 300 Epochs'``
    (P:70): E = 8, k = 2, 21,843 classes (P:36), no pre-logits (``representation_size = None``, P:135), head
    bias starting at -10 (``head_bias_init``, P:136); the rest as ``_authors``. The architecture of vmoe's
    released ``vmoe_b16_imagenet21k_randaug_strong`` checkpoint (whose ImageNet fine-tune runs at 384 px and
    ``capacity_factor = 1.5``, ``vmoe_b16_imagenet21k_randaug_strong_ft_ilsvrc2012.py:146``).

    ``python -m train --preset vmoe-b16-authors --set data.path=SHARDS`` (accelerators; SHARDS of 21,843 classes,
    or ``--set model.num_classes=N`` for your data).
    """
    return _authors("B/16", 8, 2, 21_843, representation_size=None, head_bias_init=-10.0)


def vmoe_b32_authors() -> Config:
    """The paper's V-MoE B/32 (E = 32, k = 2, Every-2) as vmoe's generic config builds it, ``get_vmoe_config``
    (C:187-255): a pre-logits layer of the model's width (``representation_size = hidden_size``, C:216), the head
    bias starting at -log(classes) (C:217); the rest as ``_authors``. 1000 classes (the data standing in for JFT,
    as ``vmoe-b32``).

    ``python -m train --preset vmoe-b32-authors --set data.path=SHARDS`` (accelerators).
    """
    return _authors("B/32", 32, 2, 1000, representation_size=768, head_bias_init=-math.log(1000))


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
    "vmoe-b16-authors": vmoe_b16_authors,
    "vmoe-b32-authors": vmoe_b32_authors,
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
