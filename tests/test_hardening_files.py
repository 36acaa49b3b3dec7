"""Hostile presets: every trick an untrusted Keras preset could play is refused with a `ConversionError` that names
the file, before any weight is read or allocated, and nothing is left at the destination (SECURITY.md).

Each case damages a private copy of `tiny_keras_preset` (a preset keras-hub itself saved) in one way. Reading weight
data is made to fail the test (`no_weight_reads`) wherever the refusal must come first.
"""

import ast
import json
import math
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors import safe_open

from falcon_hf.conversion import (ConversionError, convert_keras_preset, load_model_from_keras_preset,
                                  load_tokenizer_from_keras_preset)

SRC_ROOT = Path(__file__).resolve().parents[1] / "src" / "falcon_hf"
WEIGHTS = "model.weights.h5"
VOCABULARY = Path("assets") / "tokenizer" / "vocabulary.json"
MERGES = Path("assets") / "tokenizer" / "merges.txt"
FINAL_BETA = "layers/layer_normalization/vars/1"  # (32,) float32 in the tiny preset
BLOCK_0_VARS = "layers/falcon_transformer_decoder/vars"


@pytest.fixture
def preset(tiny_keras_preset, tmp_path) -> Path:
    """A private copy of the tiny preset, free to damage."""
    return shutil.copytree(tiny_keras_preset, tmp_path / "preset")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the preset, standing for the rest of the user's disk."""
    folder = tmp_path / "outside"
    folder.mkdir()
    with h5py.File(folder / "other.h5", "w") as handle:
        handle["x"] = np.arange(32, dtype="float32")
    (folder / "secret.txt").write_text("not a vocabulary\n")
    return folder


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Reading any h5 dataset's data fails the test: refusals must come from metadata alone."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"weight data of {self.name} was read before the refusal")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse)


def assert_refused(preset: Path, tmp_path: Path, *expected: str, loader=load_model_from_keras_preset) -> str:
    """`convert_keras_preset` refuses `preset` with a ConversionError containing every `expected` text and leaves
    nothing at the destination; the in-memory `loader` that reads the damaged file refuses it too."""
    dst = tmp_path / "out" / "hf"
    with pytest.raises(ConversionError) as refused:
        convert_keras_preset(preset, dst)
    message = str(refused.value)
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "out").exists(), "something was left at the destination"
    with pytest.raises(ConversionError):
        loader(preset)
    return message


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def replace_dataset(preset: Path, name: str, make) -> None:
    """Delete dataset (or group) `name` and let `make(handle, name)` put something else there."""
    with h5py.File(preset / WEIGHTS, "r+") as handle:
        del handle[name]
        make(handle, name)


# --- links, virtual datasets, external storage: refused before any data is read ----------------------------------


def external_link(handle, name, other):
    handle[name] = h5py.ExternalLink(str(other / "other.h5"), "x")


def external_group(handle, name, other):
    handle[name] = h5py.ExternalLink(str(other / "other.h5"), "/")


def soft_link(handle, name, other):
    handle[name] = h5py.SoftLink("/layers/layer_normalization/vars/0")


def dangling_soft_link(handle, name, other):
    handle[name] = h5py.SoftLink("/no/such/object")


def virtual_dataset(handle, name, other):
    layout = h5py.VirtualLayout(shape=(32,), dtype="float32")
    layout[:] = h5py.VirtualSource(str(other / "other.h5"), "x", shape=(32,))
    handle.create_virtual_dataset(name, layout)


def external_storage(handle, name, other):
    raw = other / "raw.bin"
    raw.write_bytes(np.arange(32, dtype="float32").tobytes())
    handle.create_dataset(name, shape=(32,), dtype="float32", external=[(str(raw), 0, 128)])


LINKS = {
    "external link to a dataset": (FINAL_BETA, external_link, ["external link", FINAL_BETA]),
    # The block's name attribute lives in this group: following the link would read another file.
    "external link to a block's vars group": (BLOCK_0_VARS, external_group, ["external link", BLOCK_0_VARS]),
    "soft link": (FINAL_BETA, soft_link, ["soft link", FINAL_BETA]),
    "dangling soft link": (FINAL_BETA, dangling_soft_link, ["soft link", "/no/such/object"]),
    "virtual dataset": (FINAL_BETA, virtual_dataset, ["virtual dataset", FINAL_BETA]),
    "external raw storage": (FINAL_BETA, external_storage, ["external file", FINAL_BETA]),
}


@pytest.mark.parametrize("name, make, expected", list(LINKS.values()), ids=list(LINKS))
def test_h5_pointing_at_other_files_is_refused_before_any_read(preset, outside, tmp_path, no_weight_reads, name,
                                                               make, expected):
    replace_dataset(preset, name, lambda handle, name: make(handle, name, outside))
    assert_refused(preset, tmp_path, WEIGHTS, *expected)


def test_a_trillion_element_dataset_is_refused_without_allocating_it(preset, tmp_path, no_weight_reads):
    replace_dataset(preset, FINAL_BETA, lambda handle, name: handle.create_dataset(
        name, shape=(10**6, 10**6), dtype="float32", chunks=(1000, 1000)))
    assert (preset / WEIGHTS).stat().st_size < 10**6  # declared 4 TB, stores nothing
    assert_refused(preset, tmp_path, WEIGHTS, FINAL_BETA)


def test_a_declared_but_unstored_dataset_is_refused(preset, tmp_path, no_weight_reads):
    """The right shape, but no data in the file (h5 would hand out fill values): what a shape bomb looks like when the
    config is forged to match it."""
    replace_dataset(preset, FINAL_BETA, lambda handle, name: handle.create_dataset(
        name, shape=(32,), dtype="float32", chunks=(4,)))
    assert_refused(preset, tmp_path, WEIGHTS, FINAL_BETA, "stores only 0 bytes")


def test_a_shape_bomb_with_a_matching_config_is_refused(preset, tmp_path, no_weight_reads):
    """Config and datasets agree on a 2**17-wide model (4 TB of embedding) that the file does not hold."""
    hidden = 1 << 17
    edit_json(preset / "config.json", lambda c: c["config"].update(hidden_dim=hidden, intermediate_dim=4 * hidden))
    replace_dataset(preset, "layers/reversible_embedding/vars/0", lambda handle, name: handle.create_dataset(
        name, shape=(448, hidden), dtype="float32", chunks=(1, 1024)))
    assert_refused(preset, tmp_path, WEIGHTS, "reversible_embedding")


def test_compressed_datasets_that_hold_their_data_still_convert(preset, tiny_hf_folder, tmp_path):
    """Refusing bombs must not refuse honest files: gzip-compressed weights are read like Keras' plain ones."""
    with h5py.File(preset / WEIGHTS, "r+") as handle:
        values = handle[FINAL_BETA][()]
        del handle[FINAL_BETA]
        handle.create_dataset(FINAL_BETA, data=values, compression="gzip")
    convert_keras_preset(preset, tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as ours, \
            safe_open(tiny_hf_folder / "model.safetensors", "pt") as reference:
        assert ours.get_tensor("transformer.ln_f.bias").equal(reference.get_tensor("transformer.ln_f.bias"))


# --- config.json: only keras-hub's FalconBackbone, with sane sizes ------------------------------------------------


FOREIGN_CONFIGS = {
    "another module": ({"module": "os"}, ["module", "'os'"]),
    "another keras-hub model's module": ({"module": "keras_hub.src.models.gpt2.gpt2_backbone"}, ["gpt2_backbone"]),
    "another registered class": ({"registered_name": "my_package>FalconBackbone"}, ["my_package>FalconBackbone"]),
    "another class": ({"class_name": "GPT2Backbone"}, ["GPT2Backbone"]),
}


@pytest.mark.parametrize("change, expected", list(FOREIGN_CONFIGS.values()), ids=list(FOREIGN_CONFIGS))
def test_config_naming_anything_but_keras_hubs_falcon_is_refused(preset, tmp_path, no_weight_reads, change,
                                                                 expected):
    edit_json(preset / "config.json", lambda config: config.update(change))
    assert_refused(preset, tmp_path, "config.json", *expected)


ABSURD_SIZES = {
    "negative vocabulary": ("vocabulary_size", -448),
    "zero vocabulary": ("vocabulary_size", 0),
    "vocabulary over 10M": ("vocabulary_size", 10_000_001),
    "zero layers": ("num_layers", 0),
    "a billion layers": ("num_layers", 10**9),
    "negative width": ("hidden_dim", -32),
    "a billion wide": ("hidden_dim", 10**9),
    "zero heads": ("num_attention_heads", 0),
    "heads not dividing the width": ("num_attention_heads", 5),
    "zero MLP": ("intermediate_dim", 0),
    "fractional layers": ("num_layers", 2.5),
    "boolean heads": ("num_attention_heads", True),
    "text width": ("hidden_dim", "32"),
    "infinite epsilon": ("layer_norm_epsilon", math.inf),
    "NaN epsilon": ("layer_norm_epsilon", math.nan),
    "zero epsilon": ("layer_norm_epsilon", 0.0),
    "dropout of 1": ("attention_dropout_rate", 1.0),
}


@pytest.mark.parametrize("key, value", list(ABSURD_SIZES.values()), ids=list(ABSURD_SIZES))
def test_absurd_sizes_are_refused_before_anything_is_built(preset, tmp_path, no_weight_reads, key, value):
    edit_json(preset / "config.json", lambda config: config["config"].update({key: value}))
    hf_name = {"vocabulary_size": "vocab_size", "num_layers": "num_hidden_layers", "hidden_dim": "hidden_size",
               "intermediate_dim": "intermediate_size", "attention_dropout_rate": "attention_dropout"}.get(key, key)
    message = assert_refused(preset, tmp_path, "config.json")
    assert key in message or hf_name in message, message


# --- the other preset files -------------------------------------------------------------------------------------


def set_preprocessor(**settings):
    return lambda preset: edit_json(preset / "preprocessor.json", lambda p: p["config"].update(settings))


def write(relative: Path | str, text: str):
    return lambda preset: (preset / relative).write_text(text, encoding="utf-8")


def set_vocabulary(**tokens):
    return lambda preset: edit_json(preset / VOCABULARY, lambda vocab: vocab.update(tokens))


BAD_FILES = {
    "preprocessor config that is a list": (
        lambda preset: edit_json(preset / "preprocessor.json", lambda p: p.update(config=[1])),
        ["preprocessor.json", "'config'"]),
    "preprocessor of another module": (
        lambda preset: edit_json(preset / "preprocessor.json", lambda p: p.update(module="subprocess")),
        ["preprocessor.json", "subprocess"]),
    "text sequence length": (set_preprocessor(sequence_length="128"), ["preprocessor.json", "sequence_length"]),
    "negative sequence length": (set_preprocessor(sequence_length=-5), ["preprocessor.json", "sequence_length"]),
    "zero sequence length": (set_preprocessor(sequence_length=0), ["preprocessor.json", "sequence_length"]),
    "fractional sequence length": (set_preprocessor(sequence_length=3.5), ["preprocessor.json", "sequence_length"]),
    "non-boolean start token": (set_preprocessor(add_start_token="yes"), ["preprocessor.json", "add_start_token"]),
    "negative token id": (set_vocabulary(a=-1), ["vocabulary.json", "'a'", "-1"]),
    "boolean token id": (set_vocabulary(a=True), ["vocabulary.json", "'a'"]),
    "merge of three pieces": (write(MERGES, "Ġ t\na b c\n"), ["merges.txt", "line 2", "'a b c'"]),
    "merge with a double space": (write(MERGES, "a  b\n"), ["merges.txt", "line 1"]),
    "merge of one piece": (write(MERGES, "ab\n"), ["merges.txt", "line 1"]),
    "deeply nested config": (write("config.json", "[" * 100_000 + "]" * 100_000), ["config.json", "JSON"]),
    "config with a 5000-digit number": (write("config.json", '{"x": ' + "9" * 5000 + "}"), ["config.json"]),
    "config that is not UTF-8": (lambda preset: (preset / "config.json").write_bytes(b"\xff\xfe{}"),
                                 ["config.json"]),
}


@pytest.mark.parametrize("damage, expected", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_malformed_preset_files_are_refused_with_the_file_named(preset, tmp_path, damage, expected):
    damage(preset)
    tokenizer_file = any(name in expected[0] for name in ("preprocessor", "vocabulary", "merges"))
    assert_refused(preset, tmp_path, *expected,
                   loader=load_tokenizer_from_keras_preset if tokenizer_file else load_model_from_keras_preset)


# --- paths: nothing outside the preset folder is ever read --------------------------------------------------------


def shard_preset(preset: Path, shard_name: str) -> None:
    """Turn the preset into keras-hub's sharded layout whose index names `shard_name`."""
    (preset / WEIGHTS).rename(preset / "model_00000.weights.h5")
    (preset / "model.weights.json").write_text(json.dumps({"metadata": {}, "weight_map": {"a": shard_name}}))


@pytest.mark.parametrize("shard_name", ["../outside/other.h5", "/etc/passwd", "..", ".", "sub/model.weights.h5", "",
                                        ["model_00000.weights.h5", ["nested"]], 7])
def test_shard_names_must_be_plain_file_names(preset, tmp_path, outside, no_weight_reads, shard_name):
    shard_preset(preset, shard_name)
    assert_refused(preset, tmp_path, "model.weights.json", "plain file name")


def test_an_empty_shard_index_is_refused(preset, tmp_path):
    (preset / WEIGHTS).rename(preset / "model_00000.weights.h5")
    (preset / "model.weights.json").write_text(json.dumps({"weight_map": {}}))
    assert_refused(preset, tmp_path, "model.weights.json", "no shard")


SYMLINKS_OUT = {
    "vocabulary": (VOCABULARY, "secret.txt"),
    "merges": (MERGES, "secret.txt"),
    "config": (Path("config.json"), "secret.txt"),
    "preprocessor": (Path("preprocessor.json"), "secret.txt"),
    "weights": (Path(WEIGHTS), "other.h5"),
    "the whole assets folder": (Path("assets"), "."),
}


@pytest.mark.parametrize("relative, target", list(SYMLINKS_OUT.values()), ids=list(SYMLINKS_OUT))
def test_symlinks_leaving_the_preset_are_refused(preset, tmp_path, outside, no_weight_reads, relative, target):
    link = preset / relative
    shutil.rmtree(link) if link.is_dir() else link.unlink()
    link.symlink_to(outside / target)
    assert_refused(preset, tmp_path, str(relative.parts[0]), "outside the preset folder",
                   loader=load_tokenizer_from_keras_preset if relative.name == "preprocessor.json"
                   else load_model_from_keras_preset)


def test_symlinks_inside_the_preset_and_a_symlinked_preset_folder_are_fine(preset, tiny_hf_folder, tmp_path):
    (preset / "store").mkdir()
    (preset / WEIGHTS).rename(preset / "store" / WEIGHTS)
    (preset / WEIGHTS).symlink_to(Path("store") / WEIGHTS)
    (tmp_path / "linked").symlink_to(preset)
    convert_keras_preset(tmp_path / "linked", tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as ours, \
            safe_open(tiny_hf_folder / "model.safetensors", "pt") as reference:
        assert all(ours.get_tensor(name).equal(reference.get_tensor(name)) for name in reference.keys())


def test_huggingface_hub_snapshots_may_link_into_their_blobs(preset, tmp_path, outside):
    """huggingface_hub stores each file once under `blobs/` and links `snapshots/REV/name` to it: that stays inside
    the repository's cache folder, so it converts; a snapshot link leaving the repository folder does not."""
    repo = tmp_path / "hub" / "models--someone--tiny-falcon"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    shutil.copytree(preset, snapshot)
    for index, file in enumerate(sorted(p for p in snapshot.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{index}"
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))
    convert_keras_preset(snapshot, tmp_path / "hf")
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(outside / "secret.txt")
    assert_refused(snapshot, tmp_path, "config.json", "outside the preset folder")


@pytest.fixture(scope="module")
def opened_files():
    """Every path Python opens while recording (`sys.addaudithook` cannot be removed, so it idles otherwise)."""
    recording: list[str] = []
    active = [False]

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            recording.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)

    class Recorder:
        def __enter__(self):
            recording.clear()
            active[0] = True
            return recording

        def __exit__(self, *exc_info):
            active[0] = False

    return Recorder()


def test_hostile_config_file_fields_are_never_followed(preset, tmp_path, outside, opened_files):
    """keras-hub's `config_file` fields name files to read; the converter reads fixed names only, so one pointing
    outside (or at a file that would break it) changes nothing, and no file outside preset, destination and installed
    code is opened."""
    for name in ("preprocessor.json", "tokenizer.json"):
        edit_json(preset / name, lambda doc: doc["config"].update(config_file=str(outside / "secret.txt")))
    edit_json(preset / "task.json", lambda task: task.update(config_file="../outside/secret.txt"))
    with opened_files as opened:
        convert_keras_preset(preset, tmp_path / "hf")
    allowed = [preset.resolve(), (tmp_path / "hf").parent.resolve(), Path(sys.prefix).resolve(),
               Path(sys.base_prefix).resolve(), SRC_ROOT.resolve()]
    strays = [path for path in opened if not any(Path(path).resolve().is_relative_to(root) for root in allowed)]
    assert not strays and not any("outside" in path for path in opened), strays
    assert any(path.endswith("vocabulary.json") for path in opened)  # the hook does see the preset's files


# --- no pickle anywhere in the plugin ------------------------------------------------------------------------------


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def plugin_sources() -> list[Path]:
    return sorted(SRC_ROOT.rglob("*.py"))


def unsafe_calls(path: Path, root: Path = SRC_ROOT) -> list[str]:
    """Unpickling imports, `torch.load` without `weights_only=True`, `np.load(allow_pickle=True)`, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            weights_only = keywords.get("weights_only")
            if name.endswith("torch.load") and not (isinstance(weights_only, ast.Constant) and weights_only.value):
                found.append(f"{where} calls {name} without weights_only=True")
            allow_pickle = keywords.get("allow_pickle")
            if name.endswith(("np.load", "numpy.load")) and isinstance(allow_pickle, ast.Constant) \
                    and allow_pickle.value:
                found.append(f"{where} calls {name} with allow_pickle=True")
            if name in ("eval", "exec") or name.endswith(("yaml.load", "yaml.unsafe_load")):
                found.append(f"{where} calls {name}")
            if keywords.get("trust_remote_code") is not None and ast.unparse(keywords["trust_remote_code"]) == "True":
                found.append(f"{where} passes trust_remote_code=True")
    return found


def test_the_scan_catches_what_it_looks_for(tmp_path):
    """The scanner itself must be able to fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle\nimport torch\nimport numpy as np\ntorch.load('x')\n"
                     "torch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\neval('1')\n")
    assert len(unsafe_calls(probe, tmp_path)) == 5


def test_nothing_in_the_plugin_unpickles():
    assert plugin_sources(), SRC_ROOT
    found = [problem for path in plugin_sources() for problem in unsafe_calls(path)]
    assert not found, found
