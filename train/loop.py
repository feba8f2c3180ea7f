"""``train_and_evaluate(config, workdir)``: the one function the CLI, the study and the tests call.

    config -> data -> ViTMoE -> jitted step (loss + aux, grad, optax) -> metrics.jsonl / checkpoints / plots
    workdir: config.json, metrics.jsonl, checkpoints/, plots/, summary.json

The devices form a (``data``, ``expert``) mesh (``config.mesh``, ``jax.sharding``): the batch is sharded over
every device, expert weights over ``expert`` along their E axis (the MoE layers move tokens to them with two
all-to-alls, ``optimized.moe_over_groups``), everything else is replicated. The same code runs on one CPU,
8 GPUs or a TPU slice, one process or many: each process reads its share of every batch (``train.data``
loader) and ``jax.make_array_from_process_local_data`` assembles the global batch. Randomness per step is
``fold_in(key, step)`` and the batch of a step is a function of (seed, step), so a run resumed from a checkpoint
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import optimized
from optimized import DATA, EXPERT, ViTMoE

from . import checkpoint
from .config import Config
from .fewshot_probe import fewshot_accuracy
from .preemption import Preempted, SignalGuard


class ConfigMismatchError(ValueError):
    pass


class NonFiniteLossError(FloatingPointError):
    pass


# ------------------------------------------------------------------------------------------------------ data


def load_data(config: Config):
    """The run's data: an in-memory ``train.data.Dataset`` for the small datasets, or ``train.data.Splits`` opened
    for streaming (``data.name`` imagefolder or arrayrecord). Either way every input is checked here, before any
    training work, and the class count must match ``model.num_classes``."""
    from . import data

    d = config.data
    if d.name in data.STREAMING:
        dataset = data.open_streaming(
            d.name, d.path, image_size=d.image_size, channels=d.channels, augment=d.augment,
            fewshot_per_class=2 * config.fewshot_shots, test_fraction=d.test_fraction, seed=d.seed,
        )  # fmt: skip
    else:
        if d.augment:
            raise ValueError(f"data.augment is for image sources ({', '.join(data.STREAMING)}); the {d.name} data "
                             "is decoded in memory and read as it is")  # fmt: skip
        if d.name == "cifar10" and not d.path:
            raise ValueError(f"data.path must name a local directory for the {d.name} dataset (--set data.path=DIR)")
        candidates = {
            "path": d.path, "image_size": d.image_size, "channels": d.channels, "seed": d.seed,
            "num_classes": d.num_classes, "heldout_classes": d.heldout_classes, "test_fraction": d.test_fraction,
        }  # fmt: skip
        valid = data.OPTIONS.get(d.name, {})  # an unknown name is reported by data.load
        options = {k: v for k, v in candidates.items() if k in valid and v is not None and v != ""}
        dataset = data.load(d.name, **options)
    if dataset.num_classes != config.model.num_classes:
        raise ValueError(
            f"model.num_classes = {config.model.num_classes} but the {d.name} data has {dataset.num_classes} "
            f"classes; set --set model.num_classes={dataset.num_classes}"
        )
    return dataset


def as_splits(dataset):
    """A ``Dataset`` or ``Splits`` as ``Splits``: what training and evaluation read."""
    from .data import Splits, from_dataset

    return dataset if isinstance(dataset, Splits) else from_dataset(dataset)


def global_batch(local: np.ndarray, sharding, global_size: int):
    """This process's rows of a batch -> the global ``jax.Array`` of ``global_size`` rows on ``sharding``
    (``jax.make_array_from_process_local_data``); with no sharding (tests) the rows as they are."""
    if sharding is None:
        return local
    return jax.make_array_from_process_local_data(sharding, local, (global_size, *local.shape[1:]))


def check_process_rows(sharding, global_size: int) -> None:
    """Stop unless this process's devices hold rows [p b, (p + 1) b) of a batch under ``sharding``: the rows
    ``train.data.process_share`` gives it to read."""
    p, count = jax.process_index(), jax.process_count()
    share = global_size // count
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_size,)).values():
        rows.update(range(global_size)[index[0]])
    if rows != set(range(p * share, (p + 1) * share)):
        raise ValueError(f"process {p} of {count} holds batch rows {sorted(rows)[:4]}..., not the contiguous block "
                         f"[{p * share}, {(p + 1) * share}) its share of the input is: order the mesh's devices "
                         "by process")  # fmt: skip


def _host(output) -> np.ndarray:
    """A batch's output on this host, all rows (gathered from the other processes when there are several)."""
    if isinstance(output, jax.Array) and not output.is_fully_addressable:
        from jax.experimental import multihost_utils

        output = multihost_utils.process_allgather(output, tiled=True)
    return np.asarray(output)


# ----------------------------------------------------------------------------------------------------- model


def make_optimizer(config: Config):
    """AdamW with warmup, cosine decay and global-norm clipping; with ``model.freeze_router`` the routers'
    weights get no update at all (no gradient step, no weight decay): the fixed random-routing control."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, config.steps),
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.end_learning_rate_fraction,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )
    if config.model.freeze_router and not config.model.dense:
        optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, _router_labels)
    return optimizer, schedule


def _router_labels(params):
    def label(path, _):
        return "frozen" if any(getattr(k, "name", None) == "router_weight" for k in path) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_mesh(config: Config, devices=None) -> Mesh:
    """The (``data``, ``expert``) mesh of ``config.mesh`` over ``devices`` (default: every device), checked
    against the batch and the model before anything compiles."""
    devices = jax.devices() if devices is None else devices
    mesh = optimized.make_mesh(config.mesh.data, config.mesh.expert, devices)
    data, expert = mesh.shape[DATA], mesh.shape[EXPERT]
    per_device, rest = divmod(config.batch_size, mesh.size)
    if rest:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the {data} x {expert} = {mesh.size} devices "
            "of the mesh"
        )
    groups = 1 if config.model.router == "soft_moe" or config.model.dense else config.model.group_images
    if per_device % groups:
        raise ValueError(
            f"each of the {mesh.size} devices gets {per_device} images, not a multiple of model.group_images "
            f"= {groups}: routing groups would straddle devices"
        )
    if per_device % (groups * config.accumulate_steps):
        raise ValueError(
            f"each of the {mesh.size} devices gets {per_device} images, which accumulate_steps = "
            f"{config.accumulate_steps} micro-batches cannot share in whole routing groups of {groups} images: "
            f"batch_size must be a multiple of devices x accumulate_steps x group_images = "
            f"{mesh.size * config.accumulate_steps * groups}"
        )
    if not config.model.dense:
        optimized.check_expert_parallel(config.model.num_experts, config.batch_size // groups, data, expert)
    return mesh


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Images and labels: the batch axis split over every device of the mesh."""
    return NamedSharding(mesh, P((DATA, EXPERT)))


def make_step(optimizer, label_smoothing: float, num_classes: int, accumulate_steps: int = 1, devices: int = 1):
    """The jitted training step ``((images, labels, key), model, opt_state) -> (model, opt_state, metrics)``.

    The model and the optimizer state are donated: XLA writes the new ones into their buffers, so a step holds
    one copy of the state, not two. The arguments passed in are invalid afterwards; use the returned ones.

    With ``accumulate_steps`` N > 1 the batch is cut into N micro-batches whose gradients are summed in a
    ``lax.scan`` before one optimizer update: the large-batch step with 1/N of its activations. Micro-batch i is
    the i-th block of every one of the ``devices`` devices' rows, so no image changes device and every routing
    group (consecutive images within a device's rows) is the group it is in the large batch. Micro-batch i
    draws its routing noise from ``fold_in(key, i)``; without noise the step equals the large-batch step up to
    float summation order.
    """

    def loss_fn(model, images, labels, key):
        logits, aux = model(images, key=key)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        cross_entropy = optax.softmax_cross_entropy(logits, targets).mean()
        metrics = {
            "cross_entropy": cross_entropy,
            "aux_loss": aux["loss"],
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            **{f"moe/{name}": value for name, value in aux["moe"].items()},
        }
        return cross_entropy + aux["loss"], metrics

    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)

    def micro(x):  # (B, ...) -> (N, B / N, ...): micro-batch i takes block i of every device's rows
        per_device = x.shape[0] // devices
        x = x.reshape(devices, accumulate_steps, per_device // accumulate_steps, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(accumulate_steps, devices * x.shape[2], *x.shape[3:])

    # Choice: the batch goes first and is not donated: no output has its shape, and JAX warns about donated
    # buffers it cannot reuse.
    @eqx.filter_jit(donate="all-except-first")
    def step_fn(batch, model, opt_state):
        images, labels, key = batch
        if accumulate_steps == 1:
            (loss, metrics), grads = grad_fn(model, images, labels, key)
        else:
            def body(total, xs):
                i, images, labels = xs
                (loss, metrics), grads = grad_fn(model, images, labels, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, total, (loss, metrics, eqx.filter(grads, eqx.is_array))), None

            xs = (jnp.arange(accumulate_steps), micro(images), micro(labels))
            zero = jax.tree.map(jnp.zeros_like, eqx.filter_eval_shape(
                lambda m: grad_fn(m, images[: images.shape[0] // accumulate_steps],
                                  labels[: labels.shape[0] // accumulate_steps], key), model))  # fmt: skip
            zero = (zero[0][0], zero[0][1], eqx.filter(zero[1], eqx.is_array))
            total, _ = jax.lax.scan(body, zero, xs)
            loss, metrics, grads = jax.tree.map(lambda t: t / accumulate_steps, total)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))))
        return model, opt_state, {"loss": loss, **metrics, "grad_norm": grad_norm}

    return step_fn


@eqx.filter_jit
def _predict(model, images):
    return jnp.argmax(model(images, inference=True)[0], axis=-1)


@eqx.filter_jit
def _features(model, images):
    return model.features(images, inference=True)[0]


def evaluation_order(images: np.ndarray) -> np.ndarray:
    """The order in which evaluation groups ``images`` for routing: a permutation that depends only on the images.

    Choice: the images are sorted by a hash of their bytes (BLAKE2b), not taken in stored order. Sparse routers
    route ``group_images`` consecutive images together, so a token's output depends on the other images of its
    group; datasets are often stored sorted by class, and walking them in stored order would put one class in
    every group, which never happens in training (where every batch is a random draw). Hash order mixes classes
    as training does, and since it depends on the images alone, evaluation gives the same numbers for every
    ordering of the same set: a shuffled copy, a class-sorted copy. Identical images may come in any order
    among themselves; their outputs are identical, so nothing measured depends on it. Streaming sources hash
    their stored (encoded) bytes the same way (``train.data.EvalBatches``).
    """
    from .data import EvalBatches, InMemorySource

    images = np.ascontiguousarray(images)
    return EvalBatches(InMemorySource(images, np.zeros(len(images), np.int32)), 1).order


def _in_batches(fn, model, images, batch_size: int, sharding, preprocess=None, workers: int = 0) -> np.ndarray:
    """Apply ``fn`` to ``images`` (an array, or a source read with ``preprocess``, in ``workers`` grain worker
    processes if > 0) in full batches taken in ``evaluation_order``; outputs in the stored order. Each process
    reads its share of every batch.

    Choice: when the number of images is not a multiple of ``batch_size``, the last batch is filled with images
    from the start of the same order (real images, wrapping around), whose outputs are discarded: a padded group
    holds only real images, mixed as in training, and no blank image takes part in the routing of a real one.
    """
    from .data import EvalBatches, InMemorySource

    if isinstance(images, np.ndarray):
        images = InMemorySource(np.ascontiguousarray(images), np.zeros(len(images), np.int32))
    batches = EvalBatches(images, batch_size, preprocess)
    p, count = jax.process_index(), jax.process_count()
    outputs = [_host(fn(model, global_batch(local, sharding, batch_size)))
               for local, _ in batches.batches(p, count, workers if preprocess is not None else 0)]  # fmt: skip
    return batches.unpermute(np.concatenate(outputs))


def evaluate_accuracy(model, images, labels, batch_size, sharding, preprocess=None, workers: int = 0) -> float:
    """Top-1 accuracy on ``images`` (an array, or a source streamed in batches through ``preprocess``)."""
    predictions = _in_batches(_predict, model, images, batch_size, sharding, preprocess, workers)
    return float(np.mean(predictions == np.asarray(labels)))


def fewshot(model, dataset, config: Config, sharding) -> dict:
    """The paper's 10-shot linear probe on frozen pre-head features (sec. 3.3), averaged over shot draws.

    Draw ``d`` of ``config.fewshot_draws`` uses probe seed ``config.seed * 1000 + d``, so a run's seed fixes
    its draws and different seeds draw differently. The features of the probe's pool and test split are held in
    memory (for streaming data the pool is a small per-class subset, ``train.data.splits.fewshot_pool``).
    Returns the mean accuracy, each draw's accuracy and l2.
    """
    splits = as_splits(dataset)
    workers = config.data.workers
    train = _in_batches(_features, model, splits.fewshot_train, config.batch_size, sharding, splits.eval_ops, workers)
    test = _in_batches(_features, model, splits.fewshot_test, config.batch_size, sharding, splits.eval_ops, workers)
    draws = [
        fewshot_accuracy(train, splits.fewshot_train.labels, test, splits.fewshot_test.labels,
                         shots=config.fewshot_shots, seed=config.seed * 1000 + d)
        for d in range(config.fewshot_draws)
    ]  # fmt: skip
    return {
        "accuracy": float(np.mean([d["accuracy"] for d in draws])),
        "draw_accuracies": [d["accuracy"] for d in draws],
        "l2": [d["l2"] for d in draws],
        "shots": config.fewshot_shots,
        "num_classes": draws[0]["num_classes"],
        "num_test": draws[0]["num_test"],
    }


# -------------------------------------------------------------------------------------------------- progress


def progress_bar(total: int, start: int = 0, enabled: bool = True, unit: str = "step") -> tqdm:
    """A tqdm bar on stderr (rate and ETA). On a terminal it redraws at most 10 times a second; written to a file
    or a pipe (a log, CI) it writes a line at most every 30 s, so logs stay readable."""
    tty = sys.stderr.isatty()
    # Choice: no tqdm monitor thread (it only tunes how often bars redraw): nothing runs beside JAX's own threads.
    tqdm.monitor_interval = 0
    return tqdm(total=total, initial=start, disable=not enabled, unit=unit, file=sys.stderr, dynamic_ncols=tty,
                mininterval=0.1 if tty else 30.0, ascii=not tty)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ main


def _check_or_write_config(config: Config, workdir: Path, *, write: bool = True) -> None:
    """Refuse a workdir that holds another config; with ``write``, record this one."""
    path = workdir / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigMismatchError(f"{path} is not valid JSON ({err}); use a new workdir") from err
        try:  # a config saved before a field existed (data.augment, ...) reads with that field's default
            saved = json.loads(Config.from_dict(saved).to_json())
        except (KeyError, TypeError):
            pass  # not a config of a known shape: the comparison below reports the differences
        current = json.loads(config.to_json())
        # Choice: the mesh says where the run executes, not what it computes; a run resumes under any mesh. How
        # many checkpoints are kept is not what it computes either.
        for name in ("mesh", "keep_checkpoints", "keep_checkpoints_every"):
            saved.pop(name, None)
            current.pop(name)
        if saved != current:
            diffs = _diff(saved, current)
            raise ConfigMismatchError(
                f"workdir {workdir} holds a run of a different config; differences (saved -> now): "
                + "; ".join(diffs[:10])
                + ". Use a new --workdir, or the same options to resume."
            )
    if write:
        path.write_text(config.to_json())  # a new run, or the same run perhaps under another mesh: record this one


def _diff(a, b, prefix=""):
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _replicated(value) -> np.ndarray:
    """A replicated array's value on this host (every process holds all of it: no gathering)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return np.asarray(value)


def _to_host(metrics: dict) -> dict:
    out = {}
    for name, value in metrics.items():
        value = _replicated(value)
        out[name] = value.tolist() if value.ndim else float(value)
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged lines past the restored checkpoint: the resumed run will log them again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train_and_evaluate(
    config: Config, workdir, *, stop_after: int | None = None, progress: bool = True, dataset=None
) -> dict:
    """Train ``config`` in ``workdir`` (resuming from its last checkpoint), evaluate, and return the summary.

    ``stop_after`` ends the run after that many total steps (a checkpoint is written), as an interruption
    would; running again continues to ``config.steps``.
    """
    config.validate()
    workdir = Path(workdir)
    mesh = make_mesh(config)  # a mesh that does not fit the devices, the batch or E fails before anything is written
    _check_or_write_config(config, workdir, write=False)  # another run's workdir is refused before data is read
    splits = as_splits(load_data(config) if dataset is None else dataset)  # bad data: refused before any write
    if len(splits.train) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(splits.train)} training examples "
                         f"of the {splits.name} data; set --batch-size")  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(config, workdir, write=jax.process_index() == 0)
    data_sharding = batch_sharding(mesh)
    check_process_rows(data_sharding, config.batch_size)

    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    model = ViTMoE(config.model, key=init_key)
    optimizer, schedule = make_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    model, opt_state = jax.device_put((model, opt_state), optimized.shardings((model, opt_state), mesh))
    start = 0
    meta = checkpoint.latest(workdir, report=True)
    if meta is not None:  # restored straight onto this mesh's shardings, each process reading its shards
        model, opt_state = checkpoint.restore(meta, (model, opt_state))
        start = meta["step"]
    metrics_path = workdir / "metrics.jsonl"
    writer = jax.process_index() == 0  # logs, plots and the summary are written once
    if writer:
        _truncate_metrics(metrics_path, start)

    step_fn = make_step(optimizer, config.label_smoothing, config.model.num_classes, config.accumulate_steps,
                        mesh.size)  # fmt: skip
    # Choice: the data order is drawn from the run's seed, not from data.seed (which fixes the dataset): a study's
    # seeds then vary initialization, data order, noise and probe draws together, and every arm of one seed sees
    # the same order (a paired design).
    # The batch of step s is fixed by (seed, s) (``train.data.BatchOrder``, ``process_share``, ``example_rng``): the
    # loader's position is the step, so resuming needs no saved loader state.
    from .data import TrainLoader

    loader = TrainLoader(splits.train, config.batch_size, config.seed, splits.train_ops, jax.process_index(),
                         jax.process_count(), config.data.workers)  # fmt: skip
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    bar = progress_bar(end, start, progress and writer)
    test_accuracy = float("nan")
    # Choice: no device->host transfer on a step that neither logs, evaluates nor saves. The step's loss is
    # checked on the device: ``first_bad`` keeps the first step whose loss was not finite (0: none yet), read on
    # the host before anything is logged or saved, so no checkpoint ever holds weights past a non-finite loss.
    first_bad = jnp.zeros((), jnp.int32)
    bad_loss = jnp.zeros((), jnp.float32)
    timer = _Timer(config.batch_size)
    checkpoints = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints,
                                         keep_every=config.keep_checkpoints_every or None)  # fmt: skip
    log = open(metrics_path, "a") if writer else None
    try:
        with jax.set_mesh(mesh), SignalGuard() as guard:
            for step, (local_images, local_labels) in zip(range(start, end), loader.batches(start, end),
                                                          strict=True):  # fmt: skip
                images = global_batch(local_images, data_sharding, config.batch_size)
                labels = global_batch(local_labels, data_sharding, config.batch_size)
                batch = (images, labels, jax.random.fold_in(train_key, step))
                model, opt_state, metrics = step_fn(batch, model, opt_state)
                first_bad, bad_loss = _note_non_finite(first_bad, bad_loss, metrics["loss"], step + 1)
                done = step + 1
                timer.stepped(done, metrics["loss"], first=step == start)
                stop = guard.should_stop()
                log_now = done % config.log_every == 0 or done == end
                eval_now = done % config.eval_every == 0 or done == config.steps
                save_now = done % config.checkpoint_every == 0 or done == end or stop
                if log_now or eval_now or save_now:
                    _check_finite(first_bad, bad_loss, checkpoints, workdir, bar)
                record = None
                if log_now:
                    host = _to_host(metrics)
                    record = {"step": done, **host, "learning_rate": float(schedule(step)),
                              "images_per_second": timer.rate()}  # fmt: skip
                    bar.set_postfix_str(f"loss {host['loss']:.3f} batch acc {host['accuracy']:.3f}", refresh=False)
                if eval_now:
                    test_accuracy = evaluate_accuracy(model, splits.test, splits.test.labels, config.batch_size,
                                                      data_sharding, splits.eval_ops, config.data.workers)  # fmt: skip
                    record = (record or {"step": done}) | {"test_accuracy": test_accuracy}
                if record is not None and log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if save_now:
                    checkpoints.save(done, model, opt_state)
                bar.update(1)
                if stop:
                    checkpoints.close()
                    bar.close()
                    raise Preempted(done, guard.seen or "a signal (on another process)", workdir)
            checkpoints.close()
            if guard.should_stop():  # a signal during the last step's save: the run is complete, say so anyway
                raise Preempted(end, guard.seen or "a signal (on another process)", workdir)
    finally:
        checkpoints.manager.close()
        if log is not None:
            log.close()
    bar.close()
    images_per_second = timer.rate()
    if end < config.steps:
        return {"step": end, "stopped_early": True}

    with jax.set_mesh(mesh), SignalGuard() as guard:
        if math.isnan(test_accuracy):  # resumed at the very end
            test_accuracy = evaluate_accuracy(model, splits.test, splits.test.labels, config.batch_size,
                                              data_sharding, splits.eval_ops, config.data.workers)  # fmt: skip
        probe = fewshot(model, splits, config, data_sharding)
        if guard.should_stop():  # the checkpoint of the last step is saved: rerunning only evaluates
            raise Preempted(end, guard.seen or "a signal (on another process)", workdir)
    if not writer:
        return {"step": end, "test_accuracy": test_accuracy, "fewshot_accuracy": probe["accuracy"]}
    summary = summarize(config, workdir, test_accuracy, probe, images_per_second)
    summary |= {"num_test": len(splits.test), "fewshot_num_test": probe["num_test"]}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    from .plots import plot_run

    plot_run(workdir)
    return summary


@jax.jit
def _note_non_finite(first_bad, bad_loss, loss, step):
    new = (first_bad == 0) & ~jnp.isfinite(loss)
    return jnp.where(new, step, first_bad), jnp.where(new, loss.astype(jnp.float32), bad_loss)


def _check_finite(first_bad, bad_loss, checkpoints, workdir: Path, bar) -> None:
    """Stop, naming the step, if a loss since the last check was NaN or infinite (nothing is saved after it)."""
    step = int(_replicated(first_bad))
    if step:
        checkpoints.close()  # the last good checkpoint is complete and checked before the error is raised
        bar.close()
        good = checkpoint.latest(workdir)
        raise NonFiniteLossError(
            f"the loss became {float(_replicated(bad_loss))} at step {step}; stopped without saving. The last good "
            f"checkpoint (step {good['step'] if good else 'none'}) is in {workdir / 'checkpoints'}"
        )


class _Timer:
    """Images per second over the steps after the first (which compiles), measured when the rate is asked for
    (a log step, which waits for the device anyway)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.t0, self.from_step, self.last = batch_size, None, None, None

    def stepped(self, done: int, loss, *, first: bool) -> None:
        self.last = (done, loss)
        if first:
            jax.block_until_ready(loss)
            self.t0, self.from_step = time.perf_counter(), done

    def rate(self):
        if self.last is None or self.from_step is None or self.last[0] == self.from_step:
            return None
        jax.block_until_ready(self.last[1])
        return (self.last[0] - self.from_step) * self.batch_size / (time.perf_counter() - self.t0)


def summarize(config: Config, workdir: Path, test_accuracy: float, probe: dict, images_per_second) -> dict:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    last = records[-1] if records else {}
    layers = []
    num_moe = len(last.get("moe/dropped_fraction", []) or [])
    for i in range(num_moe):
        layers.append(
            {
                "block": 2 * i + 1,
                "dropped_fraction": last["moe/dropped_fraction"][i],
                "experts_per_token_mean": last["moe/experts_per_token_mean"][i],
                "load_cv": last["moe/load_cv"][i],
                "expert_load": last["moe/expert_load"][i],
            }
        )
    if images_per_second is None:  # resumed with nothing left to time: take the last logged figure
        images_per_second = next((r["images_per_second"] for r in reversed(records) if r.get("images_per_second")),
                                 None)  # fmt: skip
    return {
        "router": config.model.router,
        "factor": config.model.factor,
        "steps": config.steps,
        "test_accuracy": test_accuracy,
        "fewshot_accuracy": probe["accuracy"],
        "fewshot_shots": probe.get("shots", config.fewshot_shots),
        "fewshot_l2": probe.get("l2"),
        "fewshot_draw_accuracies": probe.get("draw_accuracies"),
        "images_per_second": images_per_second,
        "final_train_loss": last.get("loss"),
        "moe_layers": layers,
    }


def _saved_config(workdir: Path) -> Config:
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a training workdir")
    return Config.from_dict(json.loads(config_path.read_text()))


def load_model(workdir, step: int | None = None, *, config: Config | None = None,
               capacity_factor: float | None = None):  # fmt: skip
    """``(model, config)``: the trained model of the run in ``workdir``, from its model-only checkpoint item (the
    optimizer state is never read), checked by SHA-256. ``step`` None: the last complete checkpoint.

    ``config`` defaults to the workdir's ``config.json``; pass one to load the same weights into a model built
    differently (more Sinkhorn iterations: any change that keeps the arrays' shapes). ``capacity_factor`` runs the
    trained model at another capacity (``ViTMoE.with_capacity``); it is checked before the weights are read. The
    arrays land on one device; ``jax.device_put(model, optimized.shardings(model, mesh))`` spreads them.

        model, config = train.load_model("workdirs/digits-softmax_expert_choice-1-s0")
        logits, _ = model(images, inference=True)   # images: (B, H, W, channels), as train.data prepares them
    """
    workdir = Path(workdir)
    config = _saved_config(workdir) if config is None else config
    model = ViTMoE(config.model, key=jax.random.key(0))
    if capacity_factor is not None:
        model = model.with_capacity(capacity_factor)  # static fields only: the restore below fills the arrays
    if step is None:
        meta = checkpoint.latest(workdir, report=True)
        if meta is None:
            raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    else:
        if step not in checkpoint.complete_steps(workdir):
            raise FileNotFoundError(f"no complete checkpoint of step {step} in {workdir / 'checkpoints'} (complete: "
                                    f"{checkpoint.complete_steps(workdir) or 'none'})")  # fmt: skip
        meta = {"step": step, "path": checkpoint.directory_of(workdir) / str(step)}
    model = checkpoint.restore(meta, model, items=("model",))
    return model, config


def load_trained(workdir, config: Config | None = None, *, capacity_factor: float | None = None):
    """``(model, config, step)``: ``load_model`` at the last checkpoint, with its step."""
    workdir = Path(workdir)
    meta = checkpoint.latest(workdir)
    if config is None:
        config = _saved_config(workdir)
    if capacity_factor is not None:
        ViTMoE(config.model, key=jax.random.key(0)).with_capacity(capacity_factor)  # a bad factor: refused first
    if meta is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    model, config = load_model(workdir, meta["step"], config=config, capacity_factor=capacity_factor)
    return model, config, meta["step"]


def format_summary(summary: dict) -> str:
    ips = summary["images_per_second"]
    lines = [
        f"router {summary['router']} (factor {summary['factor']}), {summary['steps']} steps",
        f"test accuracy           {100 * summary['test_accuracy']:.2f}%",
        f"{summary['fewshot_shots']}-shot linear probe    {100 * summary['fewshot_accuracy']:.2f}%",
        f"images per second       {ips:.0f}" if ips else "images per second       n/a",
    ]
    if summary["moe_layers"]:
        lines.append("MoE layer  dropped tokens  experts/token  load CV  expert load (min-max)")
        for layer in summary["moe_layers"]:
            load = layer["expert_load"]
            lines.append(
                f"block {layer['block']:<4} {100 * layer['dropped_fraction']:>13.1f}%  "
                f"{layer['experts_per_token_mean']:>13.2f}  {layer['load_cv']:>7.3f}  {min(load):.2f}-{max(load):.2f}"
            )
    return "\n".join(lines)
