"""peft integration: default LoRA targets for `falcon_hf`, adapter training, merging and save/load round trips."""

import subprocess
import sys

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from peft.utils import constants
from transformers import AutoModelForCausalLM, FalconConfig, FalconForCausalLM

from falcon_hf.peft_integration import register_peft_targets

from conftest import tiny_config_kwargs

LORA_MAPPING = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"


def lora_model(model, seed: int = 0):
    """A LoRA model with peft's default targets and random (non-zero) B matrices, so adapters change the output."""
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return peft_model.eval()


def adapted_modules(peft_model) -> list[str]:
    names = [name for name, _ in peft_model.named_modules() if name.endswith(".lora_A")]
    return sorted(name.removeprefix("base_model.model.").removesuffix(".lora_A") for name in names)


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture
def input_ids():
    return torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(1))


def test_every_peft_mapping_with_falcon_gets_falcon_hf():
    mappings = register_peft_targets()
    assert LORA_MAPPING in mappings and "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING" in mappings
    for name in mappings:
        mapping = getattr(constants, name)
        assert mapping["falcon_hf"] == mapping["falcon"], name
    # The LoRA tuner reads the very dict we filled (no copy taken at import).
    from peft.tuners.lora.model import LoraModel

    assert LoraModel.target_module_mapping["falcon_hf"] == ["query_key_value"]


def test_registration_is_idempotent_and_keeps_user_choices():
    mapping = getattr(constants, LORA_MAPPING)
    before = dict(mapping)
    assert register_peft_targets() == register_peft_targets()
    assert mapping == before
    mapping["falcon_hf"] = ["dense"]
    try:
        register_peft_targets()
        assert mapping["falcon_hf"] == ["dense"]
    finally:
        mapping["falcon_hf"] = before["falcon_hf"]


def test_default_targets_match_transformers_falcon(tiny_model):
    """Theirs vs ours: peft adapts the same modules of transformers' Falcon and of falcon_hf without module names."""
    config = FalconConfig(**tiny_config_kwargs(), new_decoder_architecture=False, parallel_attn=False, alibi=True,
                          bias=True, multi_query=False)
    theirs = adapted_modules(get_peft_model(FalconForCausalLM(config), LoraConfig(task_type="CAUSAL_LM")))
    ours_model = get_peft_model(tiny_model, LoraConfig(task_type="CAUSAL_LM"))
    assert ours_model.peft_config["default"].target_modules == {"query_key_value"}
    assert adapted_modules(ours_model) == theirs == [f"transformer.h.{i}.self_attention.query_key_value"
                                                     for i in range(tiny_model.config.num_hidden_layers)]


def test_only_adapter_parameters_train(tiny_model):
    peft_model = get_peft_model(tiny_model, LoraConfig(task_type="CAUSAL_LM", r=4))
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert len(trainable) == 2 * tiny_model.config.num_hidden_layers
    hidden = tiny_model.config.hidden_size
    assert sum(peft_model.get_parameter(name).numel() for name in trainable) == (
        tiny_model.config.num_hidden_layers * 4 * (hidden + 3 * hidden))


def test_merged_model_equals_adapter_model(tiny_model, input_ids):
    peft_model = lora_model(tiny_model)
    with_adapter = logits(peft_model, input_ids)
    with peft_model.disable_adapter():
        assert not torch.allclose(logits(peft_model, input_ids), with_adapter, atol=1e-3)  # the adapter matters
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(logits(merged, input_ids), with_adapter, rtol=0, atol=1e-5)


def test_adapter_save_load_round_trip(tiny_model, tiny_tokenizer, tmp_path, input_ids):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model.save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    peft_model = lora_model(AutoModelForCausalLM.from_pretrained(base_dir))
    expected = logits(peft_model, input_ids)
    peft_model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").exists()

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    torch.testing.assert_close(logits(reloaded, input_ids), expected, rtol=0, atol=1e-6)
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()  # base found via adapter_config.json
    torch.testing.assert_close(logits(auto, input_ids), expected, rtol=0, atol=1e-6)


def test_falcon_hf_imports_without_peft():
    """`import falcon_hf` works, and registers nothing with peft, when peft cannot be imported."""
    code = (
        "import sys; sys.modules['peft'] = None\n"  # `import peft` now raises ImportError, find_spec returns None
        "import falcon_hf\n"
        "from falcon_hf.peft_integration import register_peft_targets\n"
        "assert register_peft_targets() == []\n"
        "assert sys.modules['peft'] is None\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
