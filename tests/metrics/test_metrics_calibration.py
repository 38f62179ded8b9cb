"""Calibration metrics against hand-computed values."""
import math

import numpy as np
import pytest

from umema_jax.metrics import aurc, brier, ece, nll, reliability_table, risk_coverage

# confidences .95 (right), .85 (wrong), .72 (right), .62 (right)
PROBS = np.array([[0.95, 0.05], [0.85, 0.15], [0.28, 0.72], [0.38, 0.62]])
LABELS = np.array([0, 1, 1, 1])


def test_ece_equal_width():
    # 10 bins: each example alone in its bin -> mean |acc - conf|
    assert ece(PROBS, LABELS, n_bins=10) == pytest.approx((0.05 + 0.85 + 0.28 + 0.38) / 4)
    # 2 bins: all in (0.5, 1]: acc 0.75, mean conf 0.785
    assert ece(PROBS, LABELS, n_bins=2) == pytest.approx(0.035)
    # 15 bins is the default; .62/.72 share no bin, so it equals the 10-bin value here
    assert ece(PROBS, LABELS) == pytest.approx(0.39)


def test_ece_equal_mass():
    # sorted [.62 .72 | .85 .95]: |1 - .67| * 2 + |.5 - .9| * 2, over 4
    assert ece(PROBS, LABELS, n_bins=2, strategy="quantile") == pytest.approx((0.66 + 0.8) / 4)


def test_bin_edges_are_right_closed():
    p = np.array([[0.5, 0.5], [0.4, 0.6]])   # conf 0.5 -> bin (0.4, 0.5], conf 0.6 -> (0.5, 0.6]
    rows = reliability_table(p, np.array([0, 1]), n_bins=10)
    assert rows[4]["count"] == 1 and rows[5]["count"] == 1


def test_nll_and_brier():
    assert nll(PROBS, LABELS) == pytest.approx(-np.mean(np.log([0.95, 0.15, 0.72, 0.62])))
    assert brier(PROBS, LABELS) == pytest.approx((0.005 + 1.445 + 0.1568 + 0.2888) / 4)
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))
    assert brier(np.array([[1.0, 0.0, 0.0]]), np.array([2])) == pytest.approx(2.0)


def test_reliability_table():
    rows = reliability_table(PROBS, LABELS, n_bins=2)
    assert [r["count"] for r in rows] == [0, 4]
    assert rows[0]["accuracy"] is None and rows[0]["lo"] == 0.0 and rows[0]["hi"] == 0.5
    assert rows[1]["accuracy"] == pytest.approx(0.75) and rows[1]["confidence"] == pytest.approx(0.785)


def test_risk_coverage_and_aurc():
    cov, risk = risk_coverage(PROBS, LABELS)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk == pytest.approx([0.0, 0.5, 1 / 3, 0.25])
    assert aurc(PROBS, LABELS) == pytest.approx((0 + 0.5 + 1 / 3 + 0.25) / 4)
    # a confidence that ranks the error last gives the lowest possible area
    assert aurc(PROBS, LABELS, confidence=[4, 1, 3, 2]) == pytest.approx((0 + 0 + 0 + 0.25) / 4)


def test_input_validation():
    with pytest.raises(ValueError, match="filter ignored positions"):
        ece(PROBS, np.array([0, 1, 1, -100]))
    with pytest.raises(ValueError, match="probs must be"):
        ece(PROBS[0], LABELS[:1])
    with pytest.raises(ValueError, match="strategy"):
        ece(PROBS, LABELS, strategy="adaptive")


def test_error_detection_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    from umema_jax.metrics.calibration import error_detection_auroc
    r = np.random.RandomState(0)
    errors = r.rand(300) < 0.3
    scores = np.round(r.rand(300) + 0.4 * errors, 1)          # informative, with many ties
    assert abs(error_detection_auroc(scores, errors) - roc_auc_score(errors, scores)) < 1e-12
    assert error_detection_auroc(np.full(300, 0.7), errors) == 0.5   # a constant score is uninformative
    assert np.isnan(error_detection_auroc(scores, np.zeros(300, bool)))


def test_uncertainty_quality_reports_each_score_against_maxprob():
    from umema_jax.metrics.evaluate import uncertainty_quality
    r = np.random.RandomState(1)
    probs = r.dirichlet(np.ones(4), size=200)
    labels = r.randint(0, 4, size=200)
    errors = probs.argmax(-1) != labels
    out = uncertainty_quality(probs, labels, {"u_bar": errors + 0.01 * r.rand(200), "u_ale": np.ones(200)})
    assert out["auroc_error_u_bar"] == 1.0 and out["auroc_error_u_ale"] == 0.5
    assert {k for k in out if k.startswith("auroc_error_")} == {"auroc_error_maxprob", "auroc_error_u_bar",
                                                                 "auroc_error_u_ale"}


def test_prediction_rejection_ratio_between_random_and_oracle():
    """PRR as lm-polygraph normalises it: 1 when the errors are rejected first, 0 in expectation for a
    random order, negative when the correct predictions go first; checked against a direct loop over
    rejection levels (the mean accuracy of what is kept)."""
    from umema_jax.metrics.calibration import prediction_rejection_ratio
    correct = np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)
    oracle_unc = (~correct).astype(float) + np.linspace(0, 0.1, 8)
    assert prediction_rejection_ratio(oracle_unc, correct) == pytest.approx(1.0)
    assert prediction_rejection_ratio(-oracle_unc, correct) < 0

    def direct(unc):
        order = np.argsort(unc, kind="stable")
        curve = [correct[order[:k]].mean() for k in range(1, len(unc) + 1)]   # keep the k most certain
        best = [np.sort(correct)[::-1][:k].mean() for k in range(1, len(unc) + 1)]
        return (np.mean(curve) - correct.mean()) / (np.mean(best) - correct.mean())

    rng = np.random.default_rng(0)
    draws = [rng.normal(size=8) for _ in range(200)]
    for unc in draws[:5]:
        assert prediction_rejection_ratio(unc, correct) == pytest.approx(direct(unc))
    assert abs(np.mean([prediction_rejection_ratio(u, correct) for u in draws])) < 0.1
    assert np.isnan(prediction_rejection_ratio([0.1, 0.2], [True, True]))


def test_uncertainty_quality_reports_auroc_aurc_and_prr_for_every_score():
    from umema_jax.metrics.evaluate import uncertainty_quality
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    out = uncertainty_quality(probs, labels, {"u_bar": np.array([0.1, 0.9, 0.2, 0.3])})
    assert set(out) == {f"{m}_{s}" for m in ("auroc_error", "aurc", "prr") for s in ("maxprob", "u_bar")}
    assert out["aurc_maxprob"] == pytest.approx(aurc(probs, labels))
    assert out["auroc_error_u_bar"] == pytest.approx(1.0) and out["prr_u_bar"] == pytest.approx(1.0)
