"""The three implementations behind one interface: load, decode, prefill, one training step.

Each runner does exactly what a user of that library would write: `generate()` with greedy decoding forced to the full
length, one forward over a prompt for prefill, a plain AdamW step for training (torch's for falcon_hf and transformers,
Keras' `train_on_batch` with Keras' AdamW for keras-hub). Timing lives in `measure`, never in a runner.
"""

import gc
import os
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .machine import AdjacentBandwidth
from .weights import Checkpoints

LEARNING_RATE = 1e-5  # small so that repeated training steps keep the random weights (and their speed) unchanged
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOKEN_ID_LIMIT = 50256  # GPT-2's ids below <|endoftext|>; random prompts never contain the end token
IN_RUN_SAMPLES = 8  # bandwidth probes inside one timed decode run (HF generate only), evenly spaced in steps


@dataclass(frozen=True)
class Lengths:
    """Sequence lengths and batch sizes of the workloads (the issue's defaults)."""

    prompt: int = 32
    new_tokens: int = 128
    prefill: int = 512
    train_sequence: int = 256
    train_batch: int = 4
    warmup_new_tokens: int = 16  # every decode step runs the same kernels; the warm-up only has to trigger lazy setup


@dataclass(frozen=True)
class Workload:
    """`kind` is decode, prefill or train; `batch` matters for decode only (prefill is batch 1, train uses Lengths)."""

    kind: str
    batch: int = 1

    @property
    def name(self) -> str:
        return f"decode_b{self.batch}" if self.kind == "decode" else self.kind

    def tokens(self, lengths: Lengths) -> int:
        """Tokens one timed run produces (decode), reads (prefill) or trains on (train)."""
        if self.kind == "decode":
            return self.batch * lengths.new_tokens
        if self.kind == "prefill":
            return lengths.prefill
        return lengths.train_batch * lengths.train_sequence


class BandwidthSampler(StoppingCriteria):
    """A stopping criterion that never stops: every `every` generated tokens it runs `probe` (GB/s of a pure read,
    `machine.AdjacentBandwidth`) and keeps the rate and the seconds it took, which `measure` takes out of the run's
    time. The rates say what bandwidth the host gave while the run was going, not seconds before or after it.

    It is called once per generated token, so it also times the decode steps alone: `steps_seconds` runs from the
    first call (prompt and first token done) to the last, probes excluded, over `calls - 1` steps."""

    def __init__(self, probe, every: int):
        self.probe, self.every = probe, max(1, every)
        self.calls, self.rates, self.seconds = 0, [], 0.0
        self.first_call, self.steps_seconds = None, 0.0

    @property
    def step_seconds(self) -> float | None:
        """Mean seconds of one decode step after the first token (None before two calls)."""
        return self.steps_seconds / (self.calls - 1) if self.calls > 1 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.calls += 1
        now = time.perf_counter()
        self.first_call = now if self.first_call is None else self.first_call
        self.steps_seconds = now - self.first_call - self.seconds  # every probe so far ran between the two
        if self.calls % self.every == 0:
            start = time.perf_counter()
            self.rates.append(self.probe())
            self.seconds += time.perf_counter() - start
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def random_token_ids(batch: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """The same (batch, length) int64 prompt for every implementation."""
    generator = torch.Generator().manual_seed(seed + 1000 * batch + length)
    return torch.randint(0, min(vocab_size - 1, TOKEN_ID_LIMIT), (batch, length), generator=generator)


class HFRunner:
    """A transformers `PreTrainedModel` + `GenerationMixin`; subclasses say what to load and which variants exist.

    Decode variants are `attention+cache[+compile]` (`sdpa+dynamic`, `eager+static`, `sdpa+static+compile`);
    prefill and train variants name the attention kernel.
    """

    impl: ClassVar[str] = ""
    variants: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, checkpoints: Checkpoints, dtype: str, lengths: Lengths):
        self.lengths = lengths
        self.model = self.load(checkpoints, DTYPES[dtype]).eval()
        self.vocab_size = self.model.config.vocab_size
        self.optimizer = None

    def load(self, checkpoints: Checkpoints, dtype: torch.dtype):
        raise NotImplementedError

    def prepare(self, kind: str, variant: str) -> None:
        """Untimed set-up before each run of `variant` of a `kind` workload (nothing here)."""

    def _use_attention(self, variant: str) -> None:
        attention = variant.split("+")[0]
        if self.model.config._attn_implementation != attention:
            self.model.set_attn_implementation(attention)

    def decode(self, variant: str, batch: int, new_tokens: int, sampler: BandwidthSampler | None = None) -> None:
        from transformers import CompileConfig

        self._use_attention(variant)
        prompt = random_token_ids(batch, self.lengths.prompt, self.vocab_size)
        options = {"cache_implementation": "static"} if "static" in variant else {}
        if "compile" in variant:
            compile_config = CompileConfig(fullgraph=True, mode="default")
            compile_config._compile_all_devices = True  # generate() compiles on accelerators only unless told
            options["compile_config"] = compile_config
        else:
            options["disable_compile"] = True
        if sampler is not None:
            options["stopping_criteria"] = StoppingCriteriaList([sampler])
        with torch.inference_mode():
            output = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         pad_token_id=self.model.config.eos_token_id, **options)
        check_generated_length(output.shape, batch, self.lengths.prompt + new_tokens, self.impl)

    def prefill(self, variant: str) -> None:
        """The first step of `generate`: the prompt through the model, a fresh cache, logits of the last position."""
        self._use_attention(variant)
        prompt = random_token_ids(1, self.lengths.prefill, self.vocab_size)
        with torch.inference_mode():
            self.model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True, logits_to_keep=1)

    def start_training(self, variant: str) -> None:
        self._use_attention(variant)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.batch = random_token_ids(self.lengths.train_batch, self.lengths.train_sequence, self.vocab_size)

    def train_step(self) -> None:
        loss = self.model(input_ids=self.batch, attention_mask=torch.ones_like(self.batch), labels=self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def stop_training(self) -> None:
        """Drop the AdamW state so that three resident models never hold three optimizers."""
        self.optimizer = None
        self.model.zero_grad(set_to_none=True)
        self.model.eval()


class FalconHFRunner(HFRunner):
    """falcon_hf from the HF folder. Decode runs as users get it (CPU kernels on, large weights on huge pages) and with
    those switched off one at a time: `...+F.linear` unsets `modeling_falcon_hf.small_batch_linear` for the call, and
    `...+small-pages` also copies the weights back to torch's own (4 KiB) pages before the timer starts, which shows
    what each contributes. Untimed before each run, the weights go where a user's would be: on huge pages for decode
    and prefill (`generate` puts them there), on torch's pages for training (a `Trainer` never calls `generate`)."""

    impl: ClassVar[str] = "falcon_hf"
    variants: ClassVar[dict[str, tuple[str, ...]]] = {
        "decode": ("sdpa+dynamic", "sdpa+static", "sdpa+dynamic+F.linear", "sdpa+dynamic+F.linear+small-pages"),
        "prefill": ("sdpa",), "train": ("sdpa",)}
    compile_variant = "sdpa+static+compile"

    def prepare(self, kind: str, variant: str) -> None:
        from falcon_hf.kernels import huge_pages

        if kind == "train" or variant.endswith("+small-pages"):
            huge_pages.move_weights_off_huge_pages(self.model)
        else:
            huge_pages.place_weights_on_huge_pages(self.model)

    def decode(self, variant: str, batch: int, new_tokens: int, sampler: BandwidthSampler | None = None) -> None:
        import falcon_hf.modeling_falcon_hf as modeling

        kernel, placer = modeling.small_batch_linear, modeling.place_weights_on_huge_pages
        if "+F.linear" in variant:
            modeling.small_batch_linear = None
        if variant.endswith("+small-pages"):
            modeling.place_weights_on_huge_pages = None
        try:
            super().decode(variant, batch, new_tokens, sampler)
        finally:
            modeling.small_batch_linear, modeling.place_weights_on_huge_pages = kernel, placer

    def load(self, checkpoints: Checkpoints, dtype: torch.dtype):
        from falcon_hf import FalconHFForCausalLM

        return FalconHFForCausalLM.from_pretrained(checkpoints.hf, dtype=dtype, attn_implementation="sdpa")


class TransformersRunner(HFRunner):
    """transformers' built-in `FalconForCausalLM` from the native export. Its `eager` path is numerically wrong in
    5.24 (ALiBi added twice) but is timed as one of its two paths; its static cache is tried and reported as failing
    where it fails."""

    impl: ClassVar[str] = "transformers"
    variants: ClassVar[dict[str, tuple[str, ...]]] = {
        "decode": ("sdpa+dynamic", "eager+dynamic", "sdpa+static"), "prefill": ("sdpa", "eager"), "train": ("sdpa",)}

    def load(self, checkpoints: Checkpoints, dtype: torch.dtype):
        from transformers import FalconForCausalLM

        return FalconForCausalLM.from_pretrained(checkpoints.native, dtype=dtype, attn_implementation="sdpa")


class KerasHubRunner:
    """keras-hub's `FalconCausalLM` on the torch backend, loaded from the exported preset without a preprocessor
    (token ids in, token ids out), compiled with the greedy sampler."""

    impl: ClassVar[str] = "keras_hub"
    variants: ClassVar[dict[str, tuple[str, ...]]] = {"decode": ("greedy",), "prefill": ("call_with_cache",), "train": ("train_on_batch",)}

    def __init__(self, checkpoints: Checkpoints, dtype: str, lengths: Lengths):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras_hub

        self.lengths = lengths
        self.model = keras_hub.models.FalconCausalLM.from_preset(str(checkpoints.keras), preprocessor=None,
                                                                  dtype=dtype)
        self.model.compile(sampler="greedy")  # CausalLM.compile() defaults to top-k
        self.vocab_size = self.model.backbone.vocabulary_size

    def prepare(self, kind: str, variant: str) -> None:
        """Nothing to set up untimed."""

    def decode(self, variant: str, batch: int, new_tokens: int, sampler: BandwidthSampler | None = None) -> None:
        """`sampler` is ignored: keras-hub's generate loop has no per-step hook (its runs keep the probes around)."""
        total = self.lengths.prompt + new_tokens
        prompt = random_token_ids(batch, self.lengths.prompt, self.vocab_size).numpy().astype("int32")
        # keras-hub generates into the padded slots of `token_ids` (up to max_length = their width); no stop tokens.
        token_ids = np.zeros((batch, total), dtype="int32")
        token_ids[:, : self.lengths.prompt] = prompt
        padding_mask = np.arange(total)[None, :].repeat(batch, 0) < self.lengths.prompt
        output = self.model.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)
        check_generated_length(output["token_ids"].shape, batch, total, self.impl)
        if not np.asarray(output["padding_mask"]).all():
            raise RuntimeError("keras_hub: generate() stopped before max_length although stop_token_ids=None.")

    def prefill(self, variant: str) -> None:
        """`_build_cache`, the first step of keras-hub's `generate`: the prompt through `call_with_cache`."""
        from keras import ops

        prompt = random_token_ids(1, self.lengths.prefill, self.vocab_size).numpy().astype("int32")
        with torch.no_grad():
            self.model._build_cache(ops.convert_to_tensor(prompt))

    def start_training(self, variant: str) -> None:
        import keras

        self.model.compile(optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           weighted_metrics=[], sampler="greedy")
        sequence = random_token_ids(self.lengths.train_batch, self.lengths.train_sequence + 1, self.vocab_size)
        sequence = sequence.numpy().astype("int32")
        mask = np.ones((self.lengths.train_batch, self.lengths.train_sequence), dtype=bool)
        # keras-hub trains on (x, y=x shifted, sample_weight=mask): the batch its preprocessor would produce.
        self.batch = ({"token_ids": sequence[:, :-1], "padding_mask": mask}, sequence[:, 1:], mask.astype("float32"))

    def train_step(self) -> None:
        x, y, sample_weight = self.batch
        self.model.train_on_batch(x=x, y=y, sample_weight=sample_weight)

    def stop_training(self) -> None:
        """A fresh, unbuilt optimizer replaces AdamW; its moments are freed once the cycles Keras keeps are collected."""
        self.model.compile(sampler="greedy")
        gc.collect()


RUNNERS = {runner.impl: runner for runner in (FalconHFRunner, TransformersRunner, KerasHubRunner)}
IMPLEMENTATIONS = tuple(RUNNERS)


def check_generated_length(shape, batch: int, total: int, impl: str) -> None:
    if tuple(shape) != (batch, total):
        raise RuntimeError(f"{impl}: generate() returned shape {tuple(shape)}, expected {(batch, total)}; "
                           "the forced length was not honoured.")


def variants_of(impl: str, kind: str, compile_decode: bool = False) -> tuple[str, ...]:
    """The variants timed for `impl` on a workload kind; falcon_hf's torch.compile decode only when asked."""
    runner = RUNNERS[impl]
    found = runner.variants[kind]
    if kind == "decode" and compile_decode and hasattr(runner, "compile_variant"):
        found = found + (runner.compile_variant,)
    return found


def measure(runner, workload: Workload, variant: str, warmup: bool = False, probe_bytes: int = 0) -> dict:
    """`seconds` of one run of `workload` (untimed set-up excluded) and, for a timed decode run with `probe_bytes`,
    `in_run_samples_gbs`, the probe rates sampled inside the run (`BandwidthSampler`; their time is not counted),
    and `step_s`, the mean time of a decode step after the first token.
    A warm-up decode is short, except for compiled variants whose graphs depend on the cache length; training always
    takes one untimed step first, on a fresh optimizer that is dropped afterwards."""
    runner.prepare(workload.kind, variant)
    if workload.kind == "decode":
        new_tokens = runner.lengths.new_tokens
        if warmup and "compile" not in variant:
            new_tokens = min(new_tokens, runner.lengths.warmup_new_tokens)
        sampler = None
        if probe_bytes and not warmup:
            sampler = BandwidthSampler(in_run_probe(runner, probe_bytes), new_tokens // IN_RUN_SAMPLES)
        start = time.perf_counter()
        runner.decode(variant, workload.batch, new_tokens, sampler)
        seconds = time.perf_counter() - start
        if sampler is None:
            return {"seconds": seconds}
        return {"seconds": seconds - sampler.seconds, "in_run_samples_gbs": sampler.rates,
                "step_s": sampler.step_seconds}
    if workload.kind == "prefill":
        start = time.perf_counter()
        runner.prefill(variant)
        return {"seconds": time.perf_counter() - start}
    runner.start_training(variant)
    try:
        runner.train_step()
        start = time.perf_counter()
        runner.train_step()
        return {"seconds": time.perf_counter() - start}
    finally:
        runner.stop_training()


def in_run_probe(runner, probe_bytes: int) -> AdjacentBandwidth:
    """The runner's own probe array (allocated once, in its process), best of 2 per method and sample."""
    probe = getattr(runner, "in_run_probe", None)
    if probe is None or probe.array.numel() * 4 != probe_bytes:
        runner.in_run_probe = probe = AdjacentBandwidth(probe_bytes, repeats=2)
    return probe
