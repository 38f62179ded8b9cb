"""Few-shot subsets and missing-data corruption."""
import collections
import os

import numpy as np
import pytest

from umema_jax.data import fewshot_subset, load_dataset_splits
from umema_jax.data.corrupt import corrupt_examples, corrupt_text, corrupt_tokens
from umema_jax.data.fewshot import stratified_indices
from umema_jax.data.types import ClassificationExample, TokenExample

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")


def cls_pool():
    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    return [ClassificationExample(f"text {i}", lab, str(i)) for i, lab in enumerate(labels)]


def test_fewshot_stratified_and_seeded():
    pool = cls_pool()
    sub = fewshot_subset(pool, 200, seed=1)
    assert collections.Counter(e.label for e in sub) == {"a": 120, "b": 60, "c": 20}
    assert [e.id for e in fewshot_subset(pool, 200, seed=1)] == [e.id for e in sub]   # same for all methods
    assert [e.id for e in fewshot_subset(pool, 200, seed=2)] != [e.id for e in sub]
    assert len({e.id for e in sub}) == 200
    assert fewshot_subset(pool, None, 0) == pool and fewshot_subset(pool, 5000, 0) == pool


def test_largest_remainder_allocation():
    idx = stratified_indices(["a"] * 5 + ["b"] * 3 + ["c"] * 2, 5, seed=0)
    counts = collections.Counter(("a" * 5 + "b" * 3 + "c" * 2)[i] for i in idx)
    assert counts == {"a": 3, "b": 1, "c": 1} or counts == {"a": 2, "b": 2, "c": 1}
    assert sum(counts.values()) == 5
    with pytest.raises(ValueError):
        stratified_indices(["a"], 2, 0)


def test_fewshot_ner_by_sentence():
    s = load_dataset_splits("wnut17", os.path.join(FIX, "wnut17_tiny"))
    sub = fewshot_subset(s.train, 10, seed=3)
    assert len(sub) == 10 and all(isinstance(e, TokenExample) for e in sub)
    assert [e.id for e in sub] == [e.id for e in fewshot_subset(s.train, 10, seed=3)]


def test_corrupt_semeval_never_touches_markers_or_entities():
    s = load_dataset_splits("semeval", os.path.join(FIX, "semeval_tiny"))
    for mode in ("delete", "mask"):
        out = corrupt_examples(s.train, 1.0, seed=0, mode=mode)
        for before, after in zip(s.train, out):
            for m in ("<e1>", "</e1>", "<e2>", "</e2>"):
                assert after.text.count(m) == 1
            e1 = before.text[before.text.index("<e1>"):before.text.index("</e1>") + 5]
            assert e1 in after.text and after.label == before.label and after.id == before.id
    text = 'The <e1>big old cat</e1> sat on <e2>mats</e2>.'
    rng = np.random.default_rng(0)
    assert corrupt_text(text, 1.0, rng, "mask", "_") == '_ <e1>big old cat</e1> _ _ <e2>mats</e2>.'
    assert corrupt_text(text, 1.0, rng, "delete") == '<e1>big old cat</e1> <e2>mats</e2>.'
    assert corrupt_text(text, 1.0, rng, "mask", "_", protect_entities=False) == \
        '_ <e1>big _ cat</e1> _ _ <e2>mats</e2>.'


def test_corrupt_ner_tags_follow_deleted_words():
    toks, tags = ["a", "b", "c", "d", "e", "f"], ["O", "B-X", "I-X", "O", "B-Y", "O"]
    pairs = set(zip(toks, tags))
    for seed in range(20):
        t2, g2 = corrupt_tokens(toks, tags, 0.5, np.random.default_rng(seed), "delete")
        assert len(t2) == len(g2) >= 1 and set(zip(t2, g2)) <= pairs
        assert t2 == [t for t in toks if t in t2]        # order kept
    t3, g3 = corrupt_tokens(toks, tags, 1.0, np.random.default_rng(0), "delete")
    assert len(t3) == 1                                  # never empties a sentence
    t4, g4 = corrupt_tokens(toks, tags, 1.0, np.random.default_rng(0), "mask", "<unk>")
    assert t4 == ["<unk>"] * 6 and g4 == tags


def test_corruption_rate_seed_and_split_streams():
    words = " ".join(f"w{i}" for i in range(2000))
    exs = [ClassificationExample(words, "a", "x")]
    out = corrupt_examples(exs, 0.3, seed=5, mode="mask")[0].text.split()
    assert len(out) == 2000 and abs(out.count("[MASK]") / 2000 - 0.3) < 0.05
    assert corrupt_examples(exs, 0.3, seed=5, mode="mask")[0].text == " ".join(out)
    assert corrupt_examples(exs, 0.3, seed=6, mode="mask")[0].text != " ".join(out)
    assert corrupt_examples(exs, 0.3, seed=5, mode="mask", split="test")[0].text != " ".join(out)
    deleted = corrupt_examples(exs, 0.3, seed=5)[0].text
    assert "  " not in deleted and abs(len(deleted.split()) / 2000 - 0.7) < 0.05
    # the same example is corrupted the same way in any subset / order
    pool = [ClassificationExample(f"{words[:50]} {i}", "a", str(i)) for i in range(5)]
    full = corrupt_examples(pool, 0.5, seed=1)
    part = corrupt_examples(pool[::-1][:2], 0.5, seed=1)
    assert part[0] == full[4] and part[1] == full[3]
    assert corrupt_examples(pool, 0.0, seed=1) == pool
    with pytest.raises(ValueError):
        corrupt_examples(pool, 1.5, seed=1)
