#!/usr/bin/env python
"""Benchmark the Keras -> HF converter on a full-size Falcon preset (the `falcon_refinedweb_1b_en` shape, 1.31B
parameters) with random weights, built and saved by keras-hub itself.

Each measured step runs in a fresh subprocess, so its peak RSS is the converter's alone (plus the interpreter and
torch/transformers imports, reported separately as the baseline). The model size is the Keras weights file. The
preset is written first, so the converter usually reads it from the page cache: MB/s is a warm-cache number.

    python benchmarks/convert.py                      # build (once) under /tmp/falcon_hf_bench, convert, report
    python benchmarks/convert.py --dtype bfloat16 --export-keras --in-memory --keep

Needs ~6 GB of disk per copy of the model (Keras preset, HF folder, optional exported preset) and ~6 GB of memory
while keras-hub builds the preset.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
FULL_FALCON = {"vocabulary_size": 50304, "num_layers": 24, "num_attention_heads": 32, "hidden_dim": 2048,
               "intermediate_dim": 8192}
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
MIB = 1024**2

BUILD = """
import json, os, sys
os.environ["KERAS_BACKEND"] = "torch"
import torch
torch.set_num_threads(1)
import keras, keras_hub
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

path, text_file, backbone_config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
keras.utils.set_random_seed(0)
text = open(text_file).read() if os.path.exists(text_file) else "the quick brown fox jumps over the lazy dog " * 1000
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.train_from_iterator(text.split("\\n\\n"), trainers.BpeTrainer(
    vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))
model = json.loads(bpe.to_str())["model"]
merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
tokenizer = keras_hub.models.FalconTokenizer(vocabulary=model["vocab"], merges=merges)
preprocessor = keras_hub.models.FalconCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=2048)
backbone = keras_hub.models.FalconBackbone(**backbone_config)
keras_hub.models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor).save_to_preset(path)
print(backbone.count_params())
"""

MEASURE = """
import json, sys, time
import psutil, torch
torch.set_num_threads(1)
from transformers.utils import logging
import falcon_hf.conversion as conversion

logging.disable_progress_bar()
function, args, kwargs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
getattr(conversion, function)(*args, **kwargs)
wall = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so it would include the parent's peak.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall_s": wall, "baseline_rss": baseline, "peak_rss": peak}))
"""


def folder_size(path: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def build_preset(path: Path) -> None:
    if (path / "model.weights.h5").is_file():
        print(f"reusing {path}")
        return
    print(f"building a random {FULL_FALCON} preset in {path} with keras-hub (minutes)...", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", BUILD, str(path), str(SHAKESPEARE), json.dumps(FULL_FALCON)],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"building the preset failed:\n{result.stderr[-3000:]}")
    print(f"built {int(result.stdout.split()[-1]):,} parameters in {time.perf_counter() - start:.0f}s")


def measure(function: str, *args, **kwargs) -> dict:
    """Run `falcon_hf.conversion.<function>` in a fresh process; peak RSS from getrusage, cross-checked by polling."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", MEASURE, function, json.dumps(args), json.dumps(kwargs)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    polled = {"peak": 0}

    def poll():
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                polled["peak"] = max(polled["peak"], watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = process.communicate()
    poller.join()
    if process.returncode:
        sys.exit(f"{function} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "polled_peak_rss": polled["peak"]}


def report(name: str, stats: dict, read_bytes: int, model_bytes: int) -> dict:
    row = {
        "step": name,
        "wall_s": round(stats["wall_s"], 1),
        "MB_per_s": round(read_bytes / MIB / stats["wall_s"], 1),
        "model_MiB": round(model_bytes / MIB),
        "peak_rss_MiB": round(stats["peak_rss"] / MIB),
        "polled_peak_rss_MiB": round(stats["polled_peak_rss"] / MIB),
        "baseline_rss_MiB": round(stats["baseline_rss"] / MIB),
        "peak_over_model": round(stats["peak_rss"] / model_bytes, 3),
        "conversion_rss_over_model": round((stats["peak_rss"] - stats["baseline_rss"]) / model_bytes, 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/falcon_hf_bench"))
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--export-keras", action="store_true", help="also time HF -> Keras on the result")
    parser.add_argument("--in-memory", action="store_true",
                        help="also time load_model_from_keras_preset (it holds the model: expect ~1x)")
    parser.add_argument("--keep", action="store_true", help="keep the converted folders (the preset is kept)")
    args = parser.parse_args()

    preset, hf, keras_out = args.workdir / "keras_preset", args.workdir / "hf", args.workdir / "keras_export"
    args.workdir.mkdir(parents=True, exist_ok=True)
    build_preset(preset)
    model_bytes = folder_size(preset, (".weights.h5",))
    rows = [report(f"convert-keras (dtype={args.dtype or 'stored'})",
                   measure("convert_keras_preset", str(preset), str(hf), dtype=args.dtype, force=True,
                           max_shard_size=args.max_shard_size),
                   model_bytes, model_bytes)]
    if args.export_keras:
        rows.append(report("export-keras", measure("export_keras_preset", str(hf), str(keras_out), force=True),
                           folder_size(hf, (".safetensors",)), model_bytes))
    if args.in_memory:
        rows.append(report("load_model_from_keras_preset", measure("load_model_from_keras_preset", str(preset)),
                           model_bytes, model_bytes))
    if not args.keep:
        shutil.rmtree(hf, ignore_errors=True)
        shutil.rmtree(keras_out, ignore_errors=True)
    worst = max(row["peak_over_model"] for row in rows)
    print(f"worst peak RSS / model size: {worst:.2f} (limit: well under 2.0)")
    sys.exit(0 if worst < 1.5 else 1)


if __name__ == "__main__":
    main()
