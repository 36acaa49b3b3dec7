"""Training text -> fixed-length token blocks for causal-LM fine-tuning, with a held-out split.

Sources: a text file (`.txt`, `.md`), a JSON Lines / JSON / CSV file with a text column, a folder of such files (one
kind), or a `datasets` dataset saved with `save_to_disk` (a `Dataset` or a `DatasetDict`). Every row (a whole text
file, a JSONL record, a dataset row) is one document. Documents are tokenized, each followed by the end-of-text token,
concatenated and cut into blocks with `datasets.map` (cached on disk, `num_proc` workers for many documents).

Held out for evaluation: a `validation` / `valid` / `eval` / `test` split when the source has one, otherwise the *last*
`eval_fraction` of the blocks, so evaluation text never overlaps training text (for Tiny Shakespeare that is the tail
of the play text, the same held-out part the embedded `tiny_shakespeare` preset was validated on).

Example:

```python
>>> from falcon_hf import FalconHFTokenizer
>>> from falcon_hf.recipes import prepare_datasets
>>> tokenizer = FalconHFTokenizer.from_keras_preset("tiny_shakespeare")
>>> blocks = prepare_datasets("../shared/data/tinyshakespeare.txt", tokenizer, block_size=128)
>>> blocks["train"][0]["input_ids"][:1] == [tokenizer.bos_token_id], len(blocks["train"][0]["input_ids"])
(True, 128)
```
"""

import itertools
import os
from pathlib import Path

import datasets
from transformers.utils import logging

from .errors import RecipeError

logger = logging.get_logger(__name__)

BUILDER_BY_SUFFIX = {".txt": "text", ".md": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
EVAL_SPLIT_NAMES = ("validation", "valid", "eval", "test")
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
DOCUMENTS_PER_WORKER = 1000
"""Below this many documents per worker, extra `num_proc` workers cost more to start than they save."""


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)


def data_files(path: Path) -> tuple[str, list[str]]:
    """The `datasets` builder name and the sorted files of a data file or folder (all of one kind)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = [path]
    builders = {BUILDER_BY_SUFFIX.get(p.suffix.lower()) for p in files}
    if not files:
        raise RecipeError(f"{path}: empty folder; expected text, JSON Lines or CSV files.")
    if None in builders:
        unknown = sorted({p.suffix or p.name for p in files if p.suffix.lower() not in BUILDER_BY_SUFFIX})
        raise RecipeError(f"{path}: unsupported data file type(s) {unknown}; expected {sorted(BUILDER_BY_SUFFIX)} "
                          "or a folder written by `datasets`' save_to_disk.")
    if len(builders) > 1:
        raise RecipeError(f"{path}: mixes {sorted(builders)} files; put one kind of file in a data folder.")
    return builders.pop(), [str(p) for p in files]


def load_documents(data: str | os.PathLike, text_column: str = "text", cache_dir: str | os.PathLike | None = None):
    """A `DatasetDict` of documents (one per row, text in `text_column`): `train`, plus an eval split if given.

    Example:

    ```python
    >>> load_documents("../shared/data/tinyshakespeare.txt")["train"].num_rows  # one text file, one document
    1
    ```
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise RecipeError(f"{path}: no such data file or folder.")
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({TRAIN_SPLIT: loaded})
    else:
        builder, files = data_files(path)
        # sample_by="document": a text file is one document, kept whole so the BPE sees its real line breaks.
        options = {"sample_by": "document"} if builder == "text" else {}
        splits = datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir and str(cache_dir), **options)
    return select_splits(splits, text_column, path)


def select_splits(splits, text_column: str, where: Path):
    """Keep the training split (named `train`, or the only one) and the first known eval split, named `eval`."""
    names = list(splits)
    train_name = TRAIN_SPLIT if TRAIN_SPLIT in splits else names[0] if len(names) == 1 else None
    if train_name is None:
        raise RecipeError(f"{where}: splits {names} have no '{TRAIN_SPLIT}' split.")
    selected = {TRAIN_SPLIT: splits[train_name]}
    eval_name = next((name for name in EVAL_SPLIT_NAMES if name in splits), None)
    if eval_name is not None:
        selected[EVAL_SPLIT] = splits[eval_name]
    for name, split in selected.items():
        if text_column not in split.column_names:
            raise RecipeError(f"{where}: split '{name}' has no text column '{text_column}' (columns: "
                              f"{split.column_names}); pass text_column=...")
    return datasets.DatasetDict(selected)


def tokenize_documents(batch: dict, tokenizer, text_column: str) -> dict:
    """Token ids of each document, end-of-text appended (keras-hub's preprocessor ends training text with it too)."""
    texts = [text or "" for text in batch[text_column]]
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return {"input_ids": [document + [tokenizer.eos_token_id] for document in ids]}


def pack_blocks(batch: dict, block_size: int, bos_token_id: int | None) -> dict:
    """Concatenate a batch of documents and cut it into blocks of `block_size`, each opening with `bos_token_id`.

    keras-hub's Falcon preprocessor starts every training sequence with the start token, so with a tokenizer that
    adds one, each block does too and the model sees the context it was pre-trained with. The batch's last tokens
    that do not fill a block are dropped (at most one block per `datasets.map` batch).
    """
    stream = list(itertools.chain.from_iterable(batch["input_ids"]))
    prefix = [] if bos_token_id is None else [bos_token_id]
    body = block_size - len(prefix)
    blocks = [prefix + stream[start:start + body] for start in range(0, len(stream) - body + 1, body)]
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


def worker_count(num_rows: int, num_proc: int | None) -> int | None:
    """`num_proc` if given, else one worker per `DOCUMENTS_PER_WORKER` documents up to the CPU count (None: one)."""
    if num_proc is not None:
        return num_proc if num_proc > 1 else None
    workers = min(os.cpu_count() or 1, num_rows // DOCUMENTS_PER_WORKER)
    return workers if workers > 1 else None


def to_blocks(documents, tokenizer, block_size: int, text_column: str, num_proc: int | None):
    """Tokenize and pack one split of documents (both steps cached by `datasets`)."""
    workers = worker_count(documents.num_rows, num_proc)
    tokens = documents.map(
        tokenize_documents,
        batched=True,
        num_proc=workers,
        remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer, "text_column": text_column},
        desc="Tokenizing",
    )
    bos_token_id = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    return tokens.map(
        pack_blocks,
        batched=True,
        num_proc=workers,
        remove_columns=tokens.column_names,
        fn_kwargs={"block_size": block_size, "bos_token_id": bos_token_id},
        desc=f"Packing into blocks of {block_size}",
    )


def hold_out_tail(blocks, eval_fraction: float, where: str):
    """Split packed blocks into train (head) and eval (the last `eval_fraction`, at least one block)."""
    if not 0.0 < eval_fraction < 1.0:
        raise RecipeError(f"eval_fraction must be in (0, 1) when {where} has no eval split, got {eval_fraction}.")
    num_eval = max(1, round(blocks.num_rows * eval_fraction))
    if blocks.num_rows - num_eval < 1:
        raise RecipeError(f"{where}: only {blocks.num_rows} block(s); too little text to hold out "
                          f"{eval_fraction:.0%} for evaluation. Use more text or a smaller block_size.")
    head, tail = range(blocks.num_rows - num_eval), range(blocks.num_rows - num_eval, blocks.num_rows)
    return datasets.DatasetDict({TRAIN_SPLIT: blocks.select(head), EVAL_SPLIT: blocks.select(tail)})


def prepare_datasets(
    data: str | os.PathLike,
    tokenizer,
    block_size: int = 128,
    eval_fraction: float = 0.1,
    text_column: str = "text",
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """Tokenized, packed `train` and `eval` splits (`input_ids` and `labels` of `block_size` tokens) of `data`.

    Example:

    ```python
    >>> blocks = prepare_datasets("corpus.jsonl", tokenizer, block_size=256, eval_fraction=0.05)
    >>> sorted(blocks)
    ['eval', 'train']
    ```
    """
    if block_size < 2:
        raise RecipeError(f"block_size must be at least 2, got {block_size}.")
    documents = load_documents(data, text_column, cache_dir)
    blocks = {name: to_blocks(split, tokenizer, block_size, text_column, num_proc) for name, split in documents.items()}
    for name, split in blocks.items():
        if split.num_rows == 0:
            raise RecipeError(f"{data}: split '{name}' holds fewer than {block_size} tokens; no block to train on.")
    if EVAL_SPLIT in blocks:
        return datasets.DatasetDict(blocks)
    return hold_out_tail(blocks[TRAIN_SPLIT], eval_fraction, str(data))


__all__ = ["load_documents", "prepare_datasets"]
