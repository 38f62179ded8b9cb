"""The project's one rule for statistical verdicts, and the intervals it prints.

Seeds are a paired design: seed s of every method trains on the same sampled subset in the same data order
and is scored on the same test examples. So a comparison of methods A and B in one cell is

1. the per-seed differences d_s = A_s - B_s over the seeds both have, with a 95 % Student-t interval
   (df = n - 1) and its two-sided p-value: the verdict's evidence, which covers seed noise;
2. beside it, for every seed pair with per-example records, a paired bootstrap over test examples
   (the same resampled examples for both runs), which shows how much of the difference the finite test
   set alone could produce. It is printed, not voted.

A claim that spans several cells corrects for them with Holm's step-down method: a cell counts as
*supports* (or *contradicts*) only when its Holm-adjusted p < 0.05 with the difference in the claimed
(or the opposite) direction; everything else is *cannot tell*, with the effect and its interval printed
either way. One seed gives no interval, so one seed can only *cannot tell*.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as _sp

ALPHA = 0.05
BOOTSTRAP_DRAWS = 1000
RULE = ("supports / contradicts: the paired difference over seeds (Student t, df = n - 1) is nonzero at "
        "Holm-adjusted p < 0.05 across the cells of the claim, in the claimed / opposite direction; "
        "otherwise cannot tell (1 seed: always cannot tell). Intervals are 95 % t intervals of the mean "
        "per-seed difference; [boot ...] is a paired bootstrap over test examples within each seed pair.")


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """A - B over paired seeds (sign as given: the caller orients it so that > 0 favours the claim)."""
    n: int
    mean: float
    lo: float
    hi: float
    p: float                          # two-sided; nan with n < 2

    @property
    def interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo)


def paired_t(diffs) -> PairedResult:
    """Mean of the paired differences with its 95 % Student-t interval and two-sided p-value."""
    d = np.asarray([x for x in diffs if x is not None], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedResult(1, mean, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0.0:                     # identical differences: the interval is the point
        return PairedResult(n, mean, mean, mean, 0.0 if mean != 0 else 1.0)
    q = float(_sp.t.ppf(1 - ALPHA / 2, n - 1))
    p = float(2 * _sp.t.sf(abs(mean) / se, n - 1))
    return PairedResult(n, mean, mean - q * se, mean + q * se, p)


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values (nan stays nan and is not counted among the tests)."""
    p = [float(x) for x in pvalues]
    finite = sorted((x, i) for i, x in enumerate(p) if math.isfinite(x))
    m = len(finite)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (x, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * x))
        out[i] = running
    return out


def paired_bootstrap(metric, a, b, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """(metric(a) - metric(b), 2.5 %, 97.5 % percentiles) over `draws` resamples of the examples, the same
    resample for both. `a`, `b`: per-example records of one split (`metrics.records.SplitRecord`) with
    the same examples in the same order; `metric(record) -> float`."""
    if len(a) != len(b) or not np.array_equal(a.ids, b.ids):
        raise ValueError("paired bootstrap needs the same examples in the same order in both records")
    point = metric(a) - metric(b)
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = np.empty(draws)
    for k in range(draws):
        rows = rng.integers(0, n, n)
        diffs[k] = metric(a.subset(rows)) - metric(b.subset(rows))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def correct_fraction(record) -> float:
    """Accuracy from a cls split record: the fast metric the bootstrap uses for classification."""
    return float((record.probs.argmax(-1) == record.labels).mean())


def cell_verdicts(effects: list, pvalues: list, supports: str, contradicts: str, cannot_tell: str) -> list:
    """[(verdict, Holm-adjusted p)] per comparison (effects oriented: > 0 favours the claim; p nan = no
    interval, e.g. one seed, which never decides)."""
    adjusted = holm(pvalues)
    return [(supports if e > 0 else contradicts, p) if math.isfinite(p) and p < ALPHA else (cannot_tell, p)
            for e, p in zip(effects, adjusted)]
