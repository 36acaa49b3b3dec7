"""Fine-tuning recipes: data preparation, the `finetune` function (LoRA, full, QLoRA's refusal), resume, merging."""

import json
import math
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from falcon_hf import FalconHFForCausalLM, FalconHFTokenizer
from falcon_hf.cli import main as cli_main
from falcon_hf.recipes import RecipeError, finetune, prepare_datasets

BLOCK = 32
SHORT_RUN = {
    "block_size": BLOCK, "per_device_batch_size": 4, "max_steps": 6, "save_steps": 3, "logging_steps": 1,
    "learning_rate": 1e-2, "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets_cache")


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_bpe):
    """The tiny BPE tokenizer, adding the start token as tokenizers converted from Keras presets do."""
    vocab, merges = tiny_bpe
    return FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def logits(model, input_ids):
    with torch.no_grad():
        return model.eval()(input_ids).logits


def column(split, name: str = "input_ids") -> list[list[int]]:
    return split.to_dict()[name]


def losses_by_step(metrics: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in metrics["log_history"] if "loss" in entry}


# Data preparation


def test_text_file_packs_the_whole_text_into_blocks_with_a_start_token(text_file, bos_tokenizer, cache_dir):
    blocks = prepare_datasets(text_file, bos_tokenizer, block_size=BLOCK, eval_fraction=0.1, cache_dir=cache_dir)
    bos = bos_tokenizer.bos_token_id
    rows = column(blocks["train"]) + column(blocks["eval"])
    assert all(len(row) == BLOCK and row[0] == bos for row in rows)
    assert column(blocks["train"], "labels") == column(blocks["train"])
    # Concatenated bodies are the whole-text tokenization (document + end-of-text), cut to whole blocks.
    expected = bos_tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"] + [bos]
    stream = [token for row in rows for token in row[1:]]
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < BLOCK
    # The eval split is the tail (10%), after every training block.
    assert blocks["eval"].num_rows == round(len(rows) * 0.1)
    assert rows[-blocks["eval"].num_rows:] == column(blocks["eval"])


def test_blocks_have_no_start_token_when_the_tokenizer_adds_none(text_file, tiny_bpe, cache_dir):
    vocab, merges = tiny_bpe
    tokenizer = FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=False)
    blocks = prepare_datasets(text_file, tokenizer, block_size=BLOCK, cache_dir=cache_dir)
    expected = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
    assert blocks["train"][0]["input_ids"] == expected[:BLOCK]


def test_preparation_is_cached(text_file, bos_tokenizer, cache_dir):
    first = prepare_datasets(text_file, bos_tokenizer, block_size=BLOCK, cache_dir=cache_dir)
    second = prepare_datasets(text_file, bos_tokenizer, block_size=BLOCK, cache_dir=cache_dir)
    assert first["train"].cache_files and first["train"].cache_files == second["train"].cache_files


def test_jsonl_csv_and_folder_sources(tmp_path, bos_tokenizer, cache_dir):
    documents = ["To be, or not to be: that is the question. " * 4, "All the world's a stage. " * 6]
    eos = bos_tokenizer.eos_token_id
    expected = [t for doc in documents for t in bos_tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]]

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": doc, "id": i}) + "\n" for i, doc in enumerate(documents * 3)))
    csv = tmp_path / "docs.csv"
    csv.write_text("body\n" + "".join(f'"{doc}"\n' for doc in documents * 3))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, doc in enumerate(documents * 3):
        (folder / f"{i:02d}.txt").write_text(doc)
    for source in (jsonl, csv, folder):
        text_column = "text" if source == folder else "body"
        blocks = prepare_datasets(source, bos_tokenizer, block_size=16, text_column=text_column, cache_dir=cache_dir)
        stream = [token for row in column(blocks["train"]) for token in row[1:]]
        assert stream == (expected * 3)[: len(stream)], source


def test_a_saved_dataset_keeps_its_validation_split(tmp_path, bos_tokenizer):
    import datasets

    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["Now is the winter of our discontent. " * 20] * 4}),
        "validation": datasets.Dataset.from_dict({"text": ["Friends, Romans, countrymen, lend me your ears. " * 20]}),
    })
    splits.save_to_disk(tmp_path / "saved")
    blocks = prepare_datasets(tmp_path / "saved", bos_tokenizer, block_size=BLOCK)
    eval_text = bos_tokenizer.decode(blocks["eval"][0]["input_ids"][1:])
    assert "Romans" in eval_text and "winter" not in eval_text


@pytest.mark.parametrize("case, message", [
    ("missing", "no such data file"),
    ("unknown_suffix", "unsupported data file type"),
    ("mixed_folder", "mixes"),
    ("empty_folder", "empty folder"),
    ("missing_column", "no text column 'text'"),
    ("too_short", "fewer than 32 tokens"),
])
def test_data_errors_name_what_and_where(case, message, tmp_path, bos_tokenizer):
    path = tmp_path / case
    if case == "unknown_suffix":
        path = tmp_path / "data.parquet"
        path.write_bytes(b"")
    elif case == "mixed_folder":
        path.mkdir()
        (path / "a.txt").write_text("hello")
        (path / "b.csv").write_text("text\nhello\n")
    elif case == "empty_folder":
        path.mkdir()
    elif case == "missing_column":
        path = tmp_path / "data.jsonl"
        path.write_text(json.dumps({"content": "hello"}) + "\n")
    elif case == "too_short":
        path = tmp_path / "short.txt"
        path.write_text("Too short.")
    with pytest.raises(RecipeError, match=message) as error:
        prepare_datasets(path, bos_tokenizer, block_size=BLOCK)
    assert path.name in str(error.value)


# Recipes


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA may be available on a CUDA machine")
def test_qlora_says_what_it_needs(text_file, tmp_path):
    with pytest.raises(RecipeError, match=r"recipe 'qlora'.*CUDA GPU.*recipe='lora'"):
        finetune(text_file, tmp_path / "run", recipe="qlora")
    assert not (tmp_path / "run").exists()


def test_unknown_recipe(text_file, tmp_path):
    with pytest.raises(RecipeError, match="Unknown recipe 'dora'; choose one of lora, qlora, full"):
        finetune(text_file, tmp_path / "run", recipe="dora")


def test_lora_run_writes_adapter_and_an_equal_merged_folder(text_file, tiny_hf_folder, cache_dir, tmp_path):
    result = finetune(text_file, tmp_path / "run", base=tiny_hf_folder, cache_dir=cache_dir, **SHORT_RUN)
    assert result.merged_dir == tmp_path / "run" / "merged"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert not list((tmp_path / "run").glob(".*"))  # no leftover temporary folders
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_hf_folder), result.adapter_dir)
    input_ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(merged, input_ids), logits(adapter, input_ids), rtol=0, atol=1e-5)
    assert not torch.allclose(logits(merged, input_ids),
                              logits(AutoModelForCausalLM.from_pretrained(tiny_hf_folder), input_ids), atol=1e-4)
    assert (result.merged_dir / "tokenizer.json").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["recipe"] == "lora"
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert sorted(losses_by_step(metrics)) == [1, 2, 3, 4, 5, 6]


def test_refuses_an_earlier_run_unless_resume_or_overwrite(text_file, tiny_hf_folder, cache_dir, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="holds an earlier run.*--resume.*--overwrite"):
        finetune(text_file, tmp_path / "run", base=tiny_hf_folder)
    with pytest.raises(RecipeError, match="contradict"):
        finetune(text_file, tmp_path / "run", base=tiny_hf_folder, resume=True, overwrite=True)
    finetune(text_file, tmp_path / "run", base=tiny_hf_folder, cache_dir=cache_dir, overwrite=True,
             **{**SHORT_RUN, "max_steps": 1})
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # overwrite removes only what a run writes


def test_resume_continues_the_same_loss_trajectory(text_file, tiny_hf_folder, cache_dir, tmp_path):
    # LoRA dropout makes the random state part of the trajectory, so resuming must restore it too.
    settings = {**SHORT_RUN, "base": tiny_hf_folder, "cache_dir": cache_dir, "lora_dropout": 0.1}
    uninterrupted = finetune(text_file, tmp_path / "a", **settings)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-3", tmp_path / "b" / "checkpoints" / "checkpoint-3")
    resumed = finetune(text_file, tmp_path / "b", resume=True, **settings)  # as if stopped after step 3's checkpoint
    assert resumed.metrics["resumed_from"].endswith("checkpoint-3")
    expected, got = losses_by_step(uninterrupted.metrics), losses_by_step(resumed.metrics)
    assert len(set(expected.values())) > 1
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert resumed.metrics["eval_loss"] == pytest.approx(uninterrupted.metrics["eval_loss"], abs=1e-5)


def test_full_recipe_from_a_keras_preset_exports_a_keras_preset(text_file, tiny_keras_preset, cache_dir, tmp_path):
    result = finetune(text_file, tmp_path / "run", base=tiny_keras_preset, recipe="full", export_keras=True,
                      cache_dir=cache_dir, **{**SHORT_RUN, "max_steps": 2, "learning_rate": 1e-3})
    assert result.adapter_dir is None and not (tmp_path / "run" / "adapter").exists()
    assert not (result.merged_dir / "training_args.bin").exists()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    exported = FalconHFForCausalLM.from_keras_preset(str(result.keras_preset_dir))
    base = FalconHFForCausalLM.from_keras_preset(str(tiny_keras_preset))
    input_ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(exported, input_ids), logits(merged, input_ids), rtol=0, atol=1e-5)
    assert not torch.allclose(logits(merged, input_ids), logits(base, input_ids), atol=1e-4)


def test_short_finetune_lowers_held_out_perplexity(text_file, tiny_hf_folder, cache_dir, tmp_path):
    result = finetune(text_file, tmp_path / "run", base=tiny_hf_folder, recipe="full", cache_dir=cache_dir,
                      **{**SHORT_RUN, "max_steps": 20, "save_steps": 20, "learning_rate": 3e-3})
    metrics = result.metrics
    assert metrics["eval_perplexity"] < 0.8 * metrics["eval_perplexity_before"]
    assert metrics["eval_perplexity_before"] == pytest.approx(math.exp(metrics["eval_loss_before"]))


def test_cli_finetune_calls_the_library(text_file, tiny_hf_folder, cache_dir, tmp_path, capsys):
    output = tmp_path / "run"
    status = cli_main(["finetune", str(text_file), str(output), "--base", str(tiny_hf_folder), "--max-steps", "1",
                       "--block-size", "32", "--per-device-batch-size", "2", "--cache-dir", str(cache_dir),
                       "--disable-tqdm", "--lora-r", "4", "--lora-target-modules", "all-linear"])
    assert status == 0
    assert f"merged model: {output / 'merged'}" in capsys.readouterr().out
    adapter_config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    adapted = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}
    assert adapted == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}  # lm_head is left out
    assert cli_main(["finetune", str(text_file), str(output), "--base", str(tiny_hf_folder)]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
