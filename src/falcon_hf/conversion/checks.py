"""Checks of a weight source against the table, shared by every direction, with errors naming file and weight."""

from typing import Protocol

import torch

from .errors import ConversionError


class WeightSource(Protocol):
    """What `KerasWeights` and `HFCheckpoint` both offer."""

    source: object

    def names(self) -> list[str]: ...

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype | None: ...

    def where(self, name: str) -> str: ...

    def file_of(self, name: str) -> object: ...


def check_weights(source: WeightSource, expected: dict[str, tuple[int, ...]], described_by: str,
                  ignored: frozenset[str] = frozenset()) -> None:
    """Every expected weight present with its shape and a float dtype, and nothing else (bar `ignored`).

    `described_by` names what fixed the expected shapes (the config file), for shape-mismatch messages.
    """
    for name, shape in expected.items():
        if name not in source:
            raise ConversionError(f"{source.source}: missing weight '{name}' (expected shape {shape}).")
        if source.shape(name) != shape:
            raise ConversionError(f"{source.where(name)} has shape {source.shape(name)}, but {described_by} implies "
                                  f"{shape}.")
        if source.dtype(name) is None:
            raise ConversionError(f"{source.where(name)} is not stored as a float type the converter reads.")
    extra = [name for name in source.names() if name not in expected and name not in ignored]
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        listed = ", ".join(f"'{name}'" for name in extra[:5]) + more
        raise ConversionError(f"{source.file_of(extra[0])}: unexpected weight(s) {listed}, not in "
                              f"the Falcon table (for the shapes in {described_by}).")


def check_finite(tensor: torch.Tensor, where: str) -> None:
    """Refuse NaN or infinite values (the `--check` option)."""
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ConversionError(f"{where} has {bad} NaN or infinite value(s).")
