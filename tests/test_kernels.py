"""The CPU linear kernels (`falcon_hf.kernels`) against torch's `F.linear`, and every decode path against the eager one
(the decode attention kernel alone: test_kernels_attention).

Tolerances: float32 results within 16 float32 epsilons of sum |x_i w_i| from the float64 product (only the summation
order differs from torch's); bfloat16 results within one bfloat16 rounding step of the float64 product, as torch's own
bfloat16 `F.linear` is.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import falcon_hf.kernels.attention as kernel_attention
import falcon_hf.kernels.linear as kernel_linear
import falcon_hf.modeling_falcon_hf as modeling
from falcon_hf import FalconHFForCausalLM, enable_compiled_decoding
from falcon_hf.kernels import load, small_batch_linear

LIBRARY = load()
needs_float32 = pytest.mark.skipif(not LIBRARY.float32, reason=f"kernels unavailable: {LIBRARY.reason}")
needs_bfloat16 = pytest.mark.skipif(not LIBRARY.bfloat16, reason=f"no AVX512-BF16 kernel: {LIBRARY.reason}")
needs_amx = pytest.mark.skipif(not LIBRARY.amx, reason="this CPU or OS gives no AMX tiles")
# (out, in): a tail in both dimensions, the small benchmark's shapes, and a tiny one
SHAPES = [(2304, 768), (768, 3072), (45, 70), (33, 64), (7, 5)]


def reference(x, weight, bias):
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


def call(function, x, weight, bias):
    """Call one C entry point directly (bypassing `small_batch_linear`'s dispatch), as `linear.py` does."""
    rows, in_features = x.shape
    output = torch.empty(rows, weight.shape[0], dtype=x.dtype)
    status = function(x.data_ptr(), x.stride(0), weight.data_ptr(), None if bias is None else bias.data_ptr(),
                      output.data_ptr(), weight.shape[0], rows, weight.shape[0], in_features, torch.get_num_threads())
    assert status == 0
    return output


def assert_within_one_bfloat16_step(actual, expected):
    """|actual - expected| at most one bfloat16 spacing of |expected| (2^-7 relative, plus an absolute floor)."""
    spacing = expected.abs().clamp_min(1e-3) * 2.0**-7
    excess = (actual.double() - expected).abs() - spacing
    assert excess.max().item() <= 0, f"worst excess over one bfloat16 step: {excess.max().item():.3g}"


def inputs(rows, out_features, in_features, dtype, bias=True, x_stride=None):
    x = torch.randn(rows, x_stride or in_features, dtype=dtype)[:, :in_features]
    weight = torch.randn(out_features, in_features, dtype=dtype)
    return x, weight, torch.randn(out_features, dtype=dtype) if bias else None


@needs_float32
@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_kernel_matches_the_float64_product(rows, shape):
    x, weight, bias = inputs(rows, *shape, torch.float32, bias=rows % 2 == 1, x_stride=shape[1] + 3)
    output = call(LIBRARY.library.falcon_hf_linear_f32, x, weight, bias)
    magnitude = F.linear(x.double().abs(), weight.double().abs(), None if bias is None else bias.double().abs())
    excess = (output.double() - reference(x, weight, bias)).abs() - 16 * 2.0**-24 * magnitude
    assert excess.max().item() <= 0


@needs_bfloat16
@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES)
def test_bfloat16_dot_product_kernel_is_within_one_rounding(rows, shape):
    x, weight, bias = inputs(rows, *shape, torch.bfloat16, bias=rows % 2 == 0, x_stride=shape[1] + 2)
    assert_within_one_bfloat16_step(call(LIBRARY.library.falcon_hf_linear_bf16, x, weight, bias),
                                    reference(x, weight, bias))


@needs_amx
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("shape", [(2304, 768), (768, 3072), (45, 64), (7, 32)])
def test_bfloat16_amx_kernel_is_within_one_rounding(rows, shape):
    x, weight, bias = inputs(rows, *shape, torch.bfloat16, bias=rows != 5, x_stride=shape[1] + 32)
    assert_within_one_bfloat16_step(call(LIBRARY.library.falcon_hf_linear_bf16_amx, x, weight, bias),
                                    reference(x, weight, bias))


@needs_amx
def test_amx_kernel_refuses_what_it_cannot_tile():
    for rows, in_features in [(17, 64), (0, 64), (4, 48)]:
        x = torch.zeros(max(rows, 1), in_features, dtype=torch.bfloat16)
        weight = torch.zeros(16, in_features, dtype=torch.bfloat16)
        output = torch.empty(max(rows, 1), 16, dtype=torch.bfloat16)
        status = LIBRARY.library.falcon_hf_linear_bf16_amx(x.data_ptr(), in_features, weight.data_ptr(), None,
                                                           output.data_ptr(), 16, rows, 16, in_features, 1)
        assert status == 1


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("leading", [(2,), (2, 1), (1, 3), (4, 2)])
def test_small_batch_linear_keeps_leading_dimensions(dtype, leading):
    x = torch.randn(*leading, 64, dtype=dtype)
    weight, bias = torch.randn(96, 64, dtype=dtype), torch.randn(96, dtype=dtype)
    output = small_batch_linear(x, weight, bias)
    assert output is not None and output.shape == (*leading, 96) and output.dtype == dtype
    torch.testing.assert_close(output, F.linear(x, weight, bias), rtol=2**-7, atol=0.05)


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["row stride", "transposed", "3D slice"])
def test_small_batch_linear_takes_non_contiguous_rows(dtype, layout):
    x = {"row stride": lambda: torch.randn(3, 80, dtype=dtype)[:, :64],  # rows read in place with their stride
         "transposed": lambda: torch.randn(64, 3, dtype=dtype).t(),  # copied first: inputs are not unit-strided
         "3D slice": lambda: torch.randn(2, 5, 64, dtype=dtype)[:, 1:4]}[layout]()
    assert not x.is_contiguous()
    weight, bias = torch.randn(96, 64, dtype=dtype), torch.randn(96, dtype=dtype)
    output = small_batch_linear(x, weight, bias)
    assert output is not None and output.shape == (*x.shape[:-1], 96) and output.is_contiguous()
    torch.testing.assert_close(output, F.linear(x, weight, bias), rtol=2**-7, atol=0.05)


@needs_float32
def test_small_batch_linear_declines_what_it_does_not_handle():
    weight, bias = torch.randn(16, 64), torch.randn(16)
    x = torch.randn(4, 64)
    assert small_batch_linear(x, weight, bias) is not None
    declined = {
        "too many rows": (torch.randn(17, 64), weight, bias),
        "9 float32 rows": (torch.randn(9, 64), weight, bias),
        "float16": (x.half(), weight.half(), bias.half()),
        "float64": (x.double(), weight.double(), bias.double()),
        "mixed dtypes": (x, weight.bfloat16(), bias),
        "a transposed weight": (x, torch.randn(64, 16).t(), bias),
        "a wrong bias shape": (x, weight, torch.randn(17)),
        "a wrong inner size": (torch.randn(4, 63), weight, bias),
        "a meta tensor": (x.to("meta"), weight.to("meta"), bias.to("meta")),
        "an empty input": (torch.randn(0, 64), weight, bias),
    }
    for what, arguments in declined.items():
        assert small_batch_linear(*arguments) is None, what
    trained = torch.nn.Parameter(weight.clone())
    assert small_batch_linear(x, trained, bias) is None  # autograd must see F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert small_batch_linear(x, weight, bias) is None  # F.linear gives autocast's bfloat16
    with torch.no_grad():
        assert small_batch_linear(x, trained, bias) is not None


@needs_float32
def test_linear_layers_take_the_kernel_only_at_inference(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(modeling, "small_batch_linear", lambda *args: calls.append(args[0].shape) or None)
    input_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        tiny_model(input_ids)
    assert len(calls) == 2 * 4 + 1  # every Linear of both blocks, and the LM head
    tiny_model.train()
    calls.clear()
    tiny_model(input_ids, labels=input_ids).loss.backward()
    assert all(weight.grad is not None for weight in tiny_model.parameters())


def generate(model, input_ids, attention_mask, **options):
    return model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=16,
                          min_new_tokens=16, **options)


def generate_with_logits(model, input_ids, attention_mask, **options):
    """(tokens, the logits of every step) of a forced 16-token greedy continuation."""
    output = generate(model, input_ids, attention_mask, output_logits=True, return_dict_in_generate=True, **options)
    return output.sequences, torch.stack(output.logits, 1).float()  # (B, T + 16), (B, 16, V)


def assert_same_greedy_tokens(actual, expected, prompt_length, dtype):
    """Greedy tokens equal, except that in bfloat16 a row may part at a tie: a step where the reference's logits of
    both tokens lie within one bfloat16 rounding step (2^-7 relative) of each other, so that the order of summation
    alone decides. In float32 the tokens must be equal. (actual, expected) are `generate_with_logits` results."""
    (tokens, logits), (expected_tokens, expected_logits) = actual, expected
    for row in range(tokens.shape[0]):
        parted = (tokens[row] != expected_tokens[row]).nonzero()
        if not len(parted):
            continue
        column = parted[0].item()
        assert dtype is torch.bfloat16, f"float32 row {row} parts from the reference at position {column}"
        step_logits = expected_logits[row, column - prompt_length]
        ours, theirs = step_logits[tokens[row, column]], step_logits[expected_tokens[row, column]]
        assert (theirs - ours).abs() <= theirs.abs() * 2.0**-7, (
            f"row {row} parts at position {column} without a tie: reference logits {theirs:.5g} (its token) and "
            f"{ours:.5g} (ours)")


@pytest.fixture(scope="module")
def shakespeare_model():
    return FalconHFForCausalLM.from_keras_preset("tiny_shakespeare", dtype="float32").eval()


def prompts(model, batch):
    """`batch` left-padded prompts of the embedded preset's vocabulary (lengths 6 to 9)."""
    generator = torch.Generator().manual_seed(batch)
    input_ids = torch.randint(0, 1999, (batch, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):
        attention_mask[row, : row % 4] = 0
        input_ids[row, : row % 4] = model.config.pad_token_id
    return input_ids, attention_mask


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_kernels_give_the_tokens_of_the_plain_pytorch_path(shakespeare_model, dtype, batch, cache_implementation,
                                                           monkeypatch):
    """Greedy tokens with the kernels (linear layers and decode attention) equal those of plain PyTorch (`F.linear`,
    torch's SDPA) everywhere (same cache: a static cache attends over its whole padded length, which changes bfloat16
    sums by itself), up to bfloat16 ties (`assert_same_greedy_tokens`: the dot-product kernels of CPUs without AMX part
    from oneDNN at an exact bfloat16 tie in one of these rows). torch.compile is checked in test_modeling."""
    model = shakespeare_model.to(dtype)
    input_ids, attention_mask = prompts(model, batch)
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(modeling, "small_batch_linear", None)
        patch.setattr(modeling, "cpu_decode_attention_applies", lambda query: False)
        reference = generate_with_logits(model, input_ids, attention_mask, cache_implementation=cache_implementation)
    with torch.no_grad():
        ours = generate_with_logits(model, input_ids, attention_mask, cache_implementation=cache_implementation)
    assert_same_greedy_tokens(ours, reference, input_ids.shape[1], dtype)


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_decode_calls_the_kernel_operator_and_gives_the_eager_tokens(shakespeare_model, dtype, monkeypatch):
    """Under torch.compile (static cache, full graph) every linear layer of a decode step is the opaque operator
    `falcon_hf::small_batch_linear` and every attention `falcon_hf::decode_attention`, which run the kernels; the
    tokens equal the uncompiled kernel path's."""
    model = shakespeare_model.to(dtype)
    input_ids, attention_mask = prompts(model, 3)
    with torch.no_grad():
        expected = generate(model, input_ids, attention_mask, cache_implementation="static", disable_compile=True)
    monkeypatch.setattr(model, "generation_config", copy.deepcopy(model.generation_config))  # module-scoped model
    enable_compiled_decoding(model)
    kernel_rows = []
    run_kernel = kernel_linear.small_batch_linear
    monkeypatch.setattr(kernel_linear, "small_batch_linear", lambda x, *args: kernel_rows.append(x.shape[:-1]) or
                        run_kernel(x, *args))
    attention_queries = []
    run_attention = kernel_attention.decode_attention
    monkeypatch.setattr(kernel_attention, "decode_attention", lambda query, *args: attention_queries.append(
        query.shape) or run_attention(query, *args))
    with torch.no_grad():
        assert torch.equal(generate(model, input_ids, attention_mask), expected)
    layers = 4 * model.config.num_hidden_layers + 1
    assert len(kernel_rows) == 15 * layers  # 15 compiled decode steps (the prompt runs eagerly), every linear layer
    assert set(kernel_rows) == {(3, 1)}
    config = model.config
    assert attention_queries == [(3, config.num_attention_heads, 1, config.head_dim)] * 15 * config.num_hidden_layers


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 17])
def test_kernel_operator_passes_torch_opcheck(dtype, rows):
    """Schema, fake (meta) implementation and dispatch of `falcon_hf::small_batch_linear`; past the kernel's rows
    (17 in both dtypes) it computes `F.linear` itself."""
    x, weight, bias = torch.randn(rows, 64, dtype=dtype), torch.randn(96, 64, dtype=dtype), torch.randn(96, dtype=dtype)
    for arguments in [(x, weight, bias), (x[None], weight, None)]:
        torch.library.opcheck(torch.ops.falcon_hf.small_batch_linear, arguments)
        output = torch.ops.falcon_hf.small_batch_linear(*arguments)
        torch.testing.assert_close(output, F.linear(*arguments), rtol=2**-7, atol=0.05)


@needs_bfloat16
def test_compiled_graphs_take_the_operator_only_for_decode_sized_inference_products():
    weight = torch.randn(32, 64)
    with torch.no_grad():
        assert kernel_linear.traced_linear_applies(torch.randn(1, 1, 64), weight)
        assert kernel_linear.traced_linear_applies(torch.randn(16, 64).bfloat16(), weight.bfloat16())
        declined = {
            "9 float32 rows": (torch.randn(9, 64), weight),
            "17 bfloat16 rows": (torch.randn(17, 64).bfloat16(), weight.bfloat16()),
            "float16": (torch.randn(2, 64).half(), weight.half()),
            "mixed dtypes": (torch.randn(2, 64), weight.bfloat16()),
            "a tensor subclass weight": (torch.randn(2, 64), weight.as_subclass(SubclassTensor)),
            "a transposed weight": (torch.randn(2, 64), torch.randn(64, 32).t()),
            "a meta input": (torch.randn(2, 64, device="meta"), weight),
        }
        for what, (x, declined_weight) in declined.items():
            assert not kernel_linear.traced_linear_applies(x, declined_weight), what
    assert not kernel_linear.traced_linear_applies(torch.randn(1, 64), weight)  # grad mode records F.linear


class SubclassTensor(torch.Tensor):
    """Stands for DTensor, quantized or offloaded weights: the operator would see the wrapper, not the data."""


@needs_bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step_logits_match_full_sequence_logits(shakespeare_model, dtype):
    """Decode steps (kernels, 8 rows) against one forward over the whole sequences (torch's products, > 16 rows);
    tolerance: 1e-4 in float32, 0.25 (a few bfloat16 steps of logits around 10) in bfloat16."""
    model = shakespeare_model.to(dtype)
    input_ids, _ = prompts(model, 8)
    with torch.no_grad():
        full = model(input_ids).logits[:, 4:]
        output = model(input_ids[:, :4], use_cache=True)
        steps = []
        for position in range(4, input_ids.shape[1]):
            output = model(input_ids[:, position : position + 1], cache=output.cache, use_cache=True)
            steps.append(output.logits)
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 0.25}[dtype]
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=tolerance, rtol=0)


def run_python(code: str, **environment) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **environment})


def test_switched_off_by_environment_variable():
    result = run_python("from falcon_hf.kernels import load; print(load().library is None, load().reason)",
                        FALCON_HF_CPU_KERNELS="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:1] == ["True"] and "FALCON_HF_CPU_KERNELS=0" in result.stdout


@needs_float32
def test_a_failed_build_warns_once_and_the_model_still_runs(tmp_path):
    code = (
        "import torch\n"
        "from falcon_hf import FalconHFConfig, FalconHFForCausalLM\n"
        "from falcon_hf.kernels import load\n"
        "config = FalconHFConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,\n"
        "                        intermediate_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)\n"
        "model = FalconHFForCausalLM(config).eval()\n"
        "ids = model.generate(torch.tensor([[1, 2]]), max_new_tokens=3, do_sample=False)\n"
        "print(ids.shape[1], load().library is None)\n"
    )
    result = run_python(code, CC="false", FALCON_HF_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5", "True"]
    assert result.stderr.count("could not be built") == 1
    assert not any(tmp_path.rglob("*.so"))  # nothing half-written left behind


@needs_float32
def test_the_build_is_cached_and_atomic(tmp_path):
    code = "from falcon_hf.kernels import load; print(load().reason)"
    first = run_python(code, FALCON_HF_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr
    built = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert [path.name for path in built] == ["falcon_hf_kernels.so"]  # no temporary file left
    assert first.stdout.strip() == str(built[0])
    stamp = built[0].stat().st_mtime_ns
    second = run_python(code, FALCON_HF_CACHE=str(tmp_path))
    assert second.stdout == first.stdout and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
