"""keras-hub's `FalconCausalLMPreprocessor`: strings -> (x, y, sample_weight) for training, prompts for `generate`."""

import numpy as np
import torch

from .data import to_numpy
from .presets import classproperty, load_hf_tokenizer, load_preprocessor_settings, preset_table
from .tokenizer import FalconTokenizer


def pack(token_lists: list[list[int]], sequence_length: int, start_id: int | None, end_id: int | None,
         pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """keras-hub's `StartEndPacker`: truncate to fit, add start/end ids, right-pad -> ids (B, S) int32, mask (B, S)."""
    room = sequence_length - (start_id is not None) - (end_id is not None)
    token_ids = np.full((len(token_lists), sequence_length), pad_id, dtype=np.int32)
    padding_mask = np.zeros((len(token_lists), sequence_length), dtype=bool)
    for row, tokens in enumerate(token_lists):
        packed = ([start_id] if start_id is not None else []) + list(tokens)[: max(room, 0)]
        packed = (packed + ([end_id] if end_id is not None else []))[:sequence_length]
        token_ids[row, : len(packed)] = packed
        padding_mask[row, : len(packed)] = True
    return token_ids, padding_mask


def _as_batch(x) -> tuple[list[str], bool]:
    """(strings, was_a_single_string)."""
    if isinstance(x, str):
        return [x], True
    if isinstance(x, np.ndarray):
        x = x.tolist()
    strings = list(x)
    if not all(isinstance(text, str) for text in strings):
        raise ValueError("FalconCausalLMPreprocessor takes a string or a list of strings; pass token_ids/padding_mask "
                         "dicts to the model directly.")
    return strings, False


class FalconCausalLMPreprocessor:
    """Tokenize and pack text for `FalconCausalLM`, as keras-hub's `FalconCausalLMPreprocessor` does.

    `preprocessor(x)` returns `(x, y, sample_weight)`: `x = {"token_ids", "padding_mask"}` of length `sequence_length`
    (start token prepended and end token appended when enabled), `y` the same ids shifted left by one and
    `sample_weight` marking the real labels. Outputs are torch tensors with keras-hub's dtypes (int32 ids, bool masks);
    a single string gives unbatched tensors. Padding uses id 0 exactly like keras-hub (so outputs compare equal); it is
    a real token, hidden by the mask (the HF tokenizer pads with `<|endoftext|>` instead).

    Args:
        tokenizer: a `FalconTokenizer`.
        sequence_length: the packed length.
        add_start_token: prepend `<|endoftext|>` to training text. `generate_preprocess` always prepends it, as
            keras-hub's does.
        add_end_token: append `<|endoftext|>` to training text.

    Example:

    ```python
    >>> preprocessor = falcon_hf.models.FalconCausalLMPreprocessor.from_preset("falcon_refinedweb_1b_en",
    ...                                                                         sequence_length=8)
    >>> x, y, sample_weight = preprocessor(["League of legends"])
    >>> x["token_ids"].shape, x["token_ids"][0, 0].item() == preprocessor.tokenizer.start_token_id
    (torch.Size([1, 8]), True)
    >>> torch.equal(y[0, :-1], x["token_ids"][0, 1:])  # labels: the next token
    True
    ```
    """

    def __init__(self, tokenizer: FalconTokenizer, sequence_length: int = 1024, add_start_token: bool = True,
                 add_end_token: bool = True):
        if not isinstance(tokenizer, FalconTokenizer):
            raise TypeError(f"tokenizer must be a falcon_hf.models.FalconTokenizer, got {type(tokenizer).__name__}.")
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be positive, got {sequence_length}.")
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "FalconCausalLMPreprocessor":
        """The preset's tokenizer and preprocessing settings; `sequence_length`, `add_start_token` and
        `add_end_token` override them."""
        unknown = set(kwargs) - {"sequence_length", "add_start_token", "add_end_token"}
        if unknown:
            raise TypeError(f"FalconCausalLMPreprocessor.from_preset() got unexpected arguments {sorted(unknown)}.")
        settings = load_preprocessor_settings(preset)
        return cls(FalconTokenizer.from_hf(load_hf_tokenizer(preset)), **{
            "sequence_length": settings.sequence_length, "add_start_token": settings.add_start_token,
            "add_end_token": settings.add_end_token, **kwargs})

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """Built-in and embedded presets: name -> metadata (description, parameter count)."""
        return preset_table()

    def __call__(self, x, y=None, sample_weight=None, sequence_length: int | None = None):
        if y is not None or sample_weight is not None:
            raise ValueError("FalconCausalLMPreprocessor computes y and sample_weight from x itself; pass only x.")
        strings, single = _as_batch(x)
        sequence_length = sequence_length or self.sequence_length
        start = self.tokenizer.start_token_id if self.add_start_token else None
        end = self.tokenizer.end_token_id if self.add_end_token else None
        # One extra position: the last token has no next token, so it is a label only.
        token_ids, padding_mask = pack(self.tokenizer(strings), sequence_length + 1, start, end,
                                       self.tokenizer.pad_token_id)
        outputs = ({"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]},
                   token_ids[:, 1:], padding_mask[:, 1:])
        return _to_torch(outputs, single)

    def generate_preprocess(self, x, sequence_length: int | None = None) -> dict:
        """Prompts -> `{"token_ids", "padding_mask"}` of `sequence_length`: start token, no end token, right padding."""
        strings, single = _as_batch(x)
        token_ids, padding_mask = pack(self.tokenizer(strings), sequence_length or self.sequence_length,
                                       self.tokenizer.start_token_id, None, self.tokenizer.pad_token_id)
        return _to_torch({"token_ids": token_ids, "padding_mask": padding_mask}, single)

    def generate_postprocess(self, x: dict) -> str | list[str]:
        """`{"token_ids", "padding_mask"}` -> strings, dropping masked positions and `<|endoftext|>`."""
        token_ids = to_numpy(x["token_ids"])
        padding_mask = to_numpy(x["padding_mask"]).astype(bool)
        single = token_ids.ndim == 1
        token_ids, padding_mask = np.atleast_2d(token_ids), np.atleast_2d(padding_mask)
        special = set(self.tokenizer.special_token_ids)
        texts = [self.tokenizer.detokenize([int(t) for t in row[mask] if int(t) not in special])
                 for row, mask in zip(token_ids, padding_mask)]
        return texts[0] if single else texts

    def __repr__(self) -> str:
        return (f"FalconCausalLMPreprocessor(sequence_length={self.sequence_length}, "
                f"add_start_token={self.add_start_token}, add_end_token={self.add_end_token})")


def _to_torch(outputs, single: bool):
    """numpy -> torch, dropping the batch axis for a single string."""
    if isinstance(outputs, dict):
        return {key: _to_torch(value, single) for key, value in outputs.items()}
    if isinstance(outputs, tuple):
        return tuple(_to_torch(value, single) for value in outputs)
    tensor = torch.from_numpy(np.ascontiguousarray(outputs))
    return tensor[0] if single else tensor


__all__ = ["FalconCausalLMPreprocessor", "pack"]
