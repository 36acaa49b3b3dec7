"""Benchmark falcon_hf against transformers' built-in Falcon and keras-hub's Falcon (torch backend), same weights.

For each config (shape) and dtype: build random weights once, start one worker process per implementation, warm each
variant up once, then time `--reps` repetitions alternating the implementations (A B C, B C A, ...). Reports median
tokens/s for batch-1 and batch-8 greedy decode (forced length, also as a fraction of the memory-bandwidth roofline),
prefill and one AdamW training step, peak resident memory per implementation, falcon_hf's ratios and the issue's
targets.

Examples:

```bash
python benchmarks/bench.py --quick                       # tiny shape: checks the harness in a minute or two
python benchmarks/bench.py --configs small --dtypes float32
python benchmarks/bench.py                               # small and 1b, float32 and bfloat16 (~45 min, 2 cores)
```
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable (also for the spawned workers)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .machine import (GIB, AdjacentBandwidth, available_memory_bytes, fastest_rates, machine_info,
                      memory_read_bandwidth, now_iso, versions)
from .report import main_table, summarize_measurement, summary_rows, update_readme_section, write_report
from .runners import DTYPES, IMPLEMENTATIONS, IN_RUN_SAMPLES, Lengths, Workload, variants_of
from .weights import SHAPES, build_checkpoints, bytes_read_per_decode_step, parameter_count, shape_config
from .workers import WORKERS, quiet_libraries

logger = logging.get_logger("falcon_hf.benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOAD_NAMES = ("decode_b1", "decode_b8", "prefill", "train")
DEFAULT_REPS = {"tiny": 2, "small": 3, "1b": 1}
"""Repetitions per config: the 1.31B shape gets one alternated round by default so that the full run stays near 45
minutes on 2 cores (one batch-8 float32 round alone takes ~8 minutes); `--reps 3` gives medians there too."""
QUICK_LENGTHS = Lengths(prompt=8, new_tokens=4, prefill=32, train_sequence=16, train_batch=2, warmup_new_tokens=2)
RUNTIME_OVERHEAD_GB = 0.8  # torch/keras/transformers imports and allocator slack per worker
BANDWIDTH_REPEATS = 10
IN_RUN_PROBE_SHARE = 4  # the probe inside a decode run reads a quarter of the probe around it (256 MiB of 1 GiB)
MEMORY_HEADROOM = 0.85  # plan to use at most this share of the memory available at the start of a cell


@dataclass(frozen=True)
class Step:
    """One timed (or warm-up, `rep` = -1) run of one variant of one workload on one implementation."""

    impl: str
    workload: Workload
    variant: str
    rep: int


@dataclass
class Settings:
    configs: tuple[str, ...]
    dtypes: tuple[str, ...]
    workloads: tuple[Workload, ...]
    reps: dict[str, int]
    lengths: Lengths
    threads: int
    isolation: str
    compile_decode: bool
    implementations: tuple[str, ...] = IMPLEMENTATIONS


def parse_workload(name: str) -> Workload:
    if name.startswith("decode_b") and name[len("decode_b"):].isdigit():
        return Workload("decode", int(name[len("decode_b"):]))
    if name in ("prefill", "train"):
        return Workload(name)
    raise argparse.ArgumentTypeError(f"unknown workload {name!r}: decode_bN, prefill or train")


def steps_for(impls: tuple[str, ...], workload: Workload, reps: int, compile_decode: bool) -> list[Step]:
    """Warm-ups (not for training, whose runs warm up themselves), then `reps` rounds, each starting one
    implementation later (A B C, B C A, C A B, ...) so that no implementation always runs first."""
    variants = {impl: variants_of(impl, workload.kind, compile_decode) for impl in impls}
    steps = [] if workload.kind == "train" else [
        Step(impl, workload, variant, -1) for impl in impls for variant in variants[impl]]
    return steps + [Step(impl, workload, variant, rep)
                    for rep in range(reps) for impl in rotated(impls, rep) for variant in variants[impl]]


def rotated(impls: tuple[str, ...], by: int) -> tuple[str, ...]:
    shift = by % len(impls) if impls else 0
    return impls[shift:] + impls[:shift]


def count_steps(settings: Settings) -> int:
    return sum(len(steps_for(settings.implementations, workload, settings.reps[config], settings.compile_decode))
               for config in settings.configs for _ in settings.dtypes for workload in settings.workloads)


def memory_plan(config_name: str, dtype: str, settings: Settings) -> tuple[float, float]:
    """(GB one resident implementation needs, GB a training step adds): weights plus runtime; gradients, AdamW's
    two moments and the activations of the training batch (a rough upper bound, logits in float32)."""
    config = shape_config(config_name)
    params = parameter_count(config)
    itemsize = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    resident = params * itemsize / 1e9 + RUNTIME_OVERHEAD_GB
    tokens = settings.lengths.train_batch * settings.lengths.train_sequence
    activations = tokens * config.hidden_size * config.num_hidden_layers * 20 * itemsize  # ~20 saved tensors/layer
    logits = 3 * tokens * config.vocab_size * 4  # logits, their softmax and gradient, float32
    return resident, (3 * params * itemsize + activations + logits) / 1e9


class CellRun:
    """Runs every workload of one (config, dtype) and collects the records, memory figures and notes."""

    def __init__(self, config_name: str, dtype: str, checkpoints, settings: Settings, progress: tqdm,
                 adjacent_bandwidth=None, in_run_probe_bytes: int = 0):
        self.config_name, self.dtype, self.checkpoints = config_name, dtype, checkpoints
        self.settings, self.progress = settings, progress
        self.adjacent_bandwidth = adjacent_bandwidth  # GB/s around each timed decode run (AdjacentBandwidth)
        self.in_run_probe_bytes = in_run_probe_bytes  # the probe inside each timed HF decode run (BandwidthSampler)
        self.records: dict[tuple[str, str, str], dict] = {}
        self.memory = {impl: {} for impl in settings.implementations}
        self.notes: list[str] = []
        self.residency: dict[str, str] = {}
        self.workers: dict = {}

    # Workers

    def start(self, impl: str) -> None:
        worker = WORKERS[self.settings.isolation](impl, self.checkpoints, self.dtype, self.settings.lengths,
                                                  self.settings.threads)
        reply = worker.load_reply
        if "error" in reply:
            self.notes.append(f"{self.config_name}/{self.dtype}: {impl} failed to load: {reply['error']}")
        elif not self.memory[impl]:
            self.memory[impl] = {"load_s": reply["load_s"], "rss_after_load_gb": reply["rss_gb"]}
        self.workers[impl] = worker

    def stop(self, impl: str, label: str | None = None) -> None:
        """Close a worker; `label` names the memory field its final peak RSS goes to."""
        worker = self.workers.pop(impl)
        if label and worker.alive:
            reply = worker.memory()
            if "peak_rss_gb" in reply:
                self.memory[impl][label] = reply["peak_rss_gb"]
        worker.close()

    def stop_all(self, label: str | None = None) -> None:
        for impl in list(self.workers):
            self.stop(impl, label)

    # Steps

    def record(self, step: Step) -> dict:
        key = (step.impl, step.workload.name, step.variant)
        return self.records.setdefault(key, {"impl": step.impl, "workload": step.workload.name,
                                             "variant": step.variant, "times_s": [], "bandwidth_gbs": [],
                                             "in_run_samples_gbs": [], "step_s": [],
                                             "warmup_s": None, "status": "ok"})

    def run_step(self, step: Step) -> None:
        record = self.record(step)
        self.progress.set_postfix_str(f"{self.config_name}/{self.dtype} {step.workload.name} {step.impl} "
                                      f"{step.variant}" + (" warm-up" if step.rep < 0 else f" rep {step.rep + 1}"))
        worker = self.workers.get(step.impl)
        if record["status"] != "ok":
            pass  # this variant already failed or was skipped: later repetitions are not tried
        elif worker is None or not worker.alive:
            error = worker.load_reply.get("error", "worker process died") if worker is not None else "not started"
            record["status"] = f"error: {error}"
        else:
            adjacent = self.adjacent_bandwidth if step.workload.kind == "decode" and step.rep >= 0 else None
            before = adjacent() if adjacent else None
            reply = worker.measure(step.workload, step.variant, warmup=step.rep < 0,
                                   probe_bytes=self.in_run_probe_bytes if adjacent else 0)
            if adjacent and "seconds" in reply:
                record["bandwidth_gbs"].append(max(before, adjacent()))
            if reply.get("in_run_samples_gbs"):
                record["in_run_samples_gbs"].append(reply["in_run_samples_gbs"])
                record["step_s"].append(reply["step_s"])
            if "error" in reply:
                record["status"] = f"fails: {reply['error']}"
                logger.warning(f"{self.config_name}/{self.dtype} {step.impl} {step.workload.name} "
                               f"{step.variant}: {reply['error']}")
            elif step.rep < 0:
                record["warmup_s"] = reply["seconds"]
            else:
                record["times_s"].append(reply["seconds"])
        self.progress.update()

    def skip(self, steps: list[Step], reason: str) -> None:
        for step in steps:
            self.record(step)["status"] = f"skipped: {reason}"
            self.progress.update()

    def run_stage(self, workloads: list[Workload], residency: str, label: str) -> None:
        """All implementations resident and alternated, or (`one`) one at a time with all its repetitions."""
        impls, reps = self.settings.implementations, self.settings.reps[self.config_name]
        plan = {w: steps_for(impls, w, reps, self.settings.compile_decode) for w in workloads}
        if residency == "all":
            for impl in impls:
                if impl not in self.workers:
                    self.start(impl)
            for workload in workloads:
                for step in plan[workload]:
                    self.run_step(step)
            return
        for impl in impls:
            self.start(impl)
            for workload in workloads:
                for step in plan[workload]:
                    if step.impl == impl:
                        self.run_step(step)
            self.stop(impl, label)

    def budget_gb(self, resident_gb: float) -> float:
        """Memory this cell may plan with: a share of what is available, plus what its own live workers hold."""
        live = sum(1 for worker in self.workers.values() if worker.alive)
        return available_memory_bytes() / 1e9 * MEMORY_HEADROOM + live * resident_gb

    def choose_residency(self, resident_gb: float) -> str:
        count = len(self.settings.implementations)
        budget = self.budget_gb(resident_gb)
        if count * resident_gb <= budget:
            return "all"
        self.notes.append(f"{self.config_name}/{self.dtype} inference: the {count} implementations need "
                          f"~{count * resident_gb:.0f} GB together (budget {budget:.0f} GB), so they ran one at a "
                          "time, without alternation.")
        return "one"

    def run(self) -> None:
        resident_gb, train_gb = memory_plan(self.config_name, self.dtype, self.settings)
        inference = [w for w in self.settings.workloads if w.kind != "train"]
        training = [w for w in self.settings.workloads if w.kind == "train"]
        try:
            if inference:
                self.residency["inference"] = self.choose_residency(resident_gb)
                self.run_stage(inference, self.residency["inference"], "peak_rss_inference_gb")
                for impl, worker in self.workers.items():
                    reply = worker.memory() if worker.alive else {}
                    if "peak_rss_gb" in reply:
                        self.memory[impl]["peak_rss_inference_gb"] = reply["peak_rss_gb"]
            if training:
                self.run_training(training, resident_gb, train_gb)
        finally:
            self.stop_all("peak_rss_train_gb" if self.residency.get("train") == "all" else None)

    def run_training(self, training: list[Workload], resident_gb: float, train_gb: float) -> None:
        """All implementations resident if one training step fits beside them; else each trains alone in a fresh
        worker; else skipped (the 1.31B shape in float32 needs ~26 GB for one AdamW step)."""
        impls, reps = self.settings.implementations, self.settings.reps[self.config_name]
        budget = self.budget_gb(resident_gb)
        if len(impls) * resident_gb + train_gb <= budget:
            residency = "all"
        elif resident_gb + train_gb <= budget:
            residency = "one"
            self.notes.append(f"{self.config_name}/{self.dtype} train: a training step needs ~{train_gb:.0f} GB beside "
                              "the weights, so each implementation trained alone in a fresh worker, without "
                              "alternation.")
        else:
            reason = f"needs ~{resident_gb + train_gb:.0f} GB, {budget:.0f} GB available"
            self.residency["train"] = "skipped"
            self.notes.append(f"{self.config_name}/{self.dtype} train skipped: one implementation training {reason}.")
            self.skip([s for w in training for s in steps_for(impls, w, reps, False)], reason)
            return
        self.residency["train"] = residency
        if residency == "one":
            self.stop_all()
        self.run_stage(training, residency, "peak_rss_train_gb")

    # Results

    def result(self, bandwidth_gbs: float) -> dict:
        config = shape_config(self.config_name)
        itemsize = torch.tensor([], dtype=DTYPES[self.dtype]).element_size()
        step_bytes = bytes_read_per_decode_step(config, itemsize)
        per_gbs = {w.name: w.batch * 1e9 / step_bytes for w in self.settings.workloads if w.kind == "decode"}
        rooflines = {name: bandwidth_gbs * tokens_per_gbs for name, tokens_per_gbs in per_gbs.items()}
        measurements = [summarize_measurement(record, self._tokens(record["workload"]),
                                              rooflines.get(record["workload"]), per_gbs.get(record["workload"]))
                        for record in self.records.values()]
        for memory in self.memory.values():
            memory.setdefault("peak_rss_train_gb", None)
            memory.setdefault("peak_rss_inference_gb", None)
        cell = {
            "config": self.config_name,
            "dtype": self.dtype,
            "shape": {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                      "heads": config.num_attention_heads, "vocab": config.vocab_size,
                      "parameters": parameter_count(config)},
            "bytes_per_decode_step": step_bytes,
            "roofline_tokens_per_s": rooflines,
            "residency": self.residency,
            "measurements": measurements,
            "memory": self.memory,
            "notes": self.notes,
        }
        cell["summary"] = summary_rows(cell)
        return cell

    def _tokens(self, workload_name: str) -> int:
        workload = next(w for w in self.settings.workloads if w.name == workload_name)
        return workload.tokens(self.settings.lengths)


def run_benchmark(settings: Settings, weights_dir: Path, bandwidth_bytes: int = GIB) -> dict:
    """Measure every (config, dtype) cell and return the report (see `report.py` for its structure)."""
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    bandwidth_before = memory_read_bandwidth(bandwidth_bytes, BANDWIDTH_REPEATS)
    adjacent_bandwidth = AdjacentBandwidth(bandwidth_bytes)
    cell_runs = []
    restore_libraries = quiet_libraries()
    try:
        with tqdm(total=count_steps(settings), desc="benchmark", unit="run") as progress:
            for config_name in settings.configs:
                progress.set_postfix_str(f"{config_name}: building random weights and exports")
                checkpoints = build_checkpoints(config_name, weights_dir)
                for dtype in settings.dtypes:
                    cell = CellRun(config_name, dtype, checkpoints, settings, progress, adjacent_bandwidth,
                                   bandwidth_bytes // IN_RUN_PROBE_SHARE)
                    cell.run()
                    cell_runs.append(cell)
    finally:
        restore_libraries()
    # Measured again at the end: on a shared host the bandwidth drifts over a run, and the bound is its best.
    del adjacent_bandwidth  # its 1 GiB probe array, before the final probe allocates its own
    bandwidth = fastest_rates(bandwidth_before, memory_read_bandwidth(bandwidth_bytes, BANDWIDTH_REPEATS))
    cells = [cell.result(bandwidth["bound"]) for cell in cell_runs]
    workers = WORKERS[settings.isolation]
    return {
        "meta": {
            "date": now_iso(),
            "duration_s": time.perf_counter() - started,
            "versions": versions(),
            "machine": machine_info(bandwidth, f"the fastest of torch.sum and a matrix-vector product (torch's, "
                                               f"and falcon_hf's one-row kernel where built) over "
                                               f"{bandwidth_bytes / GIB:g} GiB of float32, on torch's pages and on "
                                               f"2 MiB pages where available, best of {BANDWIDTH_REPEATS} at the "
                                               f"start and {BANDWIDTH_REPEATS} at the end"),
            "settings": {"configs": list(settings.configs), "dtypes": list(settings.dtypes),
                         "workloads": [w.name for w in settings.workloads], "reps": settings.reps,
                         "lengths": asdict(settings.lengths), "isolation": settings.isolation,
                         "compile_decode": settings.compile_decode, "memory_method": workers.memory_method,
                         "in_run_samples": IN_RUN_SAMPLES},
        },
        "cells": cells,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes <out>/<name>.json, .md and .png and prints the summary table. Other work on the machine "
               "slows every implementation; run it on a quiet machine.")
    parser.add_argument("--configs", nargs="+", choices=sorted(SHAPES), default=None,
                        help="shapes: tiny (2x64, smoke test), small (12 layers, hidden 768, 12 heads), "
                             "1b (the 1.31B falcon_refinedweb_1b_en shape) (default: small 1b)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                        help="default: float32 bfloat16")
    parser.add_argument("--workloads", nargs="+", type=parse_workload, default=None,
                        help=f"subset of {' '.join(WORKLOAD_NAMES)} (default: all)")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"timed repetitions per variant (default per config: {DEFAULT_REPS})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shape, 4 new tokens, short sequences: checks the harness in a minute or two")
    parser.add_argument("--compile", action="store_true", dest="compile_decode",
                        help="also time falcon_hf decode with a static cache under torch.compile (compile time "
                             "reported separately; minutes on CPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads in every implementation (default: %(default)s)")
    parser.add_argument("--isolation", choices=sorted(WORKERS), default="process",
                        help="process: one fresh process per implementation (own peak memory; default); "
                             "inline: all in this process (faster start, shared memory high-water mark)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="build (or reuse) the random checkpoints here instead of a temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default: %(default)s)")
    parser.add_argument("--name", default=None, help="results file stem (default: latest, or quick with --quick)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also put the results between <!-- benchmarks:start/end --> markers of this file")
    parser.add_argument("--note", default=None, help="a line added to the report header (e.g. machine state)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: rewrite the table, plot and README section from a saved report")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    configs = tuple(args.configs or (("tiny",) if args.quick else ("small", "1b")))
    reps = {name: args.reps or DEFAULT_REPS[name] for name in configs}
    if any(value < 1 for value in reps.values()):
        raise SystemExit("--reps must be at least 1")
    return Settings(
        configs=configs,
        dtypes=tuple(args.dtypes or ("float32", "bfloat16")),
        workloads=tuple(args.workloads or (parse_workload(name) for name in WORKLOAD_NAMES)),
        reps=reps,
        lengths=QUICK_LENGTHS if args.quick else Lengths(),
        threads=args.threads,
        isolation=args.isolation,
        compile_decode=args.compile_decode,
    )


def measure_all(args: argparse.Namespace, argv: list[str] | None) -> dict:
    settings = settings_from(args)
    with tempfile.TemporaryDirectory(prefix="falcon_bench_") as scratch:
        weights_dir = args.weights_dir or Path(scratch)
        report = run_benchmark(settings, weights_dir, bandwidth_bytes=GIB // 4 if args.quick else GIB)
    report["meta"]["command"] = shlex.join(["python", "benchmarks/bench.py", *(sys.argv[1:] if argv is None else argv)])
    report["meta"]["note"] = args.note
    return report


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        report["meta"]["note"] = args.note or report["meta"].get("note")
        for cell in report["cells"]:  # the summary as this version of report.py draws it (targets, best variants)
            cell["summary"] = summary_rows(cell)
        stem = args.name or args.render.stem
    else:
        report = measure_all(args, argv)
        stem = args.name or ("quick" if args.quick else "latest")
    paths = write_report(report, args.out, stem)
    print(main_table(report))
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    if args.readme is not None:
        section = paths["markdown"].read_text(encoding="utf-8").split("\n", 1)[1]
        if not update_readme_section(args.readme, section):
            logger.warning(f"{args.readme}: no <!-- benchmarks:start --> / <!-- benchmarks:end --> markers; "
                           "left unchanged.")
    return report


if __name__ == "__main__":
    main()
