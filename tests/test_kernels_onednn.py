"""The float32 oneDNN route (`falcon_hf.kernels.onednn`) against the float64 product, what it declines, and where
the model takes it. Greedy tokens with it equal those of plain `F.linear`: test_kernels' token test, whose reference
turns every falcon_hf route off.

Tolerance: within 16 float32 epsilons of sum |x_i w_i| from the float64 product, as the small-batch kernel (only the
summation order differs from torch's `F.linear`).
"""

import pytest
import torch
import torch.nn.functional as F

import falcon_hf.kernels.onednn as onednn
import falcon_hf.modeling_falcon_hf as modeling
from falcon_hf.kernels import onednn_linear

needs_onednn = pytest.mark.skipif(not onednn.onednn_runs(), reason="this torch has no oneDNN linear")


def assert_matches_float64(output, x, weight, bias):
    double_bias = None if bias is None else bias.double()
    expected = F.linear(x.double(), weight.double(), double_bias)
    magnitude = F.linear(x.double().abs(), weight.double().abs(), None if bias is None else double_bias.abs())
    assert output.shape == expected.shape and output.dtype is torch.float32
    excess = (output.double() - expected).abs() - 16 * 2.0**-24 * magnitude
    assert excess.max().item() <= 0, f"worst excess over the tolerance: {excess.max().item():.3g}"


@needs_onednn
@pytest.mark.parametrize("leading", [(1,), (9,), (1, 33), (2, 40)])
@pytest.mark.parametrize("shape", [(2304, 768), (768, 3072), (45, 70)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_the_float64_product(leading, shape, with_bias):
    out_features, in_features = shape
    x = torch.randn(*leading, in_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features) if with_bias else None
    assert_matches_float64(onednn_linear(x, weight, bias), x, weight, bias)


@needs_onednn
def test_takes_strided_rows():
    weight, bias = torch.randn(64, 48), torch.randn(64)
    for x in (torch.randn(20, 96)[:, :48], torch.randn(48, 20).t()):
        assert_matches_float64(onednn_linear(x, weight, bias), x, weight, bias)


@needs_onednn
def test_declines_what_it_does_not_handle():
    x, weight, bias = torch.randn(12, 16), torch.randn(8, 16), torch.randn(8)
    declined = {
        "bfloat16": (x.bfloat16(), weight.bfloat16(), bias.bfloat16()),
        "no rows": (x[:0], weight, bias),
        "transposed weight": (x, torch.randn(16, 8).t(), bias),
        "wrong in_features": (torch.randn(12, 15), weight, bias),
        "bias of another dtype": (x, weight, bias.double()),
        "wrong bias length": (x, weight, torch.randn(7)),
        "scalar input": (torch.tensor(1.0), weight, bias),
    }
    for what, arguments in declined.items():
        assert onednn_linear(*arguments) is None, what
    trained = torch.nn.Parameter(weight.clone())
    assert onednn_linear(x, trained, bias) is None  # autograd must see F.linear
    with torch.no_grad():
        assert onednn_linear(x, trained, bias) is not None
    with torch.backends.mkldnn.flags(enabled=False):
        assert onednn_linear(x, weight, bias) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear(x, weight, bias) is None  # F.linear gives autocast's bfloat16


def test_the_kernel_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("FALCON_HF_CPU_KERNELS", "0")
    onednn.onednn_built.cache_clear()
    try:
        assert onednn_linear(torch.randn(12, 16), torch.randn(8, 16)) is None
    finally:
        monkeypatch.undo()
        onednn.onednn_built.cache_clear()


def test_prompts_take_it_at_inference_only(tiny_model, monkeypatch):
    """A float32 prompt at inference goes through oneDNN in every Linear (after the small-batch kernel declines it) and
    gives `F.linear`'s logits; in training it declines, and gradients still reach every weight."""
    taken = []
    run = modeling.onednn_linear
    monkeypatch.setattr(modeling, "onednn_linear", lambda *args: taken.append((output := run(*args)) is not None) or output)
    input_ids = torch.arange(5, 17)[None]  # 12 rows: more than the small-batch kernel takes
    with torch.no_grad():
        logits = tiny_model(input_ids).logits
        assert taken == [True] * (2 * 4 + 1)  # every Linear of both blocks, and the LM head
        with monkeypatch.context() as patch:
            patch.setattr(modeling, "onednn_linear", lambda *args: None)
            torch.testing.assert_close(logits, tiny_model(input_ids).logits, rtol=1e-5, atol=1e-5)
    taken.clear()
    tiny_model.train()
    tiny_model(input_ids, labels=input_ids).loss.backward()
    assert taken and not any(taken)
    assert all(weight.grad is not None for weight in tiny_model.parameters())


def test_autocast_keeps_its_precision(tiny_model, monkeypatch):
    """Under CPU autocast both falcon_hf routes step aside: the logits are those of autocast's bfloat16 `F.linear`."""
    input_ids = torch.arange(5, 17)[None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = tiny_model(input_ids).logits
        decode_logits = tiny_model(input_ids[:, :1]).logits
        monkeypatch.setattr(modeling, "small_batch_linear", None)
        torch.testing.assert_close(logits, tiny_model(input_ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(decode_logits, tiny_model(input_ids[:, :1]).logits, rtol=0, atol=0)
