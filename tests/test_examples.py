"""Every script in examples/ runs offline with short settings, through its own `main(argv)`."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def short_text(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path


def run_example(name: str, *arguments: str, capsys) -> tuple[object, str]:
    """Load `examples/NAME` as a module and run its `main(arguments)`; returns its result and what it printed."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(list(arguments))
    return result, capsys.readouterr().out


def test_convert_keras_preset(tmp_path, capsys):
    differences, out = run_example("convert_keras_preset.py", "--output-dir", str(tmp_path / "out"), capsys=capsys)
    assert sorted(differences) == ["keras", "keras_round_trip", "native"]
    assert all(difference < 1e-4 for difference in differences.values()), differences
    assert out.count("max |logit difference|") == 3
    assert (tmp_path / "out" / "native" / "config.json").exists()


def test_generate(capsys):
    results, out = run_example("generate.py", "--max-new-tokens", "6", "--num-beams", "2", capsys=capsys)
    assert len(results) == 4 and all(len(texts) == 2 for texts in results.values())
    assert all(texts[0].startswith("ROMEO:") and texts[0] != "ROMEO:" for texts in results.values())
    assert "=== beam search (2 beams) ===" in out


def test_finetune_lora(short_text, tmp_path, capsys):
    result, out = run_example("finetune_lora.py", "--data", str(short_text), "--output-dir", str(tmp_path / "run"),
                              "--max-steps", "2", "--block-size", "32", "--save-steps", "2", "--max-new-tokens", "5",
                              capsys=capsys)
    assert result["metrics"]["global_step"] == 2 and sorted(result["after"]) == ["greedy", "top-k"]
    assert all(text.startswith("ROMEO:") for text in [*result["before"].values(), *result["after"].values()])
    assert "held-out perplexity:" in out and "--- greedy, after ---" in out
    assert (tmp_path / "run" / "merged" / "model.safetensors").exists()
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_finetune_full(short_text, tmp_path, capsys):
    result, out = run_example("finetune_full.py", "--data", str(short_text), "--output-dir", str(tmp_path / "run"),
                              "--max-steps", "2", "--block-size", "32", "--max-new-tokens", "5", capsys=capsys)
    assert result["keras_text"] == result["hf_text"] and result["hf_text"].startswith("JULIET:")
    assert ": the same text" in out
    assert (tmp_path / "run" / "keras_preset" / "model.weights.h5").exists()
