"""Loading the same datasets from the Hugging Face hub through `datasets` (needs internet).

Untested here (no hub access in this workplace): the field mapping follows
the hub cards. Offline, it fails with one clear message instead of a long
traceback. PLONER has no hub copy. Hub ids:

| name     | hub id                               | splits used (train / dev / test)           |
|----------|--------------------------------------|--------------------------------------------|
| 20news   | SetFit/20_newsgroups                 | train (dev carved as local) / test         |
| semeval  | SemEvalWorkshop/sem_eval_2010_task_8 | train (dev carved as local) / test         |
| wnut17   | leondz/wnut_17                       | train / validation / test                  |
| conll    | eriktks/conll2003                    | train / validation / test                  |
"""
from __future__ import annotations

from umema_jax.data.types import ClassificationExample, DatasetSplits, TokenExample

HUB_IDS = {"20news": "SetFit/20_newsgroups", "semeval": "SemEvalWorkshop/sem_eval_2010_task_8",
           "wnut17": "leondz/wnut_17", "conll": "eriktks/conll2003"}


class HubUnavailableError(RuntimeError):
    """The hub dataset could not be fetched (offline, unknown id, or no access)."""


def _load(hub_id: str, **kwargs):
    try:
        import datasets
        return datasets.load_dataset(hub_id, **kwargs)
    except Exception as err:  # datasets raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubUnavailableError(
            f"could not load hub dataset {hub_id!r} ({type(err).__name__}: {msg}); without internet "
            f"use local files: --data_dir / $UMEMA_DATA_DIR") from None


def _names(feature):
    inner = getattr(feature, "feature", feature)
    return list(inner.names)


def load_from_hub(name: str, **options) -> DatasetSplits:
    """`DatasetSplits` from the hub copy of `name` (see the table above)."""
    if name not in HUB_IDS:
        raise ValueError(f"no hub mapping for {name!r}; available: {sorted(HUB_IDS)}")
    ds = _load(HUB_IDS[name])
    if name == "semeval":
        from umema_jax.data.semeval import LABELS, carve_dev
        names = _names(ds["train"].features["relation"])

        def conv(split):
            return [ClassificationExample(text=r["sentence"], label=names[r["relation"]], id=f"{split}:{i}")
                    for i, r in enumerate(ds[split])]
        train, dev = carve_dev(conv("train"), options.get("dev_size"))
        return DatasetSplits(train, dev, conv("test"), list(LABELS), "cls", name="semeval")
    if name == "20news":
        from umema_jax.data.newsgroups import DEV_SEED, LABELS
        from umema_jax.data.semeval import carve_dev

        def conv(split):
            return [ClassificationExample(text=r["text"], label=r["label_text"], id=f"{split}:{i}")
                    for i, r in enumerate(ds[split])]
        train, dev = carve_dev(conv("train"), options.get("dev_size"), seed=DEV_SEED)
        return DatasetSplits(train, dev, conv("test"), list(LABELS), "cls", name="20news")
    names = _names(ds["train"].features["ner_tags"])

    def conv_tok(split):
        return [TokenExample(tokens=list(r["tokens"]), tags=[names[t] for t in r["ner_tags"]],
                             id=f"{split}:{i}") for i, r in enumerate(ds[split])]
    from umema_jax.data.types import sorted_labels
    return DatasetSplits(conv_tok("train"), conv_tok("validation"), conv_tok("test"),
                         sorted_labels(names), "ner", name=name)
