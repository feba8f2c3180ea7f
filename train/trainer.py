"""The trainer: ``train_and_evaluate(config, workdir)``, the one function the CLI, the study and the tests call,
and the step it runs (``make_step``, kept beside the loop as big_vision keeps its ``update_fn``).

    config -> data (input_pipeline) -> model + optimizer state (state) -> global batches on the mesh (sharding)
        -> jitted step (loss + aux, grad, optax) -> metrics.jsonl (workdir) / checkpoints (checkpoint)
        -> evaluation (evaluators) -> summary.json (summary) and plots

The same code runs on one CPU, 8 GPUs or a TPU slice, one process or many (``train.sharding``). Randomness per
step is ``fold_in(key, step)`` and the batch of a step is a function of (seed, step), so a run resumed from a
checkpoint continues exactly as if it had never stopped. The trainer sits on top of ``train``: it imports the
modules below it, and none of them imports it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimized

from . import checkpoint
from . import workdir as files
from .config import Config
from .data import TrainLoader
from .evaluators import check_probe_pool, evaluate_accuracy, fewshot
from .finetune import check_source, initialize_from
from .input_pipeline import as_splits, load_data
from .plots import plot_run
from .preemption import Preempted, SignalGuard
from .progress import progress_bar
from .routing_plots import draw_routing
from .sharding import batch_sharding, check_process_rows, global_batch, make_mesh, replicated
from .state import init_state
from .summary import summarize


class NonFiniteLossError(FloatingPointError):
    pass


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
    lock = files.WorkdirLock(workdir)
    try:
        if workdir.exists():  # a second training in this workdir is refused at once
            _lock(lock)
        return _train_and_evaluate(config, workdir, mesh, lock, stop_after, progress, dataset)
    finally:
        lock.release()


def _lock(lock: files.WorkdirLock) -> None:
    """Process 0 takes the workdir's lock; every process learns whether it could (so all stop together)."""
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except (files.WorkdirInUseError, ValueError) as err:
            error = err
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
            raise files.WorkdirInUseError(f"process 0 could not lock {lock.workdir}: see its message")
    if error is not None:
        raise error


def _train_and_evaluate(config: Config, workdir: Path, mesh, lock, stop_after, progress, dataset) -> dict:
    files.check_or_write_config(config, workdir, write=False)  # another run's workdir is refused before data is read
    meta = checkpoint.latest(workdir)
    if config.init_from and meta is None:  # a source the model cannot start from is refused before data is read
        check_source(config)
    if meta is not None:  # the config saved with the checkpoints: the run's even when config.json is gone
        _check_checkpoint_config(config, workdir, meta)
    splits = as_splits(load_data(config) if dataset is None else dataset)  # bad data: refused before any write
    if len(splits.train) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(splits.train)} training examples "
                         f"of the {splits.name} data; set --batch-size")  # fmt: skip
    check_probe_pool(splits, config)  # the probe after training: its sizes are checked now
    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    try:  # a model the config cannot build (a factor its router does not take) is refused before any write
        model, opt_state, optimizer, schedule = init_state(config, init_key)
    except TypeError as err:  # optimized's checks raise TypeError for a value of the wrong kind
        raise ValueError(f"model config refused: {err}") from err
    if config.init_from and meta is None:  # fine-tuning: the source's weights; the optimizer state stays fresh
        model = initialize_from(model, config)
    data_sharding = batch_sharding(mesh)
    check_process_rows(data_sharding, config.batch_size)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--workdir {workdir}: cannot create it ({err.strerror or err})") from None
    _lock(lock)
    files.check_or_write_config(config, workdir, write=jax.process_index() == 0)

    model, opt_state = jax.device_put((model, opt_state), optimized.shardings((model, opt_state), mesh))
    start = 0
    meta = checkpoint.latest(workdir, report=True)
    if meta is not None:  # restored straight onto this mesh's shardings, each process reading its shards
        model, opt_state = checkpoint.restore(meta, (model, opt_state))
        start = meta["step"]
    writer = jax.process_index() == 0  # logs, plots and the summary are written once
    if writer:
        files.truncate_metrics(workdir, start)

    step_fn = make_step(optimizer, config.label_smoothing, config.model.num_classes, config.accumulate_steps,
                        mesh.size)  # fmt: skip
    # Choice: the data order is drawn from the run's seed, not from data.seed (which fixes the dataset): a study's
    # seeds then vary initialization, data order, noise and probe draws together, and every arm of one seed sees
    # the same order (a paired design).
    # The batch of step s is fixed by (seed, s) (``train.data.BatchOrder``, ``process_share``, ``example_rng``): the
    # loader's position is the step, so resuming needs no saved loader state.
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
    checkpoints = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints, config_json=config.to_json(),
                                         keep_every=config.keep_checkpoints_every or None)  # fmt: skip
    log = open(files.metrics_path(workdir), "a") if writer else None
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
                stop = guard.should_stop(done)  # several processes: JAX's preemption sync point, no collective
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
                if save_now:  # saved before it is evaluated: an evaluation that fails loses no training
                    checkpoints.save(done, model, opt_state)
                try:
                    if eval_now:
                        test_accuracy = evaluate_accuracy(model, splits.test, splits.test.labels, config.batch_size,
                                                          data_sharding, splits.eval_ops,
                                                          config.data.workers)  # fmt: skip
                        record = (record or {"step": done}) | {"test_accuracy": test_accuracy}
                finally:  # the step's training metrics are logged even if its evaluation fails
                    if record is not None and log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                bar.update(1)
                if stop:
                    checkpoints.close()
                    bar.close()
                    raise Preempted(done, guard.name, workdir)
            checkpoints.close()
            if guard.should_stop():  # a signal during the last step's save: the run is complete, say so anyway
                raise Preempted(end, guard.name, workdir)
    finally:  # the last save is committed and recorded, whatever ended the loop
        checkpoints.close(quiet=True)
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
        if not config.model.dense:  # what the routers do, from the final weights (as python -m train.visualize)
            draw_routing(model, config, splits, files.plots_dir(workdir), step=end, sharding=data_sharding)
        if guard.should_stop():  # the checkpoint of the last step is saved: rerunning only evaluates
            raise Preempted(end, guard.name, workdir)
    if not writer:
        _wait_for_the_writer()
        return {"step": end, "test_accuracy": test_accuracy, "fewshot_accuracy": probe["accuracy"]}
    try:
        summary = summarize(config, workdir, test_accuracy, probe, images_per_second)
        summary |= {"num_test": len(splits.test), "fewshot_num_test": probe["num_test"]}
        files.write_summary(workdir, summary)
        plot_run(workdir)
    finally:
        _wait_for_the_writer()
    return summary


def _wait_for_the_writer() -> None:
    """With several processes, all leave once process 0 has written the summary and the plots.

    Otherwise the others reach jax.distributed's shutdown barrier first and wait for process 0 there, under a
    timeout (300 s by default) that a slow end of run on a loaded host can outlast; the barrier then fails and kills
    a run whose work was done. A collective here has no such timeout: if process 0 dies, JAX's heartbeat ends the
    others.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("summary and plots written")


def _check_checkpoint_config(config: Config, workdir: Path, meta: dict) -> None:
    saved = checkpoint.recorded_config(meta)
    if saved is not None:
        files.check_config(config, saved, meta["path"])
    elif not (workdir / files.CONFIG).exists():
        raise files.ConfigMismatchError(
            f"{meta['path']} holds no copy of its run's config (written before checkpoints kept one) and {workdir} "
            f"has no {files.CONFIG}: nothing tells which config these checkpoints belong to; use a new --workdir"
        )


@jax.jit
def _note_non_finite(first_bad, bad_loss, loss, step):
    new = (first_bad == 0) & ~jnp.isfinite(loss)
    return jnp.where(new, step, first_bad), jnp.where(new, loss.astype(jnp.float32), bad_loss)


def _check_finite(first_bad, bad_loss, checkpoints, workdir: Path, bar) -> None:
    """Stop, naming the step, if a loss since the last check was NaN or infinite (nothing is saved after it)."""
    step = int(replicated(first_bad))
    if step:
        checkpoints.close()  # the last good checkpoint is complete and checked before the error is raised
        bar.close()
        good = checkpoint.latest(workdir)
        raise NonFiniteLossError(
            f"the loss became {float(replicated(bad_loss))} at step {step}; stopped without saving. The last good "
            f"checkpoint (step {good['step'] if good else 'none'}) is in {checkpoint.directory_of(workdir)}"
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


def _to_host(metrics: dict) -> dict:
    out = {}
    for name, value in metrics.items():
        value = replicated(value)
        out[name] = value.tolist() if value.ndim else float(value)
    return out
