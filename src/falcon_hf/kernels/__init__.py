"""CPU decoding: small-batch linear kernels that stream the weights near the memory bandwidth, a decode attention
kernel, and weights kept on huge pages so that streaming misses the TLB less."""

from .attention import decode_attention, traced_attention_applies
from .build import KernelLibrary, load
from .huge_pages import place_weights_on_huge_pages
from .linear import small_batch_linear, traced_linear_applies

__all__ = [
    "KernelLibrary",
    "decode_attention",
    "load",
    "place_weights_on_huge_pages",
    "small_batch_linear",
    "traced_attention_applies",
    "traced_linear_applies",
]
