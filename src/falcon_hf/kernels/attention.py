"""`decode_attention`: SDPA for the few queries of a decode step on CPU, through `decode_attention.c`."""

import ctypes

import torch
import torch.nn.functional as F

from .build import load
from .linear import PLAIN_TENSOR_TYPES

MAX_QUERIES = 16  # decode steps and short assisted-decoding checks; prefill keeps torch's SDPA
MAX_HEAD_DIM = 512  # the kernel keeps one query row and its output in registers and on the stack
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
STRIDES = ctypes.c_long * 16  # query, key, value and mask strides, four each


def decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor | None:
    """`scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)` computed by the decode kernel
    and returned transposed, as (B, T, nh, hs) contiguous, or None where that kernel does not apply.

    It applies to float32 or bfloat16 CPU tensors (one dtype for all four) with no gradient to record: query
    (B, nh, T, hs) with T <= 16, key and value (B, nh, S, hs), an additive mask broadcastable to (B, nh, T, S), each with
    a contiguous last dimension. Scores, softmax and the weighted sum are float32, the output rounded once, like
    torch's CPU flash kernel; keys whose mask is at most -1e30 are skipped (their weight is exactly 0).
    """
    dtype = query.dtype
    if dtype not in DTYPES or mask is None or query.dim() != 4 or torch.compiler.is_compiling():
        return None
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[-2] if key.dim() == 4 else 0
    if not (0 < queries <= MAX_QUERIES and 0 < head_dim <= MAX_HEAD_DIM and keys):
        return None
    if key.shape != (batch, heads, keys, head_dim) or value.shape != key.shape or mask.dim() != 4:
        return None
    try:
        mask = mask.expand(batch, heads, queries, keys)  # broadcast dimensions get stride 0
    except RuntimeError:
        return None
    tensors = (query, key, value, mask)
    if not all(map(_plain, tensors, (dtype,) * 4)):
        return None
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad or mask.requires_grad):
        return None
    library = load().library
    if library is None:
        return None
    output = torch.empty(batch, queries, heads, head_dim, dtype=dtype)
    strides = STRIDES(*query.stride(), *key.stride(), *value.stride(), *mask.stride())
    status = library.falcon_hf_decode_attention(
        DTYPES[dtype], query.data_ptr(), key.data_ptr(), value.data_ptr(), mask.data_ptr(), strides,
        output.data_ptr(), batch, heads, queries, keys, head_dim, scaling, torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"falcon_hf's decode_attention kernel failed (status {status}) on query {tuple(query.shape)} "
                           f"and {keys} keys")
    return output


def _plain(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """A dense CPU tensor of `dtype` with a contiguous last dimension."""
    return (
        type(tensor) in PLAIN_TENSOR_TYPES
        and tensor.dtype is dtype
        and tensor.is_cpu
        and tensor.layout is torch.strided
        and tensor.stride(-1) == 1
    )


@torch.library.custom_op("falcon_hf::decode_attention", mutates_args=(), device_types="cpu")
def decode_attention_op(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """`decode_attention` as a torch operator for compiled graphs: the kernel where it applies, else torch's SDPA
    (transposed to the same (B, T, nh, hs) layout)."""
    output = decode_attention(query, key, value, mask, scaling)
    if output is None:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        output = output.transpose(1, 2).contiguous()
    return output


@decode_attention_op.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    batch, heads, queries, head_dim = query.shape
    return query.new_empty(batch, queries, heads, head_dim)


def traced_attention_applies(query: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """While compiling: whether the attention of `query` is a decode-sized inference step worth the operator. Only
    what a trace fixes anyway (dtype, device, shapes, grad mode); the operator checks the rest at run time."""
    if query.dtype not in DTYPES or not query.is_cpu or query.dim() != 4 or mask is None or torch.is_grad_enabled():
        return False
    return 0 < query.shape[2] <= MAX_QUERIES and query.shape[3] <= MAX_HEAD_DIM and kernel_built()


@torch.compiler.assume_constant_result
def kernel_built() -> bool:
    """Whether this machine's kernel library was built (a constant to the tracer)."""
    return load().library is not None
