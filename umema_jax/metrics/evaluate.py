"""One call per task type -> the flat, JSON-able metric dict the trainer logs.

Both accept what the eval loop naturally has: padding rows / ignored
positions carry label -100 and are dropped here, so the caller may simply
concatenate batches (optionally also pass `example_mask`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from umema_jax.metrics import calibration as cal
from umema_jax.metrics.classification import accuracy, macro_f1, semeval_official_f1
from umema_jax.metrics.spans import span_ece, span_prf, span_report

IGNORE_INDEX = -100


def _calibration_block(probs, labels, n_bins: int) -> dict:
    return {"ece": cal.ece(probs, labels, n_bins), "ece_10bins": cal.ece(probs, labels, 10),
            "ece_equal_mass": cal.ece(probs, labels, n_bins, strategy="quantile"),
            "nll": cal.nll(probs, labels), "brier": cal.brier(probs, labels),
            "aurc": cal.aurc(probs, labels)}


def uncertainty_quality(probs, labels, aux: dict | None = None) -> dict:
    """How well each exported uncertainty tells errors from correct predictions, next to max-probability's
    (the stability study, docs/METHOD.md): error-detection AUROC (`auroc_error_<score>`, 0.5 = chance),
    the area under the risk-coverage curve (`aurc_<score>`, lower is better) and the prediction-rejection
    ratio (`prr_<score>`, lm-polygraph's normalisation: 0 random, 1 oracle).

    probs [N, C] and labels [N] over scored targets (rows, or NER's first
    sub-tokens flattened); aux: per-target arrays (same N) of the scores the model's uncertainty head
    exports (`UmemaModel.exported_scores`: UM's `u_ale`, `u_epi`, `u_bar`, `temperature`), in that order;
    `maxprob` scores 1 − max p.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if labels.size == 0:
        return {}
    errors = probs.argmax(-1) != labels
    scores = {"maxprob": 1.0 - probs.max(-1)}
    scores.update({key: np.asarray(value, np.float64) for key, value in (aux or {}).items()})
    out = {}
    for key, score in scores.items():
        out[f"auroc_error_{key}"] = cal.error_detection_auroc(score, errors)
        out[f"aurc_{key}"] = cal.aurc(probs, labels, confidence=-score)
        out[f"prr_{key}"] = cal.prediction_rejection_ratio(score, ~errors)
    return out


def is_semeval_labels(label_names: Sequence[str]) -> bool:
    names = set(label_names)
    return "Other" in names and len(names) == 19 and all(
        n == "Other" or n.endswith(("(e1,e2)", "(e2,e1)")) for n in names)


def evaluate_classification(probs, labels, label_names: Sequence[str], *, example_mask=None,
                            n_bins: int = 15, semeval: bool | None = None,
                            with_tables: bool = False) -> dict:
    """accuracy, macro_f1 (all classes), [semeval_f1], ece (15 bins), ece_10bins,
    ece_equal_mass, nll, brier, aurc, n. `semeval` defaults to "label set is SemEval's"."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels != IGNORE_INDEX
    if example_mask is not None:
        keep &= np.asarray(example_mask).astype(bool)
    probs, labels = probs[keep], labels[keep]
    if probs.ndim != 2 or probs.shape[1] != len(label_names):
        raise ValueError(f"probs must be [N, {len(label_names)}], got {probs.shape}")
    preds = probs.argmax(axis=1)
    out = {"n": int(labels.size), "accuracy": accuracy(preds, labels),
           "macro_f1": macro_f1(preds, labels, num_classes=len(label_names))}
    if semeval if semeval is not None else is_semeval_labels(label_names):
        out["semeval_f1"] = semeval_official_f1(preds, labels, label_names)
    out.update(_calibration_block(probs, labels, n_bins))
    if with_tables:
        out["reliability"] = cal.reliability_table(probs, labels, n_bins)
    return out


def _rows(token_probs, token_labels, example_mask=None):
    """Per sentence (probs [k, C], labels [k]) over scored positions only."""
    if example_mask is not None:
        mask = np.asarray(example_mask).astype(bool)
        token_probs = [p for p, m in zip(token_probs, mask) if m]
        token_labels = [l for l, m in zip(token_labels, mask) if m]
    out = []
    for p, l in zip(token_probs, token_labels):
        p, l = np.asarray(p, dtype=np.float64), np.asarray(l).astype(np.int64)
        if p.shape[:1] != l.shape:
            raise ValueError(f"token probs {p.shape} do not match token labels {l.shape}")
        sel = l != IGNORE_INDEX
        out.append((p[sel], l[sel]))
    return out


def evaluate_ner(token_probs, token_labels, label_names: Sequence[str], *, example_mask=None,
                 full_gold_tags=None, n_bins: int = 15, per_type: bool = True,
                 with_tables: bool = False) -> dict:
    """Span P/R/F1 (seqeval strict IOB2) + token-level calibration over scored tokens.

    `token_probs`: [N, n, C] array or list of [n_i, C]; `token_labels`: [N, n]
    or list of [n_i], -100 on positions that are not a word's first sub-token.
    Sentences with no scored token (fully padded rows) are skipped.
    `full_gold_tags` (optional, same sentence order): every word's gold tag;
    words cut off by `max_len` then count as predicted `O` (so truncation
    costs recall) instead of being left out of the span metrics.
    """
    names = np.asarray(list(label_names))
    rows = _rows(token_probs, token_labels, example_mask)
    if full_gold_tags is not None and len(full_gold_tags) != len(rows):
        raise ValueError(f"full_gold_tags has {len(full_gold_tags)} sentences, probs {len(rows)}")
    gold_tags, pred_tags, probs_kept = [], [], []
    truncated_words = 0
    for i, (p, l) in enumerate(rows):
        if p.shape[0] == 0 and full_gold_tags is None:
            continue
        if p.size and p.shape[1] != len(names):
            raise ValueError(f"token probs have {p.shape[1]} classes, label set has {len(names)}")
        gold = list(names[l])
        pred = list(names[p.argmax(-1)]) if p.size else []
        if full_gold_tags is not None:
            full = list(full_gold_tags[i])
            if full[:len(gold)] != gold:
                raise ValueError(f"sentence {i}: full_gold_tags disagree with token_labels")
            truncated_words += len(full) - len(gold)
            pred += ["O"] * (len(full) - len(gold))
            gold = full
        gold_tags.append(gold)
        pred_tags.append(pred)
        probs_kept.append(p)
    flat_p = np.concatenate([p for p in probs_kept if p.size]) if any(p.size for p in probs_kept) \
        else np.zeros((0, len(names)))
    flat_l = np.concatenate([l for _, l in rows]) if rows else np.zeros(0, np.int64)
    prf = span_prf(gold_tags, pred_tags)
    out = {"n_sentences": len(gold_tags), "n_tokens": int(flat_l.size),
           "span_precision": prf["precision"], "span_recall": prf["recall"], "span_f1": prf["f1"],
           "token_accuracy": accuracy(flat_p.argmax(-1), flat_l) if flat_l.size else float("nan")}
    if full_gold_tags is not None:
        out["truncated_words"] = int(truncated_words)
    out.update(_calibration_block(flat_p, flat_l, n_bins) if flat_l.size else
               {k: float("nan") for k in ("ece", "ece_10bins", "ece_equal_mass", "nll", "brier", "aurc")})
    out["span_ece"] = span_ece(probs_kept, [g[:len(p)] for g, p in zip(gold_tags, probs_kept)],
                               names, n_bins)
    if per_type:
        out.update({f"span_{k}": v for k, v in span_report(gold_tags, pred_tags).items()})
    if with_tables:
        out["reliability"] = cal.reliability_table(flat_p, flat_l, n_bins)
    return out


class EvalAccumulator:
    """Collects (probs, labels) from eval batches, dropping padding rows and ignored tokens.

    `add(batch, probs)` with the batch dict from `data.pipeline` and probs
    `[B, C]` (cls) or `[B, n, C]` (ner); `result(label_names)` returns the
    metric dict. Rows are put back in dataset order (`example_index`), so
    `full_gold_tags` may be given in the order of the split's examples.
    """

    def __init__(self, task_type: str):
        if task_type not in ("cls", "ner"):
            raise ValueError(f"task_type must be 'cls' or 'ner', got {task_type!r}")
        self.task_type = task_type
        self._probs, self._labels, self._index = [], [], []

    def add(self, batch: dict, probs) -> None:
        probs = np.asarray(probs, dtype=np.float32)
        keep = np.asarray(batch["example_mask"]).astype(bool)
        labels = np.asarray(batch["labels"])
        index = np.asarray(batch.get("example_index", np.full(len(keep), -1)))
        for row in np.flatnonzero(keep):
            if self.task_type == "cls":
                self._probs.append(probs[row])
                self._labels.append(int(labels[row]))
            else:
                sel = labels[row] != IGNORE_INDEX
                self._probs.append(probs[row][sel])
                self._labels.append(labels[row][sel].astype(np.int64))
            self._index.append(int(index[row]))

    def __len__(self) -> int:
        return len(self._labels)

    def _order(self):
        idx = np.asarray(self._index)
        return np.argsort(idx, kind="stable") if idx.size and (idx >= 0).all() else np.arange(idx.size)

    def arrays(self):
        """cls: (probs [N, C], labels [N]); ner: (list of [k_i, C], list of [k_i]) in dataset order."""
        order = self._order()
        if self.task_type == "cls":
            return np.stack([self._probs[i] for i in order]), np.asarray([self._labels[i] for i in order])
        return [self._probs[i] for i in order], [self._labels[i] for i in order]

    def result(self, label_names: Sequence[str], **kwargs) -> dict:
        probs, labels = self.arrays()
        if self.task_type == "cls":
            return evaluate_classification(probs, labels, label_names, **kwargs)
        return evaluate_ner(probs, labels, label_names, **kwargs)
