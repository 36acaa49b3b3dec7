#!/usr/bin/env python
"""Train the tiny Falcon preset embedded in ``falcon_hf`` (``src/falcon_hf/presets/tiny_shakespeare``).

Recipe (fully reproducible given the same software versions and thread count):

1. Read Tiny Shakespeare; the first 90% of the characters are the training split, the last 10% the validation split.
2. Train a GPT-2 style byte-level BPE (``tokenizers``: ByteLevel pre-tokenizer, ``add_prefix_space=False``, the 256
   ByteLevel symbols as initial alphabet, ``<|endoftext|>`` as the only special token) on the training split. As in
   GPT-2 the byte symbols and merges come first and ``<|endoftext|>`` gets the *last* id (2000 for the default
   2001-token vocabulary). The vocabulary and merges are handed to ``keras_hub.models.FalconTokenizer``.
3. Build ``keras_hub.models.FalconBackbone`` (default: 4 layers, hidden 192, 4 heads, MLP 768; the embedding is
   padded to a multiple of 64 rows, 2001 -> 2048, like the real preset pads 50257 -> 50304), a
   ``FalconCausalLMPreprocessor(sequence_length=128)`` and a ``FalconCausalLM``, and train it with ``fit`` on
   pre-tokenized windows. Every window starts with the ``<|endoftext|>`` id, exactly what the keras-hub preprocessor
   produces (it prepends the start token), followed by 128 text tokens. Half of the windows begin at a speaker turn
   (right after a blank line, like a prompt "ROMEO:" does), the other half at a uniformly random token, so every
   training token is seen (turn starts alone leave ~18% of the tokens, deep inside long speeches, uncovered).
   AdamW (weight decay 0.1, not on biases / LayerNorm), linear warmup then cosine decay, global-norm clipping 1.0.
4. Evaluate train / validation loss (per token, natural log) and perplexity on non-overlapping windows.
5. Rebuild the backbone with ``dtype="bfloat16"``, copy the trained weights in and ``save_to_preset`` it into the
   output folder (``model.weights.h5`` then stores 2-byte datasets carrying ``attrs["dtype"] == "bfloat16"``),
   write ``TRAINING.md`` next to it, then reload the preset with ``FalconCausalLM.from_preset`` and generate.

Run from the repository root::

    python scripts/train_tiny_preset.py                      # defaults reproduce the shipped preset
    python scripts/train_tiny_preset.py --time-steps 5       # only time a few training steps and exit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_OUTPUT = REPO_ROOT / "src" / "falcon_hf" / "presets" / "tiny_shakespeare"
EOT = "<|endoftext|>"
PRESET_FILES = {"config.json", "metadata.json", "model.weights.h5", "tokenizer.json", "preprocessor.json",
                "task.json", "TRAINING.md", "assets"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train the tiny Tiny-Shakespeare Falcon (keras-hub) preset embedded in falcon_hf.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data / tokenizer")
    g.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Tiny Shakespeare text file.")
    g.add_argument("--val-fraction", type=float, default=0.1, help="Fraction of characters (at the end) held out.")
    g.add_argument("--bpe-vocab-size", type=int, default=2001,
                   help="Tokenizer size incl. <|endoftext|>: 256 byte symbols + merges + 1 special token.")
    g.add_argument("--pad-vocab-to", type=int, default=64,
                   help="Round the embedding rows up to a multiple of this (the real preset: 50257 -> 50304).")
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=4)
    g.add_argument("--hidden-dim", type=int, default=192)
    g.add_argument("--num-heads", type=int, default=4)
    g.add_argument("--intermediate-dim", type=int, default=None, help="Defaults to 4 * hidden-dim.")
    g.add_argument("--dropout", type=float, default=0.0, help="Attention and feed-forward dropout during training.")
    g.add_argument("--sequence-length", type=int, default=128, help="Preprocessor sequence length.")
    g.add_argument("--turn-fraction", type=float, default=0.5,
                   help="Fraction of training windows starting at a speaker turn; the rest start at random tokens.")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--epochs", type=int, default=7)
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="Defaults to one pass-equivalent: train tokens // (batch-size * sequence-length).")
    g.add_argument("--lr", type=float, default=2e-3, help="Peak learning rate.")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="Final LR as a fraction of the peak.")
    g.add_argument("--warmup-steps", type=int, default=50)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clipnorm", type=float, default=1.0, help="Global gradient-norm clipping.")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--threads", type=int, default=1, help="torch / TF / tokenizers threads.")
    g.add_argument("--time-steps", type=int, default=0,
                   help="If > 0: time this many training steps, print the projected run time and exit.")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="Keras fit verbosity; default: progress bar on a terminal, silent otherwise (a log line per epoch is "
                        "always printed).")
    g = p.add_argument_group("output")
    g.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Preset folder to (re)create.")
    g.add_argument("--save-dtype", default="bfloat16", help="dtype of the saved weights.")
    g.add_argument("--prompt", default="ROMEO:")
    g.add_argument("--max-length", type=int, default=60, help="Token length of the verification generation.")
    return p.parse_args(argv)


def setup_environment(threads):
    # Must happen before keras / tensorflow / tokenizers are imported.
    os.environ["KERAS_BACKEND"] = "torch"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # keras-hub hands `fit` a tf.data pipeline of our (already ordered) arrays; Keras then warns about `shuffle`.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if threads == 1 else "true")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set
        pass


def log(msg=""):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------
def train_bpe(train_text, vocab_size):
    """Train a GPT-2 style byte-level BPE; return (vocabulary dict, merges list of "a b") with EOT given the last id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([train_text], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    ordered = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t != EOT]
    vocabulary = {t: i for i, t in enumerate(ordered)}
    vocabulary[EOT] = len(vocabulary)  # GPT-2 convention: the special token comes last
    assert all(" " not in t for t in vocabulary), "byte-level tokens never contain a literal space"
    return vocabulary, merges


def fast_tokenizer(vocabulary, merges):
    """A `tokenizers` twin of the keras-hub tokenizer, used to tokenize the corpus quickly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=vocabulary, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return tok


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def turn_starts(text, offsets, n_ids, seq_len):
    """Token indices at which a speaker turn (text right after a blank line) starts, usable as window starts."""
    import numpy as np

    char_starts = {0}
    pos = text.find("\n\n")
    while pos != -1:
        j = pos
        while j < len(text) and text[j] == "\n":
            j += 1
        char_starts.add(j)
        pos = text.find("\n\n", j)
    token_char_start = np.array([o[0] for o in offsets])
    is_start = np.isin(token_char_start, np.fromiter(char_starts, dtype=np.int64))
    starts = np.nonzero(is_start)[0]
    return starts[starts + seq_len <= n_ids]


def make_windows(ids, starts, seq_len, eot_id):
    """x/y/sample_weight for windows [EOT] + ids[s : s + seq_len] (what FalconCausalLMPreprocessor produces)."""
    import numpy as np

    seqs = np.empty((len(starts), seq_len + 1), dtype="int32")
    seqs[:, 0] = eot_id
    for row, s in enumerate(starts):
        seqs[row, 1:] = ids[s:s + seq_len]
    x = {"token_ids": seqs[:, :-1], "padding_mask": np.ones((len(starts), seq_len), dtype="int32")}
    return x, seqs[:, 1:], np.ones((len(starts), seq_len), dtype="float32")


class WindowSampler:
    """Training window starts. Of each batch, `turn_fraction` is drawn, without replacement within a cycle, from
    seeded permutations of all speaker-turn starts (the cycle continues across epochs); the rest are uniformly random
    token positions."""

    def __init__(self, turn_starts, n_ids, seq_len, turn_fraction, seed):
        import numpy as np

        self.turn_starts, self.max_start, self.turn_fraction = turn_starts, n_ids - seq_len, turn_fraction
        self.rng = np.random.default_rng(seed)
        self.queue = np.empty(0, dtype=np.int64)

    def _turns(self, n):
        import numpy as np

        while len(self.queue) < n:
            self.queue = np.concatenate([self.queue, self.rng.permutation(self.turn_starts)])
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def draw_batch(self, batch_size):
        import numpy as np

        n_turn = int(round(batch_size * self.turn_fraction))
        starts = np.concatenate([self._turns(n_turn), self.rng.integers(0, self.max_start + 1, batch_size - n_turn)])
        return self.rng.permutation(starts)

    def draw(self, n_batches, batch_size):
        import numpy as np

        return np.concatenate([self.draw_batch(batch_size) for _ in range(n_batches)])


def chunk_windows(ids, seq_len, eot_id):
    """Non-overlapping consecutive windows (for evaluation)."""
    import numpy as np

    starts = np.arange(0, len(ids) - seq_len + 1, seq_len)
    return make_windows(ids, starts, seq_len, eot_id)


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------
def build_causal_lm(args, vocabulary, merges, backbone_vocab, dtype=None, with_preprocessor=True):
    import keras_hub

    preprocessor = None
    if with_preprocessor:
        tokenizer = keras_hub.models.FalconTokenizer(vocabulary=vocabulary, merges=merges, name="falcon_tokenizer")
        preprocessor = keras_hub.models.FalconCausalLMPreprocessor(
            tokenizer, sequence_length=args.sequence_length, name="falcon_causal_lm_preprocessor")
    backbone = keras_hub.models.FalconBackbone(
        vocabulary_size=backbone_vocab,
        num_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        layer_norm_epsilon=1e-5,
        attention_dropout_rate=args.dropout,
        feedforward_dropout_rate=args.dropout,
        dtype=dtype,
        name="falcon_backbone",
    )
    return keras_hub.models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor, name="falcon_causal_lm")


def compile_for_training(causal_lm, args, total_steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=args.lr,
        warmup_steps=args.warmup_steps,
        decay_steps=max(1, total_steps - args.warmup_steps),
        alpha=args.min_lr_ratio,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=args.weight_decay, beta_1=0.9, beta_2=0.95,
        global_clipnorm=args.clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    causal_lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return schedule


def h5_layout(path):
    """Every dataset (path, shape, h5 dtype, attrs) and the attrs of every `vars` group of a Keras weights file."""
    import h5py

    datasets, groups = [], []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            datasets.append((name, tuple(obj.shape), str(obj.dtype), obj.dtype.itemsize, dict(obj.attrs)))
        elif name.endswith("vars") and len(obj.attrs):
            groups.append((name, dict(obj.attrs)))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return datasets, groups


def dir_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def prepare_output_dir(out):
    out = Path(out)
    if out.exists():
        unknown = [p.name for p in out.iterdir() if p.name not in PRESET_FILES]
        if unknown:
            sys.exit(f"Refusing to clear {out}: it holds files that are not part of a preset: {unknown}")
        shutil.rmtree(out)
    out.mkdir(parents=True)


# --------------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    args.intermediate_dim = args.intermediate_dim or 4 * args.hidden_dim
    t_start = time.time()
    setup_environment(args.threads)

    import keras
    import keras_hub
    import numpy as np
    import tokenizers
    import torch

    keras.utils.set_random_seed(args.seed)
    log(f"keras {keras.__version__} ({keras.backend.backend()}), keras-hub {keras_hub.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), tokenizers {tokenizers.__version__}")

    # ---- data + tokenizer ------------------------------------------------------------------------------------------
    text = Path(args.data).read_text(encoding="utf-8")
    n_train_chars = int(len(text) * (1 - args.val_fraction))
    train_text, val_text = text[:n_train_chars], text[n_train_chars:]
    log(f"data: {args.data} ({len(text):,} chars) -> train {len(train_text):,} / validation {len(val_text):,} chars")

    t0 = time.time()
    vocabulary, merges = train_bpe(train_text, args.bpe_vocab_size)
    eot_id = vocabulary[EOT]
    tok_size = len(vocabulary)
    backbone_vocab = int(math.ceil(tok_size / args.pad_vocab_to) * args.pad_vocab_to)
    fast = fast_tokenizer(vocabulary, merges)
    train_enc = fast.encode(train_text)
    train_ids = np.asarray(train_enc.ids, dtype="int32")
    val_ids = np.asarray(fast.encode(val_text).ids, dtype="int32")
    log(f"BPE: {tok_size} tokens ({len(merges)} merges, {EOT}={eot_id}), embedding rows {backbone_vocab}; "
        f"train {len(train_ids):,} tokens ({len(train_text) / len(train_ids):.2f} chars/token), "
        f"validation {len(val_ids):,} tokens [{time.time() - t0:.1f}s]")

    # The corpus is tokenized with the `tokenizers` twin, i.e. exactly GPT-2's rules (what transformers' GPT-2 style
    # tokenizers do). keras-hub 0.32's `FalconTokenizer` (eager / Python path) must give the same ids except on the
    # rare spans where it does not pre-split like GPT-2 (its split regex reaches `tokenizers` as literal text).
    keras_tok = keras_hub.models.FalconTokenizer(vocabulary=vocabulary, merges=merges)
    lines = [line for line in val_text.splitlines(keepends=True) if line.strip()]
    keras_lines = [np.asarray(keras.ops.convert_to_numpy(ids)).tolist() for ids in keras_tok(lines)]
    differing = [(line, k) for line, k in zip(lines, keras_lines) if k != fast.encode(line).ids]
    log(f"keras-hub FalconTokenizer vs GPT-2 rules: {len(lines) - len(differing)}/{len(lines)} validation lines "
        f"identical" + (f"; e.g. {differing[0][0]!r}: keras-hub "
                        f"{[keras_tok.id_to_token(i) for i in differing[0][1]]} vs GPT-2 "
                        f"{fast.encode(differing[0][0]).tokens}" if differing else ""))
    if len(differing) > 0.05 * len(lines):
        sys.exit("keras-hub FalconTokenizer and the GPT-2 rules disagree on too many lines: vocabulary/merges bug?")
    assert fast.decode(val_ids.tolist()) == val_text

    starts = turn_starts(train_text, train_enc.offsets, len(train_ids), args.sequence_length)
    steps_per_epoch = args.steps_per_epoch or len(train_ids) // (args.batch_size * args.sequence_length)
    total_steps = steps_per_epoch * args.epochs
    sampler = WindowSampler(starts, len(train_ids), args.sequence_length, args.turn_fraction, args.seed)
    val_x, val_y, val_w = chunk_windows(val_ids, args.sequence_length, eot_id)
    train_eval = chunk_windows(train_ids, args.sequence_length, eot_id)
    log(f"windows: {args.turn_fraction:.0%} at {len(starts):,} speaker-turn starts, the rest random; {steps_per_epoch} steps/epoch x {args.epochs} epochs "
        f"= {total_steps} steps of {args.batch_size}x{args.sequence_length}; "
        f"validation {len(val_y)} windows, train-eval {len(train_eval[1])} windows")

    # ---- model -----------------------------------------------------------------------------------------------------
    # Trained without an attached preprocessor: `fit` receives already tokenized and packed arrays.
    causal_lm = build_causal_lm(args, vocabulary, merges, backbone_vocab, with_preprocessor=False)
    backbone = causal_lm.backbone
    n_params = backbone.count_params()
    log(f"FalconBackbone: {args.num_layers} layers, hidden {args.hidden_dim}, {args.num_heads} heads, "
        f"MLP {args.intermediate_dim}, vocabulary {backbone_vocab} -> {n_params:,} parameters")
    schedule = compile_for_training(causal_lm, args, total_steps)

    if args.time_steps > 0:
        n = args.time_steps + 1
        x, y, w = make_windows(train_ids, starts[: n * args.batch_size], args.sequence_length, eot_id)
        causal_lm.fit(x, y, sample_weight=w, batch_size=args.batch_size, steps_per_epoch=1, epochs=1, verbose=0)
        t0 = time.time()
        causal_lm.fit({k: v[args.batch_size:] for k, v in x.items()}, y[args.batch_size:],
                      sample_weight=w[args.batch_size:], batch_size=args.batch_size, epochs=1, verbose=0)
        per_step = (time.time() - t0) / args.time_steps
        log(f"{per_step:.3f} s/step -> {total_steps} steps ~ {per_step * total_steps / 60:.1f} min of training")
        return

    # One `fit` call per epoch (keras-hub's `fit` wants arrays or a tf.data / grain dataset, so the per-epoch
    # window draw happens out here); the optimizer step count and LR schedule carry across calls.
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 0)
    history = {"loss": [], "val_loss": []}
    t_train, cpu_train = time.time(), time.process_time()
    for epoch in range(args.epochs):
        x, y, w = make_windows(train_ids, sampler.draw(steps_per_epoch, args.batch_size), args.sequence_length,
                               eot_id)
        h = causal_lm.fit(x, y, sample_weight=w, batch_size=args.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                          shuffle=False, validation_data=(val_x, val_y, val_w), verbose=verbose)
        history["loss"].append(h.history["loss"][-1])
        history["val_loss"].append(h.history["val_loss"][-1])
        step = int(keras.ops.convert_to_numpy(causal_lm.optimizer.iterations))
        lr = float(keras.ops.convert_to_numpy(schedule(step)))
        log(f"  epoch {epoch + 1}/{args.epochs}: loss {history['loss'][-1]:.4f}, "
            f"val_loss {history['val_loss'][-1]:.4f} (ppl {math.exp(history['val_loss'][-1]):.2f}), "
            f"step {step}, lr {lr:.2e}, {time.time() - t_train:.0f}s elapsed")
    train_seconds, train_cpu_seconds = time.time() - t_train, time.process_time() - cpu_train
    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
    log(f"training: {total_steps} steps in {train_seconds / 60:.1f} min wall ({train_seconds / total_steps:.3f} s/step), "
        f"{train_cpu_seconds / 60:.1f} min CPU; machine load average {load:.1f} over {os.cpu_count()} cores")

    def evaluate(model, x, y, w):
        out = model.evaluate(x, y, sample_weight=w, batch_size=64, verbose=0, return_dict=True)
        return out["loss"], out["accuracy"]

    train_loss, train_acc = evaluate(causal_lm, *train_eval)
    val_loss, val_acc = evaluate(causal_lm, val_x, val_y, val_w)
    # Characters covered by the scored tokens (every target token; the first window token is EOT-conditioned).
    val_chars = len(fast.decode(val_y.reshape(-1).tolist()))
    val_bpc = val_loss * val_y.size / val_chars / math.log(2)
    log(f"float32 model: train loss {train_loss:.4f} (ppl {math.exp(train_loss):.2f}), "
        f"validation loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f}, {val_bpc:.3f} bits/char), "
        f"validation accuracy {val_acc:.3f}")

    # ---- save in bfloat16 ------------------------------------------------------------------------------------------
    out = Path(args.output)
    prepare_output_dir(out)
    save_lm = build_causal_lm(args, vocabulary, merges, backbone_vocab, dtype=args.save_dtype)
    save_lm.backbone.set_weights(backbone.get_weights())
    save_lm.save_to_preset(str(out))

    datasets, groups = h5_layout(out / "model.weights.h5")
    if args.save_dtype == "bfloat16":
        bad = [d for d in datasets if d[3] != 2 or d[4].get("dtype") != "bfloat16"]
        assert not bad, f"weights not stored as 2-byte bfloat16: {bad}"
    assert sum(int(np.prod(d[1])) for d in datasets) == n_params
    log(f"model.weights.h5: {len(datasets)} datasets")
    for name, shape, h5dtype, itemsize, attrs in datasets:
        log(f"  {name}  {shape}  {h5dtype} ({itemsize} bytes)  {attrs}")
    log("attrs of the `vars` groups:")
    for name, attrs in groups:
        log(f"  {name}  {attrs}")

    # ---- verify the saved preset -----------------------------------------------------------------------------------
    loaded = keras_hub.models.FalconCausalLM.from_preset(str(out))
    preprocessor, loaded.preprocessor = loaded.preprocessor, None  # evaluate on the packed arrays
    loaded.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    loaded_val_loss, _ = evaluate(loaded, val_x, val_y, val_w)
    log(f"reloaded preset ({loaded.backbone.dtype_policy.name} compute): validation loss {loaded_val_loss:.4f} "
        f"(ppl {math.exp(loaded_val_loss):.2f})")
    assert abs(loaded_val_loss - val_loss) < 0.05, "bfloat16 preset deviates too much from the trained model"

    loaded.preprocessor = preprocessor
    loaded.compile(sampler="greedy")
    greedy = loaded.generate(args.prompt, max_length=args.max_length)
    keras.utils.set_random_seed(args.seed)
    loaded.compile(sampler=keras_hub.samplers.TopKSampler(k=10, seed=args.seed))
    topk = loaded.generate(args.prompt, max_length=args.max_length)
    log("\n--- greedy generation ---\n" + greedy + "\n--- top-k (k=10) generation ---\n" + topk + "\n---")

    total_seconds = time.time() - t_start
    write_training_md(out, args, argv, dict(
        tok_size=tok_size, n_merges=len(merges), eot_id=eot_id, backbone_vocab=backbone_vocab, n_params=n_params,
        n_train_chars=len(train_text), n_val_chars=len(val_text), n_train_tokens=len(train_ids),
        n_val_tokens=len(val_ids), n_starts=len(starts), n_lines=len(lines), n_differing=len(differing), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        train_loss=train_loss, val_loss=val_loss, val_bpc=val_bpc, val_acc=val_acc, loaded_val_loss=loaded_val_loss,
        train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds, load=load, total_seconds=total_seconds, greedy=greedy, topk=topk,
        history=history, versions=dict(
            python=platform.python_version(), keras=keras.__version__, keras_hub=keras_hub.__version__,
            torch=torch.__version__, tokenizers=tokenizers.__version__),
        datasets=datasets, groups=groups,
    ))
    log(f"\npreset written to {out} ({dir_size(out) / 1e6:.2f} MB):")
    for f in sorted(out.rglob("*")):
        if f.is_file():
            log(f"  {f.relative_to(out)}  {f.stat().st_size:,} bytes")
    log(f"total wall time {total_seconds / 60:.1f} min")


def write_training_md(out, args, argv, r):
    cmd_args = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python scripts/train_tiny_preset.py", *cmd_args])
    hist = r["history"]
    epoch_rows = "\n".join(
        f"| {i + 1} | {hist['loss'][i]:.4f} | {hist['val_loss'][i]:.4f} | {math.exp(hist['val_loss'][i]):.2f} |"
        for i in range(len(hist["loss"])))
    v = r["versions"]
    md = f"""# `tiny_shakespeare`: a tiny Keras Hub Falcon preset

A {r['n_params'] / 1e6:.2f}M-parameter `keras_hub.models.FalconCausalLM` trained from scratch on Tiny Shakespeare,
embedded in `falcon_hf` as a small, offline default preset. It is a *toy*: it writes Shakespeare-looking text,
nothing more. Weights are stored in bfloat16.

Load it with `keras_hub.models.FalconCausalLM.from_preset("<this folder>")`.

## Reproduce

```
{command}
```

(`scripts/train_tiny_preset.py --help` lists every option; the defaults produce this preset. Seed {args.seed},
{args.threads} CPU thread(s); bit-exact reproduction also needs the same library versions:
Python {v['python']}, keras {v['keras']} (torch backend), keras-hub {v['keras_hub']}, torch {v['torch']},
tokenizers {v['tokenizers']}.)

## Data

`tinyshakespeare.txt` ({r['n_train_chars'] + r['n_val_chars']:,} characters). The first
{1 - args.val_fraction:.0%} of the characters ({r['n_train_chars']:,}) are the training split, the last
{args.val_fraction:.0%} ({r['n_val_chars']:,}) the validation split.

## Tokenizer

GPT-2 style byte-level BPE trained with `tokenizers` on the training split only: `ByteLevel` pre-tokenizer
(`add_prefix_space=False`, GPT-2 regex), the 256 `ByteLevel` symbols as initial alphabet, `min_frequency=2`,
{r['tok_size']} tokens = 256 byte symbols + {r['n_merges']} merges + `<|endoftext|>`. As in GPT-2,
`<|endoftext|>` has the last id ({r['eot_id']}); it is the start, end (and generation stop) token.
`keras_hub.models.FalconTokenizer` hard-codes `pad_token_id = 0` (padding positions are masked anyway).
Training split: {r['n_train_tokens']:,} tokens, validation split: {r['n_val_tokens']:,} tokens.

The training data is tokenized exactly by GPT-2's rules (`tokenizers` ByteLevel BPE, as transformers' GPT-2 style
tokenizers do). keras-hub {v['keras_hub']}'s own `FalconTokenizer` (eager path) gives identical ids on
{r['n_lines'] - r['n_differing']} of the {r['n_lines']} non-empty validation lines; the others contain spans GPT-2
pre-splits but keras-hub's Python path does not (its split regex reaches `tokenizers` as literal text), e.g. the
archaic `'st` of `entertain'st`: GPT-2 `'s` + `t`, keras-hub `'` + `st`.

## Model

| | |
|---|---|
| architecture | `FalconBackbone` (Falcon-RW: ALiBi, tied embeddings) |
| `num_layers` | {args.num_layers} |
| `hidden_dim` | {args.hidden_dim} |
| `num_attention_heads` | {args.num_heads} (head dim {args.hidden_dim // args.num_heads}) |
| `intermediate_dim` | {args.intermediate_dim} |
| `vocabulary_size` | {r['backbone_vocab']} (tokenizer {r['tok_size']}, rounded up to a multiple of {args.pad_vocab_to}) |
| `layer_norm_epsilon` | 1e-5 |
| dropout | {args.dropout} |
| parameters | {r['n_params']:,} |
| preprocessor | `FalconCausalLMPreprocessor(sequence_length={args.sequence_length})` |
| saved dtype | {args.save_dtype} |

`model.weights.h5` holds {len(r['datasets'])} datasets ({sum(math.prod(d[1]) for d in r['datasets']):,} values), stored as
Keras 3 writes bfloat16: 2-byte opaque HDF5 type (`|V2`) with the attribute `dtype = "bfloat16"`; e.g.
`layers/reversible_embedding/vars/0` is the {r['backbone_vocab']} x {args.hidden_dim} (tied) token embedding. The
architecture is also saved in `config.json`, the tokenizer in `assets/tokenizer/vocabulary.json` + `merges.txt`.

## Training

`FalconCausalLM.fit` on pre-tokenized windows, float32. Each window is `[<|endoftext|>]` followed by
{args.sequence_length} text tokens of the training split, i.e. exactly what `FalconCausalLMPreprocessor` produces for a
text of that length (it prepends the start token). {args.turn_fraction:.0%} of the windows of every batch start at a
speaker turn (right after a blank line; drawn from seeded permutations of all {r['n_starts']:,} turn starts), the rest
at uniformly random tokens (turn starts alone would never show the model ~18% of the tokens, deep in long speeches).
{r['total_steps']} steps ({args.epochs} epochs x {r['steps_per_epoch']} steps, one pass-equivalent of the
{r['n_train_tokens']:,} training tokens each) of batch {args.batch_size} x {args.sequence_length}.
AdamW (beta 0.9/0.95, weight decay {args.weight_decay}, not on biases and LayerNorm), peak LR {args.lr:g}
with {args.warmup_steps} linear warmup steps then cosine decay to {args.min_lr_ratio:g} x peak, global gradient-norm
clipping {args.clipnorm:g}.

Training time, including the per-epoch validation passes: **{r['train_seconds'] / 60:.1f} min wall,
{r['train_cpu_seconds'] / 60:.1f} min CPU** with {args.threads} thread(s), on a shared {os.cpu_count()}-core machine
(load average {r['load']:.1f} during the run, so the wall time is inflated by other jobs). The whole script, incl.
tokenizer training, evaluation, saving and generation, took {r['total_seconds'] / 60:.1f} min wall.

| epoch | train loss (running) | validation loss | validation perplexity |
|---|---|---|---|
{epoch_rows}

## Results

Evaluated after training on consecutive non-overlapping `[<|endoftext|>] + {args.sequence_length}`-token windows of
each split (they start at arbitrary tokens, not at speaker turns; loss is the mean per-token cross-entropy in nats,
perplexity is per BPE token):

| split | loss | perplexity |
|---|---|---|
| train | {r['train_loss']:.4f} | {math.exp(r['train_loss']):.2f} |
| validation | {r['val_loss']:.4f} | {math.exp(r['val_loss']):.2f} |

Validation: {r['val_bpc']:.3f} bits per character, next-token accuracy {r['val_acc']:.3f}. The saved bfloat16 preset,
reloaded with `from_preset`, has validation loss {r['loaded_val_loss']:.4f}
(perplexity {math.exp(r['loaded_val_loss']):.2f}).

## Sample generations

`generate({args.prompt!r}, max_length={args.max_length})` with `sampler="greedy"`:

```
{r['greedy']}
```

With `keras_hub.samplers.TopKSampler(k=10, seed={args.seed})`:

```
{r['topk']}
```
"""
    (Path(out) / "TRAINING.md").write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
