"""Where each implementation runs: its own process (default) or this one.

A `ProcessWorker` owns one implementation in a fresh spawned process. The parent sends one command at a time and the
other workers sit blocked on their pipes, so alternating A B C A B C costs no reload, no two implementations ever
compete for the cores, and each process' peak RSS is that implementation's own. An `InlineWorker` runs
the implementation in this process (fast to start, for tests and `--isolation inline`); its memory figures are the
whole process' high-water mark and are labelled so.
"""

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable

import torch

from .machine import resident_memory_gb
from .runners import RUNNERS, Lengths, Workload, measure
from .weights import Checkpoints

STOP_TIMEOUT_S = 30


def quiet_libraries() -> Callable[[], None]:
    """No per-call progress bars or generation warnings from the libraries while timing; returns the undo."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}".strip()


def load_runner(impl: str, checkpoints: Checkpoints, dtype: str, lengths: Lengths):
    """(runner, reply): the reply holds the load time and the memory right after loading, or the error."""
    start = time.perf_counter()
    try:
        runner = RUNNERS[impl](checkpoints, dtype, lengths)
    except Exception as error:  # noqa: BLE001 -- reported in the table; the other implementations still run
        return None, {"error": error_text(error), "traceback": traceback.format_exc()}
    rss, peak = resident_memory_gb()
    return runner, {"load_s": time.perf_counter() - start, "rss_gb": rss, "peak_rss_gb": peak}


def handle(runner, command: dict) -> dict:
    """Run one command: `measure` (workload, variant, warmup, probe_bytes) or `memory`."""
    if command["op"] == "memory":
        rss, peak = resident_memory_gb()
        return {"rss_gb": rss, "peak_rss_gb": peak}
    try:
        return measure(runner, command["workload"], command["variant"], command["warmup"], command["probe_bytes"])
    except Exception as error:  # noqa: BLE001 -- a failing variant (a static cache) is a result, not a crash
        return {"error": error_text(error), "traceback": traceback.format_exc()}


def exit_with_parent() -> None:
    """Exit as soon as the parent does: a killed benchmark must not leave workers computing for minutes."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


def serve(connection, impl: str, checkpoints: Checkpoints, dtype: str, lengths: Lengths, threads: int) -> None:
    """Worker process main loop: load, reply, then answer commands until `stop`."""
    exit_with_parent()
    torch.set_num_threads(threads)
    quiet_libraries()
    runner, reply = load_runner(impl, checkpoints, dtype, lengths)
    connection.send(reply)
    if runner is None:
        return
    while True:
        command = connection.recv()
        if command["op"] == "stop":
            return
        connection.send(handle(runner, command))


class ProcessWorker:
    """One implementation in a spawned process; `call` sends a command and waits for the reply."""

    memory_method = "a fresh process per implementation (its VmHWM)"

    def __init__(self, impl: str, checkpoints: Checkpoints, dtype: str, lengths: Lengths, threads: int):
        self.impl = impl
        context = multiprocessing.get_context("spawn")  # fork would inherit this process' memory and threads
        self.connection, child = context.Pipe()
        os.environ.setdefault("KERAS_BACKEND", "torch")
        self.process = context.Process(target=serve, args=(child, impl, checkpoints, dtype, lengths, threads),
                                       name=f"bench-{impl}-{dtype}", daemon=True)
        self.process.start()
        child.close()
        self.load_reply = self._receive()

    def _receive(self) -> dict:
        try:
            return self.connection.recv()
        except (EOFError, ConnectionError):
            self.process.join(5)
            code = self.process.exitcode
            hint = " (killed: probably out of memory)" if code == -9 else ""
            return {"error": f"worker process exited with code {code}{hint}", "dead": True}

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and "error" not in self.load_reply

    def call(self, command: dict) -> dict:
        if not self.process.is_alive():
            return {"error": f"worker process exited with code {self.process.exitcode}", "dead": True}
        self.connection.send(command)
        return self._receive()

    def measure(self, workload: Workload, variant: str, warmup: bool, probe_bytes: int = 0) -> dict:
        return self.call({"op": "measure", "workload": workload, "variant": variant, "warmup": warmup,
                          "probe_bytes": probe_bytes})

    def memory(self) -> dict:
        return self.call({"op": "memory"})

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.connection.send({"op": "stop"})
            except (BrokenPipeError, ConnectionError):
                pass
            self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.connection.close()


class InlineWorker:
    """The same interface, running the implementation in this process."""

    memory_method = "this process (high-water mark shared by every implementation and everything before it)"

    def __init__(self, impl: str, checkpoints: Checkpoints, dtype: str, lengths: Lengths, threads: int):
        self.impl = impl
        torch.set_num_threads(threads)
        self.runner, self.load_reply = load_runner(impl, checkpoints, dtype, lengths)

    @property
    def alive(self) -> bool:
        return self.runner is not None

    def measure(self, workload: Workload, variant: str, warmup: bool, probe_bytes: int = 0) -> dict:
        return handle(self.runner, {"op": "measure", "workload": workload, "variant": variant, "warmup": warmup,
                                    "probe_bytes": probe_bytes})

    def memory(self) -> dict:
        return handle(self.runner, {"op": "memory"})

    def close(self) -> None:
        self.runner = None


WORKERS = {"process": ProcessWorker, "inline": InlineWorker}
