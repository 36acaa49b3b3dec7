"""Falcon-RW's GPT-2 style byte-level BPE tokenizer, on the `tokenizers` library."""

import importlib
import json
import os

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

logger = logging.get_logger(__name__)

END_OF_TEXT = "<|endoftext|>"
VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}


def read_vocab(vocab: str | os.PathLike | dict[str, int]) -> dict[str, int]:
    """A vocabulary dict, from a dict or a JSON file (HF `vocab.json` or keras-hub `vocabulary.json`)."""
    if isinstance(vocab, dict):
        return dict(vocab)
    with open(vocab, encoding="utf-8") as file:
        return json.load(file)


def read_merges(merges: str | os.PathLike | list) -> list[tuple[str, str]]:
    """Merge rules as pairs, from a list of `"a b"` strings / pairs or a `merges.txt` (its `#version` line skipped)."""
    if isinstance(merges, (str, os.PathLike)):
        with open(merges, encoding="utf-8") as file:
            merges = [line.rstrip("\n") for line in file if line.strip() and not line.startswith("#version")]
    return [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges]


def usable_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop merges whose pieces or result are not in the vocabulary, warning once with the count.

    keras-hub raises on such merges; its own documentation builds a tokenizer from exactly such a vocabulary.
    """
    kept = [pair for pair in merges if pair[0] in vocab and pair[1] in vocab and pair[0] + pair[1] in vocab]
    if len(kept) < len(merges):
        logger.warning(
            f"Dropped {len(merges) - len(kept)} of {len(merges)} BPE merges whose pieces or result are missing from "
            "the vocabulary."
        )
    return kept


def check_valid_unicode(texts) -> None:
    """Raise a `ValueError` naming the first lone surrogate in `texts` (a string or nested lists/tuples of them):
    not valid Unicode, so not UTF-8 encodable, which the `tokenizers` library reports only as a TypeError."""
    if isinstance(texts, (list, tuple)):
        for index, text in enumerate(texts):
            try:
                check_valid_unicode(text)
            except ValueError as error:
                raise ValueError(f"Text {index} of the batch: {error}") from None
        return
    if isinstance(texts, str):
        try:
            texts.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"character {error.start} is a lone surrogate ({texts[error.start]!r}), which is not "
                             "valid Unicode and cannot be tokenized; decode the source bytes with errors='replace' or "
                             "fix them first.") from None


def template_adds_bos(post_processor) -> bool:
    """Whether a saved `TemplateProcessing` post-processor starts single sequences with a special token."""
    if post_processor is None:
        return False
    template = json.loads(post_processor.__getstate__())
    return template.get("type") == "TemplateProcessing" and "SpecialToken" in template["single"][0]


class FalconHFTokenizer(TokenizersBackend):
    """Byte-level BPE exactly as GPT-2 (and so Falcon-RW) tokenizes, with `<|endoftext|>` as bos, eos, unk and pad.

    It gives the same ids as transformers' `GPT2Tokenizer` on the same vocabulary and merges. keras-hub 0.32's
    `FalconTokenizer` gives the same ids too, except where a merge crosses one of GPT-2's pre-token boundaries: its split
    pattern reaches the `tokenizers` library as literal text, so it never pre-splits. In practice that is runs of two
    or more whitespace characters (`"a  b"` is `"a", "Ġ", "Ġb"` here, GPT-2 keeps the last space with the word; a
    `"Ġ Ġ"` merge gives `"a", "ĠĠ", "b"` there) and the contractions `'s 't 're 've 'm 'll 'd` where GPT-2's regex does
    not split them off: glued to a following letter (`"go'st"` is `"g", "o", "'s", "t"` here, `"'", "st"` there) or
    after anything but a letter or digit, where GPT-2 groups the apostrophe with what precedes it (a space, `"?'d"` is
    `"?", "'", "d"` here, `"?", "'d"` there; an emoji, `"_'s"`). On Tiny Shakespeare's validation lines the two agree
    on 3510 of 3536.

    Text must be valid Unicode: a lone surrogate (left by `errors="surrogateescape"` or a broken decoder) raises a
    `ValueError` naming the text and position, as the `tokenizers` library cannot encode it.

    Padding uses `<|endoftext|>` (keras-hub pads with id 0, a real token, and relies on the mask alone). Whether the
    start token is prepended is the `add_bos_token` setting; tokenizers converted from a Keras preset keep the
    preprocessor's choice (keras-hub prepends it), so the HF pipeline sees the prompt ids keras-hub's `generate` sees.

    Example:

    ```python
    >>> vocab = {"<|endoftext|>": 0, "a": 1, "Ġ": 2, "q": 3, "u": 4, "i": 5, "c": 6, "k": 7, "Ġq": 8, "Ġquick": 9,
    ...          "ui": 10, "ck": 11, "uick": 12}
    >>> merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick"]
    >>> tokenizer = FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    >>> tokenizer("a quick")["input_ids"]
    [0, 1, 9]
    ```
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    model = BPE
    padding_side = "left"  # decoder-only generation continues after the prompt

    def __init__(
        self,
        vocab: str | dict[str, int] | None = None,
        merges: str | list | None = None,
        errors: str = "replace",
        unk_token: str = END_OF_TEXT,
        bos_token: str = END_OF_TEXT,
        eos_token: str = END_OF_TEXT,
        pad_token: str = END_OF_TEXT,
        add_bos_token: bool | None = None,
        add_eos_token: bool = False,
        **kwargs,
    ):
        vocab = read_vocab(vocab if vocab is not None else kwargs.pop("vocab_file", {}) or {})
        merges = usable_merges(vocab, read_merges(merges if merges is not None else kwargs.pop("merges_file", [])))
        self._vocab, self._merges = vocab, merges
        self._tokenizer = Tokenizer(
            BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                fuse_unk=False)
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tokenizer.decoder = decoders.ByteLevel()
        kwargs.pop("add_prefix_space", None)  # GPT-2's rule: no prefix space, ever
        if add_bos_token is None:  # reloading: transformers keeps this setting in tokenizer.json's post-processor
            add_bos_token = template_adds_bos(kwargs.get("post_processor"))
        super().__init__(
            errors=errors,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            add_prefix_space=False,
            **kwargs,
        )

    def _encode_plus(self, text, text_pair=None, *args, **kwargs):
        try:
            return super()._encode_plus(text, text_pair, *args, **kwargs)
        except TypeError:
            check_valid_unicode([text, text_pair] if text_pair is not None else text)
            raise

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, str]:
        """Write GPT-2 style `vocab.json` and `merges.txt` next to `tokenizer.json`, for tools that read those."""
        model = json.loads(self._tokenizer.to_str())["model"]
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        merges_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["merges_file"])
        with open(vocab_path, "w", encoding="utf-8") as file:
            json.dump(model["vocab"], file, ensure_ascii=False)
        with open(merges_path, "w", encoding="utf-8") as file:
            file.write("#version: 0.2\n")
            file.writelines(" ".join(merge) + "\n" for merge in model["merges"])
        return vocab_path, merges_path

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        saved = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        return tuple(saved) + self.save_vocabulary(str(save_directory), filename_prefix)

    @classmethod
    def from_vocab_and_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike, **kwargs):
        """Build from a vocabulary JSON (`vocab.json` or keras-hub's `vocabulary.json`) and a `merges.txt`."""
        return cls(vocab=read_vocab(vocab_path), merges=read_merges(merges_path), **kwargs)

    @classmethod
    def from_keras_preset(cls, preset: str) -> "FalconHFTokenizer":
        """The tokenizer of a Keras Hub Falcon preset (folder, `kaggle://`, `hf://` or built-in name).

        Example:

        ```python
        >>> tokenizer = FalconHFTokenizer.from_keras_preset("tiny_shakespeare")
        ```
        """
        # The converter lives in the installed plugin: `trust_remote_code` copies of this file do not carry it.
        return importlib.import_module("falcon_hf.conversion").load_tokenizer_from_keras_preset(preset)


__all__ = ["FalconHFTokenizer"]
