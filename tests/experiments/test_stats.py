"""The verdict rule on data whose truth is known: planted effects are found, no effect gives 'cannot tell'."""
import math

import numpy as np
import pytest

from umema_jax.experiments import verdicts as V
from umema_jax.experiments import stats
from umema_jax.metrics import records


def test_paired_t_interval_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, df 2) = 4.3027; t = 2 sqrt(3) = 3.4641
    r = stats.paired_t([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (r.n, r.mean) == (3, 2.0)
    assert (r.lo, r.hi) == pytest.approx((2 - half, 2 + half), rel=1e-9)
    assert r.p == pytest.approx(0.074180, abs=1e-5)        # 2 * P(T_2 > 3.4641)
    one = stats.paired_t([0.4])
    assert one.n == 1 and not one.interval and math.isnan(one.p)
    assert stats.paired_t([]).n == 0


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, math.nan]) == pytest.approx([0.5, math.nan], nan_ok=True)
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def _claim(diffs_per_cell):
    comps = []
    for d in diffs_per_cell:
        r = stats.paired_t(d)
        comps.append({"verdict": V.CANNOT_TELL, "detail": "", "effect": r.mean, "ci": [r.lo, r.hi], "p": r.p,
                      "n_seeds": r.n})
    return V.combine(comps)[0]


@pytest.mark.parametrize("cells", [1, 4])
def test_no_effect_gives_cannot_tell_at_least_95_percent(cells):
    """3 seeds per cell, true difference 0, seed noise of another size in every draw."""
    rng = np.random.default_rng(0)
    draws = 4000
    verdicts = [_claim([rng.normal(0.0, rng.uniform(0.2, 3.0), 3) for _ in range(cells)]) for _ in range(draws)]
    rate = verdicts.count(V.CANNOT_TELL) / draws
    # alpha = 0.05 is exact for one cell (the rate is 95 % up to binomial noise: 3 SE = 1.0 point); Holm
    # across four cells keeps the family-wise error below it.
    assert rate >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / draws)
    if cells > 1:
        assert rate >= 0.95


def test_old_two_standard_error_rule_would_fail_the_same_check():
    """Why the rule changed: Welch's 2 SE with 3 seeds a side declares a difference far too often."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(4000):
        a, b = rng.normal(0, 1, 3), rng.normal(0, 1, 3)
        se = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
        hits += abs(a.mean() - b.mean()) > 2 * se
    assert hits / 4000 > 0.10


def test_planted_effect_is_found_with_its_sign():
    rng = np.random.default_rng(2)
    better = [_claim([rng.normal(2.0, 1.0, 5)]) for _ in range(500)]
    worse = [_claim([rng.normal(-2.0, 1.0, 5)]) for _ in range(500)]
    assert better.count(V.SUPPORTS) / 500 > 0.85 and V.CONTRADICTS not in better
    assert worse.count(V.CONTRADICTS) / 500 > 0.85 and V.SUPPORTS not in worse
    # one seed never decides, however large the difference
    assert _claim([[5.0]]) == V.CANNOT_TELL


def _cls_record(correct: np.ndarray, seed: int) -> records.SplitRecord:
    """Probabilities whose argmax is the gold label exactly where `correct` is True (3 classes)."""
    rng = np.random.default_rng(seed)
    n = correct.size
    labels = rng.integers(0, 3, n)
    pred = np.where(correct, labels, (labels + 1) % 3)
    probs = np.full((n, 3), 0.2, np.float32)
    probs[np.arange(n), pred] = 0.6
    return records.SplitRecord("cls", probs, labels, np.arange(n).astype(str), {})


def test_paired_bootstrap_finds_a_planted_accuracy_gap_and_covers_zero_without_one():
    rng = np.random.default_rng(3)
    n = 2000
    hard = rng.uniform(size=n)                       # shared difficulty: the pairing the bootstrap exploits
    a = _cls_record(hard < 0.75, 0)
    b = _cls_record(hard < 0.65, 0)
    point, lo, hi = stats.paired_bootstrap(stats.correct_fraction, a, b, draws=500)
    assert point == pytest.approx(0.10, abs=0.03) and 0 < lo < point < hi
    covered = 0
    for k in range(100):                             # no true difference: 0 inside the interval ~95 % of draws
        hard = rng.uniform(size=n)
        x = _cls_record((hard < 0.7) ^ (rng.uniform(size=n) < 0.1), 1)
        y = _cls_record((hard < 0.7) ^ (rng.uniform(size=n) < 0.1), 1)
        _, lo, hi = stats.paired_bootstrap(stats.correct_fraction, x, y, draws=200, seed=k)
        covered += lo <= 0.0 <= hi
    assert covered >= 88                             # 95 % less 3 binomial SE (2.2 each)
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_bootstrap(stats.correct_fraction, a, a.subset(np.arange(10)))


def test_a_claim_with_few_comparisons_prints_each_effect_and_interval():
    comps = [{"dataset": "SemEval", "size": "n=1000", "vs": "LoRA", "verdict": V.CANNOT_TELL, "p": 0.288,
              "effect": 0.0077, "ci": [-0.0097, 0.025], "detail": "+0.77 [-0.97, +2.50], p 0.288, 5 paired seeds"},
             {"dataset": "SemEval", "size": "n=200", "better": "0.1", "worse": "0.3", "verdict": V.NOT_COMPUTED,
              "p": None, "detail": "missing"}]
    verdict, detail = V.combine(comps)
    assert verdict == V.CANNOT_TELL
    assert detail.endswith(": SemEval, n=1000, vs LoRA: +0.77 [-0.97, +2.50], p 0.288, 5 paired seeds")
    many = [dict(comps[0]) for _ in range(V.LISTED + 1)]
    assert "5 paired seeds" not in V.combine(many)[1]
