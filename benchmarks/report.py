"""From measurements to the report: medians, ratios, roofline fractions, targets, the table, the plot, the JSON.

The summary compares each implementation's fastest timed variant (its "better path"); a roofline target checks
falcon_hf's variant with the highest roofline fraction, named beside the mark. Every variant stays in the
per-variant table and the JSON.
"""

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

IMPL_LABELS = {"falcon_hf": "falcon_hf", "transformers": "transformers", "keras_hub": "keras-hub"}
README_START = "<!-- benchmarks:start -->"
README_END = "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Target:
    """falcon_hf's best variant must reach `threshold` in `kind`: a ratio to transformers' or keras-hub's best
    variant, or a fraction of the decode roofline."""

    kind: str  # "transformers", "keras_hub" or "roofline"
    threshold: float

    @property
    def label(self) -> str:
        if self.kind == "roofline":
            return f"≥{self.threshold:.2f} roofline"
        return f"≥{self.threshold:g}× {IMPL_LABELS[self.kind]}"


def targets(config: str, dtype: str, workload: str) -> list[Target]:
    """The issue's targets for one summary row (none for the `tiny` smoke-test shape).

    Example:

    ```python
    >>> [t.label for t in targets("1b", "bfloat16", "decode_b1")]
    ['≥0.75 roofline', '≥1.5× keras-hub']
    ```
    """
    if config not in ("small", "1b"):
        return []
    if workload == "decode_b1":
        first = Target("transformers", 1.3) if config == "small" else Target(
            "roofline", 0.9 if dtype == "float32" else 0.75)
        return [first, Target("keras_hub", 1.5)]
    if workload.startswith("decode_b"):
        return [Target("transformers", 1.3)]
    return [Target("transformers", 1.0)]  # prefill and training must not regress


def summarize_measurement(record: dict, tokens: int, roofline: float | None,
                          roofline_per_gbs: float | None = None) -> dict:
    """Median seconds, tokens/s and roofline fractions of one (impl, workload, variant) record, in place.

    Decode runs carry up to two bandwidths each: `bandwidth_gbs`, probed right before and after the run (the better
    of the two), and `in_run_bandwidth_gbs`, the harmonic mean of the samples taken inside it (`in_run_samples_gbs`,
    HF generate only; derived here).
    `roofline_fraction_adjacent` and `roofline_fraction_in_run` are the medians of the per-run fractions against
    them, `roofline_fraction_of_bound` is against the report's bound (`roofline` tokens/s), and `roofline_fraction`,
    the headline and what the targets check, is the first of in-run, adjacent and bound that the record has.
    `roofline_fraction_steps_in_run` leaves out the prompt and first token: the decode steps alone (`step_s`, their
    mean seconds per run) against the in-run bandwidth. `roofline_per_gbs` is the roofline's tokens/s per GB/s.
    """
    times = record["times_s"]
    if times:
        record["median_s"] = statistics.median(times)
        record["tokens_per_s"] = tokens / record["median_s"]
        record["roofline_fraction"] = record["roofline_fraction_of_bound"] = (
            record["tokens_per_s"] / roofline if roofline else None)
        if record.get("in_run_samples_gbs"):
            record["in_run_bandwidth_gbs"] = [statistics.harmonic_mean(run) for run in record["in_run_samples_gbs"]]
        for key, name in (("bandwidth_gbs", "adjacent"), ("in_run_bandwidth_gbs", "in_run")):
            rates = record.get(key) or []
            if roofline_per_gbs and len(rates) == len(times):
                record[f"roofline_fraction_{name}"] = record["roofline_fraction"] = statistics.median(
                    tokens / seconds / (gbs * roofline_per_gbs) for seconds, gbs in zip(times, rates))
        steps, in_run = record.get("step_s") or [], record.get("in_run_bandwidth_gbs") or []
        if roofline_per_gbs and len(steps) == len(in_run) == len(times) and None not in steps:
            batch = int(record["workload"].removeprefix("decode_b"))
            record["roofline_fraction_steps_in_run"] = statistics.median(
                batch / step / (gbs * roofline_per_gbs) for step, gbs in zip(steps, in_run))
        if record.get("warmup_s") is not None and "compile" in record["variant"]:
            record["compile_s"] = max(record["warmup_s"] - record["median_s"], 0.0)
    return record


def best_variant(records: list[dict], impl: str, workload: str) -> dict | None:
    timed = [r for r in records if r["impl"] == impl and r["workload"] == workload and r.get("tokens_per_s")]
    return max(timed, key=lambda r: r["tokens_per_s"], default=None)


def best_fraction(records: list[dict], workload: str) -> dict | None:
    """falcon_hf's variant with the highest roofline fraction: what a roofline target checks. The fraction divides
    out the bandwidth of each run's moment; the highest tokens/s on a host whose bandwidth swings 2x can belong to a
    variant that merely ran at a better moment."""
    timed = [r for r in records if r["impl"] == "falcon_hf" and r["workload"] == workload
             and r.get("roofline_fraction") is not None]
    return max(timed, key=lambda r: r["roofline_fraction"], default=None)


def summary_rows(cell: dict) -> list[dict]:
    """One row per workload: each implementation's best variant, falcon_hf's ratios, the targets and whether met."""
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in cell["measurements"]):
        best = {impl: best_variant(cell["measurements"], impl, workload) for impl in IMPL_LABELS}
        ours = best["falcon_hf"]
        ratios = {impl: (ours["tokens_per_s"] / best[impl]["tokens_per_s"] if ours and best[impl] else None)
                  for impl in ("transformers", "keras_hub")}
        checks = []
        for target in targets(cell["config"], cell["dtype"], workload):
            check = {"target": target.label, "value": ratios.get(target.kind)}
            if target.kind == "roofline":
                closest = best_fraction(cell["measurements"], workload)
                check = {"target": target.label, "value": closest and closest["roofline_fraction"],
                         "variant": closest and closest["variant"]}
            checks.append({**check, "met": None if check["value"] is None else check["value"] >= target.threshold})
        rows.append({
            "workload": workload,
            **{impl: (None if record is None else {key: record.get(key) for key in
                                                   ("variant", "tokens_per_s", "roofline_fraction",
                                                    "roofline_fraction_in_run", "roofline_fraction_adjacent")})
               for impl, record in best.items()},
            "vs_transformers": ratios["transformers"],
            "vs_keras_hub": ratios["keras_hub"],
            "targets": checks,
        })
    return rows


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _cell_text(entry: dict | None, status: str = "—") -> str:
    if entry is None:
        return status
    fractions = _fractions_text(entry)
    return f"{_number(entry['tokens_per_s'])}{f' ({fractions})' if fractions else ''} `{entry['variant']}`"


def _fractions_text(entry: dict) -> str:
    """`80% in run, 67% around`, `67% around`, `67%` or ``: the roofline fractions a decode record has."""
    labelled = [f"{_percent(entry[key])} {label}" for key, label in
                (("roofline_fraction_in_run", "in run"), ("roofline_fraction_adjacent", "around"))
                if entry.get(key) is not None]
    if labelled:
        return ", ".join(labelled)
    return _percent(entry["roofline_fraction"]) if entry.get("roofline_fraction") is not None else ""


def _percent(fraction: float) -> str:
    return "<1%" if fraction < 0.01 else f"{fraction:.0%}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _status_of(cell: dict, impl: str, workload: str) -> str:
    """Why an implementation has no number in a row: the first failure or skip of that workload."""
    for record in cell["measurements"]:
        if record["impl"] == impl and record["workload"] == workload and record["status"] != "ok":
            return record["status"]
    return "—"


def _targets_text(checks: list[dict]) -> str:
    marks = {True: "✓", False: "✗", None: "?"}
    return "; ".join(f"{c['target']} {marks[c['met']]}" + (f" ({_percent(c['value'])} `{c['variant']}`)"
                                                           if c.get("variant") else "")
                     for c in checks) or "—"


def main_table(report: dict) -> str:
    """The one table the harness prints: tokens/s of each implementation's best variant (decode also as a fraction
    of the roofline), falcon_hf's speed-ups and the issue's targets."""
    lines = [("| config | dtype | workload | falcon_hf | transformers | keras-hub | ÷ transformers | ÷ keras-hub "
              "| targets |"), "|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        for row in cell["summary"]:
            values = [_cell_text(row[impl], _status_of(cell, impl, row["workload"])) for impl in IMPL_LABELS]
            lines.append(f"| {cell['config']} | {cell['dtype']} | {row['workload']} | {' | '.join(values)} | "
                         f"{_ratio(row['vs_transformers'])} | {_ratio(row['vs_keras_hub'])} | "
                         f"{_targets_text(row['targets'])} |")
    return "\n".join(lines)


def variants_table(report: dict) -> str:
    lines = [("| config | dtype | workload | implementation | variant | tokens/s (median) | roofline | decode steps "
              "alone (in run) | runs (s) | status |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        for r in cell["measurements"]:
            runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
            if r.get("compile_s") is not None:
                runs += f" (compile ≈{r['compile_s']:.0f} s)"
            roofline = _fractions_text(r) or "—"
            steps = r.get("roofline_fraction_steps_in_run")
            steps = "—" if steps is None else _percent(steps)
            lines.append(f"| {cell['config']} | {cell['dtype']} | {r['workload']} | {IMPL_LABELS[r['impl']]} | "
                         f"`{r['variant']}` | {_number(r.get('tokens_per_s'))} | {roofline} | {steps} | {runs or '—'} | "
                         f"{r['status']} |")
    return "\n".join(lines)


def memory_table(report: dict) -> str:
    lines = [("| config | dtype | implementation | load (s) | RSS after load (GB) | peak RSS, inference (GB) "
              "| peak RSS, training (GB) |"), "|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        for impl, memory in cell["memory"].items():
            values = [_number(memory.get(key)) for key in
                      ("load_s", "rss_after_load_gb", "peak_rss_inference_gb", "peak_rss_train_gb")]
            lines.append(f"| {cell['config']} | {cell['dtype']} | {IMPL_LABELS[impl]} | {' | '.join(values)} |")
    return "\n".join(lines)


def _by_method(machine: dict) -> str:
    rates = {k: v for k, v in machine.get("memory_read_bandwidth_by_method_gbs", {}).items() if k != "bound"}
    return "; " + ", ".join(f"{name} {rate} GB/s" for name, rate in rates.items()) if rates else ""


def probed(report: dict, key: str = "bandwidth_gbs") -> bool:
    """Whether the decode runs of this report carry bandwidths probed around (`bandwidth_gbs`) or inside
    (`in_run_bandwidth_gbs`) each of them."""
    return any(m.get(key) for cell in report["cells"] for m in cell["measurements"])


def header(report: dict) -> str:
    meta = report["meta"]
    machine, versions, settings = meta["machine"], meta["versions"], meta["settings"]
    lengths = settings["lengths"]
    reps = ", ".join(f"{count} ({config})" for config, count in settings["reps"].items())
    version_text = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    return "\n".join([
        f"Measured {meta['date']} in {meta['duration_s'] / 60:.0f} min (`{meta['command']}`).",
        "",
        (f"- Machine: {machine['cpu']}, {machine['physical_cores']} cores, {machine['torch_threads']} torch threads, "
         f"{machine['memory_total_gb']} GB RAM; memory read bandwidth **{machine['memory_read_bandwidth_gbs']} GB/s** "
         f"({machine['memory_read_bandwidth_method']}{_by_method(machine)})."),
        f"- Versions: {version_text}.",
        (f"- Workloads: greedy decode of {lengths['new_tokens']} new tokens (forced) after a {lengths['prompt']}-token "
         f"prompt at batch 1 and 8; prefill of a {lengths['prefill']}-token prompt; one AdamW training step on "
         f"{lengths['train_batch']} x {lengths['train_sequence']} tokens. Median of {reps} repetitions, "
         f"implementations alternated ({settings['isolation']} isolation) after one warm-up each."),
        ("- Decode roofline = bandwidth / weight bytes read per step (every parameter once, the tied embedding as the "
         "LM head; one embedding row for the lookup), times the batch; percentages are of that bound"
         + (", with the bandwidth measured right before and after each run (\"around\": the best of quick read "
            "probes; the median of the per-run fractions), since a shared host's bandwidth drifts during a run"
            if probed(report) else "")
         + (f"; \"in run\": against the same probe (a quarter of its size, best of 2) sampled {settings.get('in_run_samples')} times "
            "inside each HF `generate` run through a stopping criterion, its time taken out of the run (the harmonic "
            "mean of the samples; keras-hub's generate loop has no such hook). A roofline target checks falcon_hf's "
            "variant with the highest fraction (in run where there is one), named beside the mark; \"decode steps "
            "alone\" leaves out the prompt and first token." if probed(report, "in_run_bandwidth_gbs") else ".")),
        f"- {meta['note']}" if meta.get("note") else "",
    ]).rstrip()


def markdown(report: dict, plot_name: str | None) -> str:
    notes = [note for cell in report["cells"] for note in cell["notes"]]
    parts = [f"# falcon_hf benchmark ({report['meta']['date'][:10]})", "", header(report), "", main_table(report)]
    if plot_name:
        parts += ["", f"![tokens/s per implementation]({plot_name})"]
    parts += ["", "## Every variant", "", variants_table(report), "", "## Memory", "",
              f"Peak resident memory measured in: {report['meta']['settings']['memory_method']}.", "",
              memory_table(report)]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(parts) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Bars of each implementation's best tokens/s: one panel per config and workload, dtypes side by side, decode
    rooflines as dashed lines when they fit the scale. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = list(dict.fromkeys(cell["config"] for cell in report["cells"]))
    workloads = list(dict.fromkeys(row["workload"] for cell in report["cells"] for row in cell["summary"]))
    figure, axes = plt.subplots(len(configs), len(workloads), figsize=(3.6 * len(workloads), 3.4 * len(configs)),
                                squeeze=False)
    width = 0.8 / len(IMPL_LABELS)
    for row_axes, config in zip(axes, configs):
        for axis, workload in zip(row_axes, workloads):
            _plot_panel(axis, [cell for cell in report["cells"] if cell["config"] == config], workload, width)
            axis.set_title(f"{config}: {workload}", fontsize=9)
    handles = {label: handle for axis in axes.flat for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="upper right", ncol=len(handles), fontsize=7, frameon=False)
    machine = report["meta"]["machine"]
    figure.suptitle(f"tokens/s ({report['meta']['date'][:10]}, {machine['physical_cores']} cores, "
                    f"{machine['torch_threads']} torch threads)", fontsize=10, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_panel(axis, cells: list[dict], workload: str, width: float) -> None:
    tallest = 0.0
    for offset, impl in enumerate(IMPL_LABELS):
        values = [next((r[impl]["tokens_per_s"] for r in cell["summary"] if r["workload"] == workload and r[impl]),
                       0.0) for cell in cells]
        tallest = max([tallest, *values])
        positions = [index + (offset - 1) * width for index in range(len(cells))]
        bars = axis.bar(positions, values, width, label=IMPL_LABELS[impl])
        axis.bar_label(bars, labels=[_number(v) if v else "" for v in values], fontsize=6)
    for index, cell in enumerate(cells):
        roofline = cell["roofline_tokens_per_s"].get(workload)
        if roofline and roofline <= 3 * tallest:  # an off-scale bound (tiny shapes) would flatten the bars
            axis.hlines(roofline, index - 0.45, index + 0.45, colors="black", linestyles="dashed",
                        label="roofline" if index == 0 else None)
    axis.set_xticks(range(len(cells)), [cell["dtype"] for cell in cells], fontsize=8)
    axis.tick_params(axis="y", labelsize=7)


def write_report(report: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """`{stem}.json`, `{stem}.md` and `{stem}.png` under `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "plot": out_dir / f"{stem}.png"}
    if not plot(report, paths["plot"]):
        del paths["plot"]
    paths["markdown"].write_text(markdown(report, paths["plot"].name if "plot" in paths else None), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return paths


def update_readme_section(readme: Path, section: str) -> bool:
    """Replace the text between `<!-- benchmarks:start -->` and `<!-- benchmarks:end -->`; False if no markers."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(f"{text[:start + len(README_START)]}\n{section}\n{text[end:]}", encoding="utf-8")
    return True
