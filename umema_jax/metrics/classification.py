"""Classification scores (pure numpy): accuracy, macro-F1, SemEval-2010 Task 8 official F1."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    return float(np.mean(preds == labels)) if labels.size else float("nan")


def per_class_prf(preds, labels, classes: Sequence[int]) -> dict:
    """{class: (precision, recall, f1, support)}; 0 where undefined (no predictions/gold)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    out = {}
    for c in classes:
        tp = int(np.sum((preds == c) & (labels == c)))
        n_pred, n_gold = int(np.sum(preds == c)), int(np.sum(labels == c))
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[int(c)] = (p, r, f, n_gold)
    return out


def macro_f1(preds, labels, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1.

    With `num_classes=None` the average runs over the classes that occur in
    `labels` or `preds` (scikit-learn's default); with `num_classes` over
    all of 0..C-1 (absent classes count as F1 = 0).
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    classes = range(num_classes) if num_classes is not None else np.union1d(preds, labels)
    return float(np.mean([f for _, _, f, _ in per_class_prf(preds, labels, classes).values()]))


def _relation(name: str) -> str:
    return name.split("(", 1)[0]


def semeval_official_f1(preds, labels, label_names: Sequence[str], other: str = "Other",
                        return_details: bool = False):
    """SemEval-2010 Task 8 official score: (9+1)-way, directionality taken into account.

    As the organisers' scorer (v1.2): for each of the 9 relations R (not
    Other), a prediction is correct only if the directed label matches; P =
    correct / #predictions whose relation is R (either direction), R = correct
    / #gold whose relation is R (either direction); the score is the
    unweighted mean of the 9 per-relation F1s (not F1 of mean P and R).
    Returned as a fraction (the scorer prints percent).
    """
    names = list(label_names)
    preds, labels = np.asarray(preds).astype(int), np.asarray(labels).astype(int)
    rel = np.array([_relation(n) for n in names])
    pred_rel, gold_rel = rel[preds], rel[labels]
    relations = sorted({r for r in rel if r != other})
    details = {}
    for r in relations:
        correct = int(np.sum((preds == labels) & (gold_rel == r)))
        n_pred, n_gold = int(np.sum(pred_rel == r)), int(np.sum(gold_rel == r))
        p = correct / n_pred if n_pred else 0.0
        rc = correct / n_gold if n_gold else 0.0
        details[r] = {"precision": p, "recall": rc, "f1": 2 * p * rc / (p + rc) if p + rc else 0.0,
                      "correct": correct, "predicted": n_pred, "gold": n_gold}
    score = float(np.mean([d["f1"] for d in details.values()])) if details else float("nan")
    return (score, details) if return_details else score
