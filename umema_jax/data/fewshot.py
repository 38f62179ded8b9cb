"""Seeded few-shot training subsets (paper §4: 200 / 500 / 1000 examples).

The subset depends only on (examples, n, seed) — never on the method, model
or tokenizer — so every method trained under the same seed sees exactly the
same examples. Classification subsets are stratified by label (largest-
remainder allocation proportional to the label frequencies); NER subsets are
a uniform draw of whole sentences.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_SALT_FEWSHOT = 0x5EED_F5  # separates these draws from other uses of the same run seed


def stratified_indices(labels: Sequence[str], n: int, seed: int, salt: int = 0) -> np.ndarray:
    """`n` indices drawn without replacement, per-label counts proportional to frequency.

    Allocation: floor(n * n_c / N) per label, the leftover units go to the
    largest remainders (ties: label name order). Returned sorted ascending.
    """
    labels = list(labels)
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} of {total} examples")
    classes = sorted(set(labels))
    members = {c: [i for i, lab in enumerate(labels) if lab == c] for c in classes}
    quota = {c: n * len(members[c]) / total for c in classes}
    take = {c: int(np.floor(quota[c])) for c in classes}
    leftover = n - sum(take.values())
    order = sorted(classes, key=lambda c: (-(quota[c] - take[c]), c))
    for c in order:
        if leftover == 0:
            break
        if take[c] < len(members[c]):
            take[c] += 1
            leftover -= 1
    rng = np.random.default_rng([int(seed), int(salt), int(n)])
    chosen = []
    for c in classes:                       # fixed class order keeps the draw reproducible
        perm = rng.permutation(len(members[c]))
        chosen.extend(members[c][j] for j in perm[:take[c]])
    return np.array(sorted(chosen), dtype=np.int64)


def fewshot_subset(examples: list, n: int | None, seed: int, stratify: bool | None = None) -> list:
    """The `n`-example training subset for run seed `seed` (`None` or n >= len -> all).

    `stratify` defaults to True for classification examples (they have a
    `label`) and False for NER sentences.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise ValueError(f"few-shot size must be positive, got {n}")
    if stratify is None:
        stratify = hasattr(examples[0], "label")
    if stratify:
        idx = stratified_indices([ex.label for ex in examples], n, seed, salt=_SALT_FEWSHOT)
    else:
        rng = np.random.default_rng([int(seed), _SALT_FEWSHOT, int(n)])
        idx = np.sort(rng.choice(len(examples), size=n, replace=False))
    return [examples[i] for i in idx]
