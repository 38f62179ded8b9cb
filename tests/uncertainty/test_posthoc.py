"""Post-hoc calibrators against their definitions: the K-FAC Laplace against dense linear algebra on
the same Kronecker-factored posterior, the correctness head against a least-squares solve and a planted
error signal, and the interface's failure handling."""
import dataclasses
import math

import numpy as np
import pytest

from umema_jax.metrics.calibration import error_detection_auroc
from umema_jax.uncertainty import correctness, laplace, posthoc


def _problem(n=40, d=3, c=3, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    kernel, bias = rng.normal(size=(d, c)), rng.normal(size=c)
    temperature = rng.uniform(0.5, 2.0, size=n)
    logits = (features @ kernel + bias) / temperature[:, None]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return features, labels, kernel, bias, temperature, p


def _dense(features, labels, kernel, bias, temperature, delta):
    """The same K-FAC posterior built as one dense matrix over vec(W_aug) (row-major: index i * C + c)."""
    phi = np.concatenate([features, np.ones((len(features), 1))], 1) / temperature[:, None]
    w = np.concatenate([kernel, bias[None]], 0)
    z = phi @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a = phi.T @ phi
    g = np.mean([np.diag(q) - np.outer(q, q) for q in p], axis=0)
    h = np.kron(a, g) + delta * np.eye(w.size)
    log_lik = np.sum(np.log(p[np.arange(len(labels)), labels]))
    evidence = log_lik - 0.5 * delta * np.sum(w ** 2) + 0.5 * w.size * math.log(delta) - 0.5 * np.linalg.slogdet(h)[1]
    return phi, np.linalg.inv(h), evidence


def test_laplace_matches_dense_kfac_posterior_and_evidence():
    features, labels, kernel, bias, temperature, _ = _problem()
    fit = laplace.fit(features, labels, kernel, bias, temperature)
    evidences = [_dense(features, labels, kernel, bias, temperature, d)[2] for d in laplace.PRIOR_GRID]
    assert fit.prior_precision == laplace.PRIOR_GRID[int(np.argmax(evidences))]
    assert fit.log_marglik == pytest.approx(max(evidences), rel=1e-9)
    phi, cov, _ = _dense(features, labels, kernel, bias, temperature, fit.prior_precision)
    c = kernel.shape[1]
    for x in phi[:5]:
        jac = np.kron(x[None, :], np.eye(c))                   # d logits / d vec(W_aug), [C, D*C]
        assert fit.logit_covariance(x[None])[0] == pytest.approx(jac @ cov @ jac.T, rel=1e-8, abs=1e-12)


def test_laplace_probit_predictive():
    features, labels, kernel, bias, temperature, p_map = _problem()
    fit = laplace.fit(features, labels, kernel, bias, temperature)
    probs, variance = fit.predict(features, temperature)
    var = np.diagonal(fit.logit_covariance(laplace.augmented(features, temperature)), axis1=1, axis2=2)
    mean = laplace.augmented(features, temperature) @ fit.weight
    kappa = 1.0 / np.sqrt(1.0 + math.pi / 8.0 * var)
    expected = np.exp(kappa * mean - (kappa * mean).max(1, keepdims=True))
    assert probs == pytest.approx(expected / expected.sum(1, keepdims=True), abs=1e-6)
    assert variance == pytest.approx(var.mean(1), rel=1e-6)
    assert np.mean(probs.max(1)) < np.mean(p_map.max(1))      # the posterior's spread softens the MAP
    # An overwhelming prior leaves the MAP predictive.
    tight = laplace.fit(features, labels, kernel, bias, temperature, prior_grid=(1e12,))
    assert tight.predict(features, temperature)[0] == pytest.approx(p_map, abs=1e-5)


def test_laplace_prior_on_validation_minimises_held_out_nll():
    features, labels, kernel, bias, temperature, _ = _problem(seed=4)
    held_out, held_labels, *_ = _problem(n=60, seed=5)
    fit = laplace.fit(features, labels, kernel, bias, temperature)
    grid = (1e-2, 1e-1, 1.0, 10.0, 100.0)
    chosen = laplace.with_prior_on_validation(fit, held_out, held_labels, None, grid)

    def nll(delta):
        p = dataclasses.replace(fit, prior_precision=delta).predict(held_out)[0].astype(np.float64)
        return -np.mean(np.log(p[np.arange(len(held_labels)), held_labels]))
    assert chosen.prior_precision == grid[int(np.argmin([nll(d) for d in grid]))]
    assert chosen.a_eig is fit.a_eig                      # the posterior's factors are reused, not refitted


def test_ridge_matches_least_squares():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=30)
    w, c = correctness.ridge(x, y, 2.5)
    # min |y - x w - c|^2 + 2.5 |w|^2 as one least-squares problem (the intercept unpenalised)
    big = np.block([[x, np.ones((30, 1))], [math.sqrt(2.5) * np.eye(4), np.zeros((4, 1))]])
    sol = np.linalg.lstsq(big, np.concatenate([y, np.zeros(4)]), rcond=None)[0]
    assert np.concatenate([w, [c]]) == pytest.approx(sol, rel=1e-9, abs=1e-12)


def test_correctness_head_finds_a_planted_error_signal():
    """Errors happen where feature 0 is high while the model's confidence says nothing: max-probability
    detects them at chance, the head fitted on dev detects them on test."""
    rng = np.random.default_rng(2)

    def split(n):
        f = rng.normal(size=(n, 8))
        probs = rng.dirichlet(np.ones(4) * 0.5, size=n)
        pred = probs.argmax(1)
        wrong = f[:, 0] + 0.3 * rng.normal(size=n) > 0.5
        labels = np.where(wrong, (pred + 1) % 4, pred)
        return f, probs, labels, wrong
    f_dev, p_dev, y_dev, _ = split(500)
    f_test, p_test, y_test, wrong = split(2000)
    head = correctness.fit(f_dev, p_dev, y_dev)
    score = head.score(f_test, p_test)
    assert error_detection_auroc(score, wrong) > 0.85
    assert abs(error_detection_auroc(1 - p_test.max(1), wrong) - 0.5) < 0.05


def test_calibrate_reports_a_head_that_is_not_the_last_layer(capsys):
    features, labels, kernel, bias, temperature, p = _problem()
    out = posthoc.Outputs(p, labels, features, temperature)
    head = {"kernel": kernel, "bias": bias}
    fitted = posthoc.calibrate(("laplace", "laplace-dev", "correctness"), head,
                               {"train": out, "dev": out, "test": out})
    assert fitted["laplace-dev"]["summary"]["prior_chosen_by"] == "dev NLL"
    assert set(fitted["laplace"]) == {"summary", "dev", "test"} and fitted["laplace"]["test"][0].shape == p.shape
    assert set(fitted["correctness"]["test"][1]) == {"correctness"}
    wrong = posthoc.Outputs(np.roll(p, 1, axis=1), labels, features, temperature)
    failed = posthoc.calibrate(("laplace",), head, {"train": wrong, "dev": wrong, "test": wrong})
    assert "not softmax" in failed["laplace"]["summary"]["failed"]
    assert "left out" in capsys.readouterr().err


def test_unknown_calibrator_is_a_config_error():
    with pytest.raises(ValueError, match="unknown calibrator 'bogus'"):
        posthoc.parse("laplace,bogus")
    assert posthoc.parse("") == ()


def test_ensemble_of_records_is_the_mean_predictive_with_entropy_and_disagreement():
    from umema_jax.metrics import records as R
    from umema_jax.uncertainty import ensemble
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=50)
    ids = np.array([str(i) for i in range(50)])

    def member():
        p = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
        split = R.SplitRecord("cls", p, labels, ids, {"u_bar": rng.random(50).astype(np.float32)})
        return R.RunRecord("cls", list("abcd"), 1.0, {"dev": split, "test": split})
    members = [member() for _ in range(3)]
    ens = ensemble.combine(members)
    probs = np.stack([m["test"].probs for m in members]).astype(np.float64)
    mean = probs.mean(0)
    h = lambda p: -(p * np.log(p)).sum(-1)                                           # noqa: E731
    assert ens["test"].probs == pytest.approx(mean, abs=1e-7)
    assert ens["test"].scores["predictive_entropy"] == pytest.approx(h(mean), abs=1e-6)
    assert ens["test"].scores["mutual_information"] == pytest.approx(h(mean) - h(probs).mean(0), abs=1e-6)
    assert (ens["test"].scores["mutual_information"] >= -1e-6).all()
    assert "auroc_error_mutual_information" in R.metrics_from_record(ens, "test")
    other = member()
    other.splits["test"] = dataclasses.replace(other["test"], labels=np.roll(labels, 1))
    with pytest.raises(ValueError, match="same test examples"):
        ensemble.combine(members + [other])


def test_the_documented_calibrator_example_registers_and_runs(monkeypatch):
    """docs/EXTENDING.md's calibrator, executed as written: one class, one decorator, no package change."""
    import os
    import re
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "EXTENDING.md"), encoding="utf-8").read()
    code = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "register_calibrator" in block)
    monkeypatch.setattr(posthoc, "CALIBRATORS", dict(posthoc.CALIBRATORS))
    exec(compile(code, "EXTENDING.md", "exec"), {})
    features, labels, kernel, bias, temperature, p = _problem()
    out = posthoc.Outputs(p, labels, features, temperature)
    fitted = posthoc.calibrate(posthoc.parse("featurenorm"), {"kernel": kernel, "bias": bias},
                               {"dev": out, "test": out})
    distance = fitted["featurenorm"]["test"][1]["feature_distance"]
    assert distance == pytest.approx(np.linalg.norm(features - features.mean(0), axis=1))
