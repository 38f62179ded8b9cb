"""Per-example records: what a finished run predicted, kept so every metric can be recomputed later.

A run writes `records.npz` next to its `results.json`; the experiment runner copies it into the run
ledger, so a fresh clone re-derives ECE / NLL / Brier, error-detection AUROC, reliability diagrams,
ensembles and paired tests without training. Layout (compressed npz, float32 probabilities):

    labels                      [C] label names
    task_type                   'cls' | 'ner'
    posthoc_temperature         scalar (the post-hoc TS temperature fitted on dev; nan when absent)
    <split>/probs               cls: [N, C]; ner: [T, C] over scored words, sentences concatenated
    <split>/labels              cls: [N]; ner: [T] (gold label index of each scored word)
    <split>/ids                 [N] example ids
    <split>/score/<name>        per-example (cls) or per-scored-word (ner) uncertainty scores
    <split>/offsets             ner only: [N + 1] start of each sentence's scored words in [T]
    <split>/gold_offsets        ner only: [N + 1] start of each sentence's words in gold_tags
    <split>/gold_tags           ner only: [W] every word's gold tag index (words cut off by max_len
                                included: they count as predicted O in span metrics)
    <split>/posthoc/<name>/probs        a post-hoc calibrator's probabilities (`uncertainty.posthoc`;
                                absent when it leaves the model's probabilities alone)
    <split>/posthoc/<name>/score/<s>    its per-row scores

Float32 keeps argmax ties and small probabilities exact enough that `metrics_from_record` reproduces
`results.json` (a test checks it); SemEval's dev + test (3,217 x 19) compress to about 0.25 MB, about
0.75 MB with the post-hoc calibrators' probabilities.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

FILE = "records.npz"
SPLITS = ("dev", "test")


@dataclasses.dataclass
class SplitRecord:
    task_type: str
    probs: np.ndarray                 # [N, C] or [T, C]
    labels: np.ndarray                # [N] or [T]
    ids: np.ndarray
    scores: dict                      # name -> [N] or [T]
    offsets: np.ndarray | None = None         # ner: [N + 1]
    gold_offsets: np.ndarray | None = None    # ner: [N + 1]
    gold_tags: np.ndarray | None = None       # ner: [W]
    posthoc: dict = dataclasses.field(default_factory=dict)   # calibrator -> (probs or None, {score: [N]})

    def __len__(self) -> int:
        return len(self.ids)

    def sentence_probs(self) -> list:
        """ner: per sentence [k_i, C] (cls: one row per example)."""
        if self.offsets is None:
            return list(self.probs)
        return [self.probs[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def sentence_labels(self) -> list:
        if self.offsets is None:
            return list(self.labels)
        return [self.labels[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def subset(self, rows: np.ndarray) -> "SplitRecord":
        """The record restricted to examples `rows` (in that order, repeats allowed: a bootstrap draw)."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda idx: {n: (None if p is None else p[idx], {k: v[idx] for k, v in sc.items()})  # noqa: E731
                            for n, (p, sc) in self.posthoc.items()}
        if self.offsets is None:
            return SplitRecord(self.task_type, self.probs[rows], self.labels[rows], self.ids[rows],
                               {k: v[rows] for k, v in self.scores.items()}, posthoc=pick(rows))
        take = lambda off: np.concatenate([np.arange(off[i], off[i + 1]) for i in rows]) if len(rows) \
            else np.zeros(0, np.int64)                                                     # noqa: E731
        words, gold = take(self.offsets), take(self.gold_offsets)
        lengths = lambda off: np.concatenate([[0], np.cumsum(off[rows + 1] - off[rows])])   # noqa: E731
        return SplitRecord(self.task_type, self.probs[words], self.labels[words], self.ids[rows],
                           {k: v[words] for k, v in self.scores.items()}, lengths(self.offsets),
                           lengths(self.gold_offsets), self.gold_tags[gold], pick(words))


@dataclasses.dataclass
class RunRecord:
    task_type: str
    label_names: list
    posthoc_temperature: float
    splits: dict                      # split -> SplitRecord

    def __getitem__(self, split: str) -> SplitRecord:
        return self.splits[split]


def split_record(task_type: str, label_names: list, preds: dict, encoded, examples: list,
                 score_names: tuple) -> SplitRecord:
    """One split's record from the eval loop's predictions (`train.loop.predict`)."""
    aux = preds.get("aux") or {}
    ids = np.asarray([str(i) for i in encoded.ids])
    if task_type == "cls":
        probs = np.asarray(preds["probs"], np.float32)
        scores = {k: np.asarray(aux[k], np.float32).reshape(len(ids)) for k in score_names}
        return SplitRecord(task_type, probs, np.asarray(encoded.labels, np.int16), ids, scores)
    index = {str(n): j for j, n in enumerate(label_names)}
    sent_probs = [np.asarray(p, np.float32).reshape(-1, len(label_names)) for p in preds["probs"]]
    sent_labels = [np.asarray(lab)[w >= 0] for lab, w in zip(encoded.labels, encoded.word_index)]
    counts = [p.shape[0] for p in sent_probs]
    if counts != [len(lab) for lab in sent_labels]:
        raise ValueError("ner predictions and scored words disagree in length")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    gold = [[index[str(t)] for t in ex.tags] for ex in examples]
    gold_offsets = np.concatenate([[0], np.cumsum([len(g) for g in gold])]).astype(np.int64)
    flat = lambda seqs, dtype: np.concatenate([np.asarray(s, dtype).reshape(-1) for s in seqs]) \
        if seqs else np.zeros(0, dtype)                                                    # noqa: E731
    probs = np.concatenate(sent_probs) if sent_probs else np.zeros((0, len(label_names)), np.float32)
    return SplitRecord(task_type, probs, flat(sent_labels, np.int16), ids,
                       {k: flat(aux[k], np.float32) for k in score_names}, offsets, gold_offsets,
                       flat(gold, np.int16))


def save(path: str, record: RunRecord) -> None:
    """Atomic compressed write: a killed run never leaves half a record."""
    arrays = {"labels": np.asarray(record.label_names), "task_type": np.asarray(record.task_type),
              "posthoc_temperature": np.asarray(record.posthoc_temperature, np.float64)}
    for split, r in record.splits.items():
        arrays.update({f"{split}/probs": r.probs, f"{split}/labels": r.labels, f"{split}/ids": r.ids})
        arrays.update({f"{split}/score/{k}": v for k, v in r.scores.items()})
        if r.offsets is not None:
            arrays.update({f"{split}/offsets": r.offsets, f"{split}/gold_offsets": r.gold_offsets,
                           f"{split}/gold_tags": r.gold_tags})
        for name, (probs, scores) in r.posthoc.items():
            if probs is not None:
                arrays[f"{split}/posthoc/{name}/probs"] = np.asarray(probs, np.float32)
            arrays.update({f"{split}/posthoc/{name}/score/{k}": np.asarray(v, np.float32) for k, v in scores.items()})
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load(path: str) -> RunRecord:
    """Reads a record; a file that is not one fails naming the file and what is missing."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a per-example record ({err})") from None
    for key in ("labels", "task_type"):
        if key not in data:
            raise ValueError(f"{path}: not a per-example record (no {key!r})")
    task = str(data["task_type"])
    splits = {}
    for split in SPLITS:
        if f"{split}/probs" not in data:
            continue
        prefix = f"{split}/score/"
        scores = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
        posthoc = {}
        for key in sorted(k for k in data if k.startswith(f"{split}/posthoc/")):
            name, kind, *rest = key[len(f"{split}/posthoc/"):].split("/")
            probs, calibrated = posthoc.setdefault(name, (None, {}))
            if kind == "probs":
                posthoc[name] = (data[key], calibrated)
            else:
                calibrated[rest[0]] = data[key]
        ner = task == "ner"
        splits[split] = SplitRecord(task, data[f"{split}/probs"], data[f"{split}/labels"].astype(np.int64),
                                    data[f"{split}/ids"], scores,
                                    data[f"{split}/offsets"] if ner else None,
                                    data[f"{split}/gold_offsets"] if ner else None,
                                    data[f"{split}/gold_tags"].astype(np.int64) if ner else None, posthoc)
    return RunRecord(task, [str(x) for x in data["labels"]], float(data.get("posthoc_temperature", np.nan)),
                     splits)


def metrics_from_record(record: RunRecord, split: str, probs: np.ndarray | None = None,
                        posthoc: str | None = None) -> dict:
    """The metric dict `train.build.make_evaluator` reported for `split` (less `loss`), recomputed from
    the record alone. `probs` replaces the stored probabilities (e.g. after post-hoc scaling); `posthoc`
    names a calibrator whose probabilities (if it has its own) and scores are used with the model's."""
    from umema_jax.metrics.evaluate import evaluate_classification, evaluate_ner, uncertainty_quality
    r = record[split]
    if posthoc is not None:
        if posthoc not in r.posthoc:
            raise KeyError(f"the record has no post-hoc calibrator {posthoc!r} for {split} "
                           f"(has: {', '.join(r.posthoc) or 'none'})")
        calibrated, scores = r.posthoc[posthoc]
        r = dataclasses.replace(r, scores={**r.scores, **scores})
        probs = calibrated if probs is None else probs
    probs = r.probs if probs is None else probs
    names = record.label_names
    if record.task_type == "cls":
        m = evaluate_classification(probs, r.labels, names)
        m["primary"], m["primary_name"] = m["accuracy"], "accuracy"
    else:
        sentences = [probs[a:b] for a, b in zip(r.offsets[:-1], r.offsets[1:])]
        gold = [[names[i] for i in r.gold_tags[a:b]] for a, b in zip(r.gold_offsets[:-1], r.gold_offsets[1:])]
        m = evaluate_ner(sentences, r.sentence_labels(), names, full_gold_tags=gold)
        m["primary"], m["primary_name"] = m["span_f1"], "span_f1"
    if len(r.labels):
        m.update(uncertainty_quality(probs, r.labels, r.scores))
    return m


def primary(record: RunRecord, split: str = "test") -> float:
    """Accuracy (cls) or span F1 (ner) of `split`, recomputed from the record."""
    return float(metrics_from_record(record, split)["primary"])
