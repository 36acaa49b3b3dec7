"""The benchmark harness (`benchmarks/bench.py`): its smallest run completes and writes the documented report.

Structure only: no timing is asserted anywhere.
"""

import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteriaList

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `benchmarks/` is a folder of the repository, not part of the installed package

from benchmarks import bench
from benchmarks.machine import fastest_rates
from benchmarks.report import main_table, summarize_measurement, summary_rows, targets

IMPLEMENTATIONS = ("falcon_hf", "transformers", "keras_hub")
WORKLOADS = ["decode_b1", "decode_b8", "prefill", "train"]


def smoke_run(tmp_path, *extra: str, weights: Path | None = None) -> dict:
    """`--quick` in float32 with one repetition, results in `tmp_path`, random weights built (or reused) in `weights`."""
    return bench.main(["--quick", "--dtypes", "float32", "--reps", "1", "--out", str(tmp_path), "--name", "smoke",
                       "--weights-dir", str(weights or tmp_path / "weights"), *extra])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, Path, str]:
    """One inline run of the smallest mode, shared by the tests below: (report, results folder, printed output)."""
    folder = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = smoke_run(folder, "--isolation", "inline")
    return report, folder, printed.getvalue()


def check_report(report: dict, isolation: str, workloads: list[str]) -> None:
    meta = report["meta"]
    assert meta["machine"]["memory_read_bandwidth_gbs"] > 0
    assert meta["versions"]["transformers"] and meta["versions"]["keras-hub"]
    assert meta["settings"]["isolation"] == isolation
    (cell,) = report["cells"]
    assert (cell["config"], cell["dtype"]) == ("tiny", "float32")
    assert cell["shape"]["parameters"] > 0 and cell["bytes_per_decode_step"] > 4 * cell["shape"]["parameters"] - 1
    assert set(cell["roofline_tokens_per_s"]) == {w for w in workloads if w.startswith("decode")}
    assert [row["workload"] for row in cell["summary"]] == workloads
    for row in cell["summary"]:
        for impl in IMPLEMENTATIONS:  # every implementation produced a number for every workload
            assert row[impl]["tokens_per_s"] > 0, (row["workload"], impl)
        assert row["vs_transformers"] > 0 and row["vs_keras_hub"] > 0
        assert row["targets"] == []  # the tiny shape has no targets
    for record in cell["measurements"]:
        assert record["status"] == "ok" or record["status"].startswith("fails: "), record
        assert len(record["times_s"]) == (1 if record["status"] == "ok" else 0)
        if record["workload"] != "train" and record["status"] == "ok":
            assert record["warmup_s"] is not None
        if record["workload"].startswith("decode") and record["status"] == "ok":  # bandwidth around each run
            assert len(record["bandwidth_gbs"]) == 1 and record["bandwidth_gbs"][0] > 0
            assert record["roofline_fraction"] > 0 and record["roofline_fraction_of_bound"] > 0
            # and inside it: one probe per generated token here (4 new tokens, 8 samples asked for), HF only
            samples = record["in_run_samples_gbs"]
            assert samples == ([] if record["impl"] == "keras_hub" else [samples[0]])
            if samples:
                assert len(samples[0]) == meta["settings"]["lengths"]["new_tokens"] and min(samples[0]) > 0
                assert record["in_run_bandwidth_gbs"] == [pytest.approx(statistics.harmonic_mean(samples[0]))]
                assert record["roofline_fraction"] == record["roofline_fraction_in_run"] > 0
                assert len(record["step_s"]) == 1 and record["roofline_fraction_steps_in_run"] > 0
    assert set(cell["memory"]) == set(IMPLEMENTATIONS)
    for memory in cell["memory"].values():
        assert memory["rss_after_load_gb"] > 0 and memory["peak_rss_inference_gb"] >= memory["rss_after_load_gb"]


def test_quick_inline_run_writes_json_markdown_and_plot(quick_run):
    report, folder, printed = quick_run
    check_report(report, "inline", WORKLOADS)
    assert json.loads((folder / "smoke.json").read_text()) == json.loads(json.dumps(report))
    markdown = (folder / "smoke.md").read_text()
    assert main_table(report) in markdown and "![tokens/s per implementation](smoke.png)" in markdown
    assert (folder / "smoke.png").read_bytes().startswith(b"\x89PNG")
    assert printed.startswith("| config | dtype | workload | falcon_hf | transformers | keras-hub |")
    assert printed.count("| tiny | float32 |") == len(WORKLOADS)


def test_render_rewrites_the_report_without_measuring(quick_run, tmp_path):
    report, folder, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmarks:start -->\nold\n<!-- benchmarks:end -->\noutro\n")
    rendered = bench.main(["--render", str(folder / "smoke.json"), "--out", str(tmp_path / "again"),
                           "--readme", str(readme), "--note", "re-rendered"])
    assert rendered["cells"] == json.loads(json.dumps(report))["cells"]
    text = readme.read_text()
    assert "old" not in text and main_table(rendered) in text and text.endswith("<!-- benchmarks:end -->\noutro\n")
    assert "re-rendered" in (tmp_path / "again" / "smoke.md").read_text()
    assert (tmp_path / "again" / "smoke.png").is_file()


def test_memory_plan_runs_one_at_a_time_and_skips_training_that_cannot_fit(quick_run, tmp_path, monkeypatch):
    """Pretend each implementation needs 1 GB and a training step 100 GB more, with 2 GB available."""
    monkeypatch.setattr(bench, "memory_plan", lambda *args: (1.0, 100.0))
    monkeypatch.setattr(bench, "available_memory_bytes", lambda: 2 * 10**9)
    report = smoke_run(tmp_path, "--isolation", "inline", "--workloads", "prefill", "train",
                       weights=quick_run[1] / "weights")
    (cell,) = report["cells"]
    assert cell["residency"] == {"inference": "one", "train": "skipped"}
    rows = {row["workload"]: row for row in cell["summary"]}
    assert all(rows["prefill"][impl]["tokens_per_s"] > 0 for impl in IMPLEMENTATIONS)
    assert all(rows["train"][impl] is None for impl in IMPLEMENTATIONS)
    skipped = [r["status"] for r in cell["measurements"] if r["workload"] == "train"]
    assert len(skipped) == 3 and all(status.startswith("skipped: needs ~101 GB") for status in skipped)
    assert len(cell["notes"]) == 2 and "skipped: needs ~101 GB" in main_table(report)
    assert all(memory["peak_rss_inference_gb"] for memory in cell["memory"].values())


@pytest.mark.slow
def test_quick_run_in_worker_processes(tmp_path):
    """The default isolation: one spawned process per implementation, each with its own peak memory."""
    report = smoke_run(tmp_path, "--workloads", "decode_b1", "train")
    check_report(report, "process", ["decode_b1", "train"])
    assert "fresh process per implementation" in report["meta"]["settings"]["memory_method"]


def synthetic_cell(config: str, dtype: str) -> dict:
    def record(impl, variant, tokens_per_s, roofline=None, status="ok"):
        return {"impl": impl, "workload": "decode_b1", "variant": variant, "status": status,
                "tokens_per_s": tokens_per_s, "roofline_fraction": roofline}

    return {"config": config, "dtype": dtype, "measurements": [
        record("falcon_hf", "sdpa+dynamic", 40.0, 0.80), record("falcon_hf", "sdpa+static", 46.0, 0.92),
        record("transformers", "sdpa+dynamic", 30.0, 0.60), record("transformers", "eager+dynamic", 35.0, 0.70),
        record("transformers", "sdpa+static", None, status="fails: RuntimeError"),
        record("keras_hub", "greedy", 20.0, 0.40)]}


def test_summary_compares_best_variants_and_checks_the_issue_targets():
    (row,) = summary_rows(synthetic_cell("small", "float32"))
    assert row["falcon_hf"]["variant"] == "sdpa+static" and row["transformers"]["variant"] == "eager+dynamic"
    assert row["vs_transformers"] == pytest.approx(46 / 35) and row["vs_keras_hub"] == pytest.approx(46 / 20)
    assert [(c["target"], c["met"]) for c in row["targets"]] == [("≥1.3× transformers", True),
                                                                  ("≥1.5× keras-hub", True)]
    (row,) = summary_rows(synthetic_cell("1b", "float32"))
    assert [(c["target"], c["met"]) for c in row["targets"]] == [("≥0.90 roofline", True), ("≥1.5× keras-hub", True)]
    # A roofline target checks the variant with the best fraction, even where another one ran faster (at a moment
    # of higher bandwidth); the ratios stay with the fastest.
    cell = synthetic_cell("1b", "bfloat16")
    cell["measurements"][1]["roofline_fraction"] = 0.70
    cell["measurements"].append({"impl": "falcon_hf", "workload": "decode_b1", "variant": "sdpa+static+compile",
                                 "status": "ok", "tokens_per_s": 41.0, "roofline_fraction": 0.81})
    (row,) = summary_rows(cell)
    assert row["falcon_hf"]["variant"] == "sdpa+static" and row["vs_transformers"] == pytest.approx(46 / 35)
    assert row["targets"][0] == {"target": "≥0.75 roofline", "value": 0.81, "variant": "sdpa+static+compile",
                                 "met": True}
    assert "≥0.75 roofline ✓ (81% `sdpa+static+compile`)" in main_table({"cells": [{**cell, "summary": [row]}]})
    assert [t.threshold for t in targets("1b", "bfloat16", "decode_b1")] == [0.75, 1.5]
    assert [t.label for t in targets("small", "bfloat16", "decode_b8")] == ["≥1.3× transformers"]
    assert [t.threshold for t in targets("1b", "float32", "train")] == [1.0]


def test_rounds_rotate_so_that_every_implementation_runs_first_once():
    steps = bench.steps_for(IMPLEMENTATIONS, bench.parse_workload("decode_b1"), reps=3, compile_decode=False)
    warmups, timed = [s for s in steps if s.rep < 0], [s for s in steps if s.rep >= 0]
    assert warmups[0].impl == "falcon_hf" and len({(s.impl, s.variant) for s in warmups}) == len(warmups)
    rounds = [[s for s in timed if s.rep == rep] for rep in range(3)]
    assert [r[0].impl for r in rounds] == ["falcon_hf", "transformers", "keras_hub"]
    for r in rounds:  # each round runs every variant of every implementation once, one implementation's together
        assert sorted((s.impl, s.variant) for s in r) == sorted((s.impl, s.variant) for s in warmups)
        assert [s.impl for s in r] == sorted((s.impl for s in r), key=[s.impl for s in r].index)


def test_roofline_fractions_use_the_bandwidth_measured_around_each_run():
    """Two runs at 50 and 25 tokens/s, each next to a probe of 50 and 25 GB/s (1 token/s per GB/s): each ran at the
    bound of its moment (fraction 1.0), while against the run's best bound (100 tokens/s) the median is 1/3."""
    record = {"variant": "sdpa+dynamic", "times_s": [2.0, 4.0], "bandwidth_gbs": [50.0, 25.0]}
    summarize_measurement(record, tokens=100, roofline=100.0, roofline_per_gbs=1.0)
    assert record["tokens_per_s"] == pytest.approx(100 / 3)
    assert record["roofline_fraction"] == pytest.approx(1.0)
    assert record["roofline_fraction_of_bound"] == pytest.approx(1 / 3)
    old_report = {"variant": "sdpa+dynamic", "times_s": [2.0]}  # saved before the probes: the run's bound only
    summarize_measurement(old_report, tokens=100, roofline=100.0, roofline_per_gbs=1.0)
    assert old_report["roofline_fraction"] == old_report["roofline_fraction_of_bound"] == 0.5


def test_the_in_run_bandwidth_is_the_headline_fraction_where_sampled():
    """The same two runs, whose in-run samples average (harmonically) 40 and 50 GB/s: fractions 1.25 and 0.5, median
    0.875; the probes around them still give 1.0, kept beside it."""
    record = {"workload": "decode_b1", "variant": "sdpa+dynamic", "times_s": [2.0, 4.0], "bandwidth_gbs": [50.0, 25.0],
              "in_run_samples_gbs": [[32.0, 53.333333333333336], [50.0]], "step_s": [0.02, 0.025]}
    summarize_measurement(record, tokens=100, roofline=100.0, roofline_per_gbs=1.0)
    assert record["in_run_bandwidth_gbs"] == [pytest.approx(40.0), 50.0]
    assert record["roofline_fraction_in_run"] == record["roofline_fraction"] == pytest.approx(0.875)
    assert record["roofline_fraction_adjacent"] == pytest.approx(1.0)
    # the steps alone, prompt and first token left out: 50 tokens/s at 40 GB/s, 40 at 50 GB/s
    assert record["roofline_fraction_steps_in_run"] == pytest.approx((1.25 + 0.8) / 2)
    assert "(88% in run, 100% around)" in main_table({"cells": [{
        "config": "1b", "dtype": "bfloat16", "measurements": [], "summary": [{
            "workload": "decode_b1", "falcon_hf": {**record, "variant": "sdpa+dynamic"}, "transformers": None,
            "keras_hub": None, "vs_transformers": None, "vs_keras_hub": None, "targets": []}]}]})


def test_bandwidth_sampler_probes_inside_generate_without_changing_the_tokens(tiny_model):
    """`runners.BandwidthSampler` as a stopping criterion: one probe every `every` tokens, its time kept apart, and
    greedy tokens identical to a run without it (it never stops a sequence)."""
    from benchmarks.runners import BandwidthSampler

    calls = []
    sampler = BandwidthSampler(lambda: calls.append(1) or 42.0, every=3)
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        plain = tiny_model.generate(prompt, do_sample=False, max_new_tokens=10, min_new_tokens=10)
        sampled = tiny_model.generate(prompt, do_sample=False, max_new_tokens=10, min_new_tokens=10,
                                      stopping_criteria=StoppingCriteriaList([sampler]))
    assert torch.equal(plain, sampled) and plain.shape == (1, 14)
    assert sampler.calls == 10 and sampler.rates == [42.0] * 3 and len(calls) == 3 and sampler.seconds >= 0
    assert sampler.step_seconds == pytest.approx(sampler.steps_seconds / 9) and sampler.steps_seconds > 0


def test_the_bound_is_each_method_best_over_measurements():
    assert fastest_rates({"sum": 40.0, "bound": 40.0}, {"sum": 44.0, "gemv": 30.0, "bound": 44.0}) == {
        "sum": 44.0, "gemv": 30.0, "bound": 44.0}


def test_streaming_pairs_the_step_products_with_the_probe(capsys):
    """`benchmarks/streaming.py` on the tiny shape: at least one (products, probe) pair, both positive, and the table
    with the median ratio printed (no timing asserted)."""
    from benchmarks import streaming
    from falcon_hf.kernels import load

    if not load().float32:
        pytest.skip(f"kernels unavailable: {load().reason}")
    weights = streaming.step_weights("tiny", streaming.DTYPES["float32"])
    assert len(weights) == 4 * 2 + 1  # every linear layer of both blocks, and the LM head
    pairs = streaming.main(["--config", "tiny", "--dtype", "float32", "--seconds", "0.5", "--interval", "0"])
    assert pairs and all(products > 0 and probe > 0 for products, probe in pairs)
    printed = capsys.readouterr().out
    assert "| pair | products (GB/s) | probe (GB/s) | ratio |" in printed and "median ratio" in printed
