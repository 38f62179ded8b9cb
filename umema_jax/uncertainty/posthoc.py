"""Post-hoc calibrators: fitted once after training, on the best checkpoint's outputs, without changing
the trained model. One interface, one registry (as for the heads in `uncertainty.heads`).

A calibrator sees, per split, the deterministic pass's probabilities, the gold labels, the task head's
input `features` and the model's temperature (`Outputs`; rows are examples, or scored words for NER),
plus the task head's weights. It declares

  name          the value in `output.posthoc` that selects it; its outputs are stored as
                `<split>_<name>` in results.json and under `<split>/posthoc/<name>/` in the record
  needs_train   whether it fits on the training set's outputs (one more forward pass over train)
  fit(head, train, dev) -> a fitted object (anything), and `summary(fitted)` -> a JSON dict of what
                was chosen (kept in results.json under `posthoc`)
  apply(fitted, split) -> (probs or None, scores): new predictive probabilities (None: the model's
                stand) and per-row uncertainty scores (higher = more uncertain)

Post-hoc temperature scaling is older than this interface and stays where it was (`test_posthoc_ts`,
fitted from the record's probabilities alone).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar

import numpy as np

from umema_jax.uncertainty import correctness, laplace


@dataclasses.dataclass
class Outputs:
    probs: np.ndarray          # [N, C] the deterministic pass's probabilities
    labels: np.ndarray         # [N]
    features: np.ndarray       # [N, d] the task head's input
    temperature: np.ndarray    # [N] the model's temperature (1 without UM): logits = (features W + b) / T


class Calibrator:
    name: ClassVar[str] = ""
    needs_train: ClassVar[bool] = False

    def fit(self, head: dict, train: Outputs | None, dev: Outputs) -> Any:
        raise NotImplementedError

    def apply(self, fitted: Any, split: Outputs) -> tuple[np.ndarray | None, dict]:
        raise NotImplementedError

    def summary(self, fitted: Any) -> dict:
        return {}


CALIBRATORS: dict[str, type[Calibrator]] = {}


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: makes `output.posthoc=<cls.name>` select `cls`."""
    if not cls.name or cls.name in CALIBRATORS or "_" in cls.name:
        raise ValueError(f"post-hoc calibrator name {cls.name!r} is empty, has '_' or is already registered")
    CALIBRATORS[cls.name] = cls
    return cls


def parse(value: str) -> tuple:
    """`output.posthoc` ('laplace,correctness', '' = none) -> names, each checked against the registry."""
    names = tuple(n.strip() for n in str(value or "").split(",") if n.strip())
    for n in names:
        if n not in CALIBRATORS:
            raise ValueError(f"output.posthoc: unknown calibrator {n!r}; known: {', '.join(CALIBRATORS)}")
    return names


@register_calibrator
class LastLayerLaplaceCalibrator(Calibrator):
    """`uncertainty.laplace`: K-FAC Laplace on the task head, fitted on train, prior by marginal likelihood."""
    name = "laplace"
    needs_train = True

    def fit(self, head, train, dev):
        return laplace.fit(train.features, train.labels, head["kernel"], head["bias"], train.temperature)

    def apply(self, fitted, split):
        probs, variance = fitted.predict(split.features, split.temperature)
        return probs, {"laplace_variance": variance}

    def summary(self, fitted):
        return {"prior_precision": fitted.prior_precision, "log_marginal_likelihood": fitted.log_marglik}


@register_calibrator
class LaplaceDevPriorCalibrator(LastLayerLaplaceCalibrator):
    """The same Laplace with its prior precision chosen by dev NLL instead of the marginal likelihood."""
    name = "laplace-dev"

    def fit(self, head, train, dev):
        return laplace.with_prior_on_validation(super().fit(head, train, dev), dev.features, dev.labels,
                                                dev.temperature)

    def summary(self, fitted):
        return {"prior_precision": fitted.prior_precision, "prior_chosen_by": "dev NLL"}


@register_calibrator
class CorrectnessCalibrator(Calibrator):
    """`uncertainty.correctness`: a ridge head predicting the true-class probability, fitted on dev."""
    name = "correctness"

    def fit(self, head, train, dev):
        return correctness.fit(dev.features, dev.probs, dev.labels)

    def apply(self, fitted, split):
        return None, {"correctness": fitted.score(split.features, split.probs)}

    def summary(self, fitted):
        return {"ridge_penalty": fitted.penalty, "cv_mse": fitted.cv_mse}


def check_linear_head(head: dict, split: str, out: Outputs, tol: float = 1e-3) -> None:
    """The calibrators assume the model's probabilities are softmax((features W + b) / T); a model for
    which that is false fails here, naming the split, instead of being calibrated wrongly."""
    phi = laplace.augmented(out.features, out.temperature)
    w = np.concatenate([np.asarray(head["kernel"], np.float64), np.asarray(head["bias"], np.float64)[None]], 0)
    z = phi @ w
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    err = float(np.max(np.abs(p - out.probs))) if len(p) else 0.0
    if err > tol:
        raise ValueError(f"post-hoc calibration ({split}): the model's probabilities are not softmax((features "
                         f"@ head + bias) / T) (max difference {err:.2e}); its task head is not the last layer")


def calibrate(names, head: dict, outputs: dict) -> dict:
    """Fits each calibrator and applies it to dev and test: {name: {'summary': {...},
    'dev': (probs|None, scores), 'test': (...)}}. `outputs`: split -> Outputs (train only when needed).

    A calibrator that cannot be fitted (a model whose last layer is not its task head, too few dev rows)
    never costs the run: it is left out with a warning, and its summary says why (`failed`)."""
    result = {}
    try:
        for split, out in outputs.items():
            check_linear_head(head, split, out)
    except ValueError as err:
        return {name: failed(name, err) for name in names}
    for name in names:
        cal = CALIBRATORS[name]()
        try:
            fitted = cal.fit(head, outputs.get("train"), outputs["dev"])
        except (ValueError, np.linalg.LinAlgError) as err:
            result[name] = failed(name, err)
            continue
        result[name] = {"summary": cal.summary(fitted),
                        **{split: cal.apply(fitted, outputs[split]) for split in ("dev", "test")}}
    return result


def failed(name: str, err: Exception) -> dict:
    print(f"warning: post-hoc calibrator {name!r} left out: {err}", file=sys.stderr, flush=True)
    return {"summary": {"failed": str(err)}}
