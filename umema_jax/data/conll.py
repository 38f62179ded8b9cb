"""Generic CoNLL reader: one token per line, columns split on spaces/TABs, blank line = boundary.

* Any line whose `strip()` is empty ends a sentence (WNUT17's train file
  uses single-TAB separator lines; PLONER lines end in a trailing space).
* Columns are split on runs of ' ' / TAB only, never on other Unicode
  whitespace, so a token such as a non-breaking space survives.
* `-DOCSTART-` lines (and the sentence they form) are skipped.
* Tags must look like `O`, `B-X` or `I-X`; `tag_scheme="iob1"` converts
  IOB1 files (original CoNLL-2003) to IOB2 on read.
"""
from __future__ import annotations

import os
import re

from umema_jax.data.types import DataFormatError, TokenExample, check_file, open_text

_SPLIT = re.compile(r"[ \t]+")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """`I-X` that starts a span (after `O` or another type) becomes `B-X`."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def read_conll(path: str, token_col: int = 0, tag_col: int = -1, *, skip_docstart: bool = True,
               tag_scheme: str = "iob2", id_prefix: str | None = None,
               labels=None) -> list[TokenExample]:
    """Sentences of a CoNLL file; a malformed line raises `DataFormatError` (path:line: why).

    `labels`: the dataset's tag set; a tag outside it is such an error too.
    """
    if tag_scheme not in ("iob2", "iob1"):
        raise ValueError(f"tag_scheme must be 'iob2' or 'iob1', got {tag_scheme!r}")
    check_file(path)
    prefix = id_prefix if id_prefix is not None else os.path.basename(path)
    out, tokens, tags, start, ncols = [], [], [], None, None

    def flush():
        nonlocal tokens, tags, start
        if tokens:
            if tag_scheme == "iob1":
                tags = iob1_to_iob2(tags)
            out.append(TokenExample(tokens=tokens, tags=tags, id=f"{prefix}:{start}"))
        tokens, tags, start = [], [], None

    with open_text(path, newline="") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            cols = _SPLIT.split(line.strip(" \t"))
            if skip_docstart and cols[0] == "-DOCSTART-":
                flush()
                continue
            if ncols is None:
                ncols = len(cols)
                need = max(token_col if token_col >= 0 else -token_col - 1,
                           tag_col if tag_col >= 0 else -tag_col - 1) + 1
                if ncols < max(need, 2):
                    raise DataFormatError(path, lineno, f"expected at least {max(need, 2)} columns "
                                          f"(token_col={token_col}, tag_col={tag_col}), got {ncols}: "
                                          f"{line[:60]!r}")
            if len(cols) != ncols:
                raise DataFormatError(path, lineno, f"expected {ncols} columns like the first token "
                                      f"line, got {len(cols)}: {line[:60]!r}")
            tag = cols[tag_col]
            if not _TAG.match(tag):
                raise DataFormatError(path, lineno, f"tag {tag!r} is not O, B-TYPE or I-TYPE")
            if labels is not None and tag not in labels:
                raise DataFormatError(path, lineno, f"tag {tag!r} is not one of the {len(labels)} tags "
                                      f"{', '.join(labels)}")
            if start is None:
                start = lineno
            tokens.append(cols[token_col])
            tags.append(tag)
    flush()
    if not out:
        raise DataFormatError(path, None, "no sentences found")
    return out
