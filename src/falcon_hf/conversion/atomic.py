"""All-or-nothing output folders: build in a temporary folder next to DST, rename into place at the end.

A process killed outright (SIGKILL, OOM killer, power loss) cannot clean up: it may leave `.DST.tmp-*` (a partial
new folder) and, if it was replacing DST, `.DST.old-*/DST` (the previous DST, whole). Later runs ignore both and warn
about them; only the user deletes them, since another run may still be writing one.
"""

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging

from .errors import ConversionError

logger = logging.get_logger(__name__)


def _check_destination(dst: Path, force: bool, protect: Iterable[Path]) -> None:
    if dst.exists() and not force:
        raise ConversionError(f"{dst}: already exists; pass --force (force=True) to replace it.")
    target = dst.resolve()
    for source in protect:
        source = Path(source).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise ConversionError(f"{dst}: overlaps the input {source}; choose another destination.")


def _missing_ancestors(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _replace(tmp: Path, dst: Path) -> None:
    if not dst.exists():
        os.replace(tmp, dst)
        return
    # Keep the old DST until the new one is in place, so a failure here still leaves one of them.
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    try:
        os.replace(dst, old / dst.name)
        os.replace(tmp, dst)
    except BaseException:
        if not dst.exists() and (old / dst.name).exists():
            os.replace(old / dst.name, dst)  # interrupted between the two renames: the old DST goes back
        if not any(old.iterdir()):
            old.rmdir()
        raise
    shutil.rmtree(old)


def _warn_about_leftovers(dst: Path) -> None:
    leftovers = sorted(path.name for kind in ("tmp", "old") for path in dst.parent.glob(f".{dst.name}.{kind}-*"))
    if leftovers:
        logger.warning(f"{dst.parent}: {', '.join(leftovers)} left by an interrupted run; ignored. Delete them once no "
                       f"other run writes {dst.name} (a .old-* folder holds the previous {dst.name}).")


@contextmanager
def atomic_output_dir(dst: str | os.PathLike, force: bool = False, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder next to `dst`; on success it becomes `dst`, on any error nothing remains.

    An existing `dst` is refused unless `force`; a `dst` equal to, inside or around a `protect`ed input is always
    refused (so `--force` can never delete the source).

    Example:

    ```python
    >>> with atomic_output_dir("out", force=True) as tmp:
    ...     (tmp / "config.json").write_text("{}")
    ```
    """
    dst = Path(dst).expanduser()
    _check_destination(dst, force, protect)
    created = _missing_ancestors(dst.parent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _warn_about_leftovers(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # deepest first
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise


__all__ = ["atomic_output_dir"]
