"""Post-hoc temperature scaling (Guo et al. 2017), usable on any variant's logits.

One scalar T is fitted on dev logits by minimising the NLL of softmax(z / T).
The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search
on log T over a wide bracket finds the global minimum without step-size tuning.
Pure numpy (float64): it runs once after training, off the accelerator.
"""
from __future__ import annotations

import math

import numpy as np


def _flatten(logits, labels, mask=None, ignore_index: int = -100):
    """[N,C]/[B,n,C] logits and [N]/[B,n] labels -> the scored rows only."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    z = z.reshape(-1, z.shape[-1])
    y = y.reshape(-1)
    keep = y != ignore_index
    if mask is not None:
        keep &= np.asarray(mask).reshape(-1).astype(bool)
    return z[keep], y[keep]


def nll_at_temperature(logits, labels, temperature: float, mask=None, ignore_index: int = -100) -> float:
    """Mean negative log-likelihood of softmax(logits / T) over the scored rows."""
    z, y = _flatten(logits, labels, mask, ignore_index)
    if z.shape[0] == 0:
        return 0.0
    s = z / float(temperature)
    s = s - s.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=-1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def fit_temperature(logits, labels, mask=None, ignore_index: int = -100,
                    t_min: float = 0.05, t_max: float = 20.0, iters: int = 80) -> float:
    """Scalar T > 0 minimising dev NLL (golden-section search on log T in [t_min, t_max]).

    Rows with label == ignore_index (NER sub-tokens) or mask 0 are left out.
    Returns 1.0 when there is nothing to fit.
    """
    z, y = _flatten(logits, labels, mask, ignore_index)
    if z.shape[0] == 0:
        return 1.0
    f = lambda log_t: nll_at_temperature(z, y, math.exp(log_t))
    lo, hi = math.log(t_min), math.log(t_max)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    best = 0.5 * (lo + hi)
    # Never return something worse than T = 1 (flat or degenerate objectives).
    return math.exp(best) if f(best) <= f(0.0) else 1.0


def apply_temperature(logits, temperature: float):
    """Divides logits by the fitted T (works for numpy or jax arrays, any shape)."""
    return logits / temperature


def rescale_probs(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis.

    log p equals the logits up to a per-row constant, which softmax ignores, so
    this is exactly temperature scaling for callers that kept probabilities only.
    """
    log_p = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / float(temperature)
    log_p -= log_p.max(axis=-1, keepdims=True)
    p = np.exp(log_p)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
