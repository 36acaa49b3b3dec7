"""Generation limits: bad lengths get a clear error, empty prompts and batches behave as documented, and a stop token
inside a prompt never ends generation early, in transformers' `generate` and in the keras-hub-compatible API.

transformers already refuses `max_length` at or below the prompt length and `max_new_tokens <= 0`; these tests check
that it still does for our model, and that our own checks (empty input, past `max_position_embeddings`) fire.
"""

import numpy as np
import pytest
import torch
from transformers import pipeline

from falcon_hf import FalconHFConfig, FalconHFForCausalLM, FalconHFTokenizer
from falcon_hf.models import FalconCausalLM

from conftest import tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")

EOS = 400  # the tiny BPE's <|endoftext|>, bos = eos = pad
LIMIT = 24  # max_position_embeddings of the HF model below
PROMPT = torch.tensor([[EOS, 17, 250, 33, 100]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FalconHFForCausalLM(FalconHFConfig(**tiny_config_kwargs(max_position_embeddings=LIMIT))).eval()


def greedy(model, input_ids, **kwargs):
    return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, **kwargs)


# --- transformers' generate -------------------------------------------------------------------------------------


BAD_LENGTHS = {
    "max_length below the prompt": ({"max_length": 3}, "`max_length` is set to 3"),
    "max_length equal to the prompt": ({"max_length": 5}, "`max_length` is set to 5"),
    "max_length zero": ({"max_length": 0}, "`max_length` is set to 0"),
    "max_length negative": ({"max_length": -4}, "`max_length` is set to -4"),
    "max_new_tokens zero": ({"max_new_tokens": 0}, "`max_new_tokens` must be greater than 0"),
    "max_new_tokens negative": ({"max_new_tokens": -1}, "`max_new_tokens` must be greater than 0"),
    "max_new_tokens past the limit": ({"max_new_tokens": LIMIT}, f"past max_position_embeddings={LIMIT}"),
    "max_length past the limit": ({"max_length": LIMIT + 1}, f"past max_position_embeddings={LIMIT}"),
}


@pytest.mark.parametrize("lengths, message", list(BAD_LENGTHS.values()), ids=list(BAD_LENGTHS))
def test_bad_lengths_are_refused_by_generate(model, lengths, message):
    with pytest.raises(ValueError, match=message):
        greedy(model, PROMPT, **lengths)


def test_generation_up_to_the_limit_is_allowed(model):
    assert greedy(model, PROMPT, max_length=LIMIT, eos_token_id=None).shape == (1, LIMIT)
    # Without an explicit length transformers caps its default at max_position_embeddings: no error there.
    long_prompt = torch.full((1, LIMIT - 2), 17)
    assert greedy(model, long_prompt, eos_token_id=None).shape == (1, LIMIT)


@pytest.mark.parametrize("shape", [(1, 0), (0, 5)], ids=["empty prompt", "empty batch"])
def test_empty_input_ids_are_refused_clearly(model, shape):
    with pytest.raises(ValueError, match=rf"input_ids of shape \({shape[0]}, {shape[1]}\) is empty"):
        model.generate(torch.zeros(shape, dtype=torch.long), max_new_tokens=3)


def test_no_input_ids_starts_from_the_bos_token(model):
    output = model.generate(max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert output[0, 0].item() == EOS and output.shape == (1, 4)


@pytest.mark.parametrize("prompt", [[17, EOS], [EOS, 17, EOS, 250, EOS]], ids=["ending in eos", "eos inside"])
def test_eos_in_the_prompt_does_not_stop_generation(model, prompt):
    input_ids = torch.tensor([prompt])
    stopping = greedy(model, input_ids, max_new_tokens=6, eos_token_id=EOS)[0, len(prompt):].tolist()
    free = greedy(model, input_ids, max_new_tokens=6, eos_token_id=None)[0, len(prompt):].tolist()
    assert len(stopping) >= 1
    expected = free[: free.index(EOS) + 1] if EOS in free else free  # up to and including the first new eos
    assert stopping[: len(expected)] == expected


def test_pipeline_continues_an_empty_prompt_and_refuses_lengths_past_the_limit(tiny_hf_folder):
    """The converted tokenizer adds `<|endoftext|>` (as keras-hub's preprocessor does), so "" is a valid prompt.
    (An empty list of prompts is transformers' pipeline's business: 5.24 raises IndexError on it.)"""
    generator = pipeline("text-generation", model=str(tiny_hf_folder), tokenizer=str(tiny_hf_folder), device="cpu")
    tokenizer = FalconHFTokenizer.from_pretrained(tiny_hf_folder)
    assert tokenizer("")["input_ids"] == [tokenizer.bos_token_id]
    (result,) = generator("", max_new_tokens=4, do_sample=False)
    assert isinstance(result["generated_text"], str)
    with pytest.raises(ValueError, match="past max_position_embeddings"):
        generator("ROMEO:", max_new_tokens=generator.model.config.max_position_embeddings)


# --- the keras-hub compatible API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def theirs(tiny_keras_preset):
    import keras_hub

    model = keras_hub.models.FalconCausalLM.from_preset(str(tiny_keras_preset))
    model.compile(sampler="greedy")
    return model


@pytest.fixture(scope="module")
def ours(tiny_keras_preset):
    return FalconCausalLM.from_preset(str(tiny_keras_preset))


@pytest.mark.parametrize("max_length", [0, -3, 1.5, True, "8"])
def test_keras_api_refuses_max_length_that_is_not_a_positive_integer(ours, max_length):
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        ours.generate("O", max_length=max_length)


def test_keras_api_refuses_lengths_past_max_position_embeddings(ours):
    limit = ours.backbone.hf_model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_length={limit + 1} is past the model's max_position_embeddings"):
        ours.generate("O", max_length=limit + 1)
    wide = {"token_ids": np.zeros((1, limit + 1), dtype=np.int32), "padding_mask": np.arange(limit + 1)[None] < 2}
    with pytest.raises(ValueError, match="width of token_ids"):
        ours.generate(wide)


def test_keras_api_cuts_prompts_longer_than_max_length_as_keras_hub_does(ours, theirs):
    """keras-hub's documented contract: `max_length` is the whole length; a longer prompt is cut to it."""
    prompt = "Where are you going now, my lord"
    assert ours.generate(prompt, max_length=4) == theirs.generate(prompt, max_length=4)


def test_keras_api_continues_an_empty_prompt_from_the_start_token_like_keras_hub(ours, theirs):
    assert ours.generate("", max_length=10) == theirs.generate("", max_length=10)
    assert ours.generate(["", "O"], max_length=10) == theirs.generate(["", "O"], max_length=10)


def test_keras_api_returns_nothing_for_empty_batches(ours):
    import datasets

    assert ours.generate([], max_length=8) == []
    assert ours.generate(datasets.Dataset.from_dict({"text": []}), max_length=8) == []
    assert ours.generate(iter([]), max_length=8) == []
    empty = {"token_ids": np.zeros((0, 8), dtype=np.int32), "padding_mask": np.zeros((0, 8), dtype=bool)}
    output = ours.generate(dict(empty))
    assert output["token_ids"].shape == (0, 8) and output["padding_mask"].shape == (0, 8)


def test_keras_api_end_token_inside_prompts_does_not_stop_them(ours, theirs):
    """Prompts holding `<|endoftext|>` (in the middle, at the end) still get new tokens, exactly as in keras-hub,
    whose stop check also skips the prompt positions."""
    prompts = ["O<|endoftext|>", "This is<|endoftext|> a", "<|endoftext|>"]
    assert ours.generate(prompts, max_length=12) == theirs.generate(prompts, max_length=12)
    start = ours.preprocessor.tokenizer.start_token_id
    token_ids = np.zeros((2, 10), dtype=np.int32)
    token_ids[:, :4] = [[start, 5, start, start], [start, start, 7, 0]]
    padding_mask = np.arange(10)[None, :] < np.array([[4], [3]])
    saved = ours.preprocessor, theirs.preprocessor
    ours.preprocessor = theirs.preprocessor = None  # keras-hub takes dicts only without a preprocessor
    try:
        output = ours.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=(start,))
        expected = theirs.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=(start,))
    finally:
        ours.preprocessor, theirs.preprocessor = saved
    np.testing.assert_array_equal(output["token_ids"], np.asarray(expected["token_ids"]))
    np.testing.assert_array_equal(output["padding_mask"], np.asarray(expected["padding_mask"]))
    assert (output["padding_mask"].sum(axis=1) > padding_mask.sum(axis=1)).all()  # every row got a new token
