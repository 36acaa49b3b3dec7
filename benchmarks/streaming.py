#!/usr/bin/env python
"""How fast falcon_hf's decode kernels stream one decode step's weights, paired with a pure read of memory.

On a shared host the memory bandwidth can swing by 2x within seconds (33-77 GB/s between 10 s samples on session 6's
AMD EPYC), faster than one decode run of `bench.py` lasts, so a probe before and after a run cannot say what the run
had. This script alternates the two quickly instead: every `--interval` seconds it times the step's matrix products
(batch 1, the kernels on 2 MiB pages, as `generate` runs them) and, right after, the bandwidth probe of `bench.py`
(`machine.AdjacentBandwidth`), and reports each pair's ratio and their median: the share of the momentary bandwidth
the products stream at. Products only; `bench.py` times whole `generate` calls.

    python benchmarks/streaming.py --config 1b --dtype bfloat16 --seconds 200
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import GIB, AdjacentBandwidth, best_seconds  # noqa: E402
from benchmarks.runners import DTYPES  # noqa: E402
from benchmarks.weights import SHAPES, shape_config  # noqa: E402
from falcon_hf import FalconHFForCausalLM  # noqa: E402
from falcon_hf.kernels import small_batch_linear  # noqa: E402
from falcon_hf.kernels.huge_pages import copy_to_huge_pages  # noqa: E402


def step_weights(config_name: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random weights of every linear layer of one decode step, in execution order, each on 2 MiB pages."""
    with torch.device("meta"):
        shapes = [module.weight.shape for module in FalconHFForCausalLM(shape_config(config_name)).modules()
                  if isinstance(module, nn.Linear)]
    return [copy_to_huge_pages(torch.rand(shape).mul_(0.02).to(dtype)) for shape in shapes]


def step_products(weights: list[torch.Tensor]):
    """A function running one batch-1 product with every weight, in the step's order, through the kernels."""
    rows = {size: torch.randn(1, size).to(weights[0].dtype) for size in {w.shape[1] for w in weights}}
    if small_batch_linear(rows[weights[0].shape[1]], weights[0]) is None:
        raise SystemExit("falcon_hf's CPU decode kernels are unavailable here; nothing to measure.")

    def run():
        for weight in weights:
            small_batch_linear(rows[weight.shape[1]], weight)

    return run


def paired_rates(config_name: str, dtype: str, seconds: float, interval: float) -> list[tuple[float, float]]:
    """(GB/s of the step's products, best of 3, GB/s of the probe right after), one pair every `interval` seconds."""
    weights = step_weights(config_name, DTYPES[dtype])
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    products = step_products(weights)
    probe = AdjacentBandwidth(GIB)
    pairs = []
    started = time.perf_counter()
    with tqdm(total=round(seconds), desc=f"{config_name}/{dtype}", unit="s") as progress:
        while (elapsed := time.perf_counter() - started) < seconds:
            pairs.append((nbytes / best_seconds(products, 3) / 1e9, probe()))
            progress.update(round(elapsed) - progress.n)
            time.sleep(interval)
    return pairs


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--seconds", type=float, default=200.0, help="how long to alternate")
    parser.add_argument("--interval", type=float, default=10.0, help="pause between pairs, seconds")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pairs = paired_rates(args.config, args.dtype, args.seconds, args.interval)
    print("| pair | products (GB/s) | probe (GB/s) | ratio |\n|---|---|---|---|")
    for index, (products, probe) in enumerate(pairs, 1):
        print(f"| {index} | {products:.1f} | {probe:.1f} | {products / probe:.2f} |")
    ratios = [products / probe for products, probe in pairs]
    print(f"\nmedian ratio {statistics.median(ratios):.2f} over {len(pairs)} pairs "
          f"(products {min(p for p, _ in pairs):.1f}-{max(p for p, _ in pairs):.1f} GB/s, "
          f"probe {min(q for _, q in pairs):.1f}-{max(q for _, q in pairs):.1f} GB/s)")
    return pairs


if __name__ == "__main__":
    main()
