"""HF folder (`falcon_hf`) -> a Keras Hub Falcon preset that `keras_hub.models.FalconCausalLM.from_preset` loads."""

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .atomic import atomic_output_dir
from .checks import check_weights
from .errors import ConversionError
from .hf_checkpoint import HFCheckpoint, read_hf_config
from .json_files import read_json
from .keras_h5 import WEIGHTS_FILE, write_keras_weights
from .keras_preset import PreprocessorSettings, keras_backbone_config, write_keras_preset_files
from .rules import TIED_HF_NAMES, WeightMapping, mappings

logger = logging.get_logger(__name__)

HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
UNBOUNDED_MAX_LENGTH = 10**9
"""transformers' "no limit" `model_max_length` is ~1e30; anything this large means "not set"."""


def _post_processor_adds_bos(post_processor: dict | None) -> bool:
    """Whether `tokenizer.json`'s post-processor puts a special token before the text (how `add_bos_token` is kept)."""
    single = (post_processor or {}).get("single") or [{}]
    return "SpecialToken" in single[0]


def read_hf_tokenizer(folder: Path, max_positions: int) -> tuple[dict[str, int], list[str], PreprocessorSettings]:
    """BPE vocabulary, merges and preprocessor settings of an HF folder's `tokenizer.json` + `tokenizer_config.json`."""
    path = folder / HF_TOKENIZER_FILE
    model = read_json(path).get("model") or {}
    vocab, merges = model.get("vocab"), model.get("merges")
    if model.get("type") != "BPE" or not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ConversionError(f"{path}: not a byte-level BPE tokenizer (model.type BPE with vocab and merges).")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]
    settings = read_json(folder / HF_TOKENIZER_CONFIG_FILE)
    add_bos = settings.get("add_bos_token", _post_processor_adds_bos(read_json(path).get("post_processor")))
    max_length = settings.get("model_max_length")
    if not isinstance(max_length, (int, float)) or max_length >= UNBOUNDED_MAX_LENGTH:
        max_length = max_positions
    # keras-hub's preprocessor prepends the start token exactly when the HF tokenizer adds a bos token.
    preprocessor = PreprocessorSettings(sequence_length=int(max_length),
                                        add_start_token=bool(add_bos))
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges, preprocessor


def check_tied_head(checkpoint: HFCheckpoint) -> None:
    """A stored `lm_head.weight` is accepted only if it equals the embedding: keras-hub's Falcon has one matrix."""
    for head, embedding in TIED_HF_NAMES.items():
        if head in checkpoint.names() and not torch.equal(checkpoint.read(head), checkpoint.read(embedding)):
            raise ConversionError(f"{checkpoint.where(head)} differs from '{embedding}'; keras-hub's Falcon ties "
                                  "them, so an untied head cannot be exported.")


def iter_keras_tensors(checkpoint: HFCheckpoint, table: list[WeightMapping],
                       dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(Keras canonical path, tensor) pairs, one HF tensor read, cast to `dtype` (Keras has one) and reversed."""
    for mapping in table:
        yield from zip(mapping.keras, mapping.to_keras(checkpoint.read(mapping.hf).to(dtype)))


def export_keras_preset(hf_dir: str | os.PathLike, dst: str | os.PathLike, force: bool = False) -> Path:
    """Write the Keras Hub preset of an HF `falcon_hf` folder: `FalconCausalLM.from_preset(dst)` loads it.

    `dst` gets `model.weights.h5` in Keras 3's own layout (written with h5py), `config.json`, `task.json`,
    `preprocessor.json`, `tokenizer.json`, `metadata.json` and `assets/tokenizer/`, as keras-hub's `save_to_preset`
    writes them. Weights keep their stored dtype and the embedding keeps all its rows. Same safety as
    `convert_keras_preset`: built next to `dst`, renamed at the end, `force` to replace an existing `dst`.

    Example:

    ```python
    >>> export_keras_preset("falcon-rw-1b-hf", "falcon_rw_1b_keras")
    PosixPath('falcon_rw_1b_keras')
    ```
    """
    folder = Path(hf_dir)
    config = read_hf_config(folder)
    vocab, merges, preprocessor = read_hf_tokenizer(folder, config.max_position_embeddings)
    with HFCheckpoint(folder) as checkpoint:
        table = mappings(config)
        check_weights(checkpoint, {m.hf: m.hf_shape for m in table}, str(folder / "config.json"),
                      ignored=frozenset(TIED_HF_NAMES))
        check_tied_head(checkpoint)
        dtype = checkpoint.dtype(table[0].hf)
        backbone = keras_backbone_config(config, str(dtype).removeprefix("torch."))
        parameter_count = sum(torch.Size(shape).numel() for m in table for shape in m.keras_shapes)
        total = sum(torch.Size(m.hf_shape).numel() for m in table)
        with atomic_output_dir(dst, force=force, protect=[folder]) as tmp, \
                tqdm(total=total, unit="param", unit_scale=True, desc="export-keras",
                     disable=not logging.is_progress_bar_enabled()) as progress:
            tensors = iter_keras_tensors(checkpoint, table, dtype)
            write_keras_weights(tmp / WEIGHTS_FILE, _counted(tensors, progress), config.num_hidden_layers)
            write_keras_preset_files(tmp, backbone, preprocessor, vocab, merges, parameter_count)
    logger.info(f"Exported {hf_dir} to the Keras preset {dst}")
    return Path(dst)


def _counted(tensors: Iterator[tuple[str, torch.Tensor]], progress: tqdm) -> Iterator[tuple[str, torch.Tensor]]:
    for path, tensor in tensors:
        progress.update(tensor.numel())
        yield path, tensor


__all__ = ["export_keras_preset"]
