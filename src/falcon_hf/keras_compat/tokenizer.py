"""keras-hub's `FalconTokenizer` API over `FalconHFTokenizer` (the `tokenizers` library BPE)."""

import json
import os

import numpy as np

from ..tokenization_falcon_hf import END_OF_TEXT, FalconHFTokenizer, check_valid_unicode
from .presets import classproperty, load_hf_tokenizer, preset_table

KERAS_PAD_TOKEN_ID = 0
"""keras-hub's Falcon preprocessing pads with id 0 (a real token, hidden by the padding mask); so do we here."""


class FalconTokenizer:
    """Falcon's GPT-2 byte-level BPE with keras-hub's `FalconTokenizer` interface.

    `tokenizer(text)` gives the ids without start or end token (the preprocessor adds them): an int32 array for one
    string, a list of lists for a batch. Unlike keras-hub, merges whose pieces or result are missing from `vocabulary`
    are dropped with one warning instead of raising, so keras-hub's own documentation example runs. The ids agree with
    keras-hub's except on runs of two or more whitespace characters and on contractions GPT-2 does not split off (glued
    to a letter as in `"go'st"`, or after a space, punctuation or symbol as in `"?'d"`), where keras-hub's
    pre-tokenizer does not split as GPT-2 does (see `FalconHFTokenizer`). A lone surrogate raises a `ValueError`.

    Args:
        vocabulary: a token -> id dict or the path of a `vocabulary.json` / `vocab.json`.
        merges: a list of `"a b"` merge rules or the path of a `merges.txt`.

    Example:

    ```python
    >>> vocab = {"<|endoftext|>": 0, "a": 4, "Ġquick": 5, "Ġfox": 6}
    >>> merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick", "Ġ f", "o x", "Ġf ox"]
    >>> tokenizer = falcon_hf.models.FalconTokenizer(vocabulary=vocab, merges=merges)  # warns: 8 merges dropped
    >>> tokenizer("a quick fox.")
    array([4], dtype=int32)
    ```
    """

    def __init__(self, vocabulary: dict[str, int] | str | os.PathLike | None = None,
                 merges: list[str] | str | os.PathLike | None = None):
        if vocabulary is None or merges is None:
            raise ValueError("FalconTokenizer needs a vocabulary and merges (or use FalconTokenizer.from_preset).")
        self.hf_tokenizer = FalconHFTokenizer(vocab=vocabulary, merges=merges, add_bos_token=False)
        self._check_end_token()

    @classmethod
    def from_hf(cls, hf_tokenizer: FalconHFTokenizer) -> "FalconTokenizer":
        """Wrap an existing `FalconHFTokenizer` (its start-token setting is ignored: the preprocessor adds tokens)."""
        tokenizer = cls.__new__(cls)
        tokenizer.hf_tokenizer = hf_tokenizer
        tokenizer._check_end_token()
        return tokenizer

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "FalconTokenizer":
        """The tokenizer of a preset: built-in name, `kaggle://`, `hf://`, a Keras preset folder or an HF folder."""
        if kwargs:
            raise TypeError(f"FalconTokenizer.from_preset() got unexpected arguments {sorted(kwargs)}.")
        return cls.from_hf(load_hf_tokenizer(preset))

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """Built-in and embedded presets: name -> metadata (description, parameter count)."""
        return preset_table()

    def _check_end_token(self) -> None:
        if END_OF_TEXT not in self.hf_tokenizer.get_vocab():
            raise ValueError(f"The Falcon vocabulary must contain {END_OF_TEXT}, its start and end token.")

    @property
    def start_token_id(self) -> int:
        return self.hf_tokenizer.convert_tokens_to_ids(END_OF_TEXT)

    @property
    def end_token_id(self) -> int:
        return self.start_token_id

    @property
    def pad_token_id(self) -> int:
        return KERAS_PAD_TOKEN_ID

    @property
    def special_token_ids(self) -> list[int]:
        """The ids `generate` strips from its strings (keras-hub: start and end token, both `<|endoftext|>`)."""
        return [self.end_token_id]

    def tokenize(self, inputs: str | list[str]) -> np.ndarray | list[list[int]]:
        if isinstance(inputs, str):
            return np.asarray(self.tokenize([inputs])[0], dtype=np.int32)
        texts = list(inputs)
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("FalconTokenizer takes a string or a list of strings.")
        # The `tokenizers` backend directly: no length warnings (the preprocessor truncates), no special tokens.
        try:
            encodings = self.hf_tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            check_valid_unicode(texts)  # a lone surrogate: say where
            raise
        return [encoding.ids for encoding in encodings]

    __call__ = tokenize

    def detokenize(self, token_ids) -> str | list[str]:
        """Ids back to text: one sequence gives a string, a batch a list of strings (special tokens are kept)."""
        token_ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        if token_ids and isinstance(token_ids[0], list):
            return [self.hf_tokenizer.decode(row) for row in token_ids]
        return self.hf_tokenizer.decode(token_ids)

    def vocabulary_size(self) -> int:
        return len(self.hf_tokenizer.get_vocab())

    def get_vocabulary(self) -> list[str]:
        vocab = self.hf_tokenizer.get_vocab()
        return sorted(vocab, key=vocab.get)

    def id_to_token(self, token_id: int) -> str:
        return self.hf_tokenizer.convert_ids_to_tokens(int(token_id))

    def token_to_id(self, token: str) -> int:
        vocab = self.hf_tokenizer.get_vocab()
        if token not in vocab:
            raise KeyError(f"Token {token!r} is not in the vocabulary.")
        return vocab[token]

    def to_hf_tokenizer(self, add_bos_token: bool, model_max_length: int) -> FalconHFTokenizer:
        """A standalone `FalconHFTokenizer` that prepends the start token iff `add_bos_token` (for saving)."""
        model = json.loads(self.hf_tokenizer.backend_tokenizer.to_str())["model"]
        return FalconHFTokenizer(vocab=model["vocab"], merges=model["merges"], add_bos_token=add_bos_token,
                                 model_max_length=model_max_length)

    def __repr__(self) -> str:
        return f"FalconTokenizer(vocabulary_size={self.vocabulary_size()})"


__all__ = ["FalconTokenizer"]
