"""Training configurations: code, not files. Each preset's docstring gives its command, time and result.

A ``Config`` holds the model (``optimized.ViTMoEConfig``), the data source and the optimization. Any field
can be overridden from the command line with ``--set key=value`` (``model.width=64``, ``data.seed=3``,
``learning_rate=3e-4``); the value is parsed to the field's type, and an unknown key or a value of the wrong
type is an error that says what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing

from optimized import ROUTERS, VARIANTS, ViTMoEConfig
from optimized._checks import positive_real, real_in


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | synthetic | parts | cifar10 (in memory) | imagefolder | arrayrecord (streamed)
    path: str = ""  # cifar10 / imagefolder / arrayrecord: the local directory to read
    image_size: int = 16
    channels: int = 1
    seed: int = 0
    num_classes: int | None = None  # synthetic only: classes generated (None: the reader's default)
    heldout_classes: int | None = None  # synthetic only: classes kept out of pre-training for the few-shot probe
    # Streamed sources only (imagefolder, arrayrecord): Inception crop + flip for training (train.data.ops).
    augment: bool = False
    workers: int = 0  # grain worker processes decoding and augmenting; 0: in the training process
    test_fraction: float = 0.25  # digits, and imagefolder without train/ + test/ sub-folders: each class's test share


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh: ``data`` x ``expert`` devices (see README, "Scaling").

    Expert weights are sharded over ``expert`` (which must divide ``model.num_experts``); the batch over every
    device. ``data = 0`` takes every device not on the expert axis. Where a run executes, not what it
    computes: a workdir resumes under any mesh, and its checkpoints load under another.
    """

    data: int = 0
    expert: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    model: ViTMoEConfig = dataclasses.field(default_factory=ViTMoEConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    end_learning_rate_fraction: float = 0.01  # cosine decay to this fraction of the peak
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    label_smoothing: float = 0.0
    eval_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 250
    fewshot_shots: int = 10
    fewshot_draws: int = 5  # the probe is averaged over this many draws of its shots
    # Micro-batches per step: gradients summed over them before one update (the batch_size step, with the
    # activations of batch_size / accumulate_steps images).
    accumulate_steps: int = 1
    keep_checkpoints: int = 2  # the newest checkpoints kept on disk
    keep_checkpoints_every: int = 0  # also keep every step that is a multiple of this (0: none)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> Config:
        return Config(
            model=ViTMoEConfig(**d["model"]),
            data=DataConfig(**d["data"]),
            mesh=MeshConfig(**d.get("mesh", {})),  # configs written before the mesh existed: the default
            **{k: v for k, v in d.items() if k not in SECTIONS},
        )

    def validate(self) -> None:
        self.model.validate()
        if not (isinstance(self.mesh.data, int) and self.mesh.data >= 0):
            raise ValueError(f"mesh.data must be an integer >= 0 (0: every device not on the expert axis), got "
                             f"{self.mesh.data!r}")  # fmt: skip
        if not (isinstance(self.mesh.expert, int) and self.mesh.expert >= 1):
            raise ValueError(f"mesh.expert must be an integer >= 1, got {self.mesh.expert!r}")
        if not self.model.dense and self.model.num_experts % self.mesh.expert:
            raise ValueError(
                f"mesh.expert = {self.mesh.expert} does not divide model.num_experts = {self.model.num_experts}: "
                "each device must hold num_experts / expert whole experts"
            )
        for name in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "fewshot_shots",
                     "fewshot_draws", "accumulate_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.keep_checkpoints_every < 0:
            raise ValueError(f"keep_checkpoints_every must be >= 0 (0: none), got {self.keep_checkpoints_every}")
        # Every real number is finite and in its range here, before any data is read: a NaN learning rate would
        # otherwise show up only as a NaN loss after the first step.
        positive_real("learning_rate", self.learning_rate)
        positive_real("grad_clip_norm", self.grad_clip_norm)
        real_in("weight_decay", self.weight_decay, 0.0)
        real_in("end_learning_rate_fraction", self.end_learning_rate_fraction, 0.0, 1.0)
        real_in("label_smoothing", self.label_smoothing, 0.0, 1.0)
        if self.model.router != "soft_moe" and not self.model.dense and self.batch_size % self.model.group_images:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of model.group_images {self.model.group_images} "
                "(images per routing group)"
            )
        groups = 1 if self.model.router == "soft_moe" or self.model.dense else self.model.group_images
        if self.batch_size % (self.accumulate_steps * groups):
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of accumulate_steps x model.group_images = "
                f"{self.accumulate_steps} x {groups}: each micro-batch holds whole routing groups"
            )
        if isinstance(self.data.workers, bool) or not isinstance(self.data.workers, int) or self.data.workers < 0:
            raise ValueError(f"data.workers must be an integer >= 0, got {self.data.workers!r}")
        real_in("data.test_fraction", self.data.test_fraction, 0.0, 1.0)
        if self.data.image_size != self.model.image_size or self.data.channels != self.model.channels:
            raise ValueError(
                f"data.image_size/channels ({self.data.image_size}, {self.data.channels}) must match "
                f"model.image_size/channels ({self.model.image_size}, {self.model.channels})"
            )


SECTIONS = ("model", "data", "mesh")  # the nested parts of a Config, set as --set SECTION.FIELD=VALUE

# ---------------------------------------------------------------------------------------------------- presets


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


# -------------------------------------------------------------------------------------------------- overrides


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _parse(key: str, text: str, annotation, current):
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [h for h in hints if h is not type(None)] or [type(current)]
    if type(None) in hints and text.lower() in ("none", "null"):
        return None
    kind = kinds[0] if not isinstance(kinds[0], str) else type(current)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:  # an integral text stays an int: k must be an integer for Token Choice
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        if kind is str:
            return text
    except ValueError:
        raise ValueError(f"--set {key}={text}: expected a value of type {kind.__name__}") from None
    raise ValueError(f"--set {key}: cannot set a field of type {kind}")


def _annotations(cls) -> dict:
    return typing.get_type_hints(cls)


def override(config: Config, assignment: str) -> Config:
    """Apply one ``key=value`` (dotted keys for ``model.`` and ``data.``) and return the new config."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) == 1:
        owner, name = config, parts[0]
    elif len(parts) == 2 and parts[0] in SECTIONS:
        owner, name = getattr(config, parts[0]), parts[1]
    else:
        raise ValueError(f"--set {key}: keys are FIELD, model.FIELD, data.FIELD or mesh.FIELD")
    valid = {n: f for n, f in _fields(owner).items() if owner is not config or n not in SECTIONS}
    if name not in valid:
        prefix = "" if owner is config else f"{parts[0]}."
        names = ", ".join(prefix + n for n in valid)
        raise ValueError(f"--set {key}: unknown key; valid keys: {names}")
    value = _parse(key, text.strip(), _annotations(type(owner))[name], getattr(owner, name))
    if owner is config:
        return config.replace(**{name: value})
    return config.replace(**{parts[0]: dataclasses.replace(owner, **{name: value})})


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
