"""The JSON side of a Keras Hub Falcon preset: config validation, config translation, tokenizer and preprocessor files.

Only this module (with `keras_h5.py`) knows keras-hub's spellings (`hidden_dim`, `num_layers`, ...). Every file is
parsed with `json` alone; nothing is unpickled and no Keras class is imported.
"""

import datetime
import importlib.metadata
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError

from ..configuration_falcon_hf import KERAS_DECODER_LAYER_NORM_EPSILON, MAX_VOCAB_SIZE, FalconHFConfig
from .errors import ConversionError
from .json_files import read_json, write_json
from .resolve import preset_file

CONFIG_FILE = "config.json"
TASK_FILE = "task.json"
PREPROCESSOR_FILE = "preprocessor.json"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"
TOKENIZER_ASSETS = Path("assets") / "tokenizer"
VOCABULARY_FILE = "vocabulary.json"
MERGES_FILE = "merges.txt"
END_OF_TEXT = "<|endoftext|>"

BACKBONE_CLASS = "FalconBackbone"
PREPROCESSOR_CLASS = "FalconCausalLMPreprocessor"
FALCON_MODULE = "keras_hub.src.models.falcon"
KERAS_TO_HF_CONFIG = {
    "vocabulary_size": ("vocab_size", int),
    "num_layers": ("num_hidden_layers", int),
    "num_attention_heads": ("num_attention_heads", int),
    "hidden_dim": ("hidden_size", int),
    "intermediate_dim": ("intermediate_size", int),
    "layer_norm_epsilon": ("layer_norm_epsilon", float),
    "attention_dropout_rate": ("attention_dropout", float),
    "feedforward_dropout_rate": ("hidden_dropout", float),
}
"""keras-hub setting -> (FalconHFConfig field, type). The first five are required."""
REQUIRED_KERAS_KEYS = tuple(list(KERAS_TO_HF_CONFIG)[:5])
KERAS_SIZE_LIMITS = {"vocabulary_size": MAX_VOCAB_SIZE, "num_layers": 1_000, "num_attention_heads": 1 << 17,
                     "hidden_dim": 1 << 17, "intermediate_dim": 1 << 19}
"""Largest accepted sizes, far past any Falcon (180B: 80 layers, hidden 14848): a config beyond them is broken or
hostile, and refusing it before the table is expanded (12 entries per layer) keeps every step small."""
KERAS_MODULE_PREFIXES = r"keras_(?:hub|nlp)"  # keras-nlp is keras-hub's former name; its presets still load
KERAS_LAYER_KEYS = {"name", "trainable", "dtype"}
KERAS_PREPROCESSOR_DEFAULTS = {"sequence_length": 1024, "add_start_token": True, "add_end_token": True}


def read_backbone_config(preset_dir: Path) -> dict:
    """The `config` of the preset's `config.json`, refused unless it is a keras-hub `FalconBackbone`."""
    path = preset_file(preset_dir, CONFIG_FILE)
    serialized = read_json(path)
    if "model_type" in serialized:
        raise ConversionError(f"{path}: a transformers config (model_type={serialized['model_type']!r}), "
                              "not a Keras preset.")
    class_name = serialized.get("class_name")
    if class_name != BACKBONE_CLASS:
        raise ConversionError(f"{path}: describes a {class_name!r} model, not a keras-hub {BACKBONE_CLASS}; only "
                              "Falcon presets can be converted.")
    _check_keras_origin(serialized, "falcon_backbone", path)
    config = serialized.get("config")
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: has no 'config' object.")
    _check_backbone_config(config, path)
    return config


def _check_keras_origin(serialized: dict, module: str, path: Path) -> None:
    """`module` and `registered_name`, where given, must be keras-hub's Falcon ones: a file naming other code is not
    what it claims to be (nothing here imports either; Keras would)."""
    expected = {"module": f"keras_hub.src.models.falcon.{module}",
                "registered_name": f"keras_hub>{serialized.get('class_name')}"}
    for key, name in expected.items():
        value = serialized.get(key)
        pattern = KERAS_MODULE_PREFIXES + re.escape(name.removeprefix("keras_hub"))
        if value is not None and not (isinstance(value, str) and re.fullmatch(pattern, value)):
            raise ConversionError(f"{path}: '{key}' is {value!r}, not keras-hub's Falcon ({name!r}); refused.")


def _check_backbone_config(config: dict, path: Path) -> None:
    unknown = sorted(set(config) - set(KERAS_TO_HF_CONFIG) - KERAS_LAYER_KEYS)
    if unknown:
        raise ConversionError(f"{path}: unknown FalconBackbone settings {unknown}; this converter does not know "
                              "how to carry them over.")
    for key in REQUIRED_KERAS_KEYS:
        if key not in config:
            raise ConversionError(f"{path}: FalconBackbone setting '{key}' is missing.")
    for key, (_, kind) in KERAS_TO_HF_CONFIG.items():
        value = config.get(key, 0)
        allowed = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConversionError(f"{path}: '{key}' must be {'an integer' if kind is int else 'a number'}, "
                                  f"got {value!r}.")
        if kind is float and not math.isfinite(value):
            raise ConversionError(f"{path}: '{key}' must be a finite number, got {value!r}.")
        if kind is int and not 1 <= value <= KERAS_SIZE_LIMITS[key]:
            raise ConversionError(f"{path}: '{key}' must be a positive integer of at most {KERAS_SIZE_LIMITS[key]}, "
                                  f"got {value!r}.")


def hf_config_from_keras(backbone_config: dict, end_of_text_id: int, path: Path) -> FalconHFConfig:
    """`FalconHFConfig` of a validated FalconBackbone config; `<|endoftext|>` is bos, eos and pad, as in keras-hub."""
    fields = {hf: kind(backbone_config[keras]) for keras, (hf, kind) in KERAS_TO_HF_CONFIG.items()
              if keras in backbone_config}
    try:
        return FalconHFConfig(
            **fields,
            # keras-hub never passes `layer_norm_epsilon` to its decoder blocks; they always use 1e-5.
            decoder_layer_norm_epsilon=KERAS_DECODER_LAYER_NORM_EPSILON,
            bos_token_id=end_of_text_id,
            eos_token_id=end_of_text_id,
            pad_token_id=end_of_text_id,
            tie_word_embeddings=True,
        )
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ConversionError(f"{path}: {error}") from error


def keras_backbone_config(config: FalconHFConfig, dtype: str, name: str = "falcon_backbone") -> dict:
    """The serialized FalconBackbone (`config.json`) for `config`, with weights stored in `dtype`."""
    if not math.isclose(config.decoder_layer_norm_epsilon, KERAS_DECODER_LAYER_NORM_EPSILON, rel_tol=1e-9):
        raise ConversionError(f"decoder_layer_norm_epsilon={config.decoder_layer_norm_epsilon} cannot be exported: "
                              f"keras-hub's Falcon blocks always use {KERAS_DECODER_LAYER_NORM_EPSILON}.")
    settings = {keras: getattr(config, hf) for keras, (hf, _) in KERAS_TO_HF_CONFIG.items()}
    return _serialized("falcon_backbone", BACKBONE_CLASS, {
        "name": name, "trainable": True, "dtype": _dtype_policy(dtype), **settings})


def _dtype_policy(name: str) -> dict:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}


def _serialized(module: str, class_name: str, config: dict) -> dict:
    return {"module": f"{FALCON_MODULE}.{module}", "class_name": class_name, "config": config,
            "registered_name": f"keras_hub>{class_name}"}


@dataclass(frozen=True)
class PreprocessorSettings:
    """What keras-hub's `FalconCausalLMPreprocessor` does around the tokenizer."""

    sequence_length: int = KERAS_PREPROCESSOR_DEFAULTS["sequence_length"]
    add_start_token: bool = KERAS_PREPROCESSOR_DEFAULTS["add_start_token"]
    add_end_token: bool = KERAS_PREPROCESSOR_DEFAULTS["add_end_token"]


def read_preprocessor_settings(preset_dir: Path) -> PreprocessorSettings:
    """The preset's preprocessor choices; keras-hub's defaults when it has no `preprocessor.json`."""
    path = preset_file(preset_dir, PREPROCESSOR_FILE)
    if not path.exists():
        return PreprocessorSettings()
    serialized = read_json(path)
    if serialized.get("class_name") != PREPROCESSOR_CLASS:
        raise ConversionError(f"{path}: describes a {serialized.get('class_name')!r}, not a {PREPROCESSOR_CLASS}.")
    _check_keras_origin(serialized, "falcon_causal_lm_preprocessor", path)
    config = serialized.get("config", {})
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: 'config' must be an object, got {type(config).__name__}.")
    settings = {key: config.get(key, default) for key, default in KERAS_PREPROCESSOR_DEFAULTS.items()}
    if settings["sequence_length"] is None:
        settings["sequence_length"] = KERAS_PREPROCESSOR_DEFAULTS["sequence_length"]
    length = settings["sequence_length"]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConversionError(f"{path}: 'sequence_length' must be a positive integer or null, got {length!r}.")
    for key in ("add_start_token", "add_end_token"):
        if not isinstance(settings[key], bool):
            raise ConversionError(f"{path}: '{key}' must be true or false, got {settings[key]!r}.")
    return PreprocessorSettings(**settings)


def read_tokenizer_assets(preset_dir: Path) -> tuple[dict[str, int], list[str]]:
    """The BPE vocabulary and merges (`"a b"` strings) of `assets/tokenizer/`."""
    vocab_path = preset_file(preset_dir, TOKENIZER_ASSETS / VOCABULARY_FILE)
    merges_path = preset_file(preset_dir, TOKENIZER_ASSETS / MERGES_FILE)
    vocab = read_json(vocab_path)
    if END_OF_TEXT not in vocab:
        raise ConversionError(f"{vocab_path}: has no {END_OF_TEXT} token.")
    for token, index in vocab.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConversionError(f"{vocab_path}: token ids must be non-negative integers; {token!r} has {index!r}.")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{merges_path}: cannot be read ({error}).") from error
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#version"):
            continue
        if len(line.split(" ")) != 2 or "" in line.split(" "):  # keras-hub's rule: `a, b = merge.split(" ")`
            raise ConversionError(f"{merges_path}: line {number} ({line!r}) is not two tokens separated by a space.")
        merges.append(line)
    return vocab, merges


def read_metadata(preset_dir: Path) -> dict:
    """`metadata.json` (Keras and keras-hub versions, parameter count, save date), or {} if the preset has none."""
    path = preset_file(preset_dir, METADATA_FILE)
    return read_json(path) if path.exists() else {}


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_keras_preset_files(dst: Path, backbone: dict, preprocessor: PreprocessorSettings, vocab: dict[str, int],
                             merges: list[str], parameter_count: int) -> None:
    """Write everything but the weights exactly as keras-hub's `FalconCausalLM.save_to_preset` does."""
    tokenizer = _serialized("falcon_tokenizer", "FalconTokenizer", {
        "name": "falcon_tokenizer", "trainable": True, "dtype": _dtype_policy("int32"), "config_file": TOKENIZER_FILE,
        "sequence_length": None, "add_prefix_space": False, "unsplittable_tokens": [END_OF_TEXT]})
    preprocessor_json = _serialized("falcon_causal_lm_preprocessor", PREPROCESSOR_CLASS, {
        "name": "falcon_causal_lm_preprocessor", "trainable": True, "dtype": _dtype_policy("float32"),
        "tokenizer": tokenizer, "config_file": PREPROCESSOR_FILE, "sequence_length": preprocessor.sequence_length,
        "add_start_token": preprocessor.add_start_token, "add_end_token": preprocessor.add_end_token})
    task = _serialized("falcon_causal_lm", "FalconCausalLM", {
        "backbone": backbone, "preprocessor": preprocessor_json, "name": "falcon_causal_lm"})
    metadata = {
        "keras_version": _installed_version("keras"),
        "keras_hub_version": _installed_version("keras-hub"),
        "parameter_count": parameter_count,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    }
    for name, value in ((TASK_FILE, task), (CONFIG_FILE, backbone), (METADATA_FILE, metadata),
                        (PREPROCESSOR_FILE, preprocessor_json), (TOKENIZER_FILE, tokenizer)):
        write_json(dst / name, value)
    assets = dst / TOKENIZER_ASSETS
    assets.mkdir(parents=True)
    (assets / VOCABULARY_FILE).write_text(json.dumps(vocab), encoding="utf-8")
    (assets / MERGES_FILE).write_text("".join(f"{merge}\n" for merge in merges), encoding="utf-8")
