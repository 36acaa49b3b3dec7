"""CPU inference: small-batch linear kernels that stream the weights near the memory bandwidth, a decode attention
kernel, weights kept on huge pages so that streaming misses the TLB less, and float32 prompts through oneDNN."""

from .attention import decode_attention, traced_attention_applies
from .build import KernelLibrary, load
from .huge_pages import place_weights_on_huge_pages
from .linear import small_batch_linear, traced_linear_applies
from .onednn import onednn_linear

__all__ = [
    "KernelLibrary",
    "decode_attention",
    "load",
    "onednn_linear",
    "place_weights_on_huge_pages",
    "small_batch_linear",
    "traced_attention_applies",
    "traced_linear_applies",
]
