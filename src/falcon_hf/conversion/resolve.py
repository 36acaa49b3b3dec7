"""Where a Keras preset lives: a local folder, a `kaggle://` or `hf://` handle, or a built-in preset name.

Handles resolve through the local kagglehub / huggingface_hub caches first and download only when online
(`HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` or `FALCON_HF_OFFLINE` set to 1 means offline). Offline with no cached copy,
the error says what to fetch and which folder to put it in.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

from .errors import ConversionError

logger = logging.get_logger(__name__)

KAGGLE_PREFIX = "kaggle://"
HF_PREFIX = "hf://"
KAGGLEHUB_CACHE_ENV = "KAGGLEHUB_CACHE"
DEFAULT_KAGGLEHUB_CACHE = Path("~/.cache/kagglehub")
OFFLINE_ENVS = ("FALCON_HF_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PRESET_MARKER = "config.json"
WEIGHT_MARKERS = ("model.weights.h5", "model.weights.json")
EMBEDDED_PRESETS = Path(__file__).resolve().parent.parent / "presets"
HANDLE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class BuiltinPreset:
    handle: str
    description: str
    parameter_count: int


BUILTIN_PRESETS = {
    "falcon_refinedweb_1b_en": BuiltinPreset(
        handle="kaggle://keras/falcon/keras/falcon_refinedweb_1b_en/2",
        description="24-layer Falcon model (Falcon with 1B parameters), trained on 350B tokens of RefinedWeb dataset.",
        parameter_count=1_311_625_216,
    ),
}
"""keras-hub's own Falcon presets (`keras_hub/src/models/falcon/falcon_presets.py`), by name."""


@dataclass(frozen=True)
class ResolvedPreset:
    """A preset found on disk: `path` is the folder, `source` what the user gave, `handle` the remote it came from."""

    path: Path
    source: str
    handle: str | None = None
    description: str | None = None
    parameter_count: int | None = None


@dataclass(frozen=True)
class KaggleHandle:
    owner: str
    model: str
    framework: str
    variation: str
    version: int | None

    @classmethod
    def parse(cls, handle: str) -> "KaggleHandle":
        parts = handle.removeprefix(KAGGLE_PREFIX).strip("/").split("/")
        if len(parts) not in (4, 5) or not all(HANDLE_PART.fullmatch(part) for part in parts[:4]):
            raise ConversionError(f"'{handle}' is not a Kaggle handle of the form "
                                  "kaggle://owner/model/framework/variation[/version].")
        if len(parts) == 5 and not parts[4].isdigit():
            raise ConversionError(f"'{handle}': the Kaggle model version must be a number, got '{parts[4]}'.")
        return cls(*parts[:4], int(parts[4]) if len(parts) == 5 else None)

    @property
    def slug(self) -> str:
        parts = [self.owner, self.model, self.framework, self.variation]
        return "/".join(parts + ([str(self.version)] if self.version is not None else []))

    def cache_folder(self, version: int | None = None) -> Path:
        """kagglehub's cache folder: `{KAGGLEHUB_CACHE}/models/owner/model/framework/variation/version`."""
        variation = kagglehub_cache_dir() / "models" / self.owner / self.model / self.framework / self.variation
        return variation / str(version if version is not None else self.version)


def kagglehub_cache_dir() -> Path:
    """kagglehub's cache root: `$KAGGLEHUB_CACHE`, else `~/.cache/kagglehub` (read at call time)."""
    return Path(os.environ.get(KAGGLEHUB_CACHE_ENV) or DEFAULT_KAGGLEHUB_CACHE).expanduser()


def offline_reason() -> str | None:
    """Which environment variable turns downloads off, or None when downloading is allowed."""
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    return None


def is_preset_folder(path: Path) -> bool:
    return (path / PRESET_MARKER).is_file() and any((path / name).is_file() for name in WEIGHT_MARKERS)


def _containing_folder(folder: Path) -> Path:
    """The folder a preset's files must resolve into: the preset itself, or for a huggingface_hub snapshot
    (`models--owner--repo/snapshots/REV`, whose files are symlinks to `../../blobs/HASH`) the repository folder."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return folder


def preset_file(folder: Path, relative: str | os.PathLike) -> Path:
    """`folder / relative`, refused unless it resolves inside the preset folder (no `..`, absolute path or symlink
    out), so that an untrusted preset can never make the converter read another file of the user's.

    Example:

    ```python
    >>> preset_file(Path("my_preset"), "assets/tokenizer/vocabulary.json")
    PosixPath('my_preset/assets/tokenizer/vocabulary.json')
    ```
    """
    path = folder / relative
    target, root = path.resolve(), _containing_folder(folder)
    if not target.is_relative_to(root):
        raise ConversionError(f"{path}: resolves to {target}, outside the preset folder {root}; refused (a preset may "
                              "only name files inside itself).")
    return path


def resolve_preset(preset: str | os.PathLike) -> ResolvedPreset:
    """The local folder of a Keras preset given as a folder, `kaggle://`/`hf://` handle or built-in name.

    Example:

    ```python
    >>> resolve_preset("falcon_refinedweb_1b_en").path  # the kagglehub cache copy, downloaded if online
    PosixPath('/root/.cache/kagglehub/models/keras/falcon/keras/falcon_refinedweb_1b_en/2')
    ```
    """
    source = os.fspath(preset)
    if source.startswith(KAGGLE_PREFIX):
        return _resolve_kaggle(source, source)
    if source.startswith(HF_PREFIX):
        return _resolve_hf(source)
    if source in BUILTIN_PRESETS:
        builtin = BUILTIN_PRESETS[source]
        resolved = _resolve_kaggle(builtin.handle, source)
        return ResolvedPreset(resolved.path, source, builtin.handle, builtin.description, builtin.parameter_count)
    local = Path(source).expanduser()
    if local.is_dir():
        return ResolvedPreset(local, source)
    if (EMBEDDED_PRESETS / source).is_dir() and HANDLE_PART.fullmatch(source):
        return ResolvedPreset(EMBEDDED_PRESETS / source, source)
    if local.exists():
        raise ConversionError(f"{local}: is a file; a Keras preset is a folder.")
    raise ConversionError(f"{source}: no such preset folder, and not a kaggle:// or hf:// handle or a built-in preset "
                          f"name ({', '.join(sorted(BUILTIN_PRESETS))}).")


def _cached_kaggle_folder(handle: KaggleHandle) -> Path | None:
    if handle.version is not None:
        folder = handle.cache_folder()
        return folder if is_preset_folder(folder) else None
    variation = handle.cache_folder(0).parent
    versions = sorted((int(child.name) for child in variation.glob("*") if child.name.isdigit()), reverse=True)
    return next((handle.cache_folder(v) for v in versions if is_preset_folder(handle.cache_folder(v))), None)


def _resolve_kaggle(handle_text: str, source: str) -> ResolvedPreset:
    handle = KaggleHandle.parse(handle_text)
    cached = _cached_kaggle_folder(handle)
    if cached is not None:
        return ResolvedPreset(cached, source, handle_text)
    reason = offline_reason()
    if reason is None:
        try:
            return ResolvedPreset(_download_kaggle(handle), source, handle_text)
        except Exception as error:  # network, auth, missing kagglehub: all end in the same instructions
            reason = f"download failed: {type(error).__name__}: {error}"
    folder = handle.cache_folder(handle.version if handle.version is not None else 1)
    raise ConversionError(
        f"Keras preset '{source}' is not in the kagglehub cache and cannot be downloaded ({reason}). Fetch "
        f"https://www.kaggle.com/models/{handle.owner}/{handle.model}/{handle.framework}/{handle.variation}"
        f"{'/' + str(handle.version) if handle.version is not None else ''} (config.json, model.weights.h5, "
        "tokenizer.json, preprocessor.json, task.json, metadata.json, assets/) on a machine with internet, e.g. "
        f"`python -c \"import kagglehub; print(kagglehub.model_download('{handle.slug}'))\"`, and put the files in "
        f"{folder} (or pass the folder itself as SRC)."
    )


def _download_kaggle(handle: KaggleHandle) -> Path:
    import kagglehub

    logger.info(f"Downloading kaggle://{handle.slug} with kagglehub")
    folder = Path(kagglehub.model_download(handle.slug))
    if not is_preset_folder(folder):
        raise ConversionError(f"{folder}: downloaded kaggle://{handle.slug} holds no Keras preset.")
    return folder


def _resolve_hf(source: str) -> ResolvedPreset:
    repo_id = source.removeprefix(HF_PREFIX).strip("/")
    if len(repo_id.split("/")) != 2 or not all(HANDLE_PART.fullmatch(part) for part in repo_id.split("/")):
        raise ConversionError(f"'{source}' is not a Hugging Face handle of the form hf://owner/repo.")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return ResolvedPreset(Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True)), source, source)
    except LocalEntryNotFoundError:
        pass
    reason = offline_reason()
    if reason is None:
        try:
            logger.info(f"Downloading {source} with huggingface_hub")
            return ResolvedPreset(Path(huggingface_hub.snapshot_download(repo_id)), source, source)
        except Exception as error:  # network, auth, missing repo: all end in the same instructions
            reason = f"download failed: {type(error).__name__}: {error}"
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    raise ConversionError(
        f"Keras preset '{source}' is not in the huggingface_hub cache and cannot be downloaded ({reason}). Fetch "
        f"https://huggingface.co/{repo_id} on a machine with internet, e.g. `hf download {repo_id}`, and copy the "
        f"resulting cache folder to {cache}, or `hf download {repo_id} --local-dir DIR` and pass DIR as SRC."
    )


__all__ = ["BUILTIN_PRESETS", "ResolvedPreset", "kagglehub_cache_dir", "preset_file", "resolve_preset"]
