"""Training data: sources, preprocessing ops and one loader, in the shape of big_vision's input pipeline.

    source (in memory | image folder | ArrayRecord shards)  ->  ops (decode, inception crop, flip, value range)
        ->  loader (BatchOrder: the batch of step s from (seed, s); process_share: this host's rows; grain)

- ``datasets``: ``load(name, **options)`` -> an in-memory ``Dataset`` (digits, synthetic, parts, cifar10, a small
  image folder); ``from_arrays`` for your own arrays; ``arrays``: the ``Dataset`` record; ``procedural``: the
  generated datasets.
- ``sources``: random access by example index (``InMemorySource``, ``ImageFolderSource``, ``ArrayRecordSource``),
  ``read_image_folder``, ``read_manifest``; shards are written by ``python -m train.prepare``.
- ``ops``: the named preprocessing ops; every random choice from ``example_rng(seed, index, epoch)``.
- ``loader``: ``BatchOrder``, ``process_share``, ``TrainLoader`` (grain), ``EvalBatches``.
- ``splits``: ``Splits``, what a run reads, from a ``Dataset`` or a streaming source.

What it may import: numpy, Pillow, grain and array_record (inside the functions that read shards), scikit-learn
(digits); never JAX: ``train.sharding`` makes global arrays of the batches.
"""

from .arrays import Dataset as Dataset
from .arrays import from_arrays as from_arrays
from .arrays import resize_images as resize_images
from .arrays import resize_matrix as resize_matrix
from .datasets import DATASETS as DATASETS
from .datasets import OPTIONS as OPTIONS
from .datasets import load as load
from .loader import BatchOrder as BatchOrder
from .loader import EvalBatches as EvalBatches
from .loader import TrainLoader as TrainLoader
from .loader import process_share as process_share
from .ops import Preprocess as Preprocess
from .ops import eval_ops as eval_ops
from .ops import example_rng as example_rng
from .ops import train_ops as train_ops
from .procedural import PARTS_FAMILIES as PARTS_FAMILIES
from .procedural import PARTS_VARIANTS as PARTS_VARIANTS
from .procedural import parts_vocabulary as parts_vocabulary
from .sources import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from .sources import ArrayRecordSource as ArrayRecordSource
from .sources import ImageFolderSource as ImageFolderSource
from .sources import InMemorySource as InMemorySource
from .sources import read_image_folder as read_image_folder
from .sources import read_manifest as read_manifest
from .splits import STREAMING as STREAMING
from .splits import Splits as Splits
from .splits import from_dataset as from_dataset
from .splits import open_streaming as open_streaming
from .splits import streaming_class_names as streaming_class_names
from .splits import test_arrays as test_arrays
