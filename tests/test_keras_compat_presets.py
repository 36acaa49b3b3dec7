"""`from_preset` from every kind of source, `load_weights=False`, and saving back to Keras and HF folders."""

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from falcon_hf.models import FalconBackbone, FalconCausalLM, FalconCausalLMPreprocessor, FalconTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["I want to say", "To be, or not to be"]
KAGGLE_HANDLE = "kaggle://keras/falcon/keras/falcon_refinedweb_1b_en"


@pytest.fixture(scope="module")
def sequence_length(tiny_keras_preset) -> int:
    import json

    return json.loads((tiny_keras_preset / "preprocessor.json").read_text())["config"]["sequence_length"]


@pytest.fixture(scope="module")
def reference(tiny_keras_preset):
    """Greedy strings of the tiny preset loaded from its folder: every other source must give the same."""
    return FalconCausalLM.from_preset(str(tiny_keras_preset)).generate(PROMPTS, max_length=14)


@pytest.fixture
def hf_hub_cache(tiny_hf_folder, tmp_path, monkeypatch):
    """`tiny_hf_folder` as huggingface_hub caches the repo `someone/tiny-falcon`, with downloads turned off."""
    import huggingface_hub

    repo = tmp_path / "hub" / "models--someone--tiny-falcon"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_hf_folder, repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "hf://someone/tiny-falcon"


SOURCES = {
    "builtin_name": ("kagglehub_cache", "falcon_refinedweb_1b_en"),
    "kaggle_handle": ("kagglehub_cache", KAGGLE_HANDLE),
    "kaggle_handle_with_version": ("kagglehub_cache", KAGGLE_HANDLE + "/2"),
    "hf_handle": ("hf_hub_cache", None),
    "hf_folder": ("tiny_hf_folder", None),
}
"""Source -> (fixture that puts the tiny preset there, preset string; None: the fixture's value)."""


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_loads_the_same_model(request, reference, sequence_length, source):
    fixture, preset = SOURCES[source]
    location = request.getfixturevalue(fixture)
    falcon_lm = FalconCausalLM.from_preset(preset or str(location))
    assert falcon_lm.preprocessor.sequence_length == sequence_length
    assert falcon_lm.generate(PROMPTS, max_length=14) == reference


def test_load_weights_false_gives_random_weights_of_the_same_config(tiny_keras_preset, tiny_hf_folder):
    loaded = FalconCausalLM.from_preset(str(tiny_keras_preset))
    for preset in (tiny_keras_preset, tiny_hf_folder):
        torch.manual_seed(0)
        random = FalconCausalLM.from_preset(str(preset), load_weights=False)
        assert architecture(random) == architecture(loaded)
        assert not torch.equal(random.backbone.token_embedding.weight, loaded.backbone.token_embedding.weight)
        assert random.generate(PROMPTS[0], max_length=20).startswith(PROMPTS[0])


def architecture(falcon_lm) -> dict:
    return {key: value for key, value in falcon_lm.backbone.config.to_diff_dict().items()
            if key not in ("dtype", "auto_map")}


def test_from_preset_keyword_arguments(tiny_keras_preset):
    falcon_lm = FalconCausalLM.from_preset(str(tiny_keras_preset), preprocessor=None, dtype="bfloat16")
    assert falcon_lm.preprocessor is None
    assert falcon_lm.backbone.token_embedding.weight.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="sequence_length"):
        FalconCausalLM.from_preset(str(tiny_keras_preset), sequence_length=8)
    with pytest.raises(ValueError, match="no such preset"):
        FalconCausalLM.from_preset(str(tiny_keras_preset / "missing"))


def test_parts_load_from_presets_like_keras_hub(tiny_keras_preset):
    import keras_hub

    backbone = FalconBackbone.from_preset(str(tiny_keras_preset))
    theirs = keras_hub.models.FalconBackbone.from_preset(str(tiny_keras_preset))
    assert backbone.count_params() == theirs.count_params()
    for name in ("num_layers", "num_attention_heads", "hidden_dim", "intermediate_dim", "vocabulary_size"):
        assert getattr(backbone, name) == getattr(theirs, name), name
    tokenizer = FalconTokenizer.from_preset(str(tiny_keras_preset))
    their_tokenizer = keras_hub.models.FalconTokenizer.from_preset(str(tiny_keras_preset))
    for name in ("start_token_id", "end_token_id", "pad_token_id"):
        assert getattr(tokenizer, name) == getattr(their_tokenizer, name), name
    assert tokenizer.vocabulary_size() == their_tokenizer.vocabulary_size()
    assert tokenizer.get_vocabulary() == list(their_tokenizer.get_vocabulary())
    preprocessor = FalconCausalLMPreprocessor.from_preset(str(tiny_keras_preset), sequence_length=8)
    assert preprocessor.sequence_length == 8 and preprocessor.add_start_token and preprocessor.add_end_token


def test_save_to_preset_is_loaded_by_keras_hub(tiny_keras_preset, tmp_path, reference, sequence_length):
    import keras_hub

    FalconCausalLM.from_preset(str(tiny_keras_preset)).save_to_preset(tmp_path / "preset")
    theirs = keras_hub.models.FalconCausalLM.from_preset(str(tmp_path / "preset"))
    theirs.compile(sampler="greedy")
    assert theirs.generate(PROMPTS, max_length=14) == reference
    assert theirs.preprocessor.sequence_length == sequence_length
    assert FalconCausalLM.from_preset(str(tmp_path / "preset")).generate(PROMPTS, max_length=14) == reference


def test_save_pretrained_is_an_hf_folder_that_transformers_loads(tiny_keras_preset, tmp_path, reference,
                                                                 sequence_length):
    import falcon_hf  # noqa: F401  (registers the Auto classes)

    FalconCausalLM.from_preset(str(tiny_keras_preset)).save_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    inputs = tokenizer(PROMPTS[:1], return_tensors="pt")
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    output = model.generate(**inputs, max_new_tokens=14 - inputs["input_ids"].shape[1], do_sample=False)
    # transformers stops a finished row at `<|endoftext|>` and pads; keras-hub's strings drop it all the same.
    assert tokenizer.decode(output[0], skip_special_tokens=True) == reference[0]
    assert tokenizer.model_max_length == sequence_length
    reloaded = FalconCausalLM.from_preset(str(tmp_path / "hf"))
    np.testing.assert_array_equal(reloaded.predict(PROMPTS), FalconCausalLM.from_preset(
        str(tiny_keras_preset)).predict(PROMPTS))


def test_save_to_preset_needs_the_tokenizer(tiny_keras_preset, tmp_path):
    with pytest.raises(ValueError, match="preprocessor"):
        FalconCausalLM.from_preset(str(tiny_keras_preset), preprocessor=None).save_to_preset(tmp_path / "preset")
