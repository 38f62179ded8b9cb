"""A deep ensemble from finished runs' per-example records (Lakshminarayanan et al. 2017).

Runs that differ only in their seed are the members: the ensemble's predictive is the mean of their
probabilities, and it exports the two standard scores, the predictive entropy H[mean p] and the mutual
information H[mean p] - mean H[p_m] (the members' disagreement, the epistemic part). No training and no
forward pass: the records hold everything, so the ensemble is free once the seeds exist.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from umema_jax.metrics import records as R


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(p * np.log(np.clip(p, 1e-30, None)), axis=-1)


def combine(members: list) -> R.RunRecord:
    """The ensemble of `members` (RunRecords of one task, dataset and split sizes) as a RunRecord."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    splits = {}
    for split, base in first.splits.items():
        for i, m in enumerate(members[1:], 1):
            other = m.splits.get(split)
            if (other is None or m.task_type != first.task_type or m.label_names != first.label_names
                    or not np.array_equal(other.ids, base.ids) or not np.array_equal(other.labels, base.labels)):
                raise ValueError(f"ensemble member {i} does not score the same {split} examples as member 0")
        each = np.stack([m.splits[split].probs.astype(np.float64) for m in members])      # [M, N, C]
        mean = each.mean(axis=0)
        total = _entropy(mean)
        scores = {"predictive_entropy": total.astype(np.float32),
                  "mutual_information": (total - _entropy(each).mean(axis=0)).astype(np.float32)}
        splits[split] = dataclasses.replace(base, probs=mean.astype(np.float32), scores=scores, posthoc={})
    return R.RunRecord(first.task_type, list(first.label_names), float("nan"), splits)
