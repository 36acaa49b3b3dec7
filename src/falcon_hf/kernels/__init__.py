"""CPU kernels for decoding: small-batch linear layers that stream the weights near the memory bandwidth."""

from .build import KernelLibrary, load
from .linear import small_batch_linear

__all__ = ["KernelLibrary", "load", "small_batch_linear"]
