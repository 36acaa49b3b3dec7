"""What `from_preset` accepts: a built-in name, `kaggle://`, `hf://`, or a local Keras preset or HF folder.

Resolution is the conversion package's (`resolve_preset`: kagglehub / huggingface_hub caches, embedded presets); this
module only tells the two folder kinds apart and loads each with the existing loaders: Keras presets through the
converter (`load_model_from_keras_preset`), HF folders through `from_pretrained`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration_falcon_hf import FalconHFConfig
from ..conversion import BUILTIN_PRESETS, load_model_from_keras_preset, load_tokenizer_from_keras_preset, resolve_preset
from ..conversion.json_files import read_json
from ..conversion.keras_preset import PreprocessorSettings, read_metadata, read_preprocessor_settings
from ..conversion.keras_to_hf import open_keras_preset, parse_dtype
from ..conversion.resolve import EMBEDDED_PRESETS, is_preset_folder, preset_file
from ..modeling_falcon_hf import FalconHFForCausalLM
from ..tokenization_falcon_hf import FalconHFTokenizer

UNBOUNDED_MAX_LENGTH = 10**9
"""transformers' "no limit" `model_max_length` is ~1e30: anything this large means the folder did not set one."""


class classproperty:
    """`@property` for classes (keras-hub's `Task.presets` is read on the class)."""

    def __init__(self, getter):
        self.getter = getter
        self.__doc__ = getter.__doc__

    def __get__(self, instance, owner):
        return self.getter(owner)


@dataclass(frozen=True)
class PresetFolder:
    """A resolved preset: its folder and whether it is an HF (`falcon_hf`) folder or a Keras preset."""

    path: Path
    is_hf: bool

    @classmethod
    def resolve(cls, preset: str | os.PathLike) -> "PresetFolder":
        path = resolve_preset(preset).path
        config = preset_file(path, "config.json")  # never read a config a symlink leads elsewhere
        return cls(path, config.is_file() and "model_type" in read_json(config))


def _embedded_presets() -> dict[str, dict]:
    presets = {}
    for folder in sorted(EMBEDDED_PRESETS.glob("*")):
        if is_preset_folder(folder):
            metadata = read_metadata(folder)
            presets[folder.name] = {
                "metadata": {"description": metadata.get("description", "Embedded preset shipped with falcon-hf."),
                             "params": metadata.get("parameter_count"), "path": "falcon"},
                "path": str(folder),
            }
    return presets


def preset_table() -> dict[str, dict]:
    """keras-hub's `presets` dict: name -> {"metadata": {"description", "params", "path"}, "kaggle_handle" | "path"}.

    Example:

    ```python
    >>> preset_table()["falcon_refinedweb_1b_en"]["metadata"]["params"]
    1311625216
    ```
    """
    builtin = {
        name: {"metadata": {"description": preset.description, "params": preset.parameter_count, "path": "falcon"},
               "kaggle_handle": preset.handle}
        for name, preset in BUILTIN_PRESETS.items()
    }
    return {**builtin, **_embedded_presets()}


def load_hf_model(preset: str | os.PathLike, load_weights: bool = True,
                  dtype: str | torch.dtype | None = None) -> FalconHFForCausalLM:
    """The preset's `FalconHFForCausalLM`; `load_weights=False` gives random weights of the same config."""
    folder = PresetFolder.resolve(preset)
    dtype = parse_dtype(dtype)
    if folder.is_hf:
        if load_weights:
            return FalconHFForCausalLM.from_pretrained(folder.path, dtype=dtype).eval()
        return random_model(FalconHFConfig.from_pretrained(folder.path), dtype)
    if load_weights:
        return load_model_from_keras_preset(folder.path, dtype=dtype)
    return random_model(open_keras_preset(folder.path).config, dtype)


def random_model(config: FalconHFConfig, dtype: torch.dtype | None) -> FalconHFForCausalLM:
    model = FalconHFForCausalLM(config)
    return (model.to(dtype) if dtype is not None else model).eval()


def load_hf_tokenizer(preset: str | os.PathLike) -> FalconHFTokenizer:
    folder = PresetFolder.resolve(preset)
    if folder.is_hf:
        return FalconHFTokenizer.from_pretrained(folder.path)
    return load_tokenizer_from_keras_preset(folder.path)


def load_preprocessor_settings(preset: str | os.PathLike) -> PreprocessorSettings:
    """A Keras preset's `preprocessor.json`; for an HF folder, its tokenizer's length limit and start-token choice."""
    folder = PresetFolder.resolve(preset)
    if not folder.is_hf:
        return read_preprocessor_settings(folder.path)
    tokenizer = FalconHFTokenizer.from_pretrained(folder.path)
    sequence_length = tokenizer.model_max_length
    if sequence_length >= UNBOUNDED_MAX_LENGTH:
        sequence_length = PreprocessorSettings().sequence_length
    return PreprocessorSettings(sequence_length=int(sequence_length), add_start_token=bool(tokenizer.add_bos_token))


__all__ = ["PresetFolder", "classproperty", "load_hf_model", "load_hf_tokenizer", "load_preprocessor_settings",
           "preset_table"]
