"""WNUT 2017 (emerging and rare entities): CoNLL `token<TAB>tag`, 13 IOB2 tags.

Train separates sentences with single-TAB lines as well as empty lines;
the CoNLL reader treats any whitespace-only line as a boundary.
"""
from __future__ import annotations

import os

from umema_jax.data.conll import read_conll
from umema_jax.data.types import DatasetSplits

TYPES = ("corporation", "creative-work", "group", "location", "person", "product")
LABELS = ("O",) + tuple(f"{p}-{t}" for t in TYPES for p in ("B", "I"))
FILES = {"train": "wnut17train.conll", "dev": "emerging.dev.conll", "test": "emerging.test.annotated"}


def load_wnut17(data_dir: str) -> DatasetSplits:
    splits = {}
    for split, name in FILES.items():
        splits[split] = read_conll(os.path.join(data_dir, name), token_col=0, tag_col=1, labels=LABELS)
    return DatasetSplits(**splits, labels=list(LABELS), task_type="ner", name="wnut17",
                         notes={"source_files": {FILES[k]: len(v) for k, v in splits.items()}})
