"""JSON files read safely (`json` only) with errors that name the file, and written as keras-hub writes them."""

import json
from pathlib import Path

from .errors import ConversionError


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing or malformed file is a `ConversionError` naming it."""
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except FileNotFoundError as error:
        raise ConversionError(f"{path}: file not found.") from error
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad UTF-8, bad JSON, 5000-digit numbers
        raise ConversionError(f"{path}: not valid JSON ({type(error).__name__}: {error}).") from error
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def write_json(path: Path, value: dict) -> None:
    """Write `value` the way keras-hub's `save_to_preset` does: 4-space indent, no trailing newline."""
    path.write_text(json.dumps(value, indent=4), encoding="utf-8")
