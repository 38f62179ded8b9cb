"""20 Newsgroups (bydate) JSONL reader: one `{"text", "label", "id"}` object per line.

`remove` strips like scikit-learn's `fetch_20newsgroups(remove=...)`
(`headers`, `footers`, `quotes`; off by default, so the raw message text is
used as the shared README describes). There is no official dev split; a
fixed stratified 10 % of train (seed independent of the run seed) is carved
off, as for SemEval.
"""
from __future__ import annotations

import json
import os
import re

from umema_jax.data.types import ClassificationExample, DataFormatError, check_file, open_text

LABELS = ("alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
          "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos",
          "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey", "sci.crypt",
          "sci.electronics", "sci.med", "sci.space", "soc.religion.christian",
          "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
          "talk.religion.misc")
TRAIN_FILE, TEST_FILE = "train.jsonl", "test.jsonl"
DEV_SEED = 19930101
_REMOVABLE = ("headers", "footers", "quotes")
_QUOTE_RE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def strip_header(text: str) -> str:
    """Everything after the first blank line (as scikit-learn)."""
    return text.partition("\n\n")[2]


def strip_quoting(text: str) -> str:
    """Drops quoted lines (`>`, `|`) and attribution lines ("... writes:")."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_RE.search(line))


def strip_footer(text: str) -> str:
    """Drops the signature block: from the last line made only of dashes on."""
    lines = text.strip().split("\n")
    line_num = len(lines) - 1
    for line_num in range(len(lines) - 1, -1, -1):
        if lines[line_num].strip().strip("-") == "":
            break
    return "\n".join(lines[:line_num]) if line_num > 0 else text


def parse_remove(remove) -> tuple[str, ...]:
    if remove is None or remove == "" or remove == ():
        return ()
    parts = remove.split(",") if isinstance(remove, str) else list(remove)
    parts = tuple(p.strip() for p in parts if p.strip())
    bad = [p for p in parts if p not in _REMOVABLE]
    if bad:
        raise ValueError(f"remove={bad} not understood; choose from {_REMOVABLE}")
    return parts


def read_newsgroups(path: str, remove=()) -> list[ClassificationExample]:
    """Reads a JSONL file; a bad line raises `DataFormatError` naming file and line."""
    check_file(path)
    remove = parse_remove(remove)
    out, label_set = [], set(LABELS)
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(path, lineno, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, lineno, "expected a JSON object")
            text, label = obj.get("text"), obj.get("label")
            if not isinstance(text, str):
                raise DataFormatError(path, lineno, "missing or non-string field 'text'")
            if not isinstance(label, str):
                raise DataFormatError(path, lineno, "missing or non-string field 'label'")
            if label not in label_set:
                raise DataFormatError(path, lineno, f"unknown newsgroup label {label!r}")
            if "headers" in remove:
                text = strip_header(text)
            if "footers" in remove:
                text = strip_footer(text)
            if "quotes" in remove:
                text = strip_quoting(text)
            out.append(ClassificationExample(text=text, label=label,
                                             id=str(obj.get("id", f"{os.path.basename(path)}:{lineno}"))))
    if not out:
        raise DataFormatError(path, None, "no examples found")
    return out
