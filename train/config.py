"""Training configurations: code, not files (the presets are ``train.presets``).

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

from optimized import ViTMoEConfig
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
    # parts only (None: the reader's default, 4, 16 and 2): families per class, templates per family, distractors
    families: int | None = None
    variants: int | None = None
    distractors: int | None = None
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
    # Fine-tuning: a trained workdir whose last checkpoint's weights the run starts from (train.finetune); "": none
    init_from: str = ""

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
        # Choice: a step is a 32-bit number on the device (jax.random.fold_in's data, the trainer's int32 step
        # counters), so a run has fewer than 2**31 steps.
        if self.steps >= 2**31:
            raise ValueError(f"steps must be < 2**31 = {2**31}, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not isinstance(self.init_from, str):
            raise TypeError(f"init_from must be a path (str), got {self.init_from!r}")
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

# -------------------------------------------------------------------------------------------------- overrides


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _parse(key: str, text: str, annotation, current):
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [h for h in hints if h is not type(None)] or [type(current)]
    if type(None) in hints and text.lower() in ("none", "null"):
        return None
    kind = kinds[0] if not isinstance(kinds[0], str) else type(current)
    if typing.get_origin(kind) is tuple:  # e.g. model.moe_layers=9,11: comma-separated integers
        items = [item.strip() for item in text.split(",")]
        if not all(item.lstrip("+-").isdigit() for item in items):
            raise ValueError(
                f"--set {key}={text}: expected comma-separated integers (e.g. {key}=9,11)"
                + (" or none" if type(None) in hints else "")
            )
        return tuple(int(item) for item in items)
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
