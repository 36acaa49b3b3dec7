"""HF checkpoint weights: safetensors shards streamed to disk tensor by tensor, and read back lazily.

The converter knows every name, shape and dtype before it reads a single weight, so each shard's header is written
first and the tensors follow one at a time: memory holds one tensor, never a shard, whatever `max_shard_size` is.
"""

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers.utils.hub import convert_file_size_to_int

from ..configuration_falcon_hf import FalconHFConfig
from .errors import ConversionError
from .json_files import read_json

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
"""The Hub's long-standing shard size: each file stays a resumable download. Memory does not depend on it."""
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
TORCH_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a tensor to be written."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def parse_size(size: int | str) -> int:
    """Bytes in `size` (`5_000_000`, `"500MB"`, `"5GB"`, `"2GiB"`)."""
    try:
        value = convert_file_size_to_int(size)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"max_shard_size={size!r} is not a size such as '5GB' or '500MB'.") from error
    if value <= 0:
        raise ConversionError(f"max_shard_size={size!r} must be positive.")
    return value


def plan_shards(specs: Iterable[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Consecutive tensors grouped into shards of at most `max_shard_size` bytes (a bigger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SAFE_WEIGHTS_NAME]
    return [f"model-{index:05d}-of-{count:05d}.safetensors" for index in range(1, count + 1)]


def safetensors_header(specs: list[TensorSpec]) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding `specs` back to back, in order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGNMENT)  # the format pads with spaces so tensor data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsShardWriter:
    """Write `specs` into `folder` as safetensors shards (plus an index when more than one), one tensor at a time.

    Tensors must come in `specs` order. `close()` checks that all came and writes the index.

    Example:

    ```python
    >>> specs = [TensorSpec("a", (2, 3), torch.float32), TensorSpec("b", (4,), torch.bfloat16)]
    >>> with SafetensorsShardWriter(Path("out"), specs, max_shard_size=16) as writer:
    ...     writer.write("a", torch.zeros(2, 3))
    ...     writer.write("b", torch.ones(4, dtype=torch.bfloat16))
    ```
    """

    def __init__(self, folder: Path, specs: list[TensorSpec], max_shard_size: int):
        self.folder = folder
        self.shards = plan_shards(specs, max_shard_size)
        self.file_names = shard_file_names(len(self.shards))
        self._pending = iter([(index, spec) for index, shard in enumerate(self.shards) for spec in shard])
        self._file = None
        self._file_index = -1

    def __enter__(self) -> "SafetensorsShardWriter":
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        index, spec = next(self._pending, (None, None))
        if spec is None or (name, tuple(tensor.shape), tensor.dtype) != (spec.name, spec.shape, spec.dtype):
            raise RuntimeError(f"Tensor {name} {tuple(tensor.shape)} {tensor.dtype} is not the next planned one "
                               f"({spec}).")
        if index != self._file_index:
            self._open(index)
        self._file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    def _open(self, index: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.folder / self.file_names[index], "wb")
        self._file.write(safetensors_header(self.shards[index]))
        self._file_index = index

    def close(self) -> None:
        if next(self._pending, None) is not None:
            raise RuntimeError("Not every planned tensor was written.")
        if self._file is not None:
            self._file.close()
            self._file = None
        if len(self.shards) > 1:
            self._write_index()

    def _write_index(self) -> None:
        weight_map = {spec.name: file for file, shard in zip(self.file_names, self.shards) for spec in shard}
        total_size = sum(spec.nbytes for shard in self.shards for spec in shard)
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def find_safetensors_files(folder: Path) -> list[Path]:
    """`model.safetensors`, or the shards the index lists; pickled (`.bin`) checkpoints are refused."""
    single, index_path = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path}: no 'weight_map' object.")
        names = set(weight_map.values())
        for name in names:
            if not isinstance(name, str) or Path(name).name != name:
                raise ConversionError(f"{index_path}: shard name {name!r} is not a plain file name.")
        return [folder / name for name in sorted(names)]
    if any(folder.glob("*.bin")):
        raise ConversionError(f"{folder}: only pickled .bin weights found; they are not loaded (unsafe). Save the "
                              "model with safetensors first.")
    raise ConversionError(f"{single}: file not found (nor {SAFE_WEIGHTS_INDEX_NAME}).")


class HFCheckpoint:
    """Lazy, read-only view of the safetensors weights of an HF folder: names, shapes, one tensor at a time.

    Only headers are kept; each `read` opens its file anew, because safetensors memory-maps the file and every page
    touched through a long-lived handle would stay in this process's RSS (the whole model by the end).

    Example:

    ```python
    >>> with HFCheckpoint(Path("falcon-rw-1b-hf")) as checkpoint:
    ...     checkpoint.shape("transformer.ln_f.weight")
    (2048,)
    ```
    """

    def __init__(self, folder: Path):
        self.files = find_safetensors_files(folder)
        self.source = self.files[0] if len(self.files) == 1 else folder / SAFE_WEIGHTS_INDEX_NAME
        self._where: dict[str, Path] = {}
        self._headers: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in self.files:
            self._index(path)

    def _index(self, path: Path) -> None:
        if not path.is_file():
            raise ConversionError(f"{path}: file not found.")
        try:
            with safe_open(path, framework="pt") as handle:
                headers = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                           for name in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise ConversionError(f"{path}: not a readable safetensors file, truncated or corrupt ({error}).") \
                from error
        for name, header in headers.items():
            if name in self._where:
                raise ConversionError(f"{path}: weight '{name}' is stored twice (also in {self._where[name]}).")
            self._where[name], self._headers[name] = path, header

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def where(self, name: str) -> str:
        return f"{self._where[name]}: weight '{name}'"

    def shape(self, name: str) -> tuple[int, ...]:
        return self._headers[name][0]

    def dtype(self, name: str) -> torch.dtype | None:
        return TORCH_DTYPES.get(self._headers[name][1])

    def read(self, name: str) -> torch.Tensor:
        try:
            with safe_open(self._where[name], framework="pt") as handle:
                return handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise ConversionError(f"{self.where(name)} cannot be read ({error}).") from error


def read_hf_config(folder: Path) -> FalconHFConfig:
    """The `FalconHFConfig` of an HF folder; folders of any other model type are refused."""
    path = folder / "config.json"
    raw = read_json(path)
    model_type = raw.get("model_type")
    if model_type != FalconHFConfig.model_type:
        raise ConversionError(f"{path}: model_type is {model_type!r}, not {FalconHFConfig.model_type!r}; only "
                              "falcon_hf folders (made by convert-keras or saved from FalconHFForCausalLM) are read.")
    try:
        return FalconHFConfig.from_dict(raw)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ConversionError(f"{path}: {error}") from error


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE", "HFCheckpoint", "SafetensorsShardWriter", "TensorSpec", "parse_size", "read_hf_config",
]
