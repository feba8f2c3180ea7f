"""The loader: which examples make the batch of step s, which share of it this host reads, and reading it (grain).

What it is for: every source (``train.data.sources``) goes through the same three pure functions and one grain
pipeline, so the order, the sharding over hosts and resuming are one code path for digits and for ImageNet:

- ``BatchOrder(n, B, seed).indices(step)``: the global batch of a step, a slice of a permutation drawn from
  (seed, epoch). A run restarted at step s reads the batch of step s: the loader position is the step.
- ``process_share(indices, process_index, process_count)``: the rows of the global batch that one JAX process
  reads (a contiguous block: the rows its devices hold under ``train.sharding.batch_sharding``).
- ``example_rng(seed, index, epoch)`` (``ops``): every random choice of preprocessing.

``TrainLoader.batches(start, end)`` yields the process-local batches of steps [start, end) through grain: a
``MapDataset`` over steps, each element one process-local batch (read + preprocess of its examples), decoded in
``workers`` worker processes when ``workers > 0``. ``EvalBatches`` reads a split for evaluation in a fixed order
that depends on the examples alone.

What it may import: numpy, grain and this package. JAX stays in ``train.sharding``, which turns a process-local batch
into a global ``jax.Array`` (``jax.make_array_from_process_local_data``).

Dimensions: B images per global batch, H x W pixels, ch channels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from .ops import Preprocess, example_rng


class BatchOrder:
    """Batch ``step`` is a slice of a permutation drawn from (seed, epoch): resumable without any state.

    ``epoch, i = divmod(step, n // B)``; the batch is ``default_rng([seed, epoch]).permutation(n)[i*B:(i+1)*B]``
    (the last ``n % B`` indices of each epoch's permutation are dropped, a different subset each epoch, so an
    example appears at most once per epoch). This is the one training order: the committed study results were
    trained in it, so it must never change.

    Choice: a full permutation per epoch, O(n) memory (8 bytes an example, cached for the current epoch): fine up
    to about 10^8 examples (0.8 GB); beyond that an index shuffle such as grain's Feistel ``index_shuffle`` would
    be needed, at the price of another order.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        for name, value, low in (("num_examples", num_examples, 1), ("batch_size", batch_size, 1),
                                 ("seed", seed, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if num_examples < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
        self.n, self.batch, self.seed = int(num_examples), int(batch_size), int(seed)
        self.per_epoch = self.n // self.batch  # the remainder of each epoch is dropped
        self._epoch, self._perm = -1, None

    def epoch_of(self, step: int) -> int:
        return self._step(step) // self.per_epoch

    def indices(self, step: int) -> np.ndarray:
        """The example indices of the global batch of ``step`` (0-based), (B,) int64."""
        epoch, index = divmod(self._step(step), self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm[index * self.batch : (index + 1) * self.batch]

    @staticmethod
    def _step(step) -> int:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        return int(step)


def process_share(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The part of a global batch ``indices`` (B,) that process ``process_index`` of ``process_count`` reads.

    Choice: contiguous blocks, process p reads rows [p B / P, (p + 1) B / P): under ``batch_sharding`` the batch
    axis is split over the devices in mesh order and ``jax.make_array_from_process_local_data`` places each
    process's rows on its own devices (``train.sharding.check_process_rows`` checks that the rows match). The
    shares are disjoint and their union, in process order, is the global batch.

    >>> [process_share(np.arange(6), p, 2).tolist() for p in range(2)]
    [[0, 1, 2], [3, 4, 5]]
    """
    if not (isinstance(process_count, int | np.integer) and process_count >= 1):
        raise ValueError(f"process_count must be an integer >= 1, got {process_count!r}")
    if not (isinstance(process_index, int | np.integer) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must be an integer in [0, {process_count}), got {process_index!r}")
    if len(indices) % process_count:
        raise ValueError(f"a batch of {len(indices)} cannot be split evenly over {process_count} processes")
    share = len(indices) // process_count
    return indices[process_index * share : (process_index + 1) * share]


def read_examples(source, indices: np.ndarray, preprocess: Preprocess | None, *, seed: int, epoch: int):
    """Examples ``indices`` of ``source`` as a batch: (images (b, H, W, ch) float32, labels (b,) int32).

    With ``preprocess`` each record goes through the ops with ``example_rng(seed, index, epoch)``; without (in-memory
    data, already decoded and normalized) the source's arrays are indexed directly. A record the ops cannot
    read is a ValueError naming the example (its file, or shard and record).
    """
    if preprocess is None:
        images, labels = source.read_batch(indices)
        return images, labels.astype(np.int32, copy=False)
    images, labels = [], []
    for index in indices:
        record, label = source.read(int(index))
        try:
            images.append(preprocess(record, example_rng(seed, index, epoch)))
        except ValueError as error:
            raise ValueError(f"example {int(index)} ({source.describe(int(index))}): {error}") from error
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class _StepBatch:
    """grain map function: step -> this process's batch of that step. Picklable; each worker builds its own
    ``BatchOrder`` cache."""

    source: object
    preprocess: Preprocess | None
    batch_size: int
    seed: int
    process_index: int
    process_count: int

    def __call__(self, step: int):
        order = self.__dict__.get("_order")
        if order is None:
            order = BatchOrder(len(self.source), self.batch_size, self.seed)
            object.__setattr__(self, "_order", order)
        indices = process_share(order.indices(step), self.process_index, self.process_count)
        return read_examples(self.source, indices, self.preprocess, seed=self.seed, epoch=order.epoch_of(step))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_order"}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a scheduler's cgroup or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def warn_workers(workers: int) -> None:
    """A note on stderr when ``workers`` grain processes exceed the cores: they then compete for them and decoding
    slows down instead of speeding up (measured on 2 cores: 4.6x slower with 8 workers, 15x with 32)."""
    cores = available_cores()
    if workers > cores:
        print(f"warning: data.workers = {workers} is more than the {cores} core(s) this process may use: the workers "
              f"compete for them and reading slows down (set --set data.workers={cores} or fewer)",
              file=sys.stderr)  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class TrainLoader:
    """The training batches of one process: ``batches(start, end)`` yields (images, labels) for steps
    [start, end), each ``batch_size / process_count`` examples, a pure function of (seed, step).

    ``workers`` > 0 decodes and preprocesses in that many grain worker processes (each batch is made whole by one
    worker; batches come back in step order); 0 reads in this process, one batch ahead on a grain thread.
    """

    source: object
    batch_size: int
    seed: int
    preprocess: Preprocess | None = None
    process_index: int = 0
    process_count: int = 1
    workers: int = 0

    def __post_init__(self):
        BatchOrder(len(self.source), self.batch_size, self.seed)  # checks n, B and seed before any work
        process_share(np.zeros(self.batch_size), self.process_index, self.process_count)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        warn_workers(self.workers)

    def batch(self, step: int):
        """The process-local batch of ``step``, read here (no grain): what ``batches`` yields for it."""
        return self._fn()(step)

    def _fn(self) -> _StepBatch:
        return _StepBatch(self.source, self.preprocess, self.batch_size, self.seed, self.process_index,
                          self.process_count)  # fmt: skip

    def batches(self, start: int, end: int):
        import grain

        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError(f"start and end must be integers with 0 <= start <= end, got {start!r}, {end!r}")
        if start == end:
            return iter(())
        dataset = grain.MapDataset.range(start, end).map(self._fn())
        # Choice: a prefetch of 2 batches on one thread: enough to overlap reading with a training step, and a
        # bounded memory (grain's default of 500 buffered elements would hold 500 batches).
        dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        if self.workers:
            _absl_flags_defaults()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                                       per_worker_buffer_size=2))  # fmt: skip
        return iter(dataset)


def _absl_flags_defaults() -> None:
    """grain's worker processes read absl flags (``grain_enable_multiprocess_worker_profiling``) and fail when no
    ``absl.app`` parsed them. Choice: outside an absl program, take every flag's default (what grain's own tests
    do); a program that parsed its flags keeps them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class EvalBatches:
    """A split read for evaluation: full batches of ``batch_size`` in an order that depends on the examples alone.

    Choice: examples are sorted by a hash of their stored bytes (``source.key``: the decoded array for in-memory
    data, the encoded file bytes for files and shards), as ``train.evaluators.evaluation_order`` explains; the keys are
    computed once (one read of the split). A partial last batch is filled with examples from the start of the
    same order, whose outputs are discarded. ``preprocess`` is the evaluation ops (deterministic).
    """

    def __init__(self, source, batch_size: int, preprocess: Preprocess | None = None):
        self.source, self.batch_size, self.preprocess = source, batch_size, preprocess
        keys = source.__dict__.get("_eval_keys")
        if keys is None:  # read once per source: later evaluations of the same split reuse the keys
            keys = [source.key(i) for i in range(len(source))]
            object.__setattr__(source, "_eval_keys", keys)
        self.order = np.array(sorted(range(len(source)), key=keys.__getitem__), dtype=np.int64)
        n = len(source)
        self.padded = self.order[np.arange(math.ceil(n / batch_size) * batch_size) % n]

    def __len__(self) -> int:
        return len(self.padded) // self.batch_size

    def indices(self, batch: int) -> np.ndarray:
        return self.padded[batch * self.batch_size : (batch + 1) * self.batch_size]

    def read(self, batch: int, process_index: int = 0, process_count: int = 1):
        """The process-local share of evaluation batch ``batch``: (images, labels)."""
        indices = process_share(self.indices(batch), process_index, process_count)
        return read_examples(self.source, indices, self.preprocess, seed=0, epoch=0)

    def batches(self, process_index: int = 0, process_count: int = 1, workers: int = 0):
        """Every batch's process-local share, in order; read in ``workers`` grain worker processes if > 0 (else
        here: in-memory data needs no help)."""
        if not workers:
            return (self.read(b, process_index, process_count) for b in range(len(self)))
        import grain

        _absl_flags_defaults()
        read = _EvalRead(self.source, self.preprocess, self.padded, self.batch_size, process_index, process_count)
        dataset = grain.MapDataset.range(len(self)).map(read)
        dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        return iter(dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)))

    def unpermute(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs of every batch, concatenated, back in the source's stored order."""
        ordered = outputs[: len(self.order)]
        result = np.empty_like(ordered)
        result[self.order] = ordered
        return result


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalRead:
    """grain map function: evaluation batch number -> this process's share of it (picklable)."""

    source: object
    preprocess: Preprocess | None
    padded: np.ndarray
    batch_size: int
    process_index: int
    process_count: int

    def __call__(self, batch: int):
        indices = self.padded[batch * self.batch_size : (batch + 1) * self.batch_size]
        indices = process_share(indices, self.process_index, self.process_count)
        return read_examples(self.source, indices, self.preprocess, seed=0, epoch=0)
