"""Accuracy, macro-F1 and the SemEval-2010 Task 8 official score, by hand."""
import numpy as np
import pytest

from umema_jax.data.semeval import LABELS
from umema_jax.metrics import accuracy, evaluate_classification, macro_f1, semeval_official_f1


def test_accuracy_and_macro_f1():
    preds, labels = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    assert accuracy(preds, labels) == 0.5
    f0, f1 = 2 * 0.5 * 1 / 1.5, 2 * 1 * (1 / 3) / (4 / 3)
    assert macro_f1(preds, labels) == pytest.approx((f0 + f1 + 0) / 3)
    assert macro_f1(preds, labels, num_classes=4) == pytest.approx((f0 + f1) / 4)


def test_semeval_official_directionality():
    ix = {name: i for i, name in enumerate(LABELS)}
    gold = ["Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Message-Topic(e1,e2)"]
    pred = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Cause-Effect(e2,e1)", "Cause-Effect(e1,e2)", "Other"]
    score, det = semeval_official_f1([ix[p] for p in pred], [ix[g] for g in gold], LABELS, return_details=True)
    # Cause-Effect: 2 correct (directed), 4 predicted (any direction, incl. the wrong-direction one), 3 gold
    ce = det["Cause-Effect"]
    assert (ce["correct"], ce["predicted"], ce["gold"]) == (2, 4, 3)
    f_ce = 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    assert score == pytest.approx(f_ce / 9)                  # mean over all 9 relations, Other excluded
    assert "Other" not in det and len(det) == 9
    assert semeval_official_f1([ix[g] for g in gold], [ix[g] for g in gold], LABELS) == pytest.approx(2 / 9)


def test_evaluate_classification_filters_padding_rows():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4]])
    labels = np.array([0, 1, -100, 1])
    out = evaluate_classification(probs, labels, ["a", "b"])
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(2 / 3)
    assert "semeval_f1" not in out
    for key in ("macro_f1", "ece", "ece_10bins", "ece_equal_mass", "nll", "brier", "aurc"):
        assert isinstance(out[key], float)
    masked = evaluate_classification(probs, np.array([0, 1, 0, 1]), ["a", "b"], example_mask=[1, 1, 0, 1])
    assert masked == out
    sem = np.full((2, 19), 0.01)
    sem[0, 0] = sem[1, 16] = 0.82
    got = evaluate_classification(sem, np.array([0, 16]), LABELS, with_tables=True)
    assert got["accuracy"] == 1.0 and got["semeval_f1"] == pytest.approx(1 / 9)
    assert len(got["reliability"]) == 15
