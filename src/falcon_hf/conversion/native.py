"""HF folder (`falcon_hf`) -> transformers' built-in `falcon` model type, loadable without this plugin.

The built-in Falcon with `alibi=True, parallel_attn=False, multi_query=False, new_decoder_architecture=False,
bias=True` is the same network under the same tensor names, so the weights are copied byte for byte; only the config
and the tokenizer class change. Two numerical differences remain, both of the built-in model: it rounds ALiBi through
bfloat16 (exact only for power-of-two head counts and positions below 256), and it has one LayerNorm epsilon.
"""

import json
import math
import os
import shutil
from pathlib import Path

from transformers import FalconConfig
from transformers.utils import logging

from ..configuration_falcon_hf import FalconHFConfig
from .atomic import atomic_output_dir
from .checks import check_weights
from .hf_checkpoint import SAFE_WEIGHTS_INDEX_NAME, HFCheckpoint, read_hf_config
from .json_files import read_json
from .rules import TIED_HF_NAMES, mappings

logger = logging.get_logger(__name__)

COPIED_FILES = ("generation_config.json", "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                "README.md")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
NATIVE_TOKENIZER_CLASS = "TokenizersBackend"
"""transformers' generic `tokenizer.json` tokenizer: it keeps the byte-level BPE and the bos post-processor as saved."""


def native_config(config: FalconHFConfig) -> FalconConfig:
    """The built-in `FalconConfig` of the same network (Falcon-RW: ALiBi, sequential blocks, biases)."""
    if not math.isclose(config.layer_norm_epsilon, config.decoder_layer_norm_epsilon, rel_tol=1e-9):
        logger.warning(
            f"transformers' falcon has one LayerNorm epsilon; using the blocks' {config.decoder_layer_norm_epsilon} "
            f"also for the final LayerNorm, which had {config.layer_norm_epsilon}: outputs will differ slightly."
        )
    return FalconConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        ffn_hidden_size=config.intermediate_size,
        # The blocks hold 2 * num_layers of the 2 * num_layers + 1 LayerNorms: their epsilon wins.
        layer_norm_epsilon=config.decoder_layer_norm_epsilon,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        max_position_embeddings=config.max_position_embeddings,
        alibi=True,
        parallel_attn=False,
        multi_query=False,
        new_decoder_architecture=False,
        bias=True,
        activation="gelu",
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
        dtype=config.dtype,
    )


def _write_native_tokenizer_config(src: Path, dst: Path) -> None:
    settings = read_json(src)
    settings.pop("auto_map", None)
    settings["tokenizer_class"] = NATIVE_TOKENIZER_CLASS
    dst.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_native(hf_dir: str | os.PathLike, dst: str | os.PathLike, force: bool = False) -> Path:
    """Write a checkpoint of transformers' own `falcon` model type, which plain transformers loads.

    Example:

    ```python
    >>> export_native("falcon-rw-1b-hf", "falcon-rw-1b-native")
    PosixPath('falcon-rw-1b-native')
    >>> from transformers import AutoModelForCausalLM  # in a session that never imports falcon_hf
    >>> model = AutoModelForCausalLM.from_pretrained("falcon-rw-1b-native", attn_implementation="sdpa")
    ```

    Compare it with `sdpa` attention: transformers 5.24's `eager` Falcon path adds ALiBi twice.
    """
    folder = Path(hf_dir)
    config = read_hf_config(folder)
    native = native_config(config)
    with HFCheckpoint(folder) as checkpoint:
        check_weights(checkpoint, {m.hf: m.hf_shape for m in mappings(config)}, str(folder / "config.json"),
                      ignored=frozenset(TIED_HF_NAMES))
        weight_files = list(checkpoint.files)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        weight_files.append(folder / SAFE_WEIGHTS_INDEX_NAME)
    with atomic_output_dir(dst, force=force, protect=[folder]) as tmp:
        native.save_pretrained(tmp)
        for path in weight_files + [folder / name for name in COPIED_FILES if (folder / name).is_file()]:
            shutil.copyfile(path, tmp / path.name)
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            _write_native_tokenizer_config(folder / TOKENIZER_CONFIG_FILE, tmp / TOKENIZER_CONFIG_FILE)
    logger.info(f"Exported {hf_dir} as transformers' falcon model type to {dst}")
    return Path(dst)


__all__ = ["export_native", "native_config"]
