"""Keep large CPU weights on 2 MiB pages, so streaming them through a decode step misses the TLB 512x less often.

Where Linux hands out transparent huge pages only on request (`/sys/kernel/mm/transparent_hugepage/enabled` is
`madvise`, the common default), torch's allocator does not ask (unless `THP_MEM_ALLOC_ENABLE=1` was set before torch
started), and a decode step, which reads every weight once, streams them 10-40% slower than it could (measured in
`benchmarks/`). `place_weights_on_huge_pages` copies each large CPU parameter once into an anonymous mapping advised
with `MADV_HUGEPAGE` and points the parameter at it (the `Parameter` object, its name and ties stay the same, as with
`module.to()`). `FALCON_HF_HUGE_PAGES=0` turns it off.
"""

import ctypes
import functools
import mmap
import os

import torch
from torch import nn

from transformers.utils import logging

logger = logging.get_logger(__name__)

HUGE_PAGE_BYTES = 2 << 20
DISABLE_ENV = "FALCON_HF_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MADV_PAGEOUT = 21  # <linux/mman.h>; Python's mmap module names it from 3.12 on
PLACED = "_falcon_hf_huge_pages_ptr"  # Parameter attribute: the data pointer we placed, to see later moves


@functools.cache
def transparent_huge_pages_mode() -> str | None:
    """The kernel's transparent huge page mode (`always`, `madvise`, `never`), or None where there is none to read."""
    try:
        with open(THP_SETTING, encoding="utf-8") as setting:
            words = setting.read().split()
    except OSError:
        return None
    return next((word[1:-1] for word in words if word.startswith("[")), None)


def huge_pages_wanted() -> bool:
    """Placing weights helps here: Linux gives huge pages on request only, Python can ask, and no one said no."""
    return (
        os.environ.get(DISABLE_ENV, "1") != "0"
        and transparent_huge_pages_mode() == "madvise"
        and hasattr(mmap, "MADV_HUGEPAGE")
    )


def copy_to_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a CPU tensor that starts on a 2 MiB boundary, its whole 2 MiB pages advised as huge.

    The copy owns an anonymous mapping (unmapped when the last view of it goes); the tail past the last whole 2 MiB
    page stays on small pages, so no memory is spent on padding.
    """
    nbytes = tensor.numel() * tensor.element_size()
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()
    offset = -start % HUGE_PAGE_BYTES
    whole_pages = nbytes // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if whole_pages:
        mapping.madvise(mmap.MADV_HUGEPAGE, offset, whole_pages)
    copy = torch.frombuffer(mapping, dtype=tensor.dtype, count=tensor.numel(), offset=offset).view(tensor.shape)
    return copy.copy_(tensor)


def place_weights_on_huge_pages(module: nn.Module) -> int:
    """Move `module`'s CPU parameters of at least 2 MiB onto huge pages, once; returns the bytes moved.

    Does nothing where `huge_pages_wanted()` is False, and skips parameters that are not plain dense CPU tensors
    (meta, offloaded, quantized, DTensor) or that already sit where it put them. Runs outside inference mode, so the
    moved parameters stay trainable. When something moved, the smaller parameters still inside a memory-mapped file
    (a safetensors checkpoint `from_pretrained` mapped) are copied to ordinary memory too: any one of them keeps the
    whole mapping, and with it every page of the checkpoint read so far, resident (1.31B float32: 10.5 GB resident
    after placing, 5.5 GB with them copied); and the checkpoint pages of each weight copied are handed back to the
    kernel as it goes (`page_out`), so the resident peak stays near one copy of the weights, not two.

    Example:

    ```python
    >>> from falcon_hf import FalconHFForCausalLM
    >>> from falcon_hf.kernels import place_weights_on_huge_pages
    >>> model = FalconHFForCausalLM.from_keras_preset("tiny_shakespeare")
    >>> place_weights_on_huge_pages(model) >= 0
    True
    ```
    """
    if not huge_pages_wanted():
        return 0
    moved, mappings = 0, file_mappings()
    with torch.no_grad(), torch.inference_mode(False):
        for parameter in module.parameters():  # tied parameters come once
            data = parameter.data
            nbytes = data.numel() * data.element_size()
            if (
                nbytes < HUGE_PAGE_BYTES
                or type(parameter) is not nn.Parameter
                or type(data) is not torch.Tensor
                or not data.is_cpu
                or data.layout is not torch.strided
                or on_huge_pages(parameter)
            ):
                continue
            parameter.data = copy_to_huge_pages(data)
            setattr(parameter, PLACED, parameter.data_ptr())
            moved += nbytes
            if in_file_mapping(data, mappings):
                page_out(data.data_ptr(), nbytes)  # the checkpoint's pages just read, so they do not add up
        if moved:
            copy_out_of_file_mappings(module, mappings)
    if moved:
        logger.info(f"falcon_hf: moved {moved / 2**20:.0f} MiB of CPU weights onto 2 MiB pages ({DISABLE_ENV}=0: off)")
    return moved


def copy_out_of_file_mappings(module: nn.Module, mappings: list[tuple[int, int]] | None = None) -> int:
    """Copy `module`'s plain CPU parameters that live in a file mapping (`mappings`, by default `file_mappings()`) to
    ordinary memory; returns how many moved."""
    mappings = file_mappings() if mappings is None else mappings
    moved = 0
    for parameter in module.parameters():
        data = parameter.data
        if type(parameter) is not nn.Parameter or type(data) is not torch.Tensor or not data.is_cpu:
            continue
        if data.layout is torch.strided and data.numel() and in_file_mapping(data, mappings):
            parameter.data = data.clone()
            moved += 1
    return moved


def in_file_mapping(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> bool:
    """Whether `tensor`'s data starts inside one of `mappings` (`file_mappings()`)."""
    return any(start <= tensor.data_ptr() < end for start, end in mappings)


def page_out(address: int, nbytes: int) -> None:
    """Ask Linux to reclaim the pages of [address, address + nbytes) (`MADV_PAGEOUT`, Linux 5.4+). Never loses data:
    clean file pages are dropped and read again if touched, others go to swap or stay; a refusal is ignored."""
    start = address - address % mmap.PAGESIZE
    libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(address + nbytes - start), MADV_PAGEOUT)


@functools.cache
def libc() -> ctypes.CDLL:
    library = ctypes.CDLL(None, use_errno=True)
    library.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return library


def file_mappings() -> list[tuple[int, int]]:
    """(start, end) addresses of this process' memory mappings backed by a file, from /proc/self/maps (none where
    it cannot be read)."""
    mappings = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = (int(bound, 16) for bound in fields[0].split("-"))
                    mappings.append((start, end))
    except OSError:
        pass
    return mappings


def move_weights_off_huge_pages(module: nn.Module) -> int:
    """Undo `place_weights_on_huge_pages`: copy the parameters it moved back to torch's own pages; returns the bytes
    moved. For A/B measurements (the benchmark's `+small-pages` variant)."""
    moved = 0
    with torch.no_grad(), torch.inference_mode(False):
        for parameter in module.parameters():
            if on_huge_pages(parameter):
                parameter.data = parameter.data.clone()
                delattr(parameter, PLACED)
                moved += parameter.numel() * parameter.element_size()
    return moved


def on_huge_pages(parameter: nn.Parameter) -> bool:
    """Whether `place_weights_on_huge_pages` moved this parameter and its data is still that copy (a later `.to()` or
    `.data` assignment leaves a stale marker, which does not count)."""
    return getattr(parameter, PLACED, None) == parameter.data_ptr()
