"""Keras Hub's Falcon (Falcon-RW: ALiBi, sequential pre-LayerNorm blocks) as a transformers model.

The computation is exactly keras-hub's `FalconBackbone` / `FalconCausalLM`; the module names are transformers'
`falcon` ones, so the built-in `FalconForCausalLM` loads our weights with a plain `load_state_dict`.
"""

import copy
import functools
import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_falcon_hf import FalconHFConfig

logger = logging.get_logger(__name__)

# The plugin's CPU decode kernels and huge-page weights. `trust_remote_code` copies of this file (another package) run
# on F.linear alone and never import the plugin.
small_batch_linear = onednn_linear = traced_linear_applies = place_weights_on_huge_pages = None
decode_attention = traced_attention_applies = None
if __package__ == "falcon_hf":
    kernels = importlib.import_module("falcon_hf.kernels")
    small_batch_linear, place_weights_on_huge_pages = kernels.small_batch_linear, kernels.place_weights_on_huge_pages
    onednn_linear = kernels.onednn_linear
    traced_linear_applies, decode_attention = kernels.traced_linear_applies, kernels.decode_attention
    traced_attention_applies = kernels.traced_attention_applies


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes for any head count, as keras-hub (and the ALiBi paper) define them.

    Example:

    ```python
    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039])
    ```
    """

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(power_of_two_slopes(num_heads))
    # Non-powers of two: the closest power of two, then every other slope of the next one (keras-hub's recursion).
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.cat([torch.tensor(power_of_two_slopes(closest)), extra])


def alibi_distances(allowed: torch.Tensor) -> torch.Tensor:
    """For each query and each key it may attend to, how many real tokens the key lies behind the query.

    Counted on the boolean mask itself (B, 1, T, S): the distance from key k to query q is the number of keys the query
    may see at or after k, minus one. Left padding, static caches longer than the sequence and packed documents with
    block-diagonal masks all get keras-hub's positions (ALiBi counts real tokens only) from this one rule.

    Example:

    ```python
    >>> alibi_distances(torch.tensor([[[[False, True, True, False]]]]))  # padding, two tokens, a future slot
    tensor([[[[0, 1, 0, 0]]]])
    ```
    """
    seen_from_here = allowed.flip(-1).cumsum(-1, dtype=torch.int32).flip(-1)  # (B, 1, T, S)
    return (seen_from_here - 1).clamp(min=0) * allowed


def alibi_bias(slopes: torch.Tensor, allowed: torch.Tensor, scaling: float, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask with ALiBi, shape (B, nh, T, S): `-slope * distance * scaling`, dtype-min if masked.

    keras-hub adds `slope * key_position` to the scores *before* the 1/sqrt(head_dim) scaling; scaling the bias here is
    the same computation. We use `key_position - query_position` instead, a per-row constant softmax cannot see, so the
    biases that matter most (near keys) stay small and exact in bfloat16, where keras-hub's absolute positions would
    round. The product is taken in float32, as keras-hub does in float32 (transformers' built-in Falcon rounds it
    through bfloat16), and cast once.
    """
    distances = alibi_distances(allowed).float()  # (B, 1, T, S)
    bias = (slopes.float() * -scaling)[None, :, None, None] * distances  # (B, nh, T, S)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min).to(dtype)


class FalconHFLinear(nn.Linear):
    """`nn.Linear` that runs CPU inference on 1-8 rows (a decode step) through falcon_hf's small-batch kernel, and
    float32 CPU inference on more rows (prompts) through oneDNN (`falcon_hf.kernels.onednn`).

    Same parameters, state dict and module type as `nn.Linear` (peft, quantizers and hooks see a Linear); training,
    GPUs and unsupported dtypes take `F.linear`; compiled graphs call the kernel as the operator
    `torch.ops.falcon_hf.small_batch_linear`. `FALCON_HF_CPU_KERNELS=0` turns both routes off.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if small_batch_linear is not None:
            if not torch.compiler.is_compiling():
                output = small_batch_linear(input, self.weight, self.bias)
                if output is None:
                    output = onednn_linear(input, self.weight, self.bias)
                if output is not None:
                    return output
            elif traced_linear_applies(input, self.weight):
                return torch.ops.falcon_hf.small_batch_linear(input, self.weight, self.bias)
        return nn.functional.linear(input, self.weight, self.bias)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    """Plain softmax attention; `attention_mask` is additive and already holds the scaled ALiBi bias."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    # Softmax in float32 as keras-hub does (its Softmax layer is pinned to float32).
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # (B, nh, T, hs)
    return attn_output.transpose(1, 2).contiguous(), attn_weights  # (B, T, nh, hs)


CPU_DECODE_ATTENTION_MAX_QUERIES = 16  # decode steps (and short assisted-decoding checks); prefill keeps torch's SDPA


def cpu_decode_attention_applies(query: torch.Tensor) -> bool:
    """Whether `sdpa` should run as `cpu_decode_attention_forward`: a few queries on CPU."""
    return query.device.type == "cpu" and query.shape[2] <= CPU_DECODE_ATTENTION_MAX_QUERIES


def cpu_decode_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    """SDPA's result for the few queries of a decode step on CPU, by the fastest route that computes it.

    torch's CPU flash kernel (what `sdpa` picks with an additive mask) spends most of its time outside the arithmetic
    on decode-sized queries: 136 us a layer in bfloat16 at the 1.31B shape (32 heads, 100 keys, AMD EPYC, torch
    2.13), 23 us through falcon_hf's decode kernel (`falcon_hf.kernels.decode_attention`: float32 or bfloat16,
    softmax in float32, one rounding, as in torch's kernel; compiled graphs call it as the operator
    `torch.ops.falcon_hf.decode_attention`). Where that kernel does not apply (float16, no AVX-512,
    a copy of this file without the plugin), reduced-precision batches take two float32-score matrix products (3-4x
    faster than the flash kernel there) and the rest torch's SDPA.
    """
    if decode_attention is not None and not (dropout and module.training):
        if not torch.compiler.is_compiling():
            output = decode_attention(query, key, value, attention_mask, scaling)
            if output is not None:
                return output, None
        elif traced_attention_applies(query, attention_mask):
            return torch.ops.falcon_hf.decode_attention(query, key, value, attention_mask, scaling), None
    if query.dtype in (torch.bfloat16, torch.float16) and query.shape[0] > 1:
        return matmul_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def matmul_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """SDPA's result for a few reduced-precision queries, through two batched matrix products.

    On decode-sized bfloat16 batches torch's CPU flash kernel takes 3-4x longer than this (batch 8, 12 heads, 100
    keys: 412 against 104 us a layer, on AMD EPYC and torch 2.13). Scores, ALiBi bias and softmax are in float32, as in
    that kernel, so the accuracy is the same (max error against a float64 reference: 2.2e-3 both); only the
    probabilities are rounded to the value dtype for the second product.
    """
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)).mul_(scaling)  # (B, nh, T, S)
    if attention_mask is not None:
        scores = scores.add_(attention_mask)
    probabilities = nn.functional.softmax(scores, dim=-1).to(value.dtype)
    probabilities = nn.functional.dropout(probabilities, p=dropout, training=module.training)
    attn_output = torch.matmul(probabilities, value)  # (B, nh, T, hs)
    return attn_output.transpose(1, 2).contiguous(), None  # (B, T, nh, hs)


class FalconHFAttention(nn.Module):
    """Multi-head attention with one fused, per-head interleaved QKV projection (transformers' Falcon layout)."""

    def __init__(self, config: FalconHFConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.query_key_value = FalconHFLinear(config.hidden_size, 3 * config.hidden_size)
        self.dense = FalconHFLinear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_length, hidden_size = hidden_states.shape
        fused_qkv = self.query_key_value(hidden_states)
        fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads, 3, self.head_dim)  # (B, T, nh, 3, hs)
        query, key, value = fused_qkv.permute(3, 0, 2, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, nh, S, hs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if self.config._attn_implementation == "sdpa" and cpu_decode_attention_applies(query):
            attention_interface = cpu_decode_attention_forward
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_length, hidden_size)  # (B, T, nh * hs)
        return self.dense(attn_output), attn_weights


class FalconHFMLP(nn.Module):
    def __init__(self, config: FalconHFConfig):
        super().__init__()
        self.dense_h_to_4h = FalconHFLinear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = FalconHFLinear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU: keras.activations.gelu defaults to approximate=False.
        return self.dense_4h_to_h(nn.functional.gelu(self.dense_h_to_4h(hidden_states)))


class FalconHFDecoderLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm block, attention then MLP in sequence (Falcon-RW; not the parallel Falcon-7B/40B block)."""

    def __init__(self, config: FalconHFConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.decoder_layer_norm_epsilon)
        self.self_attention = FalconHFAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.decoder_layer_norm_epsilon)
        self.mlp = FalconHFMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attention(
            self.input_layernorm(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.dropout(mlp_output)


class FalconHFPreTrainedModel(PreTrainedModel):
    config: FalconHFConfig
    config_class = FalconHFConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FalconHFDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False  # flash kernels take no additive bias, and ALiBi needs one
    _can_compile_fullgraph = True
    _supports_attention_backend = False
    _can_record_outputs = {
        "hidden_states": FalconHFDecoderLayer,
        "attentions": FalconHFAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, FalconHFModel):
            module.alibi_slopes.copy_(alibi_slopes(self.config.num_attention_heads))


class FalconHFModel(FalconHFPreTrainedModel):
    """The Falcon backbone: token embedding, decoder blocks, final LayerNorm (keras-hub's `FalconBackbone`).

    Example:

    ```python
    >>> from falcon_hf import FalconHFConfig, FalconHFModel
    >>> config = FalconHFConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                         intermediate_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    >>> FalconHFModel(config)(torch.tensor([[1, 2, 3]])).last_hidden_state.shape
    torch.Size([1, 3, 16])
    ```
    """

    def __init__(self, config: FalconHFConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(FalconHFDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.register_buffer("alibi_slopes", alibi_slopes(config.num_attention_heads), persistent=False)
        self._mask_config = copy.copy(config)
        self._mask_config._attn_implementation = "sdpa"
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        check_padding_mask_length(attention_mask, inputs_embeds, cache)

        attention_mask, position_bias = self._attention_bias(inputs_embeds, attention_mask, cache)
        if position_bias is not None:
            kwargs["position_bias"] = position_bias

        hidden_states = inputs_embeds
        for block in self.h:
            hidden_states = block(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states), cache=cache)

    def _attention_bias(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The causal/padding mask with ALiBi folded in, built once per forward and shared by every layer.

        Returns `(attention_mask, position_bias)`: for eager and sdpa the additive (B, nh, T, S) mask and no position
        bias; for flex attention no block mask and the same tensor as `position_bias` (added in its `score_mod`).
        """
        allowed = allowed_attention(self._mask_config, inputs_embeds, attention_mask, cache)
        bias = alibi_bias(self.alibi_slopes, allowed, self.h[0].self_attention.scaling, inputs_embeds.dtype)
        if self.config._attn_implementation == "flex_attention":
            return None, bias
        return bias, None


def check_padding_mask_length(
    attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor, cache: Cache | None
) -> None:
    """A 2D padding mask must cover the cached tokens and the new ones: a shorter one would silently mask the newest
    keys (transformers' mask builder pads it with zeros)."""
    if attention_mask is None or attention_mask.ndim != 2 or torch.compiler.is_compiling():
        return
    cached = cache.get_seq_length() if cache is not None else 0
    if attention_mask.shape[1] != cached + inputs_embeds.shape[1]:
        raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns but the cache holds {cached} tokens "
                         f"and {inputs_embeds.shape[1]} new ones arrive: pass one column per cached and new token "
                         f"({cached + inputs_embeds.shape[1]}).")


def allowed_attention(
    mask_config: FalconHFConfig, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None
) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask of the keys each query may attend to, from a 2D padding mask or a ready 4D mask.

    `mask_config` is the model config with sdpa masking, so transformers' `create_causal_mask` returns booleans
    whatever kernel runs the attention (ALiBi distances are counted on them).
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        if attention_mask.dtype == torch.bool:
            return attention_mask
        return attention_mask > torch.finfo(attention_mask.dtype).min / 2  # additive: 0 allowed, dtype-min masked
    return create_causal_mask(
        config=mask_config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        allow_is_causal_skip=False,
    )


class FalconHFForCausalLM(FalconHFPreTrainedModel, GenerationMixin):
    """Falcon with its tied language-model head (keras-hub's `FalconCausalLM`).

    Example:

    ```python
    >>> import torch
    >>> from falcon_hf import FalconHFConfig, FalconHFForCausalLM
    >>> config = FalconHFConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                         intermediate_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    >>> model = FalconHFForCausalLM(config)
    >>> model.generate(torch.tensor([[0, 5, 6]]), max_new_tokens=4, do_sample=False).shape
    torch.Size([1, 7])
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FalconHFConfig):
        super().__init__(config)
        self.transformer = FalconHFModel(config)
        self.lm_head = FalconHFLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def create_masks_for_generate(
        self, config, inputs_embeds, attention_mask, cache, **kwargs
    ) -> torch.Tensor:
        """Boolean 4D masks for compiled/static-cache generation, whatever the attention kernel (ALiBi needs them)."""
        return allowed_attention(self.transformer._mask_config, inputs_embeds, attention_mask, cache)

    @functools.wraps(GenerationMixin.generate)
    def generate(self, *args, **kwargs):
        # A decode step streams every weight: on CPU, first move the large ones onto 2 MiB pages (once; see
        # `falcon_hf.kernels.huge_pages`).
        if place_weights_on_huge_pages is not None:
            place_weights_on_huge_pages(self)
        return super().generate(*args, **kwargs)

    # Generation input checks transformers leaves out: an empty prompt or batch would fail deep in the model, and a
    # length past `max_position_embeddings` (the documented limit) only gets a logged reminder there.

    def _prepare_model_inputs(self, inputs=None, bos_token_id=None, model_kwargs=None):
        inputs_tensor, input_name, model_kwargs = super()._prepare_model_inputs(inputs, bos_token_id, model_kwargs)
        if input_name == "input_ids" and inputs_tensor.numel() == 0:
            raise ValueError(f"generate(): input_ids of shape {tuple(inputs_tensor.shape)} is empty; pass at least one "
                             "row of at least one token (an empty prompt starts with the bos token `<|endoftext|>`, "
                             f"id {self.config.bos_token_id}, as in keras-hub), or no input_ids to start from it.")
        return inputs_tensor, input_name, model_kwargs

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        limit = self.config.max_position_embeddings
        if generation_config.max_length > limit:
            raise ValueError(f"generate(): prompt ({input_ids_length} tokens) and new tokens would reach "
                             f"{generation_config.max_length} tokens, past max_position_embeddings={limit}; lower "
                             "max_new_tokens / max_length, or raise config.max_position_embeddings to go past the "
                             "training context (ALiBi has no position table, but quality there is untested).")

    @classmethod
    def from_keras_preset(cls, preset: str, dtype: str | torch.dtype | None = None) -> "FalconHFForCausalLM":
        """Load a Keras Hub Falcon preset (folder, `kaggle://`, `hf://` or built-in name) without TensorFlow.

        Example:

        ```python
        >>> model = FalconHFForCausalLM.from_keras_preset("tiny_shakespeare")
        ```
        """
        # The converter lives in the installed plugin: `trust_remote_code` copies of this file do not carry it.
        conversion = importlib.import_module("falcon_hf.conversion")
        return conversion.load_model_from_keras_preset(preset, dtype=dtype, model_class=cls)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the language-modelling loss, aligned with `input_ids` (the shift happens inside); -100 is
            ignored.
        """
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["FalconHFForCausalLM", "FalconHFModel", "FalconHFPreTrainedModel", "alibi_slopes"]
