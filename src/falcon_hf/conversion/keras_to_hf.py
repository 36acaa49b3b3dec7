"""Keras Hub Falcon preset -> transformers: an HF folder on disk, or a model and tokenizer in memory."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.initialization import no_init_weights
from transformers.utils import logging

from ..configuration_falcon_hf import FalconHFConfig
from .atomic import atomic_output_dir
from .checks import check_finite, check_weights
from .errors import ConversionError
from .hf_checkpoint import DEFAULT_MAX_SHARD_SIZE, SafetensorsShardWriter, TensorSpec, parse_size
from .keras_h5 import KerasWeights
from .keras_preset import (CONFIG_FILE, END_OF_TEXT, TOKENIZER_ASSETS, VOCABULARY_FILE, PreprocessorSettings,
                           hf_config_from_keras, read_backbone_config, read_metadata, read_preprocessor_settings,
                           read_tokenizer_assets)
from .model_card import render_model_card
from .resolve import ResolvedPreset, resolve_preset
from .rules import TIED_HF_NAMES, WeightMapping, mappings

logger = logging.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPT2_END_OF_TEXT_ID = 50256
"""`<|endoftext|>` in Falcon-RW's GPT-2 vocabulary, for backbone-only presets that ship no tokenizer."""


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`"float32"`, `"bfloat16"`, `"float16"` (or the torch dtype) -> torch dtype; None keeps the stored one."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ConversionError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class KerasPreset:
    """A resolved preset whose config passed validation, translated to `FalconHFConfig`."""

    resolved: ResolvedPreset
    config: FalconHFConfig

    @property
    def path(self) -> Path:
        return self.resolved.path


def _end_of_text_id(folder: Path, vocab_size: int) -> int | None:
    """`<|endoftext|>`'s id from the tokenizer assets (whose ids must fit the embedding), or GPT-2's without them."""
    try:
        vocab, _ = read_tokenizer_assets(folder)
    except ConversionError:
        if (folder / "assets").exists():
            raise
        return GPT2_END_OF_TEXT_ID if GPT2_END_OF_TEXT_ID < vocab_size else None
    if max(vocab.values()) >= vocab_size:
        raise ConversionError(f"{folder / TOKENIZER_ASSETS / VOCABULARY_FILE}: token id {max(vocab.values())} does "
                              f"not fit the {vocab_size}-row embedding of {folder / CONFIG_FILE}.")
    return vocab[END_OF_TEXT]


def open_keras_preset(preset: str | os.PathLike) -> KerasPreset:
    """Resolve `preset` and validate its `config.json` (a FalconBackbone with sane sizes)."""
    resolved = resolve_preset(preset)
    backbone = read_backbone_config(resolved.path)
    end_of_text = _end_of_text_id(resolved.path, backbone["vocabulary_size"])
    return KerasPreset(resolved, hf_config_from_keras(backbone, end_of_text, resolved.path / CONFIG_FILE))


def check_keras_weights(weights: KerasWeights, table: list[WeightMapping], config_path: Path) -> None:
    """Every Keras weight the table needs is there with the config's shape, and no other weight is."""
    expected = {path: shape for mapping in table for path, shape in zip(mapping.keras, mapping.keras_shapes)}
    check_weights(weights, expected, str(config_path))


def iter_hf_tensors(weights: KerasWeights, table: list[WeightMapping], dtype: torch.dtype,
                    check: bool = False) -> Iterator[tuple[WeightMapping, torch.Tensor]]:
    """Convert one table entry at a time: read its Keras tensors, apply the ops, cast to `dtype`."""
    for mapping in table:
        keras_tensors = tuple(weights.read(path) for path in mapping.keras)
        if check:
            for path, tensor in zip(mapping.keras, keras_tensors):
                check_finite(tensor, weights.where(path))
        tensor = mapping.to_hf(keras_tensors).to(dtype)
        if check:
            check_finite(tensor, f"{weights.where(mapping.keras[0])} cast to {dtype} as '{mapping.hf}'")
        yield mapping, tensor


def _stored_dtype(weights: KerasWeights, table: list[WeightMapping]) -> torch.dtype:
    return weights.dtype(table[0].keras[0])


def _write_hf_weights(weights: KerasWeights, table: list[WeightMapping], folder: Path, dtype: torch.dtype,
                      check: bool, max_shard_size: int) -> None:
    specs = [TensorSpec(mapping.hf, mapping.hf_shape, dtype) for mapping in table]
    total = sum(spec.nbytes for spec in specs)
    with SafetensorsShardWriter(folder, specs, max_shard_size) as writer, \
            tqdm(total=total, unit="B", unit_scale=True, desc="convert-keras",
                 disable=not logging.is_progress_bar_enabled()) as progress:
        for mapping, tensor in iter_hf_tensors(weights, table, dtype, check):
            writer.write(mapping.hf, tensor)
            progress.update(tensor.numel() * tensor.element_size())


def load_tokenizer_from_keras_preset(preset: str | os.PathLike):
    """The `FalconHFTokenizer` of a Keras preset: its BPE assets, and its preprocessor's start-token choice.

    Example:

    ```python
    >>> tokenizer = load_tokenizer_from_keras_preset("falcon_refinedweb_1b_en")
    >>> tokenizer("The falcon")["input_ids"][0] == tokenizer.bos_token_id  # keras-hub prepends the start token
    True
    ```
    """
    from ..tokenization_falcon_hf import FalconHFTokenizer

    folder = resolve_preset(preset).path
    vocab, merges = read_tokenizer_assets(folder)
    settings: PreprocessorSettings = read_preprocessor_settings(folder)
    return FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=settings.add_start_token,
                             model_max_length=settings.sequence_length)


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by table (HF Falcon) name; a base model's names get the `transformer.` prefix back."""
    prefix = "" if hasattr(model, model.base_model_prefix) else f"{model.base_model_prefix}."
    return {prefix + name: tensor for name, tensor in model.state_dict(keep_vars=True).items()}


def load_model_from_keras_preset(preset: str | os.PathLike, dtype: str | torch.dtype | None = None,
                                 model_class: type | None = None):
    """A `FalconHFForCausalLM` (or `model_class`) holding a Keras preset's weights, converted in memory.

    The weights are read one tensor at a time into an uninitialised model, so memory peaks at about one model.

    Example:

    ```python
    >>> model = load_model_from_keras_preset("falcon_refinedweb_1b_en", dtype="bfloat16")
    >>> model.config.num_hidden_layers
    24
    ```
    """
    if model_class is None:
        from ..modeling_falcon_hf import FalconHFForCausalLM as model_class
    preset = open_keras_preset(preset)
    with KerasWeights.open(preset.path) as weights:
        table = mappings(preset.config)
        check_keras_weights(weights, table, preset.path / CONFIG_FILE)
        target = parse_dtype(dtype) or _stored_dtype(weights, table)
        with no_init_weights():
            model = model_class._from_config(preset.config, dtype=target)
        model.tie_weights()
        tensors = _model_tensors(model)
        unfilled = set(tensors) - set(TIED_HF_NAMES)
        with torch.no_grad():
            for mapping, tensor in iter_hf_tensors(weights, table, target):
                if mapping.hf not in tensors:
                    raise ConversionError(f"{model_class.__name__} has no weight '{mapping.hf}' for "
                                          f"{weights.where(mapping.keras[0])}.")
                tensors[mapping.hf].copy_(tensor)
                unfilled.discard(mapping.hf)
    if unfilled:
        raise ConversionError(f"{preset.path}: the table leaves {sorted(unfilled)} of {model_class.__name__} unfilled.")
    model.tie_weights()
    return model.eval()


def convert_keras_preset(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
                         force: bool = False, check: bool = False,
                         max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Convert a Keras Hub Falcon preset into an HF folder at `dst`.

    `src` is a preset folder, a `kaggle://owner/model/framework/variation/version` or `hf://owner/repo` handle, or a
    built-in name such as `falcon_refinedweb_1b_en`. `dst` receives `config.json`, safetensors weights (sharded above
    `max_shard_size`, with an index), tokenizer files, `generation_config.json` and a `README.md` model card. Weights
    stream through one tensor at a time, cast to `dtype` if given. `check` refuses NaN or infinite weights. The folder
    is built next to `dst` and renamed at the end: on any error nothing is left; an existing `dst` is refused unless
    `force`.

    Example:

    ```python
    >>> convert_keras_preset("falcon_refinedweb_1b_en", "falcon-rw-1b-hf", dtype="bfloat16")
    PosixPath('falcon-rw-1b-hf')
    ```
    """
    preset = open_keras_preset(src)
    target, shard_size = parse_dtype(dtype), parse_size(max_shard_size)
    tokenizer = load_tokenizer_from_keras_preset(preset.path)
    with KerasWeights.open(preset.path) as weights:
        table = mappings(preset.config)
        check_keras_weights(weights, table, preset.path / CONFIG_FILE)
        target = target or _stored_dtype(weights, table)
        with atomic_output_dir(dst, force=force, protect=[preset.path]) as folder:
            _write_hf_weights(weights, table, folder, target, check, shard_size)
            _write_hf_files(folder, preset, tokenizer, target, Path(dst).name)
    logger.info(f"Converted {src} to {dst}")
    return Path(dst)


def _save_remote_code(folder: Path, config: FalconHFConfig) -> None:
    """Copy the modeling code and set `auto_map`, as `save_pretrained` does, for `trust_remote_code` users."""
    from ..modeling_falcon_hf import FalconHFForCausalLM

    with torch.device("meta"):  # an instance is needed, its weights are not
        model = FalconHFForCausalLM(config)
    if model._auto_class is not None:
        custom_object_save(model, folder, config=config)


def _write_hf_files(folder: Path, preset: KerasPreset, tokenizer, dtype: torch.dtype, name: str) -> None:
    config = preset.config
    config.dtype = dtype
    _save_remote_code(folder, config)
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    resolved = preset.resolved
    card = render_model_card(config, resolved.source, f"`{resolved.handle}`" if resolved.handle else "a local folder",
                             read_metadata(resolved.path), str(dtype).removeprefix("torch."), name,
                             resolved.description, resolved.parameter_count)
    (folder / "README.md").write_text(card, encoding="utf-8")


__all__ = ["convert_keras_preset", "load_model_from_keras_preset", "load_tokenizer_from_keras_preset", "parse_dtype"]
