"""Ours vs keras-hub's `FalconCausalLM` (torch backend) on the same random weights, loaded by the production converter.

Tolerance: fp32, max abs diff <= 1e-4 on logits and hidden states (the issue's bound; observed differences are ~1e-6,
summation order only).
"""

import numpy as np
import pytest
import torch

from falcon_hf import FalconHFForCausalLM

ATOL = 1e-4

CASES = {
    "power_of_two_heads": {},
    "non_power_of_two_heads": {"num_attention_heads": 6, "hidden_dim": 48, "intermediate_dim": 192},
    "final_layer_norm_epsilon_1e-3": {"layer_norm_epsilon": 1e-3},
}


@pytest.fixture(scope="module", params=list(CASES))
def twins(request, make_keras_preset):
    import keras_hub

    path = make_keras_preset(request.param, **CASES[request.param])
    theirs = keras_hub.models.FalconCausalLM.from_preset(str(path), preprocessor=None)  # generate() takes ids
    theirs.compile(sampler="greedy")
    return FalconHFForCausalLM.from_keras_preset(str(path)).eval(), theirs


def right_padded_batch():
    token_ids = np.random.default_rng(0).integers(0, 400, (3, 12)).astype("int32")
    padding_mask = np.ones_like(token_ids, dtype=bool)
    padding_mask[1, 7:] = False
    padding_mask[2, 3:] = False
    token_ids[~padding_mask] = 0  # keras-hub pads with id 0
    return token_ids, padding_mask


def test_converted_config_keeps_keras_hubs_epsilons(twins):
    ours, theirs = twins
    assert ours.config.layer_norm_epsilon == theirs.backbone.layer_norm_epsilon
    assert ours.config.decoder_layer_norm_epsilon == 1e-5  # keras-hub never passes its epsilon to the blocks
    assert ours.transformer.h[0].input_layernorm.eps == theirs.backbone.transformer_layers[0].input_layernorm.epsilon


@torch.no_grad()
def test_hidden_states_and_logits_match_on_a_padded_batch(twins):
    ours, theirs = twins
    token_ids, padding_mask = right_padded_batch()
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    their_hidden = np.asarray(theirs.backbone(inputs).detach().cpu())
    their_logits = np.asarray(theirs(inputs).detach().cpu())
    output = ours.transformer(torch.from_numpy(token_ids).long(), attention_mask=torch.from_numpy(padding_mask))
    our_logits = ours.lm_head(output.last_hidden_state)
    real = torch.from_numpy(padding_mask)
    torch.testing.assert_close(output.last_hidden_state[real], torch.from_numpy(their_hidden)[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(our_logits[real], torch.from_numpy(their_logits)[real], atol=ATOL, rtol=0)


@torch.no_grad()
def test_greedy_generation_gives_keras_hubs_tokens(twins):
    ours, theirs = twins
    token_ids, padding_mask = right_padded_batch()
    max_length = 24
    generated = theirs.generate({"token_ids": np.pad(token_ids, ((0, 0), (0, max_length - 12))),
                                 "padding_mask": np.pad(padding_mask, ((0, 0), (0, max_length - 12)))},
                                stop_token_ids=None)
    for row in range(3):
        prompt = torch.from_numpy(token_ids[row, padding_mask[row]]).long()[None]
        new_tokens = max_length - prompt.shape[1]
        ours_row = ours.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False)
        assert ours_row[0].tolist() == np.asarray(generated["token_ids"][row]).tolist()
