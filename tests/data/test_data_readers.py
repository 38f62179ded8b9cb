"""Readers: fixture datasets load with the right counts; malformed input raises one clear error."""
import os
import re

import pytest

from umema_jax.data import DataFormatError, load_dataset_splits
from umema_jax.data.conll import iob1_to_iob2, read_conll
from umema_jax.data.newsgroups import read_newsgroups, strip_footer, strip_header, strip_quoting
from umema_jax.data.semeval import LABELS as SEMEVAL_LABELS, carve_dev, read_semeval

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")


def fx(*parts):
    return os.path.join(FIX, *parts)


def _write(tmp_path, name, text, newline="\n"):
    path = tmp_path / name
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text.replace("\n", newline))
    return str(path)


# ------------------------------------------------------------------ SemEval
def test_semeval_tiny_loads_with_markers_and_carved_dev():
    s = load_dataset_splits("semeval", fx("semeval_tiny"))
    assert (len(s.train), len(s.dev), len(s.test)) == (54, 6, 30)
    assert s.task_type == "cls" and s.labels == list(SEMEVAL_LABELS) and len(s.labels) == 19
    ex = s.test[0]
    assert ex.id == "1001" and "\r" not in ex.text and not ex.text.startswith('"')
    for e in s.train + s.dev + s.test:
        assert e.text.index("<e1>") < e.text.index("</e1>") < e.text.index("<e2>") < e.text.index("</e2>")
    train_ids = {e.id for e in s.train}
    assert not train_ids & {e.id for e in s.dev}
    assert len(train_ids) + len(s.dev) == 60
    again = load_dataset_splits("semeval", fx("semeval_tiny"))
    assert [e.id for e in again.dev] == [e.id for e in s.dev]  # fixed, not run-seeded


def test_semeval_dev_carve_is_stratified():
    from umema_jax.data.types import ClassificationExample
    train = [ClassificationExample(f"t{i}", "A" if i < 80 else "B", str(i)) for i in range(100)]
    rest, dev = carve_dev(train, dev_size=10)
    assert sorted(e.label for e in dev) == ["A"] * 8 + ["B"] * 2
    assert len(rest) == 90 and [e.id for e in rest] == sorted((e.id for e in rest), key=int)


def test_semeval_reads_lf_files_too(tmp_path):
    path = _write(tmp_path, "lf.txt", '7\t"A <e1>x</e1> and <e2>y</e2>."\nOther\nComment:\n\n')
    assert read_semeval(path)[0].label == "Other"


@pytest.mark.parametrize("body,line,what", [
    ('7\tA <e1>x</e1> and <e2>y</e2>.\r\nOther\r\nComment:\r\n\r\n', 1, "expected"),
    ('7\t"A <e1>x</e1> and <e2>y</e2>."\r\nOther-Thing\r\nComment:\r\n\r\n', 2, "unknown relation label"),
    ('7\t"A <e1>x</e1> and y."\r\nOther\r\nComment:\r\n\r\n', 1, "exactly one <e2>"),
    ('7\t"A <e1>x</e1> <e2>y</e2>."\r\nOther\r\nComment:\r\n\r\n'
     '7\t"B <e1>x</e1> <e2>y</e2>."\r\nOther\r\nComment:\r\n\r\n', 5, "duplicate example id 7"),
    ('7\t"A <e1>x</e1> <e2>y</e2>."\r\nOther\r\nsomething else\r\n\r\n', 3, "Comment"),
    ('7\t"A <e1>x</e1> <e2>y</e2>."\r\n', 2, "missing label line"),
])
def test_semeval_malformed_raises_one_line_error(tmp_path, body, line, what):
    path = _write(tmp_path, "TRAIN_FILE.TXT", body, newline="")
    with pytest.raises(DataFormatError) as err:
        read_semeval(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: ") and what in msg and "\n" not in msg


# ------------------------------------------------------------------ WNUT17 / CoNLL / PLONER
def test_wnut17_tiny_tab_separators_end_sentences():
    s = load_dataset_splits("wnut17", fx("wnut17_tiny"))
    assert (len(s.train), len(s.dev), len(s.test)) == (40, 15, 15)
    assert s.task_type == "ner" and len(s.labels) == 13 and s.labels[0] == "O"
    assert s.train[0].tokens == ["just", "met", "Alice", "in", "New", "York", "lol"]
    assert s.train[1].tokens[0] == "Globex"           # separated by a single-TAB line
    for ex in s.train + s.dev + s.test:
        assert len(ex.tokens) == len(ex.tags) and all(t.strip() == t and t for t in ex.tokens)


@pytest.mark.parametrize("body,line,what", [
    ("a\tO\nb\n", 2, "expected 2 columns"),
    ("a\tO\nb\tX-foo\n", 2, "is not O, B-TYPE or I-TYPE"),
    ("a\n", 1, "at least 2 columns"),
])
def test_conll_malformed_raises_one_line_error(tmp_path, body, line, what):
    path = _write(tmp_path, "bad.conll", body)
    with pytest.raises(DataFormatError) as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and what in str(err.value)


def test_conll_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="no sentences"):
        read_conll(_write(tmp_path, "empty.conll", "\n\t\n"))


def test_generic_conll_four_columns_skips_docstart():
    s = load_dataset_splits("conll", fx("conll2003_tiny"))
    assert (len(s.train), len(s.dev), len(s.test)) == (3, 1, 1)
    assert s.train[0].tokens[:3] == ["EU", "rejects", "German"]
    assert s.train[0].tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert all("-DOCSTART-" not in ex.tokens for ex in s.train)
    assert s.labels[0] == "O" and set(s.labels) == {"O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"}
    chunks = load_dataset_splits("conll", fx("conll2003_tiny"), tag_col=2)  # chunk column instead
    assert chunks.train[0].tags[:4] == ["B-NP", "B-VP", "B-NP", "I-NP"]


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]


def test_ploner_domains_and_trailing_spaces():
    s = load_dataset_splits("ploner", fx("ploner_tiny"), domains="connl03,wnut16")
    assert (len(s.train), len(s.dev), len(s.test)) == (4, 2, 2)
    assert s.train[0].tokens == ["Anna", "visited", "Berlin", "."] and s.train[0].id == "connl03_train:1"
    assert s.train[3].tags == ["O", "B-LOC", "I-LOC"]
    cross = load_dataset_splits("ploner", fx("ploner_tiny"), train_domains="connl03", eval_domains=["wnut16"])
    assert len(cross.train) == 2 and [e.id.split(":")[0] for e in cross.test] == ["wnut16_test"]
    assert len(cross.labels) == 7
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(fx("ploner_tiny"), "onbc_train.txt"))):
        load_dataset_splits("ploner", fx("ploner_tiny"))          # default = all seven domains
    with pytest.raises(ValueError, match="unknown PLONER domain"):
        load_dataset_splits("ploner", fx("ploner_tiny"), domains="conll03")


# ------------------------------------------------------------------ 20 Newsgroups
def test_20news_tiny_and_strip_options():
    s = load_dataset_splits("20news", fx("20news_tiny"))
    assert len(s.labels) == 20 and s.task_type == "cls"
    assert len(s.train) + len(s.dev) == 10 and len(s.test) == 3 and len(s.dev) == 1
    raw = next(e for e in s.train + s.dev if e.id == "rec.autos/1").text
    assert raw.startswith("From: a@b.c")
    assert strip_header(raw).startswith("In article")
    assert strip_quoting(raw) == "From: a@b.c (Al)\nSubject: my car\nLines: 3\n\nMy car is red and fast.\n\n-- \nAl, the car guy\n"
    assert strip_footer(raw).endswith("My car is red and fast.\n")
    both = load_dataset_splits("20news", fx("20news_tiny"), remove="headers,footers,quotes")
    txt = next(e for e in both.train + both.dev if e.id == "rec.autos/1").text
    assert txt == "My car is red and fast.\n"
    cafe = next(e for e in s.train + s.dev if e.id == "sci.med/4").text
    assert "caf\xe9" in cafe


@pytest.mark.parametrize("line,what", [
    ('{"text": "x", "label": "rec.autos"', "invalid JSON"),
    ('["x"]', "expected a JSON object"),
    ('{"label": "rec.autos"}', "'text'"),
    ('{"text": "x", "label": "rec.cars"}', "unknown newsgroup label 'rec.cars'"),
])
def test_20news_malformed_raises_one_line_error(tmp_path, line, what):
    good = '{"text": "ok", "label": "sci.med", "id": "a"}\n'
    path = _write(tmp_path, "train.jsonl", good + line + "\n")
    with pytest.raises(DataFormatError) as err:
        read_newsgroups(path)
    assert str(err.value).startswith(f"{path}:2: ") and what in str(err.value)


# ------------------------------------------------------------------ registry / hub
def test_missing_dir_and_file_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_dataset_splits("semeval", missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty" / "TRAIN_FILE.TXT"))):
        load_dataset_splits("semeval", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset_splits("imdb", str(tmp_path))


def test_data_dir_from_env_and_shared_layout(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(os.path.abspath(fx("semeval_tiny")), root / "semeval2010_task8")
    monkeypatch.setenv("UMEMA_DATA_DIR", str(root))
    assert len(load_dataset_splits("semeval").test) == 30
    monkeypatch.delenv("UMEMA_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="UMEMA_DATA_DIR"):
        load_dataset_splits("semeval")


def test_hub_offline_fails_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from umema_jax.data.hub import HubUnavailableError
    with pytest.raises(HubUnavailableError, match="could not load hub dataset 'leondz/wnut_17'"):
        load_dataset_splits("wnut17", source="hub")
