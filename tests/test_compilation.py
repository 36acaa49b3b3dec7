"""`enable_compiled_decoding`: the compile switch makes a plain `generate` call compile its decode step on CPU."""

import pytest
import torch

from falcon_hf import enable_compiled_decoding


def padded_prompts():
    input_ids = torch.randint(0, 400, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding
    return input_ids, attention_mask


@torch.no_grad()
def test_generate_compiles_its_decode_step_and_keeps_the_tokens(tiny_model, monkeypatch):
    input_ids, attention_mask = padded_prompts()
    expected = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                                   cache_implementation="static")
    compiled = []
    compile_function = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, **options: compiled.append(options) or
                        compile_function(function, **options))
    assert enable_compiled_decoding(tiny_model) is tiny_model
    tokens = tiny_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, expected)
    assert len(compiled) == 1 and compiled[0]["fullgraph"] and compiled[0]["mode"] == "default"
    assert tiny_model.generation_config.cache_implementation == "static"


def test_options_replace_the_mode_and_overrides_apply(tiny_model):
    options = {"max_autotune": False}
    config = enable_compiled_decoding(tiny_model, options=options, dynamic=False).generation_config.compile_config
    assert (config.mode, config.options, config.dynamic, config.fullgraph) == (None, options, False, True)
    assert enable_compiled_decoding(tiny_model, fullgraph=False).generation_config.compile_config.fullgraph is False


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_mode_is_kept_when_given(tiny_model, mode):
    assert enable_compiled_decoding(tiny_model, mode=mode).generation_config.compile_config.mode == mode
