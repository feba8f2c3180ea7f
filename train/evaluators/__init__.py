"""Evaluators: what a trained model is measured with, by the trainer and by the CLIs alike.

- ``batching``: the evaluation order (a hash of each image: groups mix classes as in training) and full batches.
- ``accuracy``: top-1 accuracy.
- ``fewshot``: the paper's 10-shot linear probe on frozen features; ``ridge_probe``: its math (NumPy, SciPy).

Evaluators import ``train.config``, ``train.data``, ``train.input_pipeline`` and ``train.sharding``; never the
trainer.
"""

from .accuracy import evaluate_accuracy as evaluate_accuracy
from .accuracy import predict as predict
from .batching import evaluation_order as evaluation_order
from .batching import in_batches as in_batches
from .fewshot import check_probe_pool as check_probe_pool
from .fewshot import features as features
from .fewshot import fewshot as fewshot
from .ridge_probe import fewshot_accuracy as fewshot_accuracy
