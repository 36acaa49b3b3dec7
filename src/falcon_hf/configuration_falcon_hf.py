"""Configuration of the Keras Hub Falcon (Falcon-RW) architecture in transformers terms."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

KERAS_DECODER_LAYER_NORM_EPSILON = 1e-5
"""keras-hub's `FalconTransformerDecoder` is never given the backbone's `layer_norm_epsilon`, so its two
LayerNorms always use this value; only the final LayerNorm uses the configured one."""

MAX_VOCAB_SIZE = 10_000_000


@strict
class FalconHFConfig(PreTrainedConfig):
    r"""
    Configuration of [`FalconHFModel`] / [`FalconHFForCausalLM`]: Keras Hub's Falcon, i.e. Falcon-RW with ALiBi
    attention, sequential (attention then MLP) pre-LayerNorm blocks, biases everywhere, an exact-GELU 4x MLP and tied
    input/output embeddings. Defaults are the `falcon_refinedweb_1b_en` preset (1.31B parameters).

    Args:
        vocab_size: rows of the token embedding (50304 for the 1.31B preset, whose tokenizer has 50257 tokens).
        hidden_size: width of the residual stream (keras-hub: `hidden_dim`).
        num_hidden_layers: decoder blocks (keras-hub: `num_layers`).
        num_attention_heads: attention heads; must divide `hidden_size`. Any count works for ALiBi.
        intermediate_size: MLP width (keras-hub: `intermediate_dim`).
        layer_norm_epsilon: epsilon of the final LayerNorm (keras-hub: `layer_norm_epsilon`).
        decoder_layer_norm_epsilon: epsilon of the LayerNorms inside each block. keras-hub never passes its
            `layer_norm_epsilon` to the blocks, so presets converted from Keras keep 1e-5 here.
        attention_dropout: dropout on the attention probabilities (keras-hub: `attention_dropout_rate`).
        hidden_dropout: dropout after attention and MLP (keras-hub: `feedforward_dropout_rate`).
        max_position_embeddings: longest sequence `generate` accepts. ALiBi itself has no learned positions;
            this is the training context of Falcon-RW.

    Example:

    ```python
    >>> from falcon_hf import FalconHFConfig, FalconHFForCausalLM
    >>> config = FalconHFConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                         intermediate_size=128)
    >>> model = FalconHFForCausalLM(config)
    >>> config.head_dim
    8
    ```
    """

    model_type = "falcon_hf"
    keys_to_ignore_at_inference = ["cache"]
    base_model_tp_plan = {
        "h.*.self_attention.query_key_value": "colwise",
        "h.*.self_attention.dense": "rowwise",
        "h.*.mlp.dense_h_to_4h": "colwise",
        "h.*.mlp.dense_4h_to_h": "rowwise",
    }

    vocab_size: int = 50304
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    intermediate_size: int = 8192
    layer_norm_epsilon: float = 1e-5
    decoder_layer_norm_epsilon: float = KERAS_DECODER_LAYER_NORM_EPSILON
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = 50256
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self):
        """Reject impossible shapes with a message naming the field (run by `@strict` on init)."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"FalconHFConfig.{name} must be positive, got {value}.")
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"FalconHFConfig.vocab_size={self.vocab_size} exceeds the sanity limit {MAX_VOCAB_SIZE}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"FalconHFConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        for name in ("layer_norm_epsilon", "decoder_layer_norm_epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FalconHFConfig.{name} must be positive, got {getattr(self, name)}.")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FalconHFConfig.{name} must be in [0, 1), got {getattr(self, name)}.")


__all__ = ["FalconHFConfig"]
