"""What the numbers were measured on: memory bandwidth, cores, memory, library versions, resident memory."""

import datetime
import importlib.metadata
import os
import platform
import resource
import time

import psutil
import torch

GIB = 1024**3
GEMV_COLUMNS = 4096
VERSIONED_PACKAGES = ("falcon-hf", "torch", "transformers", "keras", "keras-hub", "numpy")


def memory_read_bandwidth(size_bytes: int = GIB, repeats: int = 5) -> dict[str, float]:
    """GB/s (1e9 bytes/s) streaming a float32 array far larger than the caches, best of `repeats`, several ways.

    `sum` is `torch.sum` over the array; `gemv` is a matrix-vector product over it viewed as (rows, 4096), which is
    what a batch-1 decode step does with every weight; `kernel_gemv` is the same product through falcon_hf's one-row
    decode kernel, where it is built (on AMD EPYC it streams twice as fast as torch's `mv`, faster than `sum`), and
    `kernel_gemv_bfloat16` its bfloat16 kernel over the same bytes. All run on torch's threads, as the models do, on
    torch's own pages and, where Linux gives 2 MiB pages on request (falcon_hf puts its weights there), again on
    those (`..._huge_pages`). `bound` is the fastest of them, so that no implementation can beat the roofline derived
    from it. Best-of rather than median: the bound is what the hardware allows.

    Example:

    ```python
    >>> memory_read_bandwidth(64 * 1024**2, repeats=2)["bound"] > 0
    True
    ```
    """
    rates = {}
    for suffix, array in probe_arrays(size_bytes // 4):
        rates.update({name + suffix: rate for name, rate in read_rates(array, repeats).items()})
    rates["bound"] = max(rates.values())
    return rates


def read_rates(array: torch.Tensor, repeats: int) -> dict[str, float]:
    """GB/s of each way of reading a float32 `array` (sum, gemv, kernel_gemv, kernel_gemv_bfloat16), best of
    `repeats`."""
    from falcon_hf.kernels import small_batch_linear

    vector = torch.ones(GEMV_COLUMNS)
    matrix = array.view(-1, GEMV_COLUMNS)
    readers = {"sum": array.sum, "gemv": lambda: torch.mv(matrix, vector)}
    if small_batch_linear(vector[None], matrix[:1]) is not None:
        readers["kernel_gemv"] = lambda: small_batch_linear(vector[None], matrix)
        halves = array.view(torch.bfloat16).view(-1, 2 * GEMV_COLUMNS)  # the same bytes as bfloat16 weights
        row = vector.bfloat16().repeat(2)[None]
        if small_batch_linear(row, halves[:1]) is not None:
            readers["kernel_gemv_bfloat16"] = lambda: small_batch_linear(row, halves)
    rates = {}
    for name, read in readers.items():
        read()  # fault the pages in / set up the kernel before timing
        rates[name] = array.numel() * 4 / best_seconds(read, repeats) / 1e9
    return rates


def best_seconds(read, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `read()`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return best


class AdjacentBandwidth:
    """The bound again, quickly, right before and after each timed decode run, on one resident probe array.

    The memory bandwidth of a shared host drifts from minute to minute (41-82 GB/s within one hour on the AMD EPYC
    of session 6), so a decode run is compared with what a pure read achieved around it: the best of `read_rates`
    (best of `repeats` each) before and after the run.
    """

    def __init__(self, size_bytes: int = GIB, repeats: int = 3):
        for _, self.array in probe_arrays(size_bytes // 4):
            pass  # keep the last: on 2 MiB pages where Linux gives them
        self.repeats = repeats

    def __call__(self) -> float:
        return max(read_rates(self.array, self.repeats).values())


def fastest_rates(*measurements: dict[str, float]) -> dict[str, float]:
    """Each method's best over several `memory_read_bandwidth` results, and the overall `bound`.

    Example:

    ```python
    >>> fastest_rates({"sum": 40.0, "bound": 40.0}, {"sum": 44.0, "gemv": 30.0, "bound": 44.0})
    {'sum': 44.0, 'bound': 44.0, 'gemv': 30.0}
    ```
    """
    rates = {}
    for measurement in measurements:
        for method, rate in measurement.items():
            rates[method] = max(rates.get(method, 0.0), rate)
    return rates


def probe_arrays(numel: int):
    """Yields `("", array)` on torch's pages, then `("_huge_pages", array)` on 2 MiB pages where Linux gives them on
    request: one at a time, so that only one probe array is resident while it is measured."""
    from falcon_hf.kernels import huge_pages

    array = torch.ones(numel, dtype=torch.float32)
    yield "", array
    if huge_pages.huge_pages_wanted():
        array = huge_pages.copy_to_huge_pages(array)  # the first array goes once the caller takes this one
        yield "_huge_pages", array


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    """Installed versions of the packages whose speed is measured, plus Python."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine_info(bandwidth: dict[str, float], bandwidth_method: str) -> dict:
    """Cores, threads torch uses, total memory and measured bandwidth, for the report header."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "memory_read_bandwidth_gbs": round(bandwidth["bound"], 1),
        "memory_read_bandwidth_by_method_gbs": {name: round(rate, 1) for name, rate in bandwidth.items()},
        "memory_read_bandwidth_method": bandwidth_method,
        "platform": platform.platform(),
    }


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def resident_memory_gb() -> tuple[float, float]:
    """(current RSS, peak RSS of this program) in GB.

    The peak is Linux's `VmHWM`, the high-water mark of the current address space. `ru_maxrss` would be wrong for
    spawned workers: Linux carries it across fork and exec, so a worker would report at least its parent's RSS.
    """
    current = psutil.Process().memory_info().rss
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return current / 1e9, int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return current / 1e9, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def available_memory_bytes() -> int:
    return psutil.virtual_memory().available
