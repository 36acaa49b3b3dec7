"""`falcon_hf.models.FalconCausalLM.generate` vs keras-hub's on the same random weights (greedy unless stated).

Both models load the same keras-hub preset: keras-hub's own `from_preset`, ours through the production converter. The
prompts avoid the two places where the tokenizers differ (runs of 2+ whitespace characters, contractions glued to
letters such as "go'st").
"""

import itertools

import numpy as np
import pytest

from conftest import detached_preprocessor

from falcon_hf.models import FalconCausalLM

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["I want to say", "This is a", "Where are you going now, my lord", "O"]


@pytest.fixture(scope="module")
def theirs(tiny_keras_preset):
    import keras_hub

    return keras_hub.models.FalconCausalLM.from_preset(str(tiny_keras_preset))


@pytest.fixture
def twins(theirs, tiny_keras_preset):
    theirs.compile(sampler="greedy")
    return FalconCausalLM.from_preset(str(tiny_keras_preset)), theirs


def right_padded_prompts(start_id: int, width: int = 12) -> dict:
    """Three prompts of lengths 4, 2 and 6 after the start token, right-padded with 0 as keras-hub's preprocessor
    pads."""
    lengths = np.array([4, 2, 6])
    token_ids = np.zeros((3, width), dtype=np.int64)
    token_ids[:, :6] = [[start_id, 5, 6, 7, 8, 9]] * 3
    padding_mask = np.arange(width)[None, :] < lengths[:, None]
    token_ids[~padding_mask] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def assert_same_dict(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], np.asarray(value), err_msg=key)


def start_id(model) -> int:
    return model.preprocessor.tokenizer.start_token_id


def test_default_sampler_is_greedy_as_documented(twins):
    ours, _ = twins
    assert type(ours.sampler).__name__ == "GreedySampler"


@pytest.mark.parametrize("strip_prompt", [False, True])
def test_single_and_batched_prompts_give_keras_hubs_strings(twins, strip_prompt):
    ours, theirs = twins
    for prompts in (PROMPTS[0], PROMPTS):
        expected = theirs.generate(prompts, max_length=20, strip_prompt=strip_prompt)
        assert ours.generate(prompts, max_length=20, strip_prompt=strip_prompt) == expected


def test_max_length_defaults_to_the_preprocessors_sequence_length(twins):
    ours, theirs = twins
    assert ours.preprocessor.sequence_length == theirs.preprocessor.sequence_length
    assert ours.generate(PROMPTS) == theirs.generate(PROMPTS)


def test_prompt_longer_than_max_length_is_truncated_like_keras_hub(twins):
    ours, theirs = twins
    assert ours.generate(PROMPTS[2], max_length=5) == theirs.generate(PROMPTS[2], max_length=5)


def test_dict_without_preprocessor_gives_keras_hubs_dict(twins):
    ours, theirs = twins
    prompts = right_padded_prompts(start_id(ours))
    with detached_preprocessor(ours, theirs):
        expected = theirs.generate(dict(prompts), stop_token_ids=None)
        assert_same_dict(ours.generate(dict(prompts), stop_token_ids=None), expected)


def test_stop_tokens_end_rows_exactly_where_keras_hubs_lockstep_loop_does(twins):
    """keras-hub runs rows in lockstep from the shortest prompt and keeps writing into rows that already stopped;
    token_ids and padding_mask must match for every stop set drawn from an unstopped run (0 excluded: keras-hub
    pads with 0 and would count its own padding as stop tokens)."""
    ours, theirs = twins
    prompts = right_padded_prompts(start_id(ours))
    with detached_preprocessor(ours, theirs):
        unstopped = np.asarray(theirs.generate(dict(prompts), stop_token_ids=None)["token_ids"])
        candidates = sorted(set(unstopped[:, 2:].ravel().tolist()) - {0})
        stop_sets = [(token,) for token in candidates] + list(itertools.combinations(candidates, 2))[::7]
        for index, stop in enumerate(stop_sets):
            strip = index % 2 == 1
            expected = theirs.generate(dict(prompts), stop_token_ids=stop, strip_prompt=strip)
            assert_same_dict(ours.generate(dict(prompts), stop_token_ids=stop, strip_prompt=strip), expected)
    assert len(stop_sets) >= 6


def test_a_datasets_dataset_and_an_iterable_of_batches_are_generated_batch_by_batch(twins):
    import datasets

    ours, _ = twins
    expected = ours.generate(PROMPTS, max_length=14)
    assert ours.generate(datasets.Dataset.from_dict({"text": PROMPTS}), max_length=14) == expected
    assert ours.generate(iter([PROMPTS[:1], PROMPTS[1:]]), max_length=14) == expected


def test_dict_prompts_with_a_preprocessor_attached_skip_it(twins):
    ours, _ = twins
    prompts = right_padded_prompts(start_id(ours))
    with_preprocessor = ours.generate(dict(prompts), stop_token_ids=None)
    with detached_preprocessor(ours):
        assert_same_dict(with_preprocessor, ours.generate(dict(prompts), stop_token_ids=None))


def test_generate_restores_training_mode(twins):
    ours, _ = twins
    ours.train()
    ours.generate(PROMPTS[0], max_length=8)
    assert ours.training and ours.backbone.hf_model.training


def test_bad_inputs_are_refused_with_a_reason(twins):
    ours, _ = twins
    prompts = right_padded_prompts(start_id(ours))
    prompts["padding_mask"] = prompts["padding_mask"][:, ::-1]
    with pytest.raises(ValueError, match="right padding"):
        ours.generate(prompts)
    with detached_preprocessor(ours), pytest.raises(ValueError, match="needs a preprocessor"):
        ours.generate("text")
    with pytest.raises(ValueError, match="stop_token_ids"):
        ours.generate("text", stop_token_ids="end")
