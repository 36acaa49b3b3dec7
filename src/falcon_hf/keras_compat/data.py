"""The input shapes keras-hub's task methods take: a string, a list of strings, a dict of arrays, or many batches."""

from collections.abc import Iterable

import numpy as np

TEXT_COLUMNS = ("text", "prompt")
GENERATE_DATASET_BATCH_SIZE = 32
"""`generate` on a `datasets.Dataset` runs this many rows per batch (a `tf.data.Dataset` comes batched; rows don't)."""


def to_numpy(value) -> np.ndarray:
    """Arrays, lists or torch tensors (any device) as numpy."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def is_hf_dataset(value) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(value, datasets.Dataset)


def dataset_texts(dataset) -> list[str]:
    """The text column of a `datasets.Dataset`: `text`, else `prompt`, else its only column."""
    columns = dataset.column_names
    name = next((column for column in TEXT_COLUMNS if column in columns), columns[0] if len(columns) == 1 else None)
    if name is None:
        raise ValueError(f"Cannot tell which column holds the text among {columns}; name it 'text' or select it.")
    return list(dataset[name])


def as_training_input(x):
    """A `datasets.Dataset` becomes its list of texts; anything else passes unchanged."""
    return dataset_texts(x) if is_hf_dataset(x) else x


def generate_batches(inputs) -> tuple[list, bool]:
    """(batches, was_a_single_string): one batch for a string, a list of strings or a dict; many for a
    `datasets.Dataset` or an iterable of batches (lists of strings or dicts; a lone string is a batch of one)."""
    if isinstance(inputs, str):
        return [[inputs]], True
    if isinstance(inputs, dict):
        return [inputs], False
    if is_hf_dataset(inputs):
        texts = dataset_texts(inputs)
        size = GENERATE_DATASET_BATCH_SIZE
        return [texts[start : start + size] for start in range(0, len(texts), size)], False
    if isinstance(inputs, (list, tuple)) and all(isinstance(item, str) for item in inputs):
        return [list(inputs)], False
    if isinstance(inputs, Iterable):
        batches = [batch if isinstance(batch, dict) else [batch] if isinstance(batch, str) else list(batch)
                   for batch in inputs]
        if not all(isinstance(batch, dict) or all(isinstance(item, str) for item in batch) for batch in batches):
            raise ValueError("Each batch must be a list of strings or a {'token_ids', 'padding_mask'} dict.")
        return batches, False
    raise ValueError(f"generate() takes a string, a list of strings, a dict, a datasets.Dataset or an iterable of "
                     f"batches; got {type(inputs).__name__}.")


__all__ = ["as_training_input", "generate_batches"]
