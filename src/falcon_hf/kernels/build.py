"""Compile the CPU kernels (`small_batch_linear.c`, `decode_attention.c`) once per machine; load them with ctypes.

The library is plain C (no torch headers), so a build takes about a second. It is cached under
`$FALCON_HF_CACHE/kernels/<hash>/` (default `~/.cache/falcon_hf`), keyed by the sources, the compiler and its flags, and
written atomically, so concurrent processes (torchrun workers) never load a half-written file. It is built with
`-fopenmp` and loaded after torch, so its `libgomp.so.1` is the one torch already loaded: one OpenMP thread pool.

Nothing is built where the CPU lacks AVX-512 (bfloat16 also needs AVX512-BF16; AMX is used where present), where no C
compiler is found (or it is too old for AMX: GCC 11, Clang 12), or where
`FALCON_HF_CPU_KERNELS=0`; the model then uses torch's `F.linear` and attention, which compute the same thing.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("small_batch_linear.c", "decode_attention.c")]
LIBRARY_NAME = "falcon_hf_kernels.so"
DISABLE_ENV = "FALCON_HF_CPU_KERNELS"
CACHE_ENV = "FALCON_HF_CACHE"
FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16",
         "-mamx-tile", "-mamx-bf16"]
FLOAT32_CPU_FLAGS = {"fma", "avx512f", "avx512bw"}
BFLOAT16_CPU_FLAGS = FLOAT32_CPU_FLAGS | {"avx512_bf16"}
AMX_CPU_FLAGS = {"amx_tile", "amx_bf16"}


@dataclass(frozen=True)
class KernelLibrary:
    """The loaded library and which dtypes this CPU can run through it."""

    library: ctypes.CDLL | None
    float32: bool
    bfloat16: bool
    amx: bool  # bfloat16 through AMX tiles (the OS granted them)
    reason: str  # why it is unavailable, or where it was loaded from

    @classmethod
    def unavailable(cls, reason: str) -> "KernelLibrary":
        return cls(None, False, False, False, reason)


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "falcon_hf"
    )
    return Path(root) / "kernels"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def compile_library(cc: str, target: Path) -> None:
    """Compile the sources to `target` through a temporary file in the same folder, then rename (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, long = ctypes.c_void_p, ctypes.c_long
    for function in (library.falcon_hf_linear_f32, library.falcon_hf_linear_bf16, library.falcon_hf_linear_bf16_amx):
        function.argtypes = [pointer, long, pointer, pointer, pointer, long, long, long, long, ctypes.c_int]
        function.restype = ctypes.c_int
    library.falcon_hf_amx_enable.restype = ctypes.c_int
    library.falcon_hf_decode_attention.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, pointer, pointer,
                                                   long, long, long, long, long, ctypes.c_float, ctypes.c_int]
    library.falcon_hf_decode_attention.restype = ctypes.c_int
    return library


@functools.cache
def load() -> KernelLibrary:
    """Build (first time) and load the library; never raises: an unavailable library says why in `reason` (logged
    once at info level; a failed build is a warning)."""
    library = build_and_load()
    if library.library is None:
        logger.info("falcon_hf's CPU decode kernels are off (%s); linear layers use torch's F.linear.", library.reason)
    return library


def disabled_by_environment() -> bool:
    """Whether `FALCON_HF_CPU_KERNELS=0` (or false, no, off) turns falcon_hf's CPU kernels and routes off."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def build_and_load() -> KernelLibrary:
    if disabled_by_environment():
        return KernelLibrary.unavailable(f"disabled by {DISABLE_ENV}=0")
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or not FLOAT32_CPU_FLAGS <= flags:
        return KernelLibrary.unavailable("this CPU has no AVX-512 (needs fma, avx512f, avx512bw)")
    cc = compiler()
    if cc is None:
        return KernelLibrary.unavailable("no C compiler found (set CC, or install gcc)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\n".join([*(source.read_text() for source in SOURCES), cc, version, *FLAGS]).encode()).hexdigest()[:16]
        target = cache_dir() / key / LIBRARY_NAME
        if not target.exists():
            logger.info("Compiling falcon_hf's CPU decode kernels into %s", target)
            compile_library(cc, target)
        library = bind(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        logger.warning_once(f"falcon_hf's CPU decode kernels could not be built ({detail}); using torch's F.linear.")
        return KernelLibrary.unavailable(f"build failed: {detail}")
    amx = AMX_CPU_FLAGS <= flags and library.falcon_hf_amx_enable() == 0
    return KernelLibrary(library, True, BFLOAT16_CPU_FLAGS <= flags, amx, str(target))
