"""Ours vs transformers' built-in `FalconForCausalLM` (Falcon-RW settings) on the same weights.

The built-in rounds the ALiBi term `slope * position` through bfloat16; keras-hub (and falcon_hf) compute it in
float32. With a power-of-two head count up to 8 every slope is a power of two, so the product is exact in bfloat16 for
positions below 256 and the two models agree to float32 summation noise. Past that the built-in drifts; the tests
below pin the drift on that rounding by swapping in a float32 ALiBi, after which the models agree again.

We compare with the built-in's `sdpa` path: its `eager` path in transformers 5.24 adds ALiBi twice (once folded into
the mask, once in the attention), which a test below documents.
"""

import pytest
import torch
from transformers import FalconForCausalLM
from transformers.models.falcon import modeling_falcon

from falcon_hf import FalconHFConfig, FalconHFForCausalLM
from falcon_hf.conversion.native import native_config
from falcon_hf.modeling_falcon_hf import alibi_slopes

from conftest import tiny_config_kwargs

SUMMATION_ATOL = 2e-5  # fp32, same math in a different order


def builtin_falcon(config: FalconHFConfig, attn_implementation: str = "sdpa") -> FalconForCausalLM:
    """transformers' own Falcon with the config our native export writes."""
    builtin_config = native_config(config)
    builtin_config._attn_implementation = attn_implementation
    return FalconForCausalLM(builtin_config).eval()


def twin_models(num_heads=4, hidden_size=32, attn_implementation="sdpa"):
    ours = FalconHFForCausalLM(FalconHFConfig(**tiny_config_kwargs(num_attention_heads=num_heads,
                                                                   hidden_size=hidden_size))).eval()
    theirs = builtin_falcon(ours.config, attn_implementation)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied, filled by the embedding
    theirs.tie_weights()
    return ours, theirs


def float32_alibi(attention_mask, num_heads, dtype):
    """The built-in's `build_alibi_tensor` without its bfloat16 rounding."""
    batch_size, seq_length = attention_mask.shape
    positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]  # (B, 1, S)
    alibi = alibi_slopes(num_heads).to(attention_mask.device)[None, :, None] * positions  # (B, nh, S)
    return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)


@torch.no_grad()
def test_logits_match_the_builtin_on_short_padded_batches():
    ours, theirs = twin_models(num_heads=4)
    input_ids = torch.randint(0, 400, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    real = attention_mask.bool()
    torch.testing.assert_close(ours(input_ids, attention_mask=attention_mask).logits[real],
                               theirs(input_ids, attention_mask=attention_mask).logits[real],
                               atol=SUMMATION_ATOL, rtol=0)


@torch.no_grad()
def test_greedy_tokens_match_the_builtin():
    ours, theirs = twin_models(num_heads=4)
    prompt = torch.randint(0, 400, (1, 8))
    assert torch.equal(ours.generate(prompt, max_new_tokens=20, do_sample=False),
                       theirs.generate(prompt, max_new_tokens=20, do_sample=False))


@torch.no_grad()
def test_builtin_drift_is_its_bfloat16_alibi(monkeypatch):
    # 12 heads: slopes such as 2**-0.5 are not powers of two, so bfloat16 rounds slope * position.
    ours, theirs = twin_models(num_heads=12, hidden_size=48)
    input_ids = torch.randint(0, 400, (1, 300))
    drift = (ours(input_ids).logits - theirs(input_ids).logits).abs().max()
    assert drift > 1e-4, "expected the built-in's bfloat16 ALiBi to drift on long sequences"
    monkeypatch.setattr(modeling_falcon, "build_alibi_tensor", float32_alibi)
    torch.testing.assert_close(ours(input_ids).logits, theirs(input_ids).logits, atol=SUMMATION_ATOL, rtol=0)


@torch.no_grad()
def test_builtin_eager_path_adds_alibi_twice():
    ours, theirs_sdpa = twin_models(num_heads=4)
    _, theirs_eager = twin_models(num_heads=4, attn_implementation="eager")
    theirs_eager.load_state_dict(theirs_sdpa.state_dict())
    input_ids = torch.randint(0, 400, (1, 24))
    sdpa_logits = theirs_sdpa(input_ids).logits
    assert (theirs_eager(input_ids).logits - sdpa_logits).abs().max() > 1e-3
    ours.set_attn_implementation("eager")
    torch.testing.assert_close(ours(input_ids).logits, sdpa_logits, atol=SUMMATION_ATOL, rtol=0)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_our_static_cache_works_where_the_builtin_needs_dynamic(implementation):
    ours, theirs = twin_models(num_heads=4)
    ours.set_attn_implementation(implementation)
    prompt = torch.randint(0, 400, (2, 6))
    expected = theirs.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(ours.generate(prompt, max_new_tokens=10, do_sample=False, cache_implementation="static"),
                       expected)
