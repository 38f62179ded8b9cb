"""`load_dataset_splits(name, data_dir, **options)`: the one entry point to every dataset.

`data_dir` may be the dataset's own folder or a root holding the shared
layout (`20newsgroups/`, `semeval2010_task8/`, `wnut17/`, `ploner/`); when
omitted, `$UMEMA_DATA_DIR` is used. `source="hub"` loads the hub copy instead
(`hub.py`, needs internet).
"""
from __future__ import annotations

import os

from umema_jax.data import newsgroups, ploner, semeval, wnut17
from umema_jax.data.conll import read_conll
from umema_jax.data.types import DatasetSplits, sorted_labels

DATA_DIR_ENV = "UMEMA_DATA_DIR"
# name -> (sub-folder in the shared layout, a file that identifies the folder)
_LAYOUT = {"20news": ("20newsgroups", newsgroups.TRAIN_FILE),
           "semeval": ("semeval2010_task8", semeval.TRAIN_FILE),
           "wnut17": ("wnut17", wnut17.FILES["train"]),
           "ploner": ("ploner", "connl03_train.txt"),
           "conll": ("conll", "train.txt")}
DATASETS = tuple(_LAYOUT)
ALIASES = {"20newsgroups": "20news", "semeval2010_task8": "semeval", "semeval2010": "semeval",
           "wnut_17": "wnut17", "wnut2017": "wnut17", "conll2003": "conll"}


def canonical_name(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _LAYOUT:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    return key


def resolve_data_dir(name: str, data_dir: str | None) -> str:
    """The folder holding `name`'s files (own folder, or `<root>/<layout sub-folder>`)."""
    name = canonical_name(name)
    if not data_dir:
        data_dir = os.environ.get(DATA_DIR_ENV)
        if not data_dir:
            raise FileNotFoundError(f"no data_dir given and ${DATA_DIR_ENV} is not set "
                                    f"(needed to find dataset {name!r})")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: data directory not found")
    sub, marker = _LAYOUT[name]
    if name == "conll" or os.path.isfile(os.path.join(data_dir, marker)):
        return data_dir
    nested = os.path.join(data_dir, sub)
    if os.path.isdir(nested):
        return nested
    return data_dir          # the reader then names the missing file


def _first_existing(folder: str, names) -> str:
    for n in names:
        if os.path.isfile(os.path.join(folder, n)):
            return os.path.join(folder, n)
    return os.path.join(folder, names[0])


def load_conll_splits(data_dir: str, train_file: str | None = None, dev_file: str | None = None,
                      test_file: str | None = None, token_col: int = 0, tag_col: int = -1,
                      tag_scheme: str = "iob2", labels=None) -> DatasetSplits:
    """Generic CoNLL: `train.txt`, `dev.txt`|`valid.txt`|`testa.txt`, `test.txt`|`testb.txt` by default."""
    paths = {"train": os.path.join(data_dir, train_file) if train_file else
             _first_existing(data_dir, ["train.txt", "eng.train"]),
             "dev": os.path.join(data_dir, dev_file) if dev_file else
             _first_existing(data_dir, ["dev.txt", "valid.txt", "eng.testa"]),
             "test": os.path.join(data_dir, test_file) if test_file else
             _first_existing(data_dir, ["test.txt", "eng.testb"])}
    splits = {k: read_conll(p, token_col=int(token_col), tag_col=int(tag_col), tag_scheme=tag_scheme)
              for k, p in paths.items()}
    found = sorted_labels([t for exs in splits.values() for ex in exs for t in ex.tags])
    if labels is not None:
        labels = list(labels.split(",") if isinstance(labels, str) else labels)
        extra = sorted(set(found) - set(labels))
        if extra:
            raise ValueError(f"{data_dir}: tags {extra} are not in the given label set {labels}")
    return DatasetSplits(**splits, labels=labels or found, task_type="ner", name="conll")


def load_dataset_splits(name: str, data_dir: str | None = None, **options) -> DatasetSplits:
    """DatasetSplits(train, dev, test, labels, task_type) for `20news|semeval|wnut17|ploner|conll`.

    Options: 20news `remove` (headers,footers,quotes), `dev_size`; semeval
    `dev_size`; ploner `domains`, `train_domains`, `eval_domains`; conll
    `train_file`, `dev_file`, `test_file`, `token_col`, `tag_col`,
    `tag_scheme`, `labels`; any dataset `source="hub"`.
    """
    name = canonical_name(name)
    if options.pop("source", "local") == "hub":
        from umema_jax.data.hub import load_from_hub
        return load_from_hub(name, **options)
    folder = resolve_data_dir(name, data_dir)
    if name == "semeval":
        return semeval.load_semeval(folder, **options)
    if name == "20news":
        dev_size = options.pop("dev_size", None)
        remove = options.pop("remove", ())
        _no_more(name, options)
        full = newsgroups.read_newsgroups(os.path.join(folder, newsgroups.TRAIN_FILE), remove)
        test = newsgroups.read_newsgroups(os.path.join(folder, newsgroups.TEST_FILE), remove)
        train, dev = semeval.carve_dev(full, dev_size, seed=newsgroups.DEV_SEED)
        return DatasetSplits(train, dev, test, list(newsgroups.LABELS), "cls", name="20news",
                             notes={"dev": f"stratified {len(dev)} of {len(full)} official train "
                                    f"messages, seed {newsgroups.DEV_SEED}",
                                    "remove": list(newsgroups.parse_remove(remove)),
                                    "source_files": {newsgroups.TRAIN_FILE: len(full),
                                                     newsgroups.TEST_FILE: len(test)}})
    if name == "wnut17":
        _no_more(name, options)
        return wnut17.load_wnut17(folder)
    if name == "ploner":
        return ploner.load_ploner(folder, **options)
    return load_conll_splits(folder, **options)


def _no_more(name, options):
    if options:
        raise TypeError(f"dataset {name!r} takes no option(s) {sorted(options)}")
