"""`compile` / `fit` / `evaluate` / `predict` as keras-hub's `CausalLM` runs them, on a plain torch loop.

keras-hub's `CausalLM.compile()` defaults: `keras.optimizers.Adam(2e-5)` (Adam, not AdamW: no weight decay),
`SparseCategoricalCrossentropy(from_logits=True)` with Keras' `"sum_over_batch_size"` reduction, i.e.
`sum(cross_entropy * sample_weight) / (batch * length)` (the divisor counts masked positions too), and a weighted
`SparseCategoricalAccuracy`. The epoch's loss is the batch losses averaged by batch size, as Keras' loss tracker does.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .data import to_numpy

KERAS_ADAM_LEARNING_RATE = 2e-5
"""keras-hub's `CausalLM.compile(optimizer="auto")` learning rate."""
KERAS_ADAM_EPSILON = 1e-7
"""Keras' Adam epsilon (torch's default is 1e-8)."""
KERAS_DEFAULT_BATCH_SIZE = 32
ACCURACY = "sparse_categorical_accuracy"
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, eps=KERAS_ADAM_EPSILON),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, eps=KERAS_ADAM_EPSILON, weight_decay=0.004),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
}
"""Keras' optimizers by name, with Keras' default hyper-parameters."""

Batch = tuple[dict, torch.Tensor, torch.Tensor]
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_cross_entropy(y_true: torch.Tensor, logits: torch.Tensor, sample_weight: torch.Tensor) -> torch.Tensor:
    """Keras' `SparseCategoricalCrossentropy(from_logits=True)`: weighted sum over the batch size (B * T).

    Example:

    ```python
    >>> weighted_cross_entropy(torch.tensor([[1, 0]]), torch.zeros(1, 2, 4), torch.tensor([[1.0, 0.0]]))
    tensor(0.6931)
    ```
    """
    losses = torch.nn.functional.cross_entropy(logits.float().flatten(0, -2), y_true.long().flatten(), reduction="none")
    return (losses * sample_weight.float().flatten()).sum() / losses.numel()


def resolve_loss(loss) -> LossFunction:
    if loss in ("auto", "sparse_categorical_crossentropy"):
        return weighted_cross_entropy
    if callable(loss):
        return loss
    raise ValueError(f"loss must be 'auto' or a callable (y_true, logits, sample_weight) -> scalar, got {loss!r}.")


def resolve_optimizer(optimizer, parameters) -> torch.optim.Optimizer:
    """`"auto"` (keras-hub's Adam(2e-5)), a Keras optimizer name, a torch optimizer, or a callable building one from
    the parameters."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if optimizer == "auto":
        return torch.optim.Adam(parameters, lr=KERAS_ADAM_LEARNING_RATE, eps=KERAS_ADAM_EPSILON)
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer '{optimizer}'; use 'auto', one of {sorted(OPTIMIZERS)}, a torch "
                             "optimizer or a callable that builds one from the parameters.")
        return OPTIMIZERS[optimizer.lower()](parameters)
    if callable(optimizer):
        return optimizer(parameters)
    raise ValueError(f"Could not interpret optimizer {optimizer!r}.")


@dataclass
class History:
    """What Keras' `fit` returns: per-epoch metrics in `history`, e.g. `history.history["loss"]`."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)


@dataclass
class MetricTotals:
    """Running loss (averaged by batch size) and weighted accuracy over an epoch."""

    loss_sum: float = 0.0
    samples: int = 0
    correct: float = 0.0
    weight: float = 0.0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor) -> None:
        batch = y.shape[0]
        self.loss_sum += float(loss) * batch
        self.samples += batch
        weights = sample_weight.float()
        self.correct += float(((logits.argmax(-1) == y.long()).float() * weights).sum())
        self.weight += float(weights.sum())

    def logs(self, with_accuracy: bool) -> dict[str, float]:
        logs = {"loss": self.loss_sum / max(self.samples, 1)}
        if with_accuracy:
            logs[ACCURACY] = self.correct / self.weight if self.weight else 0.0
        return logs


def _rows(value, index: np.ndarray):
    if isinstance(value, dict):
        return {key: _rows(item, index) for key, item in value.items()}
    return torch.as_tensor(to_numpy(value)[index])


def batches(x, y, sample_weight, batch_size: int, preprocessor, shuffle: bool = False,
            need_labels: bool = True) -> Iterator[Batch]:
    """(x, y, sample_weight) batches of raw text (through `preprocessor`) or of a `{"token_ids", "padding_mask"}` dict.

    A dict needs `y` when `need_labels`; `sample_weight` defaults to ones. Without labels (`predict`), dict batches
    come with `y` and `sample_weight` None.
    """
    if isinstance(x, dict):
        return array_batches(x, y, sample_weight, batch_size, shuffle, need_labels)
    return text_batches(x, y, sample_weight, batch_size, preprocessor, shuffle)


def _batch_indices(count: int, batch_size: int, shuffle: bool) -> Iterator[np.ndarray]:
    order = torch.randperm(count).numpy() if shuffle else np.arange(count)  # seeded by torch.manual_seed
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def text_batches(texts, y, sample_weight, batch_size: int, preprocessor, shuffle: bool) -> Iterator[Batch]:
    if preprocessor is None:
        raise ValueError("Raw text needs a preprocessor; with preprocessor=None pass x={'token_ids', "
                         "'padding_mask'} (and y).")
    if y is not None or sample_weight is not None:
        raise ValueError("With raw text the preprocessor computes y and sample_weight; pass only x.")
    texts = [texts] if isinstance(texts, str) else list(texts)
    for index in _batch_indices(len(texts), batch_size, shuffle):
        yield preprocessor([texts[i] for i in index])


def array_batches(x: dict, y, sample_weight, batch_size: int, shuffle: bool, need_labels: bool) -> Iterator[Batch]:
    if y is None and need_labels:
        raise ValueError("Preprocessed x needs y (the next-token ids).")
    if sample_weight is None and y is not None:
        sample_weight = np.ones(to_numpy(y).shape, dtype=np.float32)
    for index in _batch_indices(len(x["token_ids"]), batch_size, shuffle):
        if y is None:
            yield _rows(x, index), None, None
        else:
            yield _rows(x, index), _rows(y, index), _rows(sample_weight, index)


def steps_per_epoch(x, batch_size: int) -> int:
    count = len(x["token_ids"]) if isinstance(x, dict) else (1 if isinstance(x, str) else len(x))
    return math.ceil(count / batch_size)


def progress(total: int, description: str, verbose) -> tqdm:
    enabled = verbose != 0 and logging.is_progress_bar_enabled()
    return tqdm(total=total, desc=description, unit="step", disable=not enabled, leave=False)


__all__ = ["History", "batches", "resolve_loss", "resolve_optimizer", "weighted_cross_entropy"]
