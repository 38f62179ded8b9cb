"""Span-level NER metrics: seqeval in strict mode with the IOB2 scheme.

Strict IOB2: a span starts at `B-X` and continues over `I-X`; an `I-X`
that does not follow `B-X`/`I-X` starts no span (conlleval would start one).
A predicted span is correct only if type, start and end all match.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, Entities

from umema_jax.metrics.calibration import _bin_ids


def decode_spans(tag_seqs: Sequence[Sequence[str]]) -> list[list[tuple]]:
    """Per sentence, the strict-IOB2 spans as (type, start, end_exclusive)."""
    ents = Entities([list(s) for s in tag_seqs], IOB2, suffix=False).entities
    return [[(e.tag, e.start, e.end) for e in sent] for sent in ents]


def span_prf(gold_tags, pred_tags) -> dict:
    """Micro precision/recall/F1 over spans (seqeval, mode='strict', scheme=IOB2)."""
    gold, pred = [list(s) for s in gold_tags], [list(s) for s in pred_tags]
    _check_aligned(gold, pred)
    kw = dict(mode="strict", scheme=IOB2, zero_division=0)
    return {"precision": float(precision_score(gold, pred, **kw)),
            "recall": float(recall_score(gold, pred, **kw)),
            "f1": float(f1_score(gold, pred, **kw))}


def span_f1(gold_tags, pred_tags) -> float:
    return span_prf(gold_tags, pred_tags)["f1"]


def span_report(gold_tags, pred_tags) -> dict:
    """Per-type precision/recall/F1/support, flattened to `{type}_{f1|precision|recall|support}`."""
    gold, pred = [list(s) for s in gold_tags], [list(s) for s in pred_tags]
    _check_aligned(gold, pred)
    rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True,
                                zero_division=0)
    out = {}
    for typ, row in rep.items():
        if typ.endswith("avg"):
            continue
        for k in ("precision", "recall", "f1-score", "support"):
            out[f"{typ}_{k.replace('-score', '')}"] = float(row[k]) if k != "support" else int(row[k])
    return out


def span_confidences(token_probs: Sequence[np.ndarray], gold_tags, label_names: Sequence[str]):
    """(confidence [S], correct [S]) for every predicted span (argmax tags, strict IOB2).

    Span confidence = mean over its tokens of the top-label probability.
    """
    names = np.asarray(list(label_names))
    pred_tags = [list(names[np.asarray(p).argmax(-1)]) if len(p) else [] for p in token_probs]
    pred_spans, gold_spans = decode_spans(pred_tags), decode_spans(gold_tags)
    conf, correct = [], []
    for probs, ps, gs in zip(token_probs, pred_spans, gold_spans):
        top = np.asarray(probs).max(-1) if len(probs) else np.zeros(0)
        gold_set = set(gs)
        for span in ps:
            conf.append(float(top[span[1]:span[2]].mean()))
            correct.append(span in gold_set)
    return np.asarray(conf, dtype=np.float64), np.asarray(correct, dtype=bool)


def span_ece(token_probs, gold_tags, label_names, n_bins: int = 15,
             strategy: str = "uniform") -> float:
    """ECE over predicted spans (confidence = mean token top-prob; correct = exact match)."""
    conf, correct = span_confidences(token_probs, gold_tags, label_names)
    if conf.size == 0:
        return float("nan")
    ids = _bin_ids(conf, n_bins, strategy)
    total = sum(np.sum(ids == m) * abs(correct[ids == m].mean() - conf[ids == m].mean())
                for m in range(n_bins) if np.any(ids == m))
    return float(total / conf.size)


def _check_aligned(gold, pred):
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
