"""Encoding with the real GPT-2 and SmolLM2 tokenizers."""
import os

import numpy as np
import pytest

from umema_jax.data import IGNORE_INDEX, load_dataset_splits
from umema_jax.data.encode import (encode_classification, encode_splits, encode_token_classification,
                                   encode_words)
from umema_jax.data.types import ClassificationExample, TokenExample
from umema_jax.tokenization import load_tokenizer

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
TOKENIZERS = ["gpt2", "smollm2-135m"]


@pytest.fixture(scope="module", params=TOKENIZERS)
def tok(request):
    return load_tokenizer(request.param)


def test_words_encode_like_the_joined_string(tok):
    assert encode_words(["Hello", "world"], tok)[0] == tok("Hello world", add_special_tokens=False)["input_ids"]
    words = "RT @bob : I 'm at the café in New York , 2017 #fun :) !!".split()
    ids, word_ids = encode_words(words, tok)
    assert ids == tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert sorted(set(w for w in word_ids if w is not None)) == list(range(len(words)))
    # the second word is a word start: it carries the leading-space marker
    second = tok.convert_ids_to_tokens(ids[word_ids.index(1)])
    assert second.startswith("Ġ"), second


def test_no_bos_by_default(tok):
    ex = [ClassificationExample("Hello world", "a", "1")]
    enc = encode_classification(ex, tok, ["a"], 32)
    assert enc.input_ids[0].tolist() == tok("Hello world", add_special_tokens=False)["input_ids"]
    with_bos = encode_classification(ex, tok, ["a"], 32, add_bos=True)
    assert with_bos.input_ids[0].tolist() == [tok.bos_token_id] + enc.input_ids[0].tolist()


def test_token_labels_on_first_subtoken_only(tok):
    words = ["Unbelievably", "Schwarzenegger", "visited", "Zzyzx", "."]
    tags = ["O", "B-PER", "O", "B-LOC", "O"]
    enc = encode_token_classification([TokenExample(words, tags, "s")], tok, ["O", "B-PER", "B-LOC"], 64)
    ids, lab, widx = enc.input_ids[0], enc.labels[0], enc.word_index[0]
    _, word_ids = encode_words(words, tok)
    assert len(ids) == len(word_ids) > len(words)           # some words split into several pieces
    firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert np.flatnonzero(lab != IGNORE_INDEX).tolist() == firsts
    assert lab[firsts].tolist() == [0, 1, 0, 2, 0]
    assert widx[firsts].tolist() == [0, 1, 2, 3, 4] and (widx == -1).sum() == len(ids) - 5
    assert enc.num_truncated_words == 0 and enc.num_truncated == 0
    bos = encode_token_classification([TokenExample(words, tags, "s")], tok, ["O", "B-PER", "B-LOC"], 64,
                                      add_bos=True)
    assert bos.labels[0][0] == IGNORE_INDEX and bos.labels[0][1:].tolist() == lab.tolist()


def test_truncated_words_are_counted_not_dropped_silently():
    tok = load_tokenizer("gpt2")
    words = ["word"] * 10
    tags = ["O"] * 10
    enc = encode_token_classification([TokenExample(words, tags, "a"), TokenExample(words[:3], tags[:3], "b")],
                                      tok, ["O"], 6)
    assert enc.lengths.tolist() == [6, 3]
    assert enc.num_truncated == 1 and enc.num_truncated_words == 4
    assert enc.stats() == {"examples": 2, "max_len": 6, "truncated_examples": 1, "truncated_words": 4, "words": 13}


def test_classification_truncation_counted_and_labels_mapped():
    tok = load_tokenizer("gpt2")
    exs = [ClassificationExample("one two three four five six", "b", "1"),
           ClassificationExample("short", "a", "2")]
    enc = encode_classification(exs, tok, ["a", "b"], 4)
    assert enc.labels.tolist() == [1, 0] and enc.num_truncated == 1
    full = tok(exs[0].text, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[0].tolist() == full[:4]
    left = encode_classification(exs, tok, ["a", "b"], 4, truncation_side="left")
    assert left.input_ids[0].tolist() == full[-4:]
    with pytest.raises(ValueError, match="label 'c' is not in the label set"):
        encode_classification([ClassificationExample("x", "c", "9")], tok, ["a", "b"], 4)


def test_encode_fixture_splits_smollm2():
    tok = load_tokenizer("smollm2-135m")
    s = load_dataset_splits("wnut17", os.path.join(FIX, "wnut17_tiny"))
    enc = encode_splits(s, tok, 64)
    assert [len(enc[k]) for k in ("train", "dev", "test")] == [40, 15, 15]
    for k in ("train", "dev", "test"):
        for ex, lab in zip(s.split(k), enc[k].labels):
            assert (lab != IGNORE_INDEX).sum() == len(ex.tokens)
            assert [s.labels[i] for i in lab[lab != IGNORE_INDEX]] == ex.tags
