"""A correctness head fitted post hoc (after ConfidNet, Corbière et al. 2019).

ConfidNet learns to predict the true-class probability (TCP = p(y | x) of the gold label) from the
classifier's frozen features, because TCP separates errors from correct predictions better than the
maximum probability does. Fitted on the training set, a head sees almost no errors (the model fits it),
so this one is fitted on dev, like post-hoc temperature scaling, and scored on test.

The head is linear and fitted in closed form (ridge regression), which 500 dev examples can support
where ConfidNet's MLP could not. Its inputs are the model's own top-5 log-probabilities (so it starts
from max-probability and learns a correction) and the features' first 32 principal components on dev
(all 576+ raw dimensions let the fit chase noise: on SemEval its AUROC fell to 68 % against max-
probability's 77 %), every input standardised. The ridge penalty is chosen by 5-fold cross-validation on
dev (fixed folds). The exported score is 1 - predicted TCP (higher = more likely wrong). Pure numpy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PENALTY_GRID = tuple(10.0 ** k for k in np.linspace(-1.0, 5.0, 13))
FOLDS = 5
TOP_K = 5                 # log-probabilities of the k most probable classes
COMPONENTS = 32           # principal components of the features


def confidence_terms(probs, k: int = TOP_K) -> np.ndarray:
    """[N, k]: the k largest log-probabilities, largest first (padded with the smallest for C < k)."""
    p = np.sort(np.asarray(probs, np.float64), axis=-1)[:, ::-1]
    p = np.concatenate([p, np.repeat(p[:, -1:], max(k - p.shape[1], 0), axis=1)], axis=1)[:, :k]
    return np.log(np.clip(p, 1e-12, None))


def true_class_probability(probs, labels) -> np.ndarray:
    probs = np.asarray(probs, np.float64)
    return probs[np.arange(len(probs)), np.asarray(labels, np.int64)]


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """(w, intercept) minimising |y - x w - c|^2 + penalty |w|^2 (the intercept is not penalised)."""
    mx, my = x.mean(axis=0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


@dataclasses.dataclass
class CorrectnessHead:
    mean: np.ndarray              # feature mean on dev
    components: np.ndarray        # [k, d] principal directions of the dev features
    scale: np.ndarray             # standardisation of the inputs (dev)
    weight: np.ndarray
    intercept: float
    penalty: float
    cv_mse: float

    def raw_inputs(self, features, probs) -> np.ndarray:
        pcs = (np.asarray(features, np.float64) - self.mean) @ self.components.T
        return np.concatenate([confidence_terms(probs), pcs], axis=1)

    def inputs(self, features, probs) -> np.ndarray:
        return self.raw_inputs(features, probs) / self.scale

    def predict_tcp(self, features, probs) -> np.ndarray:
        return self.inputs(features, probs) @ self.weight + self.intercept

    def score(self, features, probs) -> np.ndarray:
        """1 - predicted TCP: higher = more likely misclassified."""
        return (1.0 - self.predict_tcp(features, probs)).astype(np.float32)


def fit(features, probs, labels, penalty_grid=PENALTY_GRID, folds: int = FOLDS, seed: int = 0) -> CorrectnessHead:
    """Ridge regression of TCP on dev, the penalty by `folds`-fold cross-validation (folds fixed by `seed`)."""
    f = np.asarray(features, np.float64)
    if f.shape[0] != len(labels) or np.asarray(probs).shape[0] != len(labels):
        raise ValueError(f"correctness head: {f.shape[0]} feature rows, {np.asarray(probs).shape[0]} "
                         f"probability rows and {len(labels)} labels")
    folds = min(folds, len(labels) // 2)        # tiny dev sets (smoke runs): fewer folds, at least 2 rows each
    if folds < 2:
        raise ValueError(f"correctness head: {len(labels)} dev targets, need at least 4")
    mean = f.mean(axis=0)
    components = np.linalg.svd(f - mean, full_matrices=False)[2][:COMPONENTS]
    head = CorrectnessHead(mean, components, np.ones(0), np.zeros(0), 0.0, 0.0, 0.0)
    raw = head.raw_inputs(f, probs)
    scale = raw.std(axis=0)
    head.scale = np.where(scale > 0, scale, 1.0)
    x, y = head.inputs(f, probs), true_class_probability(probs, labels)
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    mse = []
    for penalty in penalty_grid:
        err = 0.0
        for k in range(folds):
            w, c = ridge(x[fold != k], y[fold != k], penalty)
            err += float(np.sum((x[fold == k] @ w + c - y[fold == k]) ** 2))
        mse.append(err / len(y))
    best = int(np.argmin(mse))
    w, c = ridge(x, y, penalty_grid[best])
    return dataclasses.replace(head, weight=w, intercept=c, penalty=float(penalty_grid[best]), cv_mse=mse[best])
