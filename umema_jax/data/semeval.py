"""SemEval-2010 Task 8 reader (relation classification between two marked nominals).

File format (CRLF; LF accepted too), 4 lines per example::

    1<TAB>"The ... <e1>configuration</e1> of antenna <e2>elements</e2>."
    Component-Whole(e2,e1)
    Comment: ...
    <blank>

The text keeps its `<e1>..</e1>`/`<e2>..</e2>` markers (docs/METHOD.md: the
sentence is encoded as a whole, markers as text); only the wrapping quotes
are removed. There is no official dev split: `carve_dev` takes a fixed,
stratified 10 % of train (800 of 8,000) with a seed that never depends on
the run seed, so every run and method sees the same dev set.
"""
from __future__ import annotations

import os
import re

from umema_jax.data.fewshot import stratified_indices
from umema_jax.data.types import ClassificationExample, DataFormatError, DatasetSplits, check_file, open_text

RELATIONS = ("Cause-Effect", "Component-Whole", "Content-Container", "Entity-Destination",
             "Entity-Origin", "Instrument-Agency", "Member-Collection", "Message-Topic",
             "Product-Producer")
# 19 directed labels, alphabetical (so `Other` sits between Message-Topic and Product-Producer).
LABELS = tuple(sorted([f"{r}({a},{b})" for r in RELATIONS for a, b in (("e1", "e2"), ("e2", "e1"))]
                      + ["Other"]))
TRAIN_FILE, TEST_FILE = "TRAIN_FILE.TXT", "TEST_FILE_FULL.TXT"
DEV_SEED = 20100716          # release date of the task data; fixed, independent of any run seed
DEV_FRACTION = 0.1           # 800 of the 8,000 official training sentences

_ID_LINE = re.compile(r'^(\d+)\t"(.*)"$')
_MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")


def read_semeval(path: str) -> list[ClassificationExample]:
    """Parses one SemEval-2010 Task 8 file; a malformed line raises `DataFormatError`."""
    check_file(path)
    with open_text(path, newline="") as f:
        lines = [ln.rstrip("\r\n") for ln in f]
    out, seen, i = [], set(), 0
    while i < len(lines):
        if not lines[i].strip():             # tolerate extra blank lines between blocks
            i += 1
            continue
        m = _ID_LINE.match(lines[i])
        if not m:
            raise DataFormatError(path, i + 1, 'expected `<id><TAB>"<sentence>"`, got '
                                  f"{lines[i][:60]!r}")
        ex_id, text = m.group(1), m.group(2)
        if ex_id in seen:
            raise DataFormatError(path, i + 1, f"duplicate example id {ex_id}")
        for marker in _MARKERS:
            if text.count(marker) != 1:
                raise DataFormatError(path, i + 1, f"sentence {ex_id} must contain exactly one "
                                      f"{marker} (found {text.count(marker)})")
        if i + 1 >= len(lines):
            raise DataFormatError(path, i + 2, f"example {ex_id}: missing label line at end of file")
        label = lines[i + 1].strip()
        if label not in LABELS:
            raise DataFormatError(path, i + 2, f"example {ex_id}: unknown relation label {label!r}")
        if i + 2 < len(lines) and lines[i + 2].startswith("Comment"):
            i += 3
        elif i + 2 >= len(lines) or not lines[i + 2].strip():
            i += 2                            # the comment line is optional in hand-made files
        else:
            raise DataFormatError(path, i + 3, f"example {ex_id}: expected a `Comment:` line or a "
                                  f"blank line, got {lines[i + 2][:60]!r}")
        if i < len(lines) and lines[i].strip():
            raise DataFormatError(path, i + 1, f"example {ex_id}: expected a blank line after the "
                                  f"example, got {lines[i][:60]!r}")
        seen.add(ex_id)
        out.append(ClassificationExample(text=text, label=label, id=ex_id))
    if not out:
        raise DataFormatError(path, None, "no examples found")
    return out


def carve_dev(train: list[ClassificationExample], dev_size: int | None = None,
              seed: int = DEV_SEED) -> tuple[list, list]:
    """Fixed stratified dev carve-out: returns (train_rest, dev), both in file order."""
    n_dev = round(DEV_FRACTION * len(train)) if dev_size is None else int(dev_size)
    if not 0 < n_dev < len(train):
        raise ValueError(f"dev_size={n_dev} must be between 1 and {len(train) - 1}")
    dev_idx = set(stratified_indices([ex.label for ex in train], n_dev, seed).tolist())
    rest = [ex for j, ex in enumerate(train) if j not in dev_idx]
    dev = [ex for j, ex in enumerate(train) if j in dev_idx]
    return rest, dev


def load_semeval(data_dir: str, dev_size: int | None = None) -> DatasetSplits:
    """`train` (official train minus the carved dev), `dev` (carved), `test` (TEST_FILE_FULL)."""
    full_train = read_semeval(os.path.join(data_dir, TRAIN_FILE))
    test = read_semeval(os.path.join(data_dir, TEST_FILE))
    train, dev = carve_dev(full_train, dev_size)
    return DatasetSplits(train=train, dev=dev, test=test, labels=list(LABELS), task_type="cls",
                         name="semeval", notes={"dev": f"stratified {len(dev)} of {len(full_train)} "
                                                f"official train sentences, seed {DEV_SEED}",
                                                "source_files": {TRAIN_FILE: len(full_train),
                                                                 TEST_FILE: len(test)}})


def directionless(label: str) -> str:
    """`Cause-Effect(e1,e2)` -> `Cause-Effect`; `Other` unchanged."""
    return label.split("(", 1)[0]
