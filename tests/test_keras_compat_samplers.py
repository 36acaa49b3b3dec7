"""`falcon_hf.samplers`: keras-hub's samplers as `GenerationConfig` settings, checked against keras-hub's samplers.

Deterministic samplers (beam, contrastive) must give keras-hub's strings on the same weights; random ones (top-k,
top-p, random) must draw every token from the set the sampler allows, repeat with the same seed and leave the global
torch RNG alone.
"""

import numpy as np
import pytest
import torch

from falcon_hf import samplers
from falcon_hf.models import FalconCausalLM

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["I want to say", "This is a", "Where are you going now, my lord", "O"]
WIDTH = 14


@pytest.fixture(scope="module")
def theirs(tiny_keras_preset):
    import keras_hub

    return keras_hub.models.FalconCausalLM.from_preset(str(tiny_keras_preset))


@pytest.fixture
def ours(tiny_keras_preset):
    return FalconCausalLM.from_preset(str(tiny_keras_preset))


def test_names_map_to_keras_hubs_sampler_classes():
    import keras_hub

    for name in ("greedy", "top_k", "top_p", "beam", "random", "contrastive"):
        ours, theirs = samplers.get(name), keras_hub.samplers.get(name)
        assert type(ours).__name__ == type(theirs).__name__
        assert ours.get_config() == theirs.get_config()
    assert isinstance(samplers.get({"class_name": "keras_hub>TopKSampler", "config": {"k": 3}}), samplers.TopKSampler)
    with pytest.raises(ValueError, match="Unknown sampler"):
        samplers.get("nucleus")


@pytest.mark.parametrize("sampler, settings", [
    (samplers.GreedySampler(), {"do_sample": False, "num_beams": 1}),
    (samplers.TopKSampler(k=7, temperature=0.5), {"do_sample": True, "top_k": 7, "top_p": 1.0, "temperature": 0.5}),
    (samplers.TopPSampler(p=0.3), {"do_sample": True, "top_p": 0.3, "top_k": 0, "temperature": 1.0}),
    (samplers.TopPSampler(p=0.3, k=20), {"do_sample": True, "top_p": 0.3, "top_k": 20, "temperature": 1.0}),
    (samplers.RandomSampler(), {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}),
    (samplers.BeamSampler(num_beams=2), {"do_sample": False, "num_beams": 2, "num_return_sequences": 1,
                                         "length_penalty": 0.0}),
])
def test_generation_config_settings(sampler, settings):
    assert sampler.generation_settings() == settings


@pytest.mark.parametrize("make_sampler", [
    lambda hub: hub.samplers.BeamSampler(num_beams=2),
    lambda hub: hub.samplers.BeamSampler(num_beams=3, temperature=0.5),
    lambda hub: hub.samplers.ContrastiveSampler(k=4, alpha=0.6),
    lambda hub: hub.samplers.ContrastiveSampler(k=3, alpha=0.3, temperature=2.0),
], ids=["beam2", "beam3_temperature", "contrastive", "contrastive_temperature"])
def test_deterministic_samplers_give_keras_hubs_strings(ours, theirs, make_sampler):
    """Beam: the highest-scoring of the final beams, as keras-hub returns it; contrastive: our loop, token by token.
    Beam prompts go one at a time (keras-hub's batched beam search depends on the other prompts' lengths)."""
    import keras_hub

    import falcon_hf

    ours.compile(sampler=make_sampler(falcon_hf))
    theirs.compile(sampler=make_sampler(keras_hub))
    is_beam = isinstance(ours.sampler, samplers.BeamSampler)
    for prompts in (PROMPTS if is_beam else [PROMPTS]):
        assert ours.generate(prompts, max_length=WIDTH) == theirs.generate(prompts, max_length=WIDTH)


def test_beam_search_returns_the_highest_scoring_beam(ours):
    """Among the two final beams transformers keeps, the returned sequence has the higher total log-probability."""
    ours.compile(sampler=samplers.BeamSampler(num_beams=2))
    text = ours.generate(PROMPTS[1], max_length=WIDTH, stop_token_ids=None)
    prompt = ours.preprocessor.generate_preprocess(PROMPTS[1], sequence_length=WIDTH)
    length = int(prompt["padding_mask"].sum())
    model = ours.backbone.hf_model
    input_ids = prompt["token_ids"][None, :length].long()
    beams = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=WIDTH - length,
                           num_beams=2, num_return_sequences=2, length_penalty=0.0, do_sample=False,
                           eos_token_id=[model.config.vocab_size])
    scores = [total_log_probability(model, beam, length) for beam in beams]
    best = beams[int(np.argmax(scores))]
    assert ours.preprocessor.generate_postprocess({"token_ids": best, "padding_mask": torch.ones_like(best)}) == text


@torch.no_grad()
def total_log_probability(model, sequence: torch.Tensor, prompt_length: int) -> float:
    log_probs = torch.log_softmax(model(sequence[None]).logits[0, :-1].float(), dim=-1)
    return float(log_probs[torch.arange(prompt_length - 1, len(sequence) - 1), sequence[prompt_length:]].sum())


def top_k_allowed(probabilities: torch.Tensor, k: int) -> set[int]:
    return set(probabilities.topk(k).indices.tolist())


def top_p_allowed(probabilities: torch.Tensor, p: float) -> set[int]:
    """keras-hub's nucleus: sorted tokens while the probability before them is <= p (the first always)."""
    sorted_probabilities, order = probabilities.sort(descending=True)
    before = torch.cumsum(sorted_probabilities, 0) - sorted_probabilities
    return set(order[before <= p].tolist())


@pytest.mark.parametrize("sampler, allowed", [
    (samplers.TopKSampler(k=3, seed=1), lambda probs: top_k_allowed(probs, 3)),
    (samplers.TopKSampler(k=2, seed=1, temperature=3.0), lambda probs: top_k_allowed(probs, 2)),
    (samplers.TopPSampler(p=0.5, seed=2), lambda probs: top_p_allowed(probs, 0.5)),
    (samplers.TopPSampler(p=0.9, k=4, seed=2), lambda probs: top_p_allowed(probs, 0.9) & top_k_allowed(probs, 4)),
    (samplers.RandomSampler(seed=3, temperature=0.05), lambda probs: set(torch.nonzero(probs > 1e-6)[:, 0].tolist())),
], ids=["top_k", "top_k_temperature", "top_p", "top_p_with_k", "random_cold"])
def test_sampled_tokens_come_from_the_allowed_set(ours, sampler, allowed):
    ours.compile(sampler=sampler)
    prompt = ours.preprocessor.generate_preprocess(PROMPTS, sequence_length=WIDTH)
    output = ours.generate({key: value.numpy() for key, value in prompt.items()}, stop_token_ids=None)
    token_ids = torch.as_tensor(output["token_ids"])
    with torch.no_grad():
        logits = ours({"token_ids": token_ids, "padding_mask": torch.ones_like(token_ids)}).float()
    probabilities = torch.softmax(logits / sampler.temperature, dim=-1)
    lengths = prompt["padding_mask"].sum(1)
    checked = 0
    for row, length in enumerate(lengths.tolist()):
        for position in range(length, WIDTH):
            assert int(token_ids[row, position]) in allowed(probabilities[row, position - 1]), (row, position)
            checked += 1
    assert checked == int((WIDTH - lengths).sum())


@pytest.mark.parametrize("make_sampler", [lambda: samplers.TopKSampler(k=50, seed=7),
                                          lambda: samplers.TopPSampler(p=0.95, seed=7),
                                          lambda: samplers.RandomSampler(seed=7)], ids=["top_k", "top_p", "random"])
def test_a_seed_repeats_the_stream_and_leaves_the_global_rng_alone(ours, make_sampler):
    ours.compile(sampler=make_sampler())
    global_state = torch.get_rng_state()
    first = ours.generate(PROMPTS, max_length=WIDTH, stop_token_ids=None)
    second = ours.generate(PROMPTS, max_length=WIDTH, stop_token_ids=None)
    assert torch.equal(torch.get_rng_state(), global_state)
    ours.compile(sampler=make_sampler())
    assert ours.generate(PROMPTS, max_length=WIDTH, stop_token_ids=None) == first
    assert second != first  # each call draws its own seed from the stream, as keras-hub's SeedGenerator does
    ours.compile(sampler="greedy")
    assert ours.generate(PROMPTS, max_length=WIDTH, stop_token_ids=None) != first


def test_unsupported_settings_are_refused():
    with pytest.raises(NotImplementedError, match="return_all_beams"):
        samplers.BeamSampler(return_all_beams=True)
    with pytest.raises(ValueError, match="temperature"):
        samplers.TopKSampler(temperature=0)
