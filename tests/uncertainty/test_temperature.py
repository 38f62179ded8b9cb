"""Post-hoc temperature scaling: fitted T lowers dev NLL and recovers a known over-confidence."""
import numpy as np

from umema_jax.uncertainty.temperature import apply_temperature, fit_temperature, nll_at_temperature


def _overconfident(seed=0, n=4000, c=5, factor=4.0):
    r = np.random.RandomState(seed)
    true_logits = r.randn(n, c) * 1.5
    p = np.exp(true_logits - true_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    labels = np.array([r.choice(c, p=row) for row in p])
    return true_logits * factor, labels  # calibrated at T = factor


def test_fit_reduces_nll_and_recovers_scale():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert 3.4 < t < 4.6
    before = nll_at_temperature(logits, labels, 1.0)
    after = nll_at_temperature(apply_temperature(logits, t), labels, 1.0)
    assert after < before - 0.1


def test_underconfident_gives_t_below_one():
    logits, labels = _overconfident(factor=0.5)
    assert fit_temperature(logits, labels) < 0.7


def test_token_level_ignores_masked_positions():
    logits, labels = _overconfident(n=600)
    tok_logits = logits.reshape(20, 30, -1)
    tok_labels = labels.reshape(20, 30).copy()
    garbage = np.zeros_like(tok_labels, bool)
    garbage[:, 25:] = True
    tok_labels[garbage] = -100
    tok_logits = tok_logits.copy()
    tok_logits[garbage] = 1e3 * np.eye(tok_logits.shape[-1])[0]  # would dominate the NLL if counted
    t = fit_temperature(tok_logits, tok_labels)
    ref = fit_temperature(logits.reshape(20, 30, -1)[:, :25], labels.reshape(20, 30)[:, :25])
    np.testing.assert_allclose(t, ref, rtol=1e-6)
    assert fit_temperature(np.zeros((3, 4)), np.full(3, -100)) == 1.0


def test_rescale_probs_equals_scaling_the_logits():
    from umema_jax.uncertainty.temperature import rescale_probs
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 5)) * 4
    softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
    for t in (0.5, 1.0, 2.5):
        np.testing.assert_allclose(rescale_probs(softmax(z), t), softmax(z / t), atol=1e-6)
