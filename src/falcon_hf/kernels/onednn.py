"""`onednn_linear`: float32 `F.linear` for CPU inference through oneDNN, where the small-batch kernel does not apply.

torch's CPU `F.linear` hands float32 products to MKL's sgemm, bfloat16 ones to oneDNN. On the AMD EPYC (Zen 4) of
these benchmarks MKL ran the 1.31B shape's prompt products 1.5-3.3x slower than oneDNN did on the same plain weights
(9 to 512 rows: 2.2x at a 32-token prompt, 1.55x at 512; same results up to the summation order, 1e-5 relative), so
float32 prompts (prefill, and the first token of `generate`) go to oneDNN through `mkldnn::_linear_pointwise`, the
operator inductor itself emits for float32 CPU linears. bfloat16 already runs on oneDNN and is left to `F.linear`.
"""

import functools

import torch

from .build import disabled_by_environment
from .linear import inference_operands


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` computed by oneDNN, or None where that does not apply.

    It applies to float32 CPU tensors with at least one row, a contiguous (out, in) weight and bias of that dtype, no
    gradient to record and no CPU autocast, in a torch built with oneDNN that has it enabled
    (`torch.backends.mkldnn`), unless `FALCON_HF_CPU_KERNELS=0`; the caller falls back to `F.linear` on None.
    """
    if x.dtype is not torch.float32 or not x.is_cpu or x.dim() == 0 or not x.numel() or not onednn_runs():
        return None
    if not inference_operands(x, weight, bias):
        return None
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_runs() -> bool:
    """Whether oneDNN's linear is there and switched on (`torch.backends.mkldnn.flags(enabled=False)` turns it off)."""
    return onednn_built() and torch.backends.mkldnn.enabled


@functools.cache
def onednn_built() -> bool:
    """Whether this torch has oneDNN's linear operator, and the falcon_hf kernels are not turned off."""
    if disabled_by_environment() or not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")
