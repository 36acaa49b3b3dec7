"""`falcon-hf` conversion commands: help, success, and one clear line + exit 2 + nothing at DST for bad input."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from falcon_hf import cli

BLOCK_1 = "layers/falcon_transformer_decoder_1"
WEIGHTS = "model.weights.h5"


def run(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(capsys, dst, *argv, expected=()):
    status, out, err = run(capsys, *argv)
    message = err.strip().splitlines()[-1]
    assert status == 2, err
    assert message.startswith(f"falcon-hf {argv[0]}: error: ")
    for text in expected:
        assert str(text) in message, message
    assert not dst.exists() and not list(dst.parent.glob(f".{dst.name}.*")), "something was left behind"
    return message


@pytest.fixture
def preset(tiny_keras_preset, tmp_path):
    """A private copy of the tiny preset, free to damage."""
    return shutil.copytree(tiny_keras_preset, tmp_path / "preset")


# --- help and the command table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["convert-keras"], ["export-keras"], ["export-native"]])
def test_help_everywhere(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: falcon-hf" in capsys.readouterr().out


def test_convert_keras_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["convert-keras", "--help"])
    out = capsys.readouterr().out
    for option in ("SRC", "DST", "--dtype", "{float32,bfloat16,float16}", "--force", "--check", "--max-shard-size"):
        assert option in out


def test_a_new_command_is_one_table_entry(capsys, monkeypatch):
    def echo(text, repeat=1):
        return text * repeat

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, cli.Command(
        "echo-for-test", echo, "Say something.",
        (cli.Argument(("text",)), cli.Argument(("--repeat",), {"dest": "repeat", "type": int})))])
    assert run(capsys, "echo-for-test", "hi", "--repeat", "2") == (0, "hihi\n", "")


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "falcon_hf.cli", "export-native", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "HF_DIR" in result.stdout


# --- the three commands -----------------------------------------------------------------------------------------


def test_convert_then_export_both_ways(capsys, tiny_keras_preset, tmp_path):
    hf = tmp_path / "hf"
    assert run(capsys, "convert-keras", tiny_keras_preset, hf, "--dtype", "bfloat16", "--check",
               "--max-shard-size", "50KB")[:2] == (0, f"{hf}\n")
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert (hf / "model.safetensors.index.json").exists()
    assert run(capsys, "export-keras", hf, tmp_path / "keras")[0] == 0
    with h5py.File(tmp_path / "keras" / WEIGHTS) as handle:
        assert handle["layers/reversible_embedding/vars/0"].attrs["dtype"] == "bfloat16"
    assert run(capsys, "export-native", hf, tmp_path / "native")[0] == 0
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "falcon"


def test_existing_dst_is_refused_unless_force(capsys, tiny_keras_preset, tmp_path):
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    status, _, err = run(capsys, "convert-keras", tiny_keras_preset, dst)
    assert status == 2 and "already exists" in err and "--force" in err
    assert [path.name for path in dst.iterdir()] == ["keep.txt"]
    assert run(capsys, "convert-keras", tiny_keras_preset, dst, "--force")[0] == 0
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]  # no temporary or old folder left


def test_force_never_writes_over_the_source(capsys, preset):
    status, _, err = run(capsys, "convert-keras", preset, preset / "inside", "--force")
    assert status == 2 and "overlaps the input" in err and not (preset / "inside").exists()
    assert run(capsys, "convert-keras", preset, preset, "--force")[0] == 2 and (preset / WEIGHTS).exists()


# --- malformed input: message naming file and weight, exit 2, nothing at DST -------------------------------------


def remove(path):
    path.unlink()


def rewrite_dataset(path, name, value):
    """Replace dataset `name` by `value`; `None` deletes it, a new name adds it."""
    with h5py.File(path, "r+") as handle:
        if name in handle:
            del handle[name]
        if value is not None:
            handle[name] = value


def set_config(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_superblock(path):
    with open(path, "r+b") as file:
        file.write(b"\0" * 16)


def add_nan(path, name):
    with h5py.File(path, "r+") as handle:
        values = handle[name][()]
        values.flat[3] = np.nan
        handle[name][...] = values


MALFORMED = {
    "missing weights file": (lambda p: remove(p / WEIGHTS), [WEIGHTS, "file not found"]),
    "missing config": (lambda p: remove(p / "config.json"), ["config.json", "file not found"]),
    "missing vocabulary": (lambda p: remove(p / "assets/tokenizer/vocabulary.json"), ["vocabulary.json"]),
    "config of another model": (lambda p: set_config(p / "config.json", class_name="GPT2Backbone"),
                                ["config.json", "GPT2Backbone", "not a keras-hub FalconBackbone"]),
    "config that is not json": (lambda p: (p / "config.json").write_text("{not json"), ["config.json", "JSON"]),
    "shape mismatch": (lambda p: rewrite_dataset(p / WEIGHTS, f"{BLOCK_1}/dense_h_to_4h/vars/0",
                                                 np.zeros((32, 64), "float32")),
                       [WEIGHTS, f"{BLOCK_1}/dense_h_to_4h/vars/0", "(32, 64)", "(32, 128)"]),
    "missing weight": (lambda p: rewrite_dataset(p / WEIGHTS, "layers/layer_normalization/vars/1", None),
                       [WEIGHTS, "missing weight 'layers/layer_normalization/vars/1'"]),
    "extra weight": (lambda p: rewrite_dataset(p / WEIGHTS, f"{BLOCK_1}/extra_dense/vars/0",
                                               np.zeros(3, "float32")),
                     [WEIGHTS, f"unexpected weight(s) '{BLOCK_1}/extra_dense/vars/0'"]),
    "truncated h5": (lambda p: truncate(p / WEIGHTS), [WEIGHTS, "truncated or corrupt"]),
    "corrupt h5": (lambda p: corrupt_superblock(p / WEIGHTS), [WEIGHTS, "not a readable HDF5 file"]),
}


@pytest.mark.parametrize("damage, expected", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_preset_is_refused_with_one_line(capsys, preset, tmp_path, damage, expected):
    damage(preset)
    assert_refused(capsys, tmp_path / "out" / "hf", "convert-keras", preset, tmp_path / "out" / "hf",
                   expected=[*expected])
    assert not (tmp_path / "out").exists()  # the parent it would have created is gone too


def test_nan_weights_are_refused_with_check_only(capsys, preset, tmp_path):
    name = f"{BLOCK_1}/attention_layer/value_dense/vars/0"
    add_nan(preset / WEIGHTS, name)
    assert_refused(capsys, tmp_path / "hf", "convert-keras", preset, tmp_path / "hf", "--check",
                   expected=[WEIGHTS, name, "NaN"])
    assert run(capsys, "convert-keras", preset, tmp_path / "hf")[0] == 0  # without --check it is the user's call


def test_float16_overflow_is_caught_by_check(capsys, preset, tmp_path):
    name = "layers/layer_normalization/vars/0"
    rewrite_dataset(preset / WEIGHTS, name, np.full(32, 1e6, "float32"))
    assert_refused(capsys, tmp_path / "hf", "convert-keras", preset, tmp_path / "hf", "--check", "--dtype",
                   "float16", expected=[name, "float16", "transformer.ln_f.weight"])


def test_bad_dtype_and_shard_size_are_refused(capsys, preset, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert-keras", str(preset), str(tmp_path / "hf"), "--dtype", "int8"])
    assert exit_info.value.code == 2
    assert_refused(capsys, tmp_path / "hf", "convert-keras", preset, tmp_path / "hf", "--max-shard-size", "lots",
                   expected=["max_shard_size='lots'"])


@pytest.fixture
def hf_folder(tiny_hf_folder, tmp_path):
    """A private copy of the converted tiny folder, free to damage."""
    return shutil.copytree(tiny_hf_folder, tmp_path / "hf")


def damage_safetensors(folder, drop=(), add=None):
    tensors = load_file(folder / "model.safetensors")
    for name in drop:
        del tensors[name]
    tensors.update(add or {})
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("command", ["export-keras", "export-native"])
def test_exports_refuse_other_model_types(capsys, hf_folder, tmp_path, command):
    set_config(hf_folder / "config.json", model_type="falcon")
    assert_refused(capsys, tmp_path / "out", command, hf_folder, tmp_path / "out",
                   expected=["config.json", "'falcon'", "falcon_hf"])


@pytest.mark.parametrize("command", ["export-keras", "export-native"])
def test_exports_refuse_missing_and_misshapen_weights(capsys, hf_folder, tmp_path, command):
    import torch

    damage_safetensors(hf_folder, drop=["transformer.h.1.mlp.dense_4h_to_h.bias"])
    assert_refused(capsys, tmp_path / "out", command, hf_folder, tmp_path / "out",
                   expected=["model.safetensors", "missing weight 'transformer.h.1.mlp.dense_4h_to_h.bias'"])
    damage_safetensors(hf_folder, add={"transformer.h.1.mlp.dense_4h_to_h.bias": torch.zeros(31)})
    assert_refused(capsys, tmp_path / "out", command, hf_folder, tmp_path / "out",
                   expected=["model.safetensors", "transformer.h.1.mlp.dense_4h_to_h.bias", "(31,)", "(32,)"])


def test_export_keras_refuses_an_untied_head(capsys, hf_folder, tmp_path):
    import torch

    damage_safetensors(hf_folder, add={"lm_head.weight": torch.zeros(448, 32)})
    assert_refused(capsys, tmp_path / "out", "export-keras", hf_folder, tmp_path / "out",
                   expected=["lm_head.weight", "differs"])


def test_export_refuses_a_corrupt_safetensors_file(capsys, hf_folder, tmp_path):
    (hf_folder / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_refused(capsys, tmp_path / "out", "export-keras", hf_folder, tmp_path / "out",
                   expected=["model.safetensors", "not a readable safetensors file"])
