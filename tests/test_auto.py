"""Registration with the Auto classes, save/load round trips, `trust_remote_code` and the text-generation pipeline."""

import subprocess
import sys

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline

import falcon_hf
from falcon_hf import FalconHFConfig, FalconHFForCausalLM, FalconHFModel, FalconHFTokenizer


def save_folder(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_registration_is_idempotent():
    falcon_hf.register()
    falcon_hf.register()
    assert AutoConfig.for_model("falcon_hf").__class__ is FalconHFConfig


def test_auto_classes_load_a_saved_folder(tiny_model, tiny_tokenizer, tmp_path):
    path = save_folder(tiny_model, tiny_tokenizer, tmp_path)
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model) is FalconHFForCausalLM
    assert type(AutoModel.from_pretrained(path)) is FalconHFModel
    assert type(AutoTokenizer.from_pretrained(path)) is FalconHFTokenizer
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    assert model.lm_head.weight.data_ptr() == model.transformer.word_embeddings.weight.data_ptr()


def test_trust_remote_code_loads_without_the_plugin(tiny_model, tiny_tokenizer, tmp_path):
    path = save_folder(tiny_model, tiny_tokenizer, tmp_path)
    expected = tiny_model(torch.tensor([[1, 2, 3]])).logits[0, -1, :4].tolist()
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(path)!r}, trust_remote_code=True)
assert "falcon_hf" not in sys.modules, "the plugin was imported"
print(type(model).__name__, type(tokenizer).__name__)
print(model(torch.tensor([[1, 2, 3]])).logits[0, -1, :4].tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    names, logits = result.stdout.strip().splitlines()[-2:]
    assert names == "FalconHFForCausalLM FalconHFTokenizer"
    torch.testing.assert_close(torch.tensor(eval(logits)), torch.tensor(expected))


def test_pipeline_single_prompt_and_padded_batch(tiny_model, tiny_tokenizer, tmp_path):
    path = save_folder(tiny_model, tiny_tokenizer, tmp_path)
    generator = pipeline("text-generation", model=str(path))
    single = generator("ROMEO:", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert single.startswith("ROMEO:") and len(single) > len("ROMEO:")
    batch = generator(["ROMEO:", "But soft, what light through yonder"], max_new_tokens=5, do_sample=False,
                      batch_size=2)
    assert batch[0][0]["generated_text"] == single  # padding does not change the answer
    alone = generator("But soft, what light through yonder", max_new_tokens=5, do_sample=False)
    assert batch[1][0]["generated_text"] == alone[0]["generated_text"]
