"""Every example of keras-hub's `FalconCausalLM` documentation, with `keras_hub` replaced by `falcon_hf`.

`falcon_refinedweb_1b_en` resolves to a random tiny preset (2 layers, hidden 32, but the real 50304-row embedding so
the documentation's token ids exist) placed where kagglehub caches the real one; downloads are off. Each example's
output is checked against keras-hub's on the same preset folder.
"""

import math
import shutil

import numpy as np
import pytest
import torch

import falcon_hf

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed"),  # keras-hub's own fit on its tf.data pipeline
]

PRESET = "falcon_refinedweb_1b_en"
FEATURES = ["The quick brown fox jumped.", "I forgot my homework."]
DOC_VOCAB = {"<|endoftext|>": 0, "a": 4, "Ġquick": 5, "Ġfox": 6}
DOC_MERGES = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick"] + ["Ġ f", "o x", "Ġf ox"]


@pytest.fixture(scope="module")
def preset_folder(make_keras_preset, tmp_path_factory):
    """The doc preset in a kagglehub-style cache, `KAGGLEHUB_CACHE` pointing at it for the whole module."""
    cache = tmp_path_factory.mktemp("kagglehub")
    folder = cache / "models" / "keras" / "falcon" / "keras" / PRESET / "2"
    shutil.copytree(make_keras_preset("doc_falcon", vocabulary_size=50304), folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAGGLEHUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield folder


def keras_hub_model(folder, sampler="greedy", **kwargs):
    import keras_hub

    model = keras_hub.models.FalconCausalLM.from_preset(str(folder), **kwargs)
    model.compile(sampler=sampler)
    return model


def test_presets_list_keras_hubs_builtin_presets_with_size_and_description():
    from keras_hub.src.models.falcon.falcon_presets import backbone_presets

    presets = falcon_hf.models.FalconCausalLM.presets
    assert PRESET in list(presets.keys())  # the documentation's `cls.presets.keys()`
    for name, expected in backbone_presets.items():
        assert presets[name]["metadata"]["params"] == expected["metadata"]["params"] == 1_311_625_216
        assert presets[name]["metadata"]["description"] == expected["metadata"]["description"]
        assert presets[name]["kaggle_handle"] == expected["kaggle_handle"]


def test_generate_example(preset_folder):
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    single = falcon_lm.generate("I want to say", max_length=30)
    batched = falcon_lm.generate(["This is a", "Where are you"], max_length=30)

    theirs = keras_hub_model(preset_folder)
    assert single.startswith("I want to say")
    assert single == theirs.generate("I want to say", max_length=30)
    assert batched == theirs.generate(["This is a", "Where are you"], max_length=30)


def test_custom_sampler_example(preset_folder):
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    falcon_lm.compile(sampler="top_k")
    sampled = falcon_lm.generate("I want to say", max_length=30)
    falcon_lm.compile(sampler=falcon_hf.samplers.BeamSampler(num_beams=2))
    beam = falcon_lm.generate("I want to say", max_length=30)

    import keras_hub

    assert sampled.startswith("I want to say")
    assert isinstance(falcon_lm.sampler, falcon_hf.samplers.BeamSampler)
    assert beam == keras_hub_model(preset_folder, keras_hub.samplers.BeamSampler(num_beams=2)).generate(
        "I want to say", max_length=30)


def test_generate_without_preprocessing_example(preset_folder):
    prompt = {
        # Token ids for "<|endoftext|> Keras is".
        "token_ids": np.array([[50256, 17337, 292, 318]] * 2),
        # Use `"padding_mask"` to indicate values that should not be overridden.
        "padding_mask": np.array([[1, 1, 1, 1]] * 2),
    }
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en", preprocessor=None)
    output = falcon_lm.generate(prompt)

    # The prompt fills the whole width: as in keras-hub, nothing is generated and the dict comes back.
    np.testing.assert_array_equal(output["token_ids"], prompt["token_ids"])
    assert output["padding_mask"].dtype == bool and output["padding_mask"].all()
    theirs = keras_hub_model(preset_folder, preprocessor=None)
    with pytest.raises(ValueError, match="stop_token_ids"):  # keras-hub's own example fails on "auto"
        theirs.generate(prompt)
    room = {key: np.pad(value, ((0, 0), (0, 6))) for key, value in prompt.items()}
    expected = theirs.generate(room, stop_token_ids=None)
    actual = falcon_lm.generate(room, stop_token_ids=None)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


def test_fit_example(preset_folder):
    features = ["The quick brown fox jumped.", "I forgot my homework."]
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    before = falcon_lm.backbone.token_embedding.weight.detach().clone()
    history = falcon_lm.fit(x=features, batch_size=2)

    expected = keras_hub_model(preset_folder).fit(x=features, batch_size=2, verbose=0).history
    assert history.history["loss"] == pytest.approx(expected["loss"], abs=1e-5)  # one batch: the loss before the step
    assert not torch.equal(falcon_lm.backbone.token_embedding.weight, before)


def test_fit_without_preprocessing_example(preset_folder):
    x = {
        # Token ids for "<|endoftext|> Keras is deep learning library<|endoftext|>"
        "token_ids": np.array([[50256, 17337, 292, 318, 2769, 4673, 5888, 50256, 0]] * 2),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0]] * 2),
    }
    y = np.array([[17337, 292, 318, 2769, 4673, 5888, 50256, 0, 0]] * 2)
    sw = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0]] * 2)
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en", preprocessor=None)
    history = falcon_lm.fit(x=x, y=y, sample_weight=sw, batch_size=2)

    expected = keras_hub_model(preset_folder, preprocessor=None).fit(x=x, y=y, sample_weight=sw, batch_size=2,
                                                                     verbose=0).history
    assert history.history["loss"] == pytest.approx(expected["loss"], abs=1e-5)


def test_keras_hub_refuses_the_custom_vocabulary_example():
    import keras_hub

    with pytest.raises(ValueError, match="not in the vocabulary"):
        keras_hub.models.FalconTokenizer(vocabulary=DOC_VOCAB, merges=DOC_MERGES)


def run_custom_vocabulary_example(backbone_kwargs: dict):
    """The documentation's custom-vocabulary example; returns the model and its `fit` history."""
    vocab = {"<|endoftext|>": 0, "a": 4, "Ġquick": 5, "Ġfox": 6}
    merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick"]
    merges += ["Ġ f", "o x", "Ġf ox"]
    tokenizer = falcon_hf.models.FalconTokenizer(
        vocabulary=vocab,
        merges=merges,
    )
    preprocessor = falcon_hf.models.FalconCausalLMPreprocessor(
        tokenizer=tokenizer,
        sequence_length=128,
    )
    backbone = falcon_hf.models.FalconBackbone(**backbone_kwargs)
    falcon_lm = falcon_hf.models.FalconCausalLM(
        backbone=backbone,
        preprocessor=preprocessor,
    )
    return falcon_lm, falcon_lm.fit(x=FEATURES, batch_size=2)


def test_custom_vocabulary_example_with_a_smaller_backbone(caplog):
    """Same vocabulary, merges, 50304-row embedding and 64 heads as the documentation; 2 layers of width 128."""
    falcon_lm, history = run_custom_vocabulary_example(
        {"vocabulary_size": 50304, "num_layers": 2, "num_attention_heads": 64, "hidden_dim": 128,
         "intermediate_dim": 4 * 128})
    assert "Dropped 8 of 8 BPE merges" in caplog.text
    assert len(history.history["loss"]) == 1 and math.isfinite(history.history["loss"][0])
    assert falcon_lm.preprocessor.tokenizer("a quick fox.").tolist() == [4]  # no merge survives: only "a" is known
    # `<|endoftext|>` is id 0 here, keras-hub's padding id: keras-hub would take its own padding for stop tokens and
    # generate nothing; ours looks for stop tokens among the generated ones only.
    assert falcon_lm.backbone.config.eos_token_id == 0
    assert falcon_lm.generate("a", max_length=6).startswith("a")


@pytest.mark.slow
def test_custom_vocabulary_example_at_full_size():
    """The documentation's exact 24-layer, 2048-wide backbone (1.3B random parameters; Adam needs ~21 GB)."""
    _, history = run_custom_vocabulary_example(
        {"vocabulary_size": 50304, "num_layers": 24, "num_attention_heads": 64, "hidden_dim": 2048,
         "intermediate_dim": 4 * 2048})
    assert math.isfinite(history.history["loss"][0])
