"""Preprocessing, `fit`, `evaluate` and `predict` of `falcon_hf.models.FalconCausalLM` against keras-hub's.

keras-hub's defaults are the reference: its preprocessor's (x, y, sample_weight), its loss (weighted cross-entropy
summed over batch * length), Adam(2e-5) with Keras' epsilon, and its History.
"""

import functools

import numpy as np
import pytest

from conftest import detached_preprocessor
import torch

from falcon_hf.models import FalconCausalLM

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["The quick brown fox jumped.", "I forgot my homework.", "To be, or not to be: that is the question"]
LOSS_TOLERANCE = 1e-5  # fp32 logits of the same weights differ by ~1e-6 (summation order)


@pytest.fixture(scope="module")
def theirs(tiny_keras_preset):
    import keras_hub

    return keras_hub.models.FalconCausalLM.from_preset(str(tiny_keras_preset))


@pytest.fixture
def ours(tiny_keras_preset):
    return FalconCausalLM.from_preset(str(tiny_keras_preset))


def numpy_tree(value):
    if isinstance(value, dict):
        return {key: numpy_tree(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(numpy_tree(item) for item in value)
    return np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)


@pytest.mark.parametrize("inputs, sequence_length", [
    (TEXTS, None), (TEXTS, 6), (TEXTS[0], 40), (["", "O"], 4),
], ids=["batch", "truncated", "single_string", "empty_and_short"])
def test_preprocessor_gives_keras_hubs_x_y_sample_weight(ours, theirs, inputs, sequence_length):
    """Same ids, masks and dtypes; both pad token_ids with 0 (keras-hub's choice, kept for exact equality)."""
    expected = numpy_tree(theirs.preprocessor(inputs, sequence_length=sequence_length))
    actual = numpy_tree(ours.preprocessor(inputs, sequence_length=sequence_length))
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(actual[0][key], expected[0][key], err_msg=key)
        assert actual[0][key].dtype == expected[0][key].dtype
    np.testing.assert_array_equal(actual[1], expected[1])
    np.testing.assert_array_equal(actual[2], expected[2])


def test_generate_preprocess_and_postprocess_match_keras_hub(ours, theirs):
    expected = numpy_tree(theirs.preprocessor.generate_preprocess(TEXTS, sequence_length=12))
    actual = numpy_tree(ours.preprocessor.generate_preprocess(TEXTS, sequence_length=12))
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    assert ours.preprocessor.generate_postprocess(actual) == theirs.preprocessor.generate_postprocess(expected)


def test_evaluate_on_text_gives_keras_hubs_loss_and_accuracy(ours, theirs):
    expected = theirs.evaluate(x=TEXTS, batch_size=2, verbose=0, return_dict=True)
    actual = ours.evaluate(x=TEXTS, batch_size=2, return_dict=True)
    assert actual.keys() == expected.keys() == {"loss", "sparse_categorical_accuracy"}
    assert actual["loss"] == pytest.approx(expected["loss"], abs=LOSS_TOLERANCE)
    assert actual["sparse_categorical_accuracy"] == pytest.approx(expected["sparse_categorical_accuracy"])


def test_sample_weights_are_honoured_like_keras_hub(ours, theirs):
    """Fractional and zero weights: keras-hub divides the weighted sum by batch * length, not by the weights."""
    x, y, sample_weight = numpy_tree(ours.preprocessor(TEXTS))
    weights = sample_weight.astype(np.float32)
    weights[:, 1] *= 2.5
    weights[0, 3] = 0.0
    with detached_preprocessor(ours, theirs):
        expected = theirs.evaluate(x=x, y=y, sample_weight=weights, batch_size=3, verbose=0, return_dict=True)
        actual = ours.evaluate(x=x, y=y, sample_weight=weights, batch_size=3, return_dict=True)
    assert actual["loss"] == pytest.approx(expected["loss"], abs=LOSS_TOLERANCE)


def test_masking_one_label_removes_exactly_its_cross_entropy(ours):
    x, y, sample_weight = ours.preprocessor(TEXTS[:1])
    with detached_preprocessor(ours):
        full = ours.evaluate(x=x, y=y, sample_weight=sample_weight)[0]
        masked_weight = sample_weight.clone().float()
        masked_weight[0, 2] = 0.0
        masked = ours.evaluate(x=x, y=y, sample_weight=masked_weight)[0]
    with torch.no_grad():
        logits = ours(x)
    token_loss = float(torch.nn.functional.cross_entropy(logits[0, 2].float(), y[0, 2].long()))
    assert full - masked == pytest.approx(token_loss / y.numel(), rel=1e-4)
    assert full - masked > 0


def test_fit_on_text_follows_keras_hubs_default_training(tiny_keras_preset, ours):
    """Two epochs of one batch: epoch 1 logs the loss before any update, epoch 2 after one Adam(2e-5) step."""
    import keras_hub

    theirs = keras_hub.models.FalconCausalLM.from_preset(str(tiny_keras_preset))  # fresh: fit changes weights
    expected = theirs.fit(x=TEXTS, batch_size=3, epochs=2, verbose=0, shuffle=False).history
    actual = ours.fit(x=TEXTS, batch_size=3, epochs=2, shuffle=False).history
    assert actual.keys() == expected.keys()
    np.testing.assert_allclose(actual["loss"], expected["loss"], atol=LOSS_TOLERANCE)
    assert actual["loss"][1] < actual["loss"][0]


def test_fit_on_preprocessed_arrays_lowers_the_loss(ours, shakespeare_text):
    texts = [line for line in shakespeare_text[:2000].split("\n") if line.strip()][:8]
    x, y, sample_weight = numpy_tree(ours.preprocessor(texts))
    ours.compile(optimizer=functools.partial(torch.optim.Adam, lr=1e-2), sampler="greedy")
    with detached_preprocessor(ours):
        before = ours.evaluate(x=x, y=y, sample_weight=sample_weight)[0]
        history = ours.fit(x=x, y=y, sample_weight=sample_weight, batch_size=4, epochs=4)
        after = ours.evaluate(x=x, y=y, sample_weight=sample_weight)[0]
    assert len(history.history["loss"]) == 4 and history.epoch == [0, 1, 2, 3]
    assert after < before - 0.5
    assert not ours.training  # fit restores the mode it found


def test_predict_gives_keras_hubs_logits(ours, theirs):
    expected = np.asarray(theirs.predict(TEXTS, batch_size=2, verbose=0))
    actual = ours.predict(TEXTS, batch_size=2)
    assert actual.shape == expected.shape == (3, ours.preprocessor.sequence_length, ours.backbone.vocabulary_size)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_training_inputs_are_checked(ours):
    with pytest.raises(ValueError, match="preprocessor computes y"):
        ours.fit(x=TEXTS, y=np.zeros((3, 4)))
    with detached_preprocessor(ours), pytest.raises(ValueError, match="needs a preprocessor"):
        ours.fit(x=TEXTS)
    x, _, _ = ours.preprocessor(TEXTS)
    with pytest.raises(ValueError, match="needs y"):
        ours.fit(x=x)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        ours.compile(optimizer="lamb")
