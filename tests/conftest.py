"""Shared fixtures: tiny random Falcon models and presets built on the spot (nothing is downloaded).

`--runslow` also runs the tests marked `slow` (full-size or multi-minute work)."""

import contextlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras-hub references run on torch, before any keras import

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
END_OF_TEXT = "<|endoftext|>"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow (full size)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size or multi-minute tests; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_bpe(shakespeare_text) -> tuple[dict[str, int], list[str]]:
    """A GPT-2 style byte-level BPE (vocab ~400) trained on Shakespeare, `<|endoftext|>` last as in GPT-2."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([shakespeare_text[:100_000]], vocab_size=400, show_progress=False)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[END_OF_TEXT] = len(vocab)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model["merges"]]
    return vocab, merges


def tiny_config_kwargs(**overrides) -> dict:
    """HF-spelled sizes of a tiny Falcon; vocab 448 holds the tiny BPE's 401 tokens (rows beyond are unused)."""
    return {
        "vocab_size": 448,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "bos_token_id": 400,
        "eos_token_id": 400,
        "pad_token_id": 400,
        **overrides,
    }


@pytest.fixture
def tiny_config():
    from falcon_hf import FalconHFConfig

    return FalconHFConfig(**tiny_config_kwargs())


@pytest.fixture
def tiny_model(tiny_config):
    from falcon_hf import FalconHFForCausalLM

    return FalconHFForCausalLM(tiny_config).eval()


@pytest.fixture
def tiny_tokenizer(tiny_bpe):
    from falcon_hf import FalconHFTokenizer

    vocab, merges = tiny_bpe
    return FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def build_keras_causal_lm(tiny_bpe, seed: int = 0, sequence_length: int = 32, dtype: str | None = None,
                          perturb=None, **backbone_overrides):
    """A random-weight keras-hub `FalconCausalLM` with the tiny BPE, compiled with greedy sampling.

    `perturb(backbone)` changes the initial weights (default: `randomize_layer_norms`); `dtype` is the backbone's.
    """
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocab, merges = tiny_bpe
    backbone_kwargs = {
        "vocabulary_size": 448,
        "num_layers": 2,
        "num_attention_heads": 4,
        "hidden_dim": 32,
        "intermediate_dim": 128,
        **backbone_overrides,
    }
    backbone = keras_hub.models.FalconBackbone(**backbone_kwargs, dtype=dtype)
    (perturb or randomize_layer_norms)(backbone)
    tokenizer = keras_hub.models.FalconTokenizer(vocabulary=vocab, merges=merges)
    preprocessor = keras_hub.models.FalconCausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    causal_lm = keras_hub.models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor)
    causal_lm.compile(sampler="greedy")
    return causal_lm


def randomize_layer_norms(backbone):
    """LayerNorms start at gamma=1, beta=0, which would hide a gamma/beta swap in a converter."""
    import numpy as np

    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        if "layer_norm" in variable.path or "layernorm" in variable.path:
            variable.assign(variable.numpy() + rng.normal(0, 0.1, variable.shape).astype(variable.dtype))


def randomize_every_weight(backbone):
    """Every variable random (LayerNorm gammas around 1): zero biases would also hide a q/k/v bias mix-up."""
    import numpy as np

    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        values = rng.normal(0.0, 0.2, tuple(variable.shape)) + (1.0 if "gamma" in variable.path else 0.0)
        variable.assign(values.astype("float32"))


@pytest.fixture(scope="session")
def make_keras_preset(tmp_path_factory, tiny_bpe):
    """Factory: save a random keras-hub Falcon preset (backbone sizes, `dtype`, `perturb` overridable) and return its
    folder."""

    def make(name: str = "tiny_falcon", **overrides) -> Path:
        path = tmp_path_factory.mktemp("keras_presets") / name
        build_keras_causal_lm(tiny_bpe, **overrides).save_to_preset(str(path))
        return path

    return make


@pytest.fixture(scope="session")
def keras_preset(make_keras_preset) -> Path:
    """The default tiny random keras-hub Falcon preset (4 heads, 2 layers, hidden 32)."""
    return make_keras_preset()


@pytest.fixture(scope="session")
def tiny_keras_preset(make_keras_preset) -> Path:
    """A float32 tiny preset with every weight random, as keras-hub saves it. Read-only: copy it to change it."""
    return make_keras_preset("tiny_falcon_random", perturb=randomize_every_weight)


@pytest.fixture(scope="session")
def tiny_keras_preset_bf16(make_keras_preset) -> Path:
    """The same in bfloat16 (2-byte datasets marked `dtype="bfloat16"`). Read-only."""
    return make_keras_preset("tiny_falcon_random_bf16", dtype="bfloat16", perturb=randomize_every_weight)


@pytest.fixture(scope="session")
def tiny_hf_folder(tiny_keras_preset, tmp_path_factory) -> Path:
    """`tiny_keras_preset` converted by `convert_keras_preset` (float32). Read-only."""
    from falcon_hf.conversion import convert_keras_preset

    return convert_keras_preset(tiny_keras_preset, tmp_path_factory.mktemp("hf") / "tiny_falcon_hf")


@pytest.fixture
def kagglehub_cache(tmp_path, monkeypatch, tiny_keras_preset) -> Path:
    """The tiny preset where kagglehub caches `falcon_refinedweb_1b_en` version 2, with downloads turned off.

    Returns the preset's folder in the cache: `$KAGGLEHUB_CACHE/models/keras/falcon/keras/falcon_refinedweb_1b_en/2`.
    """
    cache = tmp_path / "kagglehub"
    folder = cache / "models" / "keras" / "falcon" / "keras" / "falcon_refinedweb_1b_en" / "2"
    shutil.copytree(tiny_keras_preset, folder)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture
def single_thread():
    """One torch thread for a tiny-model test (`pytestmark = pytest.mark.usefixtures("single_thread")`): on a shared,
    busy CPU, thread hand-offs cost more than the tiny matmuls (layer norms of a few hundred floats took ~15 ms with 2
    threads under load, ~0.1 ms with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def detached_preprocessor(*models):
    """keras-hub's `generate`/`fit`/`evaluate` take token-id dicts only with `preprocessor=None`."""
    saved = [model.preprocessor for model in models]
    for model in models:
        model.preprocessor = None
    try:
        yield
    finally:
        for model, preprocessor in zip(models, saved):
            model.preprocessor = preprocessor
