"""`small_batch_linear`: `F.linear` for CPU inference on a few rows (decode steps), through `small_batch_linear.c`.

Eager code calls `small_batch_linear` directly (about 10 us per call); compiled graphs call the same kernel as the
operator `torch.ops.falcon_hf.small_batch_linear` (an opaque call inductor keeps, `F.linear` where the kernel declines).
"""

import torch
import torch.nn.functional as F

from .build import load

MAX_ROWS = 8  # float32, and bfloat16 without AMX
AMX_MIN_ROWS = 2  # one bfloat16 row: the dot-product kernel streamed 1.31B-shaped weights ~15% faster (Xeon)
AMX_MAX_ROWS = 16  # one AMX tile holds 16 rows of x
AMX_IN_FEATURES_MULTIPLE = 32  # a tile row is 32 bfloat16 inputs
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)  # no subclasses: DTensor, quantized or offloaded wrappers


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` computed by the small-batch kernel, or None where that kernel does not apply.

    It applies to float32 CPU tensors of 1 to 8 rows of `x` (its leading dimensions multiplied) and bfloat16 ones of 1
    to 8 (16 on AMX), a contiguous (out, in) weight and bias of the same dtype, no gradient to record and no CPU
    autocast; the caller falls back to `F.linear` on None. Called once per linear layer per decode step, so the checks
    stay cheap.
    """
    dtype = x.dtype
    if (dtype is not torch.float32 and dtype is not torch.bfloat16) or not x.is_cpu or x.dim() == 0:
        return None
    rows = decode_rows(x)
    if not rows:
        return None  # checked first: prefill and training batches leave here
    if not inference_operands(x, weight, bias):
        return None
    out_features, in_features = weight.shape
    library = load()
    if dtype is torch.float32:
        function = library.library.falcon_hf_linear_f32 if library.float32 else None
    elif library.amx and rows >= AMX_MIN_ROWS and in_features % AMX_IN_FEATURES_MULTIPLE == 0:
        function = library.library.falcon_hf_linear_bf16_amx
    else:
        function = library.library.falcon_hf_linear_bf16 if library.bfloat16 and rows <= MAX_ROWS else None
    if function is None:
        return None
    output = torch.empty(x.shape[:-1] + (out_features,), dtype=dtype)  # x's leading dimensions, written in place
    if x.is_contiguous():
        row_stride = in_features
    else:
        x = x.reshape(rows, in_features)
        if x.stride(1) != 1:
            x = x.contiguous()
        row_stride = x.stride(0)
    status = function(
        x.data_ptr(),
        row_stride,
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        output.data_ptr(),
        out_features,
        rows,
        out_features,
        in_features,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"falcon_hf's small_batch_linear kernel failed (status {status}) on {rows} x {in_features}")
    return output


def decode_rows(x: torch.Tensor) -> int:
    """The rows of `x` (its leading dimensions multiplied) where they are few enough for the kernel, else 0."""
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    return rows if 0 < rows <= (MAX_ROWS if x.dtype is torch.float32 else AMX_MAX_ROWS) else 0


def inference_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `F.linear(x, weight, bias)` may run outside torch's kernels: a contiguous (out, in) weight and a bias
    of `x`'s dtype that fit `x`, no gradient to record, and no CPU autocast (whose `F.linear` computes in its lower
    precision). Shared by the small-batch kernel and the oneDNN route."""
    dtype = x.dtype
    if not plain_contiguous(weight, dtype) or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        return False
    if bias is not None and not (plain_contiguous(bias, dtype) and bias.shape == (weight.shape[0],)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return not torch.is_autocast_enabled("cpu")


def plain_contiguous(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """A dense, contiguous CPU tensor of `dtype` whose data pointer is all it holds."""
    return (
        type(tensor) in PLAIN_TENSOR_TYPES
        and tensor.dtype is dtype
        and tensor.is_cpu
        and tensor.layout is torch.strided
        and tensor.is_contiguous()
    )


@torch.library.custom_op("falcon_hf::small_batch_linear", mutates_args=(), device_types="cpu")
def small_batch_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` as a torch operator for compiled graphs: the kernel where it applies, else torch's."""
    output = small_batch_linear(x, weight, bias)
    return F.linear(x, weight, bias) if output is None else output


@small_batch_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(x.shape[:-1] + (weight.shape[0],))


def traced_linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """While compiling: whether `x @ weight.T` is a decode-sized inference product worth the operator. Only what a
    trace fixes anyway (dtypes, devices, shapes, tensor types, grad mode); the operator checks the rest at run time."""
    if not x.is_cpu or x.dim() == 0 or torch.is_grad_enabled() or not kernel_runs(x.dtype):
        return False
    return decode_rows(x) > 0 and plain_contiguous(weight, x.dtype)


@torch.compiler.assume_constant_result
def kernel_runs(dtype: torch.dtype) -> bool:
    """Whether this machine's kernel library was built and runs `dtype` (a constant to the tracer)."""
    library = load()
    return library.float32 if dtype is torch.float32 else dtype is torch.bfloat16 and library.bfloat16
