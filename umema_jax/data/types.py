"""Typed examples and splits shared by every reader (see docs/CONTRACTS.md, Data)."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence


class ClassificationExample(NamedTuple):
    """One sequence-classification example; `label` is the label *name*."""
    text: str
    label: str
    id: str


class TokenExample(NamedTuple):
    """One word-tokenised sentence with one BIO tag per word."""
    tokens: list
    tags: list
    id: str


class DataFormatError(ValueError):
    """Malformed input file; the message is one line: `path:line: what is wrong`."""

    def __init__(self, path: str, line: int | None, what: str):
        self.path, self.line, self.what = path, line, what
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {what}")


@dataclasses.dataclass
class DatasetSplits:
    """train/dev/test lists of examples plus the label inventory (index = class id)."""
    train: list
    dev: list
    test: list
    labels: list
    task_type: str  # "cls" | "ner"
    name: str = ""
    notes: dict = dataclasses.field(default_factory=dict)

    def split(self, name: str) -> list:
        if name not in ("train", "dev", "test"):
            raise KeyError(f"unknown split {name!r} (train, dev, test)")
        return getattr(self, name)

    @property
    def label_to_id(self) -> dict:
        return {name: i for i, name in enumerate(self.labels)}


def check_file(path: str) -> str:
    """Raises FileNotFoundError naming the path (readers call this before opening)."""
    import os
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: data file not found")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: is not a file")
    return path


def open_text(path: str, newline: str | None = None):
    """`path` decoded as UTF-8, as a text stream (`newline` as for `open`); a byte that is not
    UTF-8 raises `DataFormatError` naming the file and line (not a bare `UnicodeDecodeError`)."""
    import io
    check_file(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[:err.start].decode("utf-8")
        line = len(io.StringIO(before + "x", newline="").readlines())   # \n, \r\n and \r all end lines
        column = len(before) - max(before.rfind("\n"), before.rfind("\r"))
        raise DataFormatError(path, line, f"byte 0x{data[err.start]:02x} at column {column} is not valid "
                                          f"UTF-8 (re-save the file as UTF-8)") from None
    return io.StringIO(text, newline=newline)


def sorted_labels(labels: Sequence[str]) -> list:
    """BIO tag inventory in a stable order: `O` first, then by type, B before I."""
    def key(tag):
        if tag == "O":
            return (0, "", 0)
        prefix, _, typ = tag.partition("-")
        return (1, typ, 0 if prefix == "B" else 1)
    return sorted(set(labels), key=key)
