"""The one table mapping Keras Hub Falcon weights to transformers' Falcon names, read in both directions.

Each `Rule` says which Keras h5 datasets (`layers/...` paths, see `keras_preset.py` for the file) make one HF tensor,
the HF tensor's shape as a function of the config, and the chain of invertible ops between them. `forward` goes
Keras -> HF and `reverse` goes HF -> Keras; `mappings(config)` expands the table for one config, and every converter
(Keras -> HF folder, Keras -> in-memory model, HF -> Keras, HF -> native) iterates over it.

Keras names decoder blocks after their class, not after `name=`: block 0 is `layers/falcon_transformer_decoder`,
block i is `layers/falcon_transformer_decoder_{i}`; `{block}` in a path stands for that group. The reader resolves
which group is block i from the group's `name` attribute (`transformer_layer_{i}`), never from iteration order.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..configuration_falcon_hf import FalconHFConfig

Tensors = tuple[torch.Tensor, ...]
BLOCK = "{block}"
KERAS_BLOCK_CLASS_GROUP = "layers/falcon_transformer_decoder"


def keras_block_group(index: int) -> str:
    """The h5 group Keras 3 gives decoder block `index`: auto-named by class, with no suffix for the first one."""
    return KERAS_BLOCK_CLASS_GROUP if index == 0 else f"{KERAS_BLOCK_CLASS_GROUP}_{index}"


class Op(Protocol):
    """One invertible step between Keras and HF layouts; both methods take and return tuples of tensors."""

    def forward(self, tensors: Tensors, config: FalconHFConfig) -> Tensors: ...

    def reverse(self, tensors: Tensors, config: FalconHFConfig) -> Tensors: ...


@dataclass(frozen=True)
class Transpose:
    """Keras Dense kernels are (in, out); torch Linear weights are (out, in)."""

    def forward(self, tensors: Tensors, config: FalconHFConfig) -> Tensors:
        (tensor,) = tensors
        return (tensor.T,)  # (in, out) -> (out, in)

    def reverse(self, tensors: Tensors, config: FalconHFConfig) -> Tensors:
        (tensor,) = tensors
        return (tensor.T,)  # (out, in) -> (in, out)


@dataclass(frozen=True)
class FusePerHeadQKV:
    """Three Keras EinsumDense tensors (..., heads, head_dim) -> one (..., 3 * hidden), q, k, v interleaved per head.

    transformers' Falcon (multi_query=False, new_decoder_architecture=False) views the fused output as
    (heads, 3, head_dim) and takes q, k, v of head h at [h, 0], [h, 1], [h, 2]. Kernels are (hidden, heads, head_dim)
    and biases (heads, head_dim); the fused axis is the last one for both.
    """

    def forward(self, tensors: Tensors, config: FalconHFConfig) -> Tensors:
        query, key, value = tensors  # each (..., heads, head_dim)
        per_head = torch.stack((query, key, value), dim=-2)  # (..., heads, 3, head_dim)
        return (per_head.flatten(-3),)  # (..., 3 * hidden)

    def reverse(self, tensors: Tensors, config: FalconHFConfig) -> Tensors:
        (fused,) = tensors  # (..., 3 * hidden)
        per_head = fused.unflatten(-1, (config.num_attention_heads, 3, config.head_dim))  # (..., heads, 3, head_dim)
        return tuple(per_head.unbind(-2))  # q, k, v, each (..., heads, head_dim)


@dataclass(frozen=True)
class Rule:
    """Keras datasets -> one HF tensor. `{block}` / `{i}` mark per-block rules; `shape` is the HF shape."""

    keras: tuple[str, ...]
    hf: str
    shape: Callable[[FalconHFConfig], tuple[int, ...]]
    ops: tuple[Op, ...] = ()

    @property
    def per_block(self) -> bool:
        return "{i}" in self.hf


def _vector(config: FalconHFConfig) -> tuple[int, ...]:
    return (config.hidden_size,)


def _qkv_paths(var: int) -> tuple[str, ...]:
    return tuple(f"{BLOCK}/attention_layer/{name}_dense/vars/{var}" for name in ("query", "key", "value"))


# Keras stores a layer's variables as `vars/0`, `vars/1`, ... in creation order: kernel then bias for Dense and
# EinsumDense, gamma then beta for LayerNormalization.
EMBEDDING_RULES = (
    Rule(("layers/reversible_embedding/vars/0",), "transformer.word_embeddings.weight",
         lambda c: (c.vocab_size, c.hidden_size)),
)
BLOCK_RULES = (
    Rule((f"{BLOCK}/input_layernorm/vars/0",), "transformer.h.{i}.input_layernorm.weight", _vector),
    Rule((f"{BLOCK}/input_layernorm/vars/1",), "transformer.h.{i}.input_layernorm.bias", _vector),
    Rule(_qkv_paths(0), "transformer.h.{i}.self_attention.query_key_value.weight",
         lambda c: (3 * c.hidden_size, c.hidden_size), (FusePerHeadQKV(), Transpose())),
    Rule(_qkv_paths(1), "transformer.h.{i}.self_attention.query_key_value.bias",
         lambda c: (3 * c.hidden_size,), (FusePerHeadQKV(),)),
    Rule((f"{BLOCK}/attention_layer/output_dense/vars/0",), "transformer.h.{i}.self_attention.dense.weight",
         lambda c: (c.hidden_size, c.hidden_size), (Transpose(),)),
    Rule((f"{BLOCK}/attention_layer/output_dense/vars/1",), "transformer.h.{i}.self_attention.dense.bias", _vector),
    Rule((f"{BLOCK}/post_attention_layernorm/vars/0",), "transformer.h.{i}.post_attention_layernorm.weight", _vector),
    Rule((f"{BLOCK}/post_attention_layernorm/vars/1",), "transformer.h.{i}.post_attention_layernorm.bias", _vector),
    Rule((f"{BLOCK}/dense_h_to_4h/vars/0",), "transformer.h.{i}.mlp.dense_h_to_4h.weight",
         lambda c: (c.intermediate_size, c.hidden_size), (Transpose(),)),
    Rule((f"{BLOCK}/dense_h_to_4h/vars/1",), "transformer.h.{i}.mlp.dense_h_to_4h.bias",
         lambda c: (c.intermediate_size,)),
    Rule((f"{BLOCK}/dense_4h_to_h/vars/0",), "transformer.h.{i}.mlp.dense_4h_to_h.weight",
         lambda c: (c.hidden_size, c.intermediate_size), (Transpose(),)),
    Rule((f"{BLOCK}/dense_4h_to_h/vars/1",), "transformer.h.{i}.mlp.dense_4h_to_h.bias", _vector),
)
FINAL_RULES = (
    Rule(("layers/layer_normalization/vars/0",), "transformer.ln_f.weight", _vector),
    Rule(("layers/layer_normalization/vars/1",), "transformer.ln_f.bias", _vector),
)
RULES = EMBEDDING_RULES + BLOCK_RULES + FINAL_RULES
TIED_HF_NAMES = {"lm_head.weight": "transformer.word_embeddings.weight"}
"""HF names that are never stored: the LM head is the embedding (keras-hub's `ReversibleEmbedding`)."""


@dataclass(frozen=True)
class WeightMapping:
    """One rule for one config (and block): concrete Keras paths, HF name, both shapes, and the conversion itself."""

    keras: tuple[str, ...]
    hf: str
    hf_shape: tuple[int, ...]
    keras_shapes: tuple[tuple[int, ...], ...]
    ops: tuple[Op, ...]
    config: FalconHFConfig

    def to_hf(self, keras_tensors: Tensors) -> torch.Tensor:
        """Keras tensors (in `keras` order) -> the HF tensor, contiguous."""
        tensors = tuple(keras_tensors)
        for op in self.ops:
            tensors = op.forward(tensors, self.config)
        (tensor,) = tensors
        return tensor.contiguous()

    def to_keras(self, hf_tensor: torch.Tensor) -> Tensors:
        """The HF tensor -> Keras tensors (in `keras` order), contiguous."""
        tensors = (hf_tensor,)
        for op in reversed(self.ops):
            tensors = op.reverse(tensors, self.config)
        return tuple(tensor.contiguous() for tensor in tensors)


def _expand(rule: Rule, config: FalconHFConfig, block: int | None) -> WeightMapping:
    group = keras_block_group(block) if block is not None else None
    keras = tuple(path.replace(BLOCK, group) if group else path for path in rule.keras)
    hf_shape = tuple(rule.shape(config))
    mapping = WeightMapping(keras, rule.hf.format(i=block), hf_shape, (), rule.ops, config)
    # The Keras shapes follow from the HF shape through the same ops, so no shape is written down twice.
    keras_shapes = tuple(tuple(t.shape) for t in mapping.to_keras(torch.empty(hf_shape, device="meta")))
    return WeightMapping(keras, mapping.hf, hf_shape, keras_shapes, rule.ops, config)


def mappings(config: FalconHFConfig) -> list[WeightMapping]:
    """The table expanded for `config`, in state-dict order (embedding, blocks 0..n-1, final LayerNorm).

    Example:

    ```python
    >>> from falcon_hf import FalconHFConfig
    >>> from falcon_hf.conversion.rules import mappings
    >>> config = FalconHFConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                         intermediate_size=64)
    >>> qkv = mappings(config)[3]
    >>> qkv.hf, qkv.hf_shape, qkv.keras_shapes[0]
    ('transformer.h.0.self_attention.query_key_value.weight', (48, 16), (16, 2, 8))
    ```
    """
    expanded = [_expand(rule, config, None) for rule in EMBEDDING_RULES]
    for block in range(config.num_hidden_layers):
        expanded += [_expand(rule, config, block) for rule in BLOCK_RULES]
    expanded += [_expand(rule, config, None) for rule in FINAL_RULES]
    return expanded


__all__ = ["FusePerHeadQKV", "Op", "RULES", "Rule", "Transpose", "WeightMapping", "keras_block_group", "mappings"]
