"""Keras 3 weight files of a Falcon preset, read and written with h5py alone (no TensorFlow, no Keras).

Layout (Keras 3 `save_weights`, as keras-hub's `save_to_preset` writes `model.weights.h5`):

```
vars                                              attrs name='falcon_backbone' (no datasets)
layers/input_layer/vars, layers/input_layer_1/vars        name='token_ids' / 'padding_mask'
layers/reversible_embedding/vars/0                (vocab, hidden)                 name='token_embedding'
layers/falcon_transformer_decoder{,_1,_2,...}/vars                                name='transformer_layer_{i}'
    input_layernorm/vars/{0,1}                    gamma, beta (hidden,)
    attention_layer/{query,key,value}_dense/vars/{0,1}   kernel (hidden, heads, head_dim), bias (heads, head_dim)
    attention_layer/output_dense/vars/{0,1}       kernel (hidden, hidden), bias (hidden,)
    attention_layer/{vars,softmax/vars,attention_dropout/vars}, attention_dropout/vars, feedforward_dropout/vars
    post_attention_layernorm/vars/{0,1}, dense_h_to_4h/vars/{0,1} (hidden, 4h), (4h,), dense_4h_to_h/vars/{0,1}
layers/layer_normalization/vars/{0,1}             final LayerNorm                 name='final_layernorm'
```

Every `vars` group carries its layer's name as an attribute. bfloat16 variables are 2-byte opaque data with a
`dtype="bfloat16"` attribute on the dataset. Presets above keras-hub's shard size (10 GB) come as `model.weights.json`
plus `model_NNNNN.weights.h5` files with the same hierarchy split among them.
"""

import re
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import torch

from .errors import ConversionError
from .json_files import read_json
from .resolve import preset_file
from .rules import KERAS_BLOCK_CLASS_GROUP, keras_block_group

WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_INDEX = "model.weights.json"
LAYERS_GROUP = "layers"
BLOCK_GROUP = re.compile(re.escape(KERAS_BLOCK_CLASS_GROUP.split("/")[-1]) + r"(?:_(\d+))?")
BLOCK_LAYER_NAME = re.compile(r"transformer_layer_(\d+)")
BFLOAT16 = "bfloat16"
NUMPY_FLOATS = {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32,
                np.dtype("float64"): torch.float64}
# Keras' own guard against shape and decompression bombs (`keras/src/saving/saving_lib.py`): a compressed dataset may
# declare at most 1000x the bytes it stores once it declares more than 4 GiB. Uncompressed ones must store it all.
MAX_EXPANSION = 1000
EXPANSION_FLOOR_BYTES = 1 << 32


def find_weight_files(preset_dir: Path) -> list[Path]:
    """The h5 files holding the backbone weights: `model.weights.h5`, or the shards `model.weights.json` lists."""
    single = preset_file(preset_dir, WEIGHTS_FILE)
    if single.is_file():
        return [single]
    index_path = preset_file(preset_dir, SHARDED_WEIGHTS_INDEX)
    if not index_path.is_file():
        raise ConversionError(f"{single}: file not found (nor a sharded {SHARDED_WEIGHTS_INDEX}); not a Keras preset?")
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ConversionError(f"{index_path}: no 'weight_map' object.")
    names = [name for value in weight_map.values() for name in (value if isinstance(value, list) else [value])]
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ConversionError(f"{index_path}: shard name {name!r} is not a plain file name.")
    if not names:
        raise ConversionError(f"{index_path}: names no shard file.")
    return [preset_file(preset_dir, name) for name in sorted(set(names))]


def _text_attribute(item: h5py.HLObject, key: str) -> str | None:
    """A string attribute (Keras writes `name` and `dtype` as such), or None when absent or of any other type."""
    value = item.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _stored_dtype(dataset: h5py.Dataset) -> torch.dtype | None:
    if _text_attribute(dataset, "dtype") == BFLOAT16 and dataset.dtype.itemsize == 2:
        return torch.bfloat16
    return NUMPY_FLOATS.get(dataset.dtype)


def _block_index(group_name: str, group: h5py.Group) -> int | None:
    """Decoder block number of a top-level group: its `name` attribute, else Keras' numeric suffix; None if no block."""
    match = BLOCK_GROUP.fullmatch(group_name)
    if match is None:
        return None
    layer_name = _text_attribute(group["vars"], "name") if "vars" in group else None
    by_name = BLOCK_LAYER_NAME.fullmatch(layer_name) if layer_name is not None else None
    if by_name:
        return int(by_name.group(1))
    return int(match.group(1) or 0)


class KerasWeights:
    """Read-only, lazy view of a preset's Keras weights, keyed by canonical paths (`rules.keras_block_group` names).

    Block groups are keyed by the block number their `name` attribute gives, so the table's `{block}` paths find
    them whatever h5py's (alphabetical: `_1, _10, _11, ..., _2`) listing order is.

    Example:

    ```python
    >>> with KerasWeights.open(Path("my_preset")) as weights:
    ...     weights.shape("layers/reversible_embedding/vars/0")
    (50304, 2048)
    ```
    """

    def __init__(self, files: list[Path], source: Path):
        self.files = files
        self.source = source
        self._handles: list[h5py.File] = []
        self._datasets: dict[str, tuple[Path, h5py.Dataset]] = {}
        try:
            for path in files:
                self._index_file(path)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, preset_dir: Path) -> "KerasWeights":
        files = find_weight_files(preset_dir)
        return cls(files, files[0] if files[0].name == WEIGHTS_FILE else preset_dir / SHARDED_WEIGHTS_INDEX)

    def __enter__(self) -> "KerasWeights":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    def _index_file(self, path: Path) -> None:
        if not path.is_file():
            raise ConversionError(f"{path}: file not found.")
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise ConversionError(f"{path}: not a readable HDF5 file, truncated or corrupt ({error}).") from error
        self._handles.append(handle)
        # Collected, then checked: an exception raised inside h5py's visit callbacks surfaces as a SystemError.
        links, items = [], []
        try:
            # Links first: only then is it safe to open objects, which would follow them into other files.
            handle.visititems_links(lambda name, link: links.append((name, link)))
            for name, link in links:
                _check_link(path, name, link)
            handle.visititems(lambda name, item: items.append((name, item)))
            for name, item in items:
                self._add(path, handle, name, item)
        except ConversionError:
            raise
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
            raise ConversionError(f"{path}: corrupt HDF5 structure ({error}).") from error

    def _add(self, path: Path, handle: h5py.File, name: str, item) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        _check_storage(path, name, item)
        canonical = self._canonical(handle, name)
        if canonical in self._datasets:
            raise ConversionError(f"{path}: weight '{name}' is stored twice (also in {self._datasets[canonical][0]}).")
        self._datasets[canonical] = (path, item)

    @staticmethod
    def _canonical(handle: h5py.File, name: str) -> str:
        parts = name.split("/")
        if len(parts) < 3 or parts[0] != LAYERS_GROUP:
            return name
        block = _block_index(parts[1], handle[f"{parts[0]}/{parts[1]}"])
        prefix = keras_block_group(block) if block is not None else "/".join(parts[:2])
        return "/".join([prefix, *parts[2:]])

    def names(self) -> list[str]:
        return sorted(self._datasets)

    def file_of(self, path: str) -> Path:
        return self._datasets[path][0]

    def where(self, path: str) -> str:
        """`file: weight 'path'` for error messages, naming the real h5 path when it differs from the canonical one."""
        file, dataset = self._datasets[path]
        stored = dataset.name.lstrip("/")
        return f"{file}: weight '{path}'" + (f" (stored as '{stored}')" if stored != path else "")

    def __contains__(self, path: str) -> bool:
        return path in self._datasets

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._datasets[path][1].shape)

    def dtype(self, path: str) -> torch.dtype | None:
        """The stored torch dtype, or None if it is not a float type the converter reads."""
        return _stored_dtype(self._datasets[path][1])

    def read(self, path: str) -> torch.Tensor:
        """One dataset as a CPU tensor in its stored dtype (bfloat16 included)."""
        file, dataset = self._datasets[path]
        dtype = _stored_dtype(dataset)
        if dtype is None:
            raise ConversionError(f"{self.where(path)} has unsupported dtype {dataset.dtype}.")
        try:
            array = dataset[()]
        except (OSError, RuntimeError) as error:
            raise ConversionError(f"{self.where(path)} cannot be read, file truncated or corrupt ({error}).") from error
        if dtype == torch.bfloat16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)  # raw 2-byte bfloat16 bits
        return torch.from_numpy(np.ascontiguousarray(array))


def _check_link(path: Path, name: str, link) -> None:
    """Keras writes hard links only; soft and external links can lead out of the file (or loop), so refuse them."""
    if isinstance(link, h5py.ExternalLink):
        raise ConversionError(f"{path}: '{name}' is an external link to {link.filename}:{link.path}; refused (a weight "
                              "file may only hold its own data).")
    if isinstance(link, h5py.SoftLink):
        raise ConversionError(f"{path}: '{name}' is a soft link to '{link.path}'; refused (Keras never writes links).")
    if not isinstance(link, h5py.HardLink):
        raise ConversionError(f"{path}: '{name}' is a {type(link).__name__}; refused (Keras writes hard links only).")


def _check_storage(path: Path, name: str, dataset: h5py.Dataset) -> None:
    """Refuse data kept in other files (virtual or external datasets) and data declared but not stored (shape and
    decompression bombs), from metadata alone, so that nothing is read or allocated for them."""
    if dataset.is_virtual:
        raise ConversionError(f"{path}: weight '{name}' is a virtual dataset (its data lives in other files); "
                              "refused.")
    if dataset.external:
        raise ConversionError(f"{path}: weight '{name}' keeps its data in external file(s) "
                              f"{[entry[0] for entry in dataset.external]}; refused.")
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    compressed = dataset.id.get_create_plist().get_nfilters() > 0
    if compressed:
        bomb = declared > EXPANSION_FLOOR_BYTES and declared > MAX_EXPANSION * stored
    else:
        bomb = declared > stored
    if bomb:
        raise ConversionError(f"{path}: weight '{name}' declares shape {dataset.shape} ({declared} bytes) but stores "
                              f"only {stored} bytes{' compressed' if compressed else ''}; refused (a truncated file or "
                              "a shape bomb).")


def keras_layer_groups(num_layers: int, backbone_name: str) -> list[tuple[str, str]]:
    """Every `vars` group Keras writes for a FalconBackbone, as (group path, layer name) pairs, weights or not."""
    groups = [("", backbone_name), (f"{LAYERS_GROUP}/input_layer", "token_ids"),
              (f"{LAYERS_GROUP}/input_layer_1", "padding_mask"),
              (f"{LAYERS_GROUP}/reversible_embedding", "token_embedding")]
    for block in range(num_layers):
        group = keras_block_group(block)
        groups += [(group, f"transformer_layer_{block}")]
        groups += [(f"{group}/{layer}", layer) for layer in ("input_layernorm", "attention_dropout",
                                                              "post_attention_layernorm", "dense_h_to_4h",
                                                              "dense_4h_to_h", "feedforward_dropout")]
        groups += [(f"{group}/attention_layer", "attention")]
        groups += [(f"{group}/attention_layer/{layer}", layer)
                   for layer in ("query_dense", "key_dense", "value_dense", "attention_dropout", "output_dense",
                                 "softmax")]
    groups += [(f"{LAYERS_GROUP}/layer_normalization", "final_layernorm")]
    return groups


def _numpy_for_h5(tensor: torch.Tensor) -> tuple[np.ndarray, str | None]:
    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16: store the raw bits as 2-byte opaque data and mark the dataset, as Keras does.
        return tensor.contiguous().view(torch.int16).numpy().view("V2"), BFLOAT16
    return tensor.contiguous().numpy(), None


def write_keras_weights(path: Path, weights: Iterable[tuple[str, torch.Tensor]], num_layers: int,
                        backbone_name: str = "falcon_backbone") -> None:
    """Write `model.weights.h5` in Keras 3's layout from (canonical path, tensor) pairs, one tensor at a time."""
    with h5py.File(path, "w") as handle:
        for group, layer_name in keras_layer_groups(num_layers, backbone_name):
            handle.create_group(f"{group}/vars" if group else "vars").attrs["name"] = layer_name
        for dataset_path, tensor in weights:
            array, marker = _numpy_for_h5(tensor)
            dataset = handle.create_dataset(dataset_path, data=array)
            if marker:
                dataset.attrs["dtype"] = marker


__all__ = ["KerasWeights", "find_weight_files", "keras_layer_groups", "write_keras_weights"]
