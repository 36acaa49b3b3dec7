"""FalconHFTokenizer against transformers' GPT2Tokenizer (must be identical) and keras-hub's FalconTokenizer."""

import re

import pytest
from transformers import AutoTokenizer, GPT2Tokenizer

from falcon_hf import FalconHFTokenizer
from falcon_hf.tokenization_falcon_hf import END_OF_TEXT

AGREED_TEXTS = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Punctuation!? (yes) [no] {maybe}; 'quoted' \"double\" -- dash... it's can't we'll",
    "Accents: café naïve façade Ærøskøbing",
    "CJK: 你好，世界。こんにちは 안녕하세요",
    "Emoji: 🎉 👩‍👩‍👧 🇫🇷",
    "Digits 1234567890 3.14159 1,000,000 and 2026-11-29",
    f"inline{END_OF_TEXT}special {END_OF_TEXT} token",
    "",
    "Tabs\tand\nnewlines\r\nbetween words",
]
GLUED_CONTRACTION = re.compile(r"'(s|t|re|ve|m|ll|d)[^\W\d_]", re.IGNORECASE)
WHITESPACE_RUNS = ["a  b", "indented\n    code", "end   ", "\n\n\nThree newlines"]


def keras_ids(keras_tokenizer, text):
    return [int(i) for i in keras_tokenizer(text)]


@pytest.fixture(scope="module")
def keras_tokenizer(tiny_bpe):
    import keras_hub

    vocab, merges = tiny_bpe
    return keras_hub.models.FalconTokenizer(vocabulary=vocab, merges=merges)


@pytest.fixture(scope="module")
def gpt2_tokenizer(tiny_bpe):
    vocab, merges = tiny_bpe
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])


@pytest.fixture
def tokenizer(tiny_bpe):
    vocab, merges = tiny_bpe
    return FalconHFTokenizer(vocab=vocab, merges=merges)


@pytest.mark.parametrize("text", AGREED_TEXTS + WHITESPACE_RUNS)
def test_ids_equal_gpt2_tokenizer_and_decode_round_trips(tokenizer, gpt2_tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == gpt2_tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", AGREED_TEXTS)
def test_ids_equal_keras_hub_outside_whitespace_runs(tokenizer, keras_tokenizer, text):
    assert tokenizer(text)["input_ids"] == keras_ids(keras_tokenizer, text)


def test_ten_thousand_characters_agree_with_keras_hub(tokenizer, keras_tokenizer, shakespeare_text):
    # Collapse whitespace runs and drop contractions glued to letters ("go'st"): see the test below.
    words = [word for word in shakespeare_text[:14_000].split() if not GLUED_CONTRACTION.search(word)]
    text = " ".join(words)[:10_000]
    assert len(text) == 10_000
    assert tokenizer(text)["input_ids"] == keras_ids(keras_tokenizer, text)


def test_where_keras_hub_differs_whitespace_runs_and_glued_contractions(tiny_bpe, keras_tokenizer, tokenizer):
    """keras-hub 0.32 passes its split regex to `tokenizers.pre_tokenizers.Split` as a plain string, so the text is
    never pre-split: a merge of two spaces can swallow the space GPT-2 keeps with the next word, and a contraction
    followed by letters ("go'st") merges differently than GPT-2's `'s` split."""
    assert tokenizer.convert_ids_to_tokens(tokenizer("go'st")["input_ids"]) == ["g", "o", "'s", "t"]
    assert [keras_tokenizer.id_to_token(i) for i in keras_ids(keras_tokenizer, "go'st")] == ["g", "o", "'", "st"]

    import keras_hub

    vocab, merges = dict(tiny_bpe[0]), ["Ġ Ġ"] + tiny_bpe[1]
    vocab["ĠĠ"] = len(vocab)
    ours = FalconHFTokenizer(vocab=vocab, merges=merges)
    theirs = keras_hub.models.FalconTokenizer(vocabulary=vocab, merges=merges)
    assert ours.convert_ids_to_tokens(ours("a  b")["input_ids"]) == ["a", "Ġ", "Ġb"]  # GPT-2's split
    assert [theirs.id_to_token(i) for i in keras_ids(theirs, "a  b")] == ["a", "ĠĠ", "b"]


def test_special_token_is_bos_eos_unk_and_pad_never_id_0(tokenizer, tiny_bpe):
    eot = tiny_bpe[0][END_OF_TEXT]
    assert eot != 0
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.unk_token_id == eot
    batch = tokenizer(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0].count(eot) == len(batch["input_ids"][0]) - 1
    assert tokenizer("x" + END_OF_TEXT)["input_ids"][-1] == eot  # kept whole


def test_add_bos_token_is_a_setting_that_survives_save_and_load(tiny_bpe, tmp_path):
    vocab, merges = tiny_bpe
    with_bos = FalconHFTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    ids = with_bos("Good night")["input_ids"]
    assert ids[0] == vocab[END_OF_TEXT]
    with_bos.save_pretrained(tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is FalconHFTokenizer and reloaded.add_bos_token
    assert reloaded("Good night")["input_ids"] == ids
    assert GPT2Tokenizer.from_pretrained(tmp_path)("Good night")["input_ids"] == ids


def test_keras_hub_vocabulary_files(tiny_bpe, tmp_path):
    import json

    vocab, merges = tiny_bpe
    (tmp_path / "vocabulary.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("\n".join(merges))
    tokenizer = FalconHFTokenizer.from_vocab_and_merges(tmp_path / "vocabulary.json", tmp_path / "merges.txt")
    assert tokenizer("the king")["input_ids"] == FalconHFTokenizer(vocab=vocab, merges=merges)("the king")["input_ids"]


def test_merges_with_missing_pieces_are_dropped_with_one_warning(caplog):
    # keras-hub's own documentation example: "Ġf", "ox" and friends are not in this vocabulary.
    vocab = {"<|endoftext|>": 0, "a": 4, "Ġquick": 5, "Ġfox": 6}
    merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick", "Ġ f", "o x", "Ġf ox"]
    from transformers.utils import logging

    logging.enable_propagation()
    try:
        tokenizer = FalconHFTokenizer(vocab=vocab, merges=merges)
    finally:
        logging.disable_propagation()
    assert "Dropped 8 of 8 BPE merges" in caplog.text
    assert tokenizer.convert_ids_to_tokens(tokenizer("a")["input_ids"]) == ["a"]
