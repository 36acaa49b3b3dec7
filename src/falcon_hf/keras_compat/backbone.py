"""keras-hub's `FalconBackbone` constructor and properties over a `FalconHFForCausalLM`."""

import torch
from torch import nn

from ..configuration_falcon_hf import FalconHFConfig
from ..conversion.keras_to_hf import parse_dtype
from ..modeling_falcon_hf import FalconHFForCausalLM
from .presets import classproperty, load_hf_model, preset_table

GPT2_END_OF_TEXT_ID = 50256
"""Falcon-RW's `<|endoftext|>`; a backbone built from sizes alone assumes it until a tokenizer says otherwise."""


class FalconBackbone(nn.Module):
    """Falcon's decoder with keras-hub's `FalconBackbone` arguments; the weights live in `hf_model`.

    `hf_model` is a plain `FalconHFForCausalLM` (its language-model head is tied to the embedding, so it adds no
    weights): everything transformers, peft or accelerate do with it applies. Calling the backbone on
    `{"token_ids", "padding_mask"}` returns the final hidden states (B, T, hidden_dim), as keras-hub's does.

    Args:
        vocabulary_size, num_layers, num_attention_heads, hidden_dim, intermediate_dim: the sizes.
        layer_norm_epsilon: epsilon of the final LayerNorm (the blocks' LayerNorms use 1e-5, as in keras-hub).
        attention_dropout_rate, feedforward_dropout_rate: dropout rates.
        dtype: `"float32"`, `"bfloat16"`, `"float16"` or a torch dtype.

    Example:

    ```python
    >>> backbone = falcon_hf.models.FalconBackbone(vocabulary_size=50304, num_layers=2, num_attention_heads=8,
    ...                                            hidden_dim=64, intermediate_dim=256)
    >>> backbone({"token_ids": torch.tensor([[50256, 17337]]), "padding_mask": torch.tensor([[1, 1]])}).shape
    torch.Size([1, 2, 64])
    ```
    """

    def __init__(self, vocabulary_size: int, num_layers: int, num_attention_heads: int, hidden_dim: int,
                 intermediate_dim: int, layer_norm_epsilon: float = 1e-5, attention_dropout_rate: float = 0.0,
                 feedforward_dropout_rate: float = 0.0, dtype: str | torch.dtype | None = None):
        super().__init__()
        end_of_text = GPT2_END_OF_TEXT_ID if GPT2_END_OF_TEXT_ID < vocabulary_size else None
        config = FalconHFConfig(
            vocab_size=vocabulary_size, num_hidden_layers=num_layers, num_attention_heads=num_attention_heads,
            hidden_size=hidden_dim, intermediate_size=intermediate_dim, layer_norm_epsilon=layer_norm_epsilon,
            attention_dropout=attention_dropout_rate, hidden_dropout=feedforward_dropout_rate,
            bos_token_id=end_of_text, eos_token_id=end_of_text, pad_token_id=end_of_text,
        )
        model = FalconHFForCausalLM(config)
        dtype = parse_dtype(dtype)
        self.hf_model = model.to(dtype) if dtype is not None else model

    @classmethod
    def from_hf(cls, model: FalconHFForCausalLM) -> "FalconBackbone":
        """Wrap an existing `FalconHFForCausalLM` (shared, not copied)."""
        if not isinstance(model, FalconHFForCausalLM):
            raise TypeError(f"FalconBackbone wraps a FalconHFForCausalLM, got {type(model).__name__}.")
        backbone = cls.__new__(cls)
        nn.Module.__init__(backbone)
        backbone.hf_model = model
        return backbone

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True, dtype: str | torch.dtype | None = None
                    ) -> "FalconBackbone":
        """The preset's backbone (built-in name, `kaggle://`, `hf://`, Keras preset or HF folder); random weights of
        the same config with `load_weights=False`."""
        return cls.from_hf(load_hf_model(preset, load_weights=load_weights, dtype=dtype))

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """Built-in and embedded presets: name -> metadata (description, parameter count)."""
        return preset_table()

    @property
    def config(self) -> FalconHFConfig:
        return self.hf_model.config

    @property
    def vocabulary_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def num_attention_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_size

    @property
    def intermediate_dim(self) -> int:
        return self.config.intermediate_size

    @property
    def layer_norm_epsilon(self) -> float:
        return self.config.layer_norm_epsilon

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.hf_model.get_input_embeddings()

    def count_params(self) -> int:
        """Parameters counted once (the tied head shares the embedding), as keras-hub counts them."""
        return sum(parameter.numel() for parameter in self.hf_model.parameters())

    def forward(self, inputs: dict) -> torch.Tensor:
        token_ids, padding_mask = model_inputs(inputs, self.hf_model.device)
        return self.hf_model.transformer(input_ids=token_ids, attention_mask=padding_mask).last_hidden_state

    def __repr__(self) -> str:
        return (f"FalconBackbone(vocabulary_size={self.vocabulary_size}, num_layers={self.num_layers}, "
                f"num_attention_heads={self.num_attention_heads}, hidden_dim={self.hidden_dim}, "
                f"intermediate_dim={self.intermediate_dim})")


def model_inputs(inputs: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """keras-hub's `{"token_ids", "padding_mask"}` (arrays or tensors) -> `input_ids`, `attention_mask` on `device`."""
    missing = {"token_ids", "padding_mask"} - set(inputs)
    if missing:
        raise ValueError(f"Inputs need 'token_ids' and 'padding_mask'; missing {sorted(missing)}.")
    token_ids = torch.as_tensor(inputs["token_ids"]).long().to(device)
    padding_mask = torch.as_tensor(inputs["padding_mask"]).long().to(device)
    return token_ids, padding_mask


__all__ = ["FalconBackbone", "model_inputs"]
