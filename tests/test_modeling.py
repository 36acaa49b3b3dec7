"""FalconHFModel / FalconHFForCausalLM against themselves under every execution path, and keras-hub's ALiBi slopes."""

import pytest
import torch
from transformers import DynamicCache, StaticCache

from falcon_hf import FalconHFConfig, FalconHFForCausalLM
import falcon_hf.modeling_falcon_hf as modeling
from falcon_hf.modeling_falcon_hf import alibi_distances, alibi_slopes, matmul_attention_forward

from conftest import tiny_config_kwargs

# fp32 logits of the same weights through different kernels / cache layouts differ only by summation order.
ATOL = 1e-5


def padded_batch(vocab_size=400):
    input_ids = torch.randint(0, vocab_size, (3, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding
    attention_mask[2, :7] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 6, 12, 20, 32, 71])
def test_alibi_slopes_match_keras_hub(num_heads):
    from keras_hub.src.models.falcon.falcon_transformer_decoder import FalconTransformerDecoder

    keras_slopes = FalconTransformerDecoder(num_attention_heads=num_heads, intermediate_dim=4)._get_slopes(num_heads)
    torch.testing.assert_close(alibi_slopes(num_heads), torch.tensor(keras_slopes), rtol=0, atol=0)


def test_alibi_distances_count_real_tokens_only():
    allowed = torch.tensor([[[[False, True, True, True, False], [False, True, False, True, False]]]])
    assert alibi_distances(allowed).tolist() == [[[[0, 2, 1, 0, 0], [0, 1, 0, 0, 0]]]]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_attention_heads", 5, "divisible by num_attention_heads"),
        ("hidden_size", -32, "hidden_size must be positive"),
        ("vocab_size", 20_000_000, "vocab_size=20000000 exceeds"),
        ("attention_dropout", 1.5, "attention_dropout must be in"),
    ],
)
def test_config_rejects_impossible_shapes(field, value, message):
    with pytest.raises(Exception, match=message):
        FalconHFConfig(**tiny_config_kwargs(**{field: value}))


def test_defaults_are_the_1b_preset():
    config = FalconHFConfig()
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        50304, 24, 2048, 32)
    assert config.intermediate_size == 8192 and config.tie_word_embeddings and config.pad_token_id == 50256
    with torch.device("meta"):
        model = FalconHFForCausalLM(config)
    assert model.num_parameters() == 1_311_625_216  # keras-hub's preset metadata


def test_labels_give_shifted_cross_entropy_ignoring_minus_100(tiny_model):
    input_ids, _ = padded_batch()
    labels = input_ids.clone()
    labels[:, :3] = -100
    output = tiny_model(input_ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].reshape(-1, output.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected)


def test_output_embeddings_are_tied(tiny_model):
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.transformer.word_embeddings.weight.data_ptr()


@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(tiny_model):
    input_ids, attention_mask = padded_batch()
    full = tiny_model(input_ids, attention_mask=attention_mask).logits
    cache = DynamicCache(config=tiny_model.config)
    prefix = tiny_model(input_ids[:, :6], attention_mask=attention_mask[:, :6], cache=cache, use_cache=True).logits
    steps = [prefix]
    for t in range(6, 10):
        steps.append(tiny_model(input_ids[:, t : t + 1], attention_mask=attention_mask[:, : t + 1], cache=cache,
                                use_cache=True).logits)
    real = attention_mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=ATOL, rtol=0)


@torch.no_grad()
def test_a_padding_mask_shorter_than_cache_and_input_is_refused(tiny_model):
    input_ids, attention_mask = padded_batch()
    cache = DynamicCache(config=tiny_model.config)
    tiny_model(input_ids[:, :6], attention_mask=attention_mask[:, :6], cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="attention_mask has 6 columns but the cache holds 6 tokens and 1 new"):
        tiny_model(input_ids[:, 6:7], attention_mask=attention_mask[:, :6], cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="attention_mask has 5 columns"):
        tiny_model(input_ids, attention_mask=attention_mask[:, :5])


@torch.no_grad()
def test_static_cache_equals_dynamic_cache(tiny_model):
    input_ids, attention_mask = padded_batch()
    dynamic = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False)
    static = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                                 cache_implementation="static")
    assert torch.equal(dynamic, static)
    no_cache = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                                   use_cache=False)
    assert torch.equal(dynamic, no_cache)


@torch.no_grad()
def test_static_cache_under_torch_compile(tiny_model):
    input_ids, attention_mask = padded_batch()
    expected = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False)
    tiny_model.forward = torch.compile(tiny_model.forward, fullgraph=True)
    compiled = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                                   cache_implementation="static")
    assert torch.equal(expected, compiled)


@torch.no_grad()
def test_left_padded_batch_equals_prompts_one_by_one(tiny_model):
    input_ids, attention_mask = padded_batch()
    batched = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False)
    logits = tiny_model(input_ids, attention_mask=attention_mask).logits
    for row in range(3):
        prompt = input_ids[row : row + 1, attention_mask[row].bool()]
        alone = tiny_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
        assert torch.equal(alone[0, prompt.shape[1] :], batched[row, 10:])
        torch.testing.assert_close(tiny_model(prompt).logits[0], logits[row, attention_mask[row].bool()],
                                   atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("implementation", ["eager", "flex_attention"])
def test_attention_implementations_agree_with_sdpa(tiny_model, implementation):
    input_ids, attention_mask = padded_batch()
    reference = tiny_model(input_ids, attention_mask=attention_mask).logits
    tiny_model.set_attn_implementation(implementation)
    other = tiny_model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(other[real], reference[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matmul_attention_is_as_accurate_as_torch_sdpa(dtype):
    """Against a float64 reference, on a padded ALiBi-style mask: at most torch's own SDPA error plus one rounding step
    of the output dtype (2^-8 of the largest output for bfloat16, 2^-11 for float16)."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(8, 12, length, 64, generator=generator).to(dtype) for length in (1, 100, 100))
    bias = -0.1 * torch.arange(100.0).flip(0).expand(8, 12, 1, 100)
    bias = bias.masked_fill(torch.arange(100) < torch.arange(8)[:, None, None, None] * 7, torch.finfo(dtype).min)
    bias, scaling = bias.to(dtype), 64**-0.5
    reference = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double(),
                                                                 attn_mask=bias.double(), scale=scaling)
    theirs = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)
    ours, weights = matmul_attention_forward(torch.nn.Module().eval(), query, key, value, bias, scaling)
    assert weights is None and ours.shape == (8, 1, 12, 64) and ours.dtype == dtype
    step = reference.abs().max().item() * torch.finfo(dtype).eps
    their_error = (theirs.double() - reference).abs().max().item()
    assert (ours.transpose(1, 2).double() - reference).abs().max().item() <= their_error + step


def route_counts(model, monkeypatch, input_ids, attention_mask):
    """{route: calls} of the attention functions one decode step (after a prefill of all but the last token) runs."""
    counts = {}
    for name in ("decode_attention", "matmul_attention_forward"):
        function = getattr(modeling, name)
        if function is not None:
            monkeypatch.setattr(modeling, name, lambda *args, _name=name, _function=function, **kwargs: (
                counts.__setitem__(_name, counts.get(_name, 0) + 1) or _function(*args, **kwargs)))
    with torch.no_grad():
        prompt = model(input_ids[:, :-1], attention_mask=attention_mask[:, :-1], use_cache=True)
        counts.clear()  # the prefill (20 queries) keeps torch's SDPA
        logits = model(input_ids[:, -1:], attention_mask=attention_mask, cache=prompt.cache, use_cache=True).logits
    return counts, logits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
def test_sdpa_decode_steps_route_to_the_decode_kernel_else_matmuls_for_reduced_precision_batches(
    tiny_config, dtype, batch, monkeypatch
):
    """With falcon_hf's kernels, every sdpa decode step on CPU runs `decode_attention`; without them (a copy of the
    file without the plugin, or no AVX-512), reduced-precision batches run `matmul_attention_forward` and the rest
    torch's SDPA. Each route's logits equal torch's SDPA within the dtype's rounding (float32: 1e-5; bfloat16: 0.02
    on logits of magnitude ~1)."""
    model = FalconHFForCausalLM(tiny_config).eval().to(dtype)
    input_ids = torch.randint(0, 400, (batch, 21))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, :5] = 0  # left padding
    layers = tiny_config.num_hidden_layers
    with monkeypatch.context() as patch:
        patch.setattr(modeling, "cpu_decode_attention_applies", lambda query: False)
        _, expected = route_counts(model, patch, input_ids, attention_mask)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 0.02}[dtype]
    if modeling.decode_attention is not None and kernels_built():
        with monkeypatch.context() as patch:
            counts, logits = route_counts(model, patch, input_ids, attention_mask)
        assert counts == {"decode_attention": layers}
        torch.testing.assert_close(logits.float(), expected.float(), atol=tolerance, rtol=0)
    monkeypatch.setattr(modeling, "decode_attention", None)
    counts, logits = route_counts(model, monkeypatch, input_ids, attention_mask)
    assert counts == ({"matmul_attention_forward": layers} if dtype is torch.bfloat16 and batch > 1 else {})
    torch.testing.assert_close(logits.float(), expected.float(), atol=tolerance, rtol=0)


def kernels_built() -> bool:
    from falcon_hf.kernels import load

    return load().library is not None


@torch.no_grad()
def test_packed_documents_with_a_block_diagonal_mask_equal_each_document_alone(tiny_model):
    first, second = torch.randint(0, 400, (1, 5)), torch.randint(0, 400, (1, 4))
    packed = torch.cat([first, second], 1)
    document = torch.tensor([0] * 5 + [1] * 4)
    allowed = (document[:, None] == document[None, :]) & torch.ones(9, 9, dtype=torch.bool).tril()
    logits = tiny_model(packed, attention_mask=allowed[None, None]).logits
    torch.testing.assert_close(logits[:, :5], tiny_model(first).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[:, 5:], tiny_model(second).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_output_attentions_and_hidden_states(tiny_model):
    tiny_model.set_attn_implementation("eager")
    input_ids, attention_mask = padded_batch()
    output = tiny_model(input_ids, attention_mask=attention_mask, output_attentions=True, output_hidden_states=True)
    assert len(output.attentions) == 2 and output.attentions[0].shape == (3, 4, 10, 10)
    torch.testing.assert_close(output.attentions[0].sum(-1), torch.ones(3, 4, 10))
    assert output.attentions[0][1, :, 5, :4].abs().max() == 0  # padding gets no attention
    assert len(output.hidden_states) == 3  # embeddings + one per block


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    input_ids, attention_mask = padded_batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = FalconHFForCausalLM(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5's name for gradient_checkpointing_enable
            assert all(block.gradient_checkpointing for block in model.transformer.h)
        model(input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
        grads.append(model.transformer.h[0].self_attention.query_key_value.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_resize_token_embeddings_keeps_the_head_tied(tiny_model):
    tiny_model.resize_token_embeddings(500)
    assert tiny_model.config.vocab_size == 500 and tiny_model.lm_head.weight.shape == (500, 32)
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.transformer.word_embeddings.weight.data_ptr()
    assert tiny_model(torch.tensor([[499, 1]])).logits.shape == (1, 2, 500)


def test_dropout_only_in_training(tiny_config):
    tiny_config.hidden_dropout = 0.5
    model = FalconHFForCausalLM(tiny_config)
    input_ids, _ = padded_batch()
    model.eval()
    assert torch.equal(model(input_ids).logits, model(input_ids).logits)
    model.train()
    assert not torch.equal(model(input_ids).logits, model(input_ids).logits)
