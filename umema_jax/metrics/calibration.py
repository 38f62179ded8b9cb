"""Calibration metrics on predicted class probabilities (pure numpy).

Conventions (docs/DATA.md, "Metrics"):
* ECE is top-label: confidence = max_c p_c, correct = argmax == label.
  Default 15 equal-width bins (paper §4); bin m is (m-1)/M < conf <= m/M
  (conf 0 goes to the first bin). `strategy="quantile"` gives equal-mass bins
  (sorted confidences cut into M nearly equal groups). ECE = sum_m |B_m|/N *
  |acc_m - conf_m|.
* NLL = mean -log p_label (probabilities clipped at 1e-12).
* Brier = mean over examples of sum_c (p_c - onehot_c)^2 (range 0..2).
* Risk-coverage: examples sorted by confidence, most confident first (ties
  keep input order); risk at coverage k/N = error rate of the top k.
  AURC = mean of those N risks.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12


def _check(probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be [N] with N={probs.shape[0]}, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError("labels must lie in [0, C); filter ignored positions (-100) first")
    return probs, labels


def confidences(probs, labels):
    """(top-label confidence [N], correct [N] bool)."""
    probs, labels = _check(probs, labels)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def _bin_ids(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)       # bin m = (edges[m], edges[m+1]]
        return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    if strategy == "quantile":
        ids = np.empty(len(conf), dtype=np.int64)
        order = np.argsort(conf, kind="stable")
        for m, chunk in enumerate(np.array_split(order, n_bins)):
            ids[chunk] = m
        return ids
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability_table(probs, labels, n_bins: int = 15, strategy: str = "uniform") -> list[dict]:
    """Per bin: lo, hi, count, accuracy, confidence (accuracy/confidence None when empty).

    For equal-mass bins lo/hi are the smallest/largest confidence in the bin.
    """
    conf, correct = confidences(probs, labels)
    ids = _bin_ids(conf, n_bins, strategy)
    rows = []
    for m in range(n_bins):
        sel = ids == m
        count = int(sel.sum())
        if strategy == "uniform":
            lo, hi = m / n_bins, (m + 1) / n_bins
        else:
            lo = float(conf[sel].min()) if count else None
            hi = float(conf[sel].max()) if count else None
        rows.append({"bin": m, "lo": lo, "hi": hi, "count": count,
                     "accuracy": float(correct[sel].mean()) if count else None,
                     "confidence": float(conf[sel].mean()) if count else None})
    return rows


def ece(probs, labels, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Top-label expected calibration error (see module doc for the binning)."""
    conf, correct = confidences(probs, labels)
    if conf.size == 0:
        return float("nan")
    ids = _bin_ids(conf, n_bins, strategy)
    total = 0.0
    for m in range(n_bins):
        sel = ids == m
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total / conf.size)


def nll(probs, labels) -> float:
    probs, labels = _check(probs, labels)
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0))))


def brier(probs, labels) -> float:
    """Multi-class Brier score: squared error to the one-hot label, summed over classes."""
    probs, labels = _check(probs, labels)
    if labels.size == 0:
        return float("nan")
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def risk_coverage(probs, labels, confidence=None):
    """(coverage [N], risk [N]) for selective prediction by decreasing confidence.

    `confidence` overrides the max probability (e.g. 1 - uncertainty).
    """
    conf, correct = confidences(probs, labels)
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float64)
        if conf.shape != correct.shape:
            raise ValueError(f"confidence must have shape {correct.shape}, got {conf.shape}")
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, conf.size + 1)
    return k / max(conf.size, 1), errors / k


def aurc(probs, labels, confidence=None) -> float:
    """Area under the risk-coverage curve (mean risk over the N coverage levels)."""
    _, risk = risk_coverage(probs, labels, confidence)
    return float(risk.mean()) if risk.size else float("nan")


def prediction_rejection_ratio(uncertainty, correct) -> float:
    """PRR, normalised as lm-polygraph's `PredictionRejectionArea`: the area under the curve of accuracy
    on the examples kept when the most uncertain are rejected first, between random rejection (0) and
    rejecting exactly the errors first (1). Higher is better; NaN when all or none are correct."""
    unc = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    quality = np.asarray(correct, dtype=np.float64).reshape(-1)
    if unc.shape != quality.shape:
        raise ValueError(f"uncertainty {unc.shape} and correct {quality.shape} differ in shape")
    if quality.size == 0 or quality.min() == quality.max():
        return float("nan")
    kept = np.arange(1, quality.size + 1)
    by_uncertainty = np.cumsum(quality[np.argsort(unc, kind="stable")]) / kept   # k most certain kept
    oracle = np.cumsum(np.sort(quality)[::-1]) / kept
    random = quality.mean()
    return float((by_uncertainty.mean() - random) / (oracle.mean() - random))


def error_detection_auroc(scores, errors) -> float:
    """AUROC of `scores` (higher = more likely wrong) for telling errors from correct predictions.

    P(score of a random error > score of a random correct prediction), ties
    counted half (Mann-Whitney U with average ranks). 0.5 = uninformative; NaN
    when there are no errors or no correct predictions.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    errors = np.asarray(errors, dtype=bool).reshape(-1)
    if scores.shape != errors.shape:
        raise ValueError(f"scores {scores.shape} and errors {errors.shape} differ in shape")
    n_err, n_ok = int(errors.sum()), int((~errors).sum())
    if n_err == 0 or n_ok == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # average ranks (1-based) over runs of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[errors].sum() - n_err * (n_err + 1) / 2.0
    return float(u / (n_err * n_ok))
