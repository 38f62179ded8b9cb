"""Post-hoc last-layer Laplace approximation (MacKay 1992; Daxberger et al. 2021, "Laplace Redux").

After training, the task head's weights W_aug = [W; b] ([d + 1, C]) get a Gaussian posterior around their
trained value: precision = GGN + delta * I, with the GGN in its Kronecker-factored form

    GGN ~= A (x) G,   A = sum_n phi_n phi_n^T  ([d + 1, d + 1], phi = [features, 1] / T),
                      G = mean_n (diag p_n - p_n p_n^T)  ([C, C]),

over the training set, and the prior precision delta chosen by the Laplace marginal likelihood on a
log grid. The predictive uses the probit approximation, softmax(mu / sqrt(1 + pi/8 * var)), with the
logits' variance var from the linearised head. The model's own temperature T (UM; 1 otherwise) divides
the logits, so it scales phi. Pure numpy, float64: it runs once, on the host, after training.

Both factors are diagonalised once, A = Qa diag(a) Qa^T and G = Qg diag(g) Qg^T, so every quantity is
closed form: the posterior precision has eigenvalues a_i g_j + delta, log det is their log-sum, and
the logits' covariance for one input is Qg diag_j(sum_i u_i / (a_i g_j + delta)) Qg^T with
u = (Qa^T phi)^2.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

PRIOR_GRID = tuple(10.0 ** k for k in np.linspace(-4.0, 4.0, 81))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def augmented(features, temperature=None) -> np.ndarray:
    """[N, d] features -> phi = [features, 1] / T ([N, d + 1], float64): logits = phi @ [W; b]."""
    f = np.asarray(features, np.float64)
    phi = np.concatenate([f, np.ones((f.shape[0], 1))], axis=1)
    if temperature is not None:
        phi = phi / np.asarray(temperature, np.float64).reshape(-1, 1)
    return phi


@dataclasses.dataclass
class LastLayerLaplace:
    weight: np.ndarray            # [d + 1, C]: the head's kernel with its bias as the last row
    a_eig: np.ndarray             # [d + 1] eigenvalues of A (summed over the training set)
    a_vec: np.ndarray             # [d + 1, d + 1]
    g_eig: np.ndarray             # [C]
    g_vec: np.ndarray             # [C, C]
    prior_precision: float
    log_marglik: float

    def logit_covariance(self, phi: np.ndarray) -> np.ndarray:
        """[N, C, C]: the linearised head's logit covariance for inputs phi [N, d + 1]."""
        u = (phi @ self.a_vec) ** 2                                       # [N, d+1]
        inv = 1.0 / (self.a_eig[:, None] * self.g_eig[None, :] + self.prior_precision)   # [d+1, C]
        s = u @ inv                                                       # [N, C] in G's eigenbasis
        return np.einsum("cj,nj,kj->nck", self.g_vec, s, self.g_vec)

    def predict(self, features, temperature=None) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N, C] by the probit approximation, the logits' mean variance [N])."""
        phi = augmented(features, temperature)
        mean = phi @ self.weight
        var = np.diagonal(self.logit_covariance(phi), axis1=1, axis2=2)   # [N, C]
        probs = _softmax(mean / np.sqrt(1.0 + math.pi / 8.0 * var))
        return probs.astype(np.float32), var.mean(axis=1).astype(np.float32)


def log_marginal_likelihood(log_lik: float, weight: np.ndarray, a_eig: np.ndarray, g_eig: np.ndarray,
                            delta: float) -> float:
    """Laplace evidence with prior N(0, 1/delta): log p(D|w*) - delta/2 |w*|^2 + P/2 log delta
    - 1/2 log det(A (x) G + delta I) (the 2 pi terms cancel)."""
    eig = np.outer(a_eig, g_eig) + delta
    return float(log_lik - 0.5 * delta * np.sum(weight ** 2) + 0.5 * weight.size * math.log(delta)
                 - 0.5 * np.sum(np.log(eig)))


def fit(features, labels, kernel, bias, temperature=None, prior_grid=PRIOR_GRID) -> LastLayerLaplace:
    """The posterior of the head [kernel; bias] given the training set's features and labels."""
    phi = augmented(features, temperature)
    weight = np.concatenate([np.asarray(kernel, np.float64), np.asarray(bias, np.float64)[None, :]], axis=0)
    labels = np.asarray(labels, np.int64)
    if phi.shape[0] != labels.shape[0] or phi.shape[1] != weight.shape[0]:
        raise ValueError(f"laplace: {phi.shape[0]} feature rows of width {phi.shape[1] - 1} for "
                         f"{labels.shape[0]} labels and a head of input width {weight.shape[0] - 1}")
    probs = _softmax(phi @ weight)
    log_lik = float(np.sum(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None))))
    a = phi.T @ phi
    g = (np.diag(probs.sum(axis=0)) - probs.T @ probs) / max(len(labels), 1)
    a_eig, a_vec = np.linalg.eigh(a)
    g_eig, g_vec = np.linalg.eigh(g)
    a_eig, g_eig = np.clip(a_eig, 0.0, None), np.clip(g_eig, 0.0, None)
    # A sums over the examples and G averages them: A (x) G approximates the summed GGN (K-FAC).
    evidence = [log_marginal_likelihood(log_lik, weight, a_eig, g_eig, d) for d in prior_grid]
    best = int(np.argmax(evidence))
    return LastLayerLaplace(weight, a_eig, a_vec, g_eig, g_vec, float(prior_grid[best]), float(evidence[best]))


def with_prior_on_validation(fit_: LastLayerLaplace, features, labels, temperature=None,
                             prior_grid=PRIOR_GRID) -> LastLayerLaplace:
    """The same posterior with delta chosen by the probit predictive's NLL on held-out data (Laplace
    Redux's `gridsearch`): where the training set is interpolated (train NLL ~ 0, so the GGN ~ 0 and the
    evidence prefers a posterior as wide as the prior), the marginal likelihood over-softens the logits."""
    labels = np.asarray(labels, np.int64)
    nll = []
    for delta in prior_grid:
        probs, _ = dataclasses.replace(fit_, prior_precision=float(delta)).predict(features, temperature)
        nll.append(-float(np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels].astype(np.float64),
                                                 1e-300, None)))))
    best = int(np.argmin(nll))
    return dataclasses.replace(fit_, prior_precision=float(prior_grid[best]))
