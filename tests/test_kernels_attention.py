"""The decode attention kernel (`falcon_hf.kernels.decode_attention`) against torch's SDPA and a float64 reference.

Tolerance: against SDPA computed in float64 from the same (rounded) inputs, the kernel's error is at most torch's own
SDPA error in that dtype plus one rounding step of the output (the largest |output| times the dtype's epsilon).
"""

import pytest
import torch
import torch.nn.functional as F

from falcon_hf.kernels import decode_attention, load, traced_attention_applies

LIBRARY = load()
pytestmark = pytest.mark.skipif(LIBRARY.library is None, reason=f"kernels unavailable: {LIBRARY.reason}")
DTYPES = [torch.float32, torch.bfloat16]


def attention_inputs(batch, heads, queries, keys, head_dim, dtype, mask_batch=None, mask_heads=None, seed=0):
    """query, key, value and an ALiBi-like additive mask (dtype-min on a left-padded prefix that grows per row)."""
    generator = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(batch, heads, length, head_dim, generator=generator).to(dtype)
                         for length in (queries, keys, keys))
    mask_batch = batch if mask_batch is None else mask_batch
    mask_heads = heads if mask_heads is None else mask_heads
    slopes = torch.linspace(0.05, 0.5, mask_heads)[None, :, None, None]
    distance = (torch.arange(keys).flip(0) - torch.arange(queries).flip(0)[:, None]).clamp(min=0)
    mask = (-slopes * distance).expand(mask_batch, mask_heads, queries, keys).clone()
    padded = torch.arange(keys) < torch.arange(mask_batch)[:, None, None, None] * 3
    return query, key, value, mask.masked_fill(padded, torch.finfo(dtype).min).to(dtype)


def assert_as_accurate_as_torch(query, key, value, mask, scaling=None):
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    reference = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), attn_mask=mask.double(),
                                               scale=scaling).transpose(1, 2)
    theirs = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling).transpose(1, 2)
    ours = decode_attention(query, key, value, mask, scaling)
    assert ours is not None and ours.dtype == query.dtype and ours.is_contiguous()
    assert ours.shape == (query.shape[0], query.shape[2], query.shape[1], query.shape[3])  # (B, T, nh, hs)
    step = reference.abs().max().item() * torch.finfo(query.dtype).eps
    their_error = (theirs.double() - reference).abs().max().item()
    our_error = (ours.double() - reference).abs().max().item()
    assert our_error <= their_error + step, f"error {our_error:.3g} against torch's {their_error:.3g} + {step:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (1, 32, 1, 100, 64),  # the 1.31B shape's decode step
    (8, 12, 1, 37, 64),  # the small config at batch 8
    (2, 3, 5, 17, 20),  # assisted-decoding queries, a head dim with a tail
    (3, 2, 16, 300, 100),  # the most queries the kernel takes
    (1, 1, 1, 1, 8),  # one key
])
def test_decode_attention_is_as_accurate_as_torch_sdpa(dtype, shape):
    assert_as_accurate_as_torch(*attention_inputs(*shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_masks_and_a_custom_scale(dtype):
    """A mask shared over the batch or the heads (stride 0 after broadcasting) and a scale other than 1/sqrt(hs)."""
    assert_as_accurate_as_torch(*attention_inputs(4, 6, 2, 40, 64, dtype, mask_batch=1))
    assert_as_accurate_as_torch(*attention_inputs(4, 6, 2, 40, 64, dtype, mask_heads=1), scaling=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_as_the_model_passes_them(dtype):
    """query, key and value as the model hands them over: slices of a fused (B, T, nh, 3, hs) projection, permuted
    (only the last dimension contiguous), and a static cache's key/value slice."""
    batch, queries, heads, head_dim, keys = 3, 1, 4, 16, 24
    fused = torch.randn(batch, queries, heads, 3, head_dim).to(dtype)
    query = fused.permute(3, 0, 2, 1, 4)[0]
    cache = torch.randn(2, batch, heads, keys + 8, head_dim).to(dtype)[:, :, :, :keys]
    _, _, _, mask = attention_inputs(batch, heads, queries, keys, head_dim, dtype)
    assert not query.is_contiguous() and not cache[0].is_contiguous()
    assert_as_accurate_as_torch(query, cache[0], cache[1], mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_keys_weigh_nothing_and_a_fully_masked_row_averages(dtype):
    """Keys masked with dtype-min or -inf get weight 0 (they are skipped); a row whose every key is masked with
    dtype-min gets torch's result for it, the plain average of the values."""
    query, key, value, mask = attention_inputs(2, 2, 1, 10, 16, dtype)
    mask[0, :, :, ::2] = float("-inf")
    assert_as_accurate_as_torch(query, key, value, mask)
    mask[1] = torch.finfo(dtype).min
    ours = decode_attention(query, key, value, mask, 0.25)
    torch.testing.assert_close(ours[1].float(), value[1].float().mean(1, keepdim=True).transpose(0, 1),
                               atol=1e-6 if dtype is torch.float32 else 2e-2, rtol=0)


def test_declines_what_it_does_not_handle():
    query, key, value, mask = attention_inputs(2, 4, 1, 12, 16, torch.float32)
    declined = {
        "float16": (query.half(), key.half(), value.half(), mask.half()),
        "mixed dtypes": (query, key, value, mask.bfloat16()),
        "no mask": (query, key, value, None),
        "a boolean mask": (query, key, value, mask > -1),
        "17 queries": (*attention_inputs(2, 4, 17, 12, 16, torch.float32)[:3], mask.expand(2, 4, 17, 12)),
        "fewer key heads (GQA)": (query, key[:, :2], value[:, :2], mask),
        "a mask of the wrong length": (query, key, value, mask[..., :-1]),
        "a head dim past 512": (*attention_inputs(1, 1, 1, 4, 513, torch.float32)[:3], mask[:1, :1, :, :4]),
        "a transposed last dimension": (query, key.transpose(2, 3).contiguous().transpose(2, 3), value, mask),
        "a meta query": (query.to("meta"), key, value, mask),
    }
    for what, arguments in declined.items():
        assert decode_attention(*arguments, 0.25) is None, what
    with torch.enable_grad():
        assert decode_attention(query.requires_grad_(), key, value, mask, 0.25) is None  # training records SDPA
    with torch.no_grad():
        assert decode_attention(query, key, value, mask, 0.25) is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("queries", [1, 17])
def test_attention_operator_passes_torch_opcheck(dtype, queries):
    """Schema, fake (meta) implementation and dispatch of `falcon_hf::decode_attention`; past 16 queries it computes
    torch's SDPA itself."""
    query, key, value, mask = attention_inputs(2, 4, queries, 12, 16, dtype)
    torch.library.opcheck(torch.ops.falcon_hf.decode_attention, (query, key, value, mask, 0.25))
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.25).transpose(1, 2)
    output = torch.ops.falcon_hf.decode_attention(query, key, value, mask, 0.25)
    torch.testing.assert_close(output.float(), expected.float(), atol=1e-5 if dtype is torch.float32 else 2e-2, rtol=0)


def test_compiled_graphs_take_the_operator_only_for_decode_sized_inference():
    query, _, _, mask = attention_inputs(1, 4, 1, 12, 16, torch.float32)
    with torch.no_grad():
        assert traced_attention_applies(query, mask) and traced_attention_applies(query.bfloat16(), mask.bfloat16())
        assert not traced_attention_applies(query.half(), mask.half())
        assert not traced_attention_applies(query, None)
        assert not traced_attention_applies(torch.randn(1, 4, 17, 16), mask)
        assert not traced_attention_applies(query.to("meta"), mask)
    assert not traced_attention_applies(query, mask)  # grad mode records SDPA
