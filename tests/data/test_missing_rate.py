"""`data.missing_rate` end to end through the run's data loading (`train.build.load_splits`) on the real
SemEval and WNUT17 files: the rate deleted is the rate asked, per seed, entities intact, NER tags aligned,
dev clean; bad values fail validation in one line."""
import os
import re

import numpy as np
import pytest

from umema_jax.defaults import base_config, default_data_dir
from umema_jax.train.build import load_splits
from umema_jax.methods import validate_config
from umema_jax.train.validate import ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
SHARED = default_data_dir()
ENTITY = re.compile(r"<e([12])>.*?</e\1>")


def _data_dir(name):
    """The real dataset folder when this machine has it (thousands of words), else the bundled fixture."""
    real = {"semeval": "semeval2010_task8", "wnut17": "wnut17"}[name]
    if SHARED and os.path.isdir(os.path.join(SHARED, real)):
        return os.path.join(SHARED, real)
    return os.path.join(FIXTURES, f"{name}_tiny")


def _splits(name, rate, seed=0, train_size=400):
    c = base_config()
    c.data.name, c.data.data_dir, c.data.missing_rate, c.seed = name, _data_dir(name), rate, seed
    c.data.train_size, c.data.dev_size = train_size, 0
    return load_splits(c)


def _close(deleted, words, rate):
    """Each word is hit independently: the share deleted is within 4 binomial SE of the rate."""
    assert abs(deleted / words - rate) <= 4 * np.sqrt(rate * (1 - rate) / words), (deleted, words, rate)


def _outside_entities(text):
    """Words that are neither inside <eN> ... </eN> nor carry a marker (e.g. '</e1>,'): the eligible ones."""
    out, inside = [], False
    for word in text.split():
        opens, closes = re.search(r"<e[12]>", word), re.search(r"</e[12]>", word)
        if not (inside or opens or closes):
            out.append(word)
        inside = (inside or bool(opens)) and not closes
    return out


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_semeval_deletes_the_asked_share_of_words_and_never_an_entity(rate):
    # every training sentence: multi-word nominals, whose middle words carry no marker, are rare (~0.4 %)
    clean, hit = _splits("semeval", 0.0, train_size=7000), _splits("semeval", rate, train_size=7000)
    for split in ("train", "test"):
        before = sum(len(_outside_entities(ex.text)) for ex in clean.split(split))
        after = sum(len(_outside_entities(ex.text)) for ex in hit.split(split))
        _close(before - after, before, rate)
        for a, b in zip(clean.split(split), hit.split(split)):
            assert (a.id, a.label) == (b.id, b.label)
            assert ENTITY.findall(a.text) == ENTITY.findall(b.text)          # markers and nominals intact
            assert [m.group(0) for m in ENTITY.finditer(a.text)] == [m.group(0) for m in ENTITY.finditer(b.text)]
    assert [ex.text for ex in hit.dev] == [ex.text for ex in clean.dev]      # dev stays clean


def test_the_corruption_is_a_function_of_the_seed():
    a, b, other = _splits("semeval", 0.3, seed=1), _splits("semeval", 0.3, seed=1), _splits("semeval", 0.3, seed=2)
    assert [ex.text for ex in a.test] == [ex.text for ex in b.test]
    assert [ex.text for ex in a.test] != [ex.text for ex in other.test]
    assert [ex.text for ex in a.train] == [ex.text for ex in b.train]


def test_ner_deletes_words_with_their_tags():
    clean, hit = _splits("wnut17", 0.0), _splits("wnut17", 0.3)
    for split in ("train", "test"):
        words = kept = 0
        for a, b in zip(clean.split(split), hit.split(split)):
            assert len(b.tokens) == len(b.tags) and b.id == a.id
            # the survivors are a subsequence of the original (word, tag) pairs
            pairs = iter(zip(a.tokens, a.tags))
            assert all(any(p == q for q in pairs) for p in zip(b.tokens, b.tags))
            words, kept = words + len(a.tokens), kept + len(b.tokens)
        _close(words - kept, words, 0.3)
    assert [ex.tokens for ex in hit.dev] == [ex.tokens for ex in clean.dev]


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_rate_outside_0_1_is_refused_naming_the_key(rate):
    c = base_config()
    c.data.data_dir, c.data.missing_rate = _data_dir("semeval"), rate
    with pytest.raises(ConfigError, match=r"data.missing_rate=.*must be in \[0, 1\)"):
        validate_config(c)


def test_rate_zero_changes_nothing():
    assert np.isclose(base_config().data.missing_rate, 0.0)
