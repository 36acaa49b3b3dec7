"""The benchmarked shapes, and one set of random weights per shape in the three formats the implementations load.

One random `FalconHFForCausalLM` is built per shape and saved in float32 as an HF folder; transformers' built-in
Falcon loads it through `falcon_hf.conversion.export_native` and keras-hub through `export_keras_preset`, so all three
run the same weights. Each dtype is a cast at load time (`from_pretrained(dtype=...)`, `from_preset(dtype=...)`), not a
second checkpoint.
"""

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import pre_tokenizers

from falcon_hf import FalconHFConfig, FalconHFForCausalLM, FalconHFTokenizer
from falcon_hf.conversion import export_keras_preset, export_native

END_OF_TEXT = "<|endoftext|>"
SHAPES = {
    # name: (layers, hidden, heads, vocabulary rows)
    "tiny": (2, 64, 4, 512),
    "small": (12, 768, 12, 50304),
    "1b": (24, 2048, 32, 50304),  # falcon_refinedweb_1b_en, 1.31B parameters
}
"""Benchmarked shapes; the MLP is 4x wide as in every keras-hub Falcon preset."""


@dataclass(frozen=True)
class Checkpoints:
    """The three folders holding one shape's random weights."""

    hf: Path
    native: Path
    keras: Path


def shape_config(name: str) -> FalconHFConfig:
    """`FalconHFConfig` of a benchmarked shape.

    Example:

    ```python
    >>> shape_config("small").num_hidden_layers
    12
    ```
    """
    if name not in SHAPES:
        raise ValueError(f"Unknown benchmark config {name!r}; choose from {sorted(SHAPES)}.")
    layers, hidden, heads, vocab = SHAPES[name]
    end_of_text = min(vocab, 50257) - 1  # GPT-2's id where the vocabulary allows it
    return FalconHFConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * hidden, bos_token_id=end_of_text, eos_token_id=end_of_text,
                          pad_token_id=end_of_text)


def parameter_count(config: FalconHFConfig) -> int:
    """Stored parameters (the tied embedding counted once), counted on a meta-device model."""
    with torch.device("meta"):
        model = FalconHFForCausalLM(config)
    return sum(parameter.numel() for parameter in model.parameters())


def bytes_read_per_decode_step(config: FalconHFConfig, itemsize: int) -> int:
    """Weight bytes one decode step reads: every parameter once (the tied embedding as the LM head) plus one
    embedding row for the lookup. KV-cache reads are left out (under 2% at these lengths)."""
    return (parameter_count(config) + config.hidden_size) * itemsize


def byte_level_tokenizer(config: FalconHFConfig) -> FalconHFTokenizer:
    """A merge-free byte-level BPE (256 bytes + `<|endoftext|>`): the exporters need a tokenizer; the benchmark
    feeds token ids and never tokenizes."""
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[END_OF_TEXT] = config.eos_token_id
    return FalconHFTokenizer(vocab=vocab, merges=[])


def build_checkpoints(name: str, root: Path, seed: int = 0) -> Checkpoints:
    """Random weights of shape `name` under `root/name/{hf,native,keras}`; folders already there are reused.

    Example:

    ```python
    >>> build_checkpoints("tiny", Path("/tmp/falcon_bench")).keras.name
    'keras'
    ```
    """
    folder = Path(root) / name
    checkpoints = Checkpoints(folder / "hf", folder / "native", folder / "keras")
    if not (checkpoints.hf / "config.json").is_file():
        config = shape_config(name)
        torch.manual_seed(seed)
        model = FalconHFForCausalLM(config)
        model.save_pretrained(checkpoints.hf)
        byte_level_tokenizer(config).save_pretrained(checkpoints.hf)
        del model
        gc.collect()
    if not (checkpoints.native / "config.json").is_file():
        export_native(checkpoints.hf, checkpoints.native, force=True)
    if not (checkpoints.keras / "config.json").is_file():
        export_keras_preset(checkpoints.hf, checkpoints.keras, force=True)
    return checkpoints
