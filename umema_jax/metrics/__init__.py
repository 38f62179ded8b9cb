"""Metrics: pure numpy functions (docs/CONTRACTS.md, Metrics; definitions in docs/DATA.md)."""
from umema_jax.metrics.calibration import aurc, brier, ece, error_detection_auroc, nll, reliability_table, risk_coverage
from umema_jax.metrics.classification import accuracy, macro_f1, semeval_official_f1
from umema_jax.metrics.evaluate import EvalAccumulator, evaluate_classification, evaluate_ner
from umema_jax.metrics.spans import span_ece, span_f1, span_prf

__all__ = ["aurc", "brier", "ece", "error_detection_auroc", "nll", "reliability_table", "risk_coverage", "accuracy",
           "macro_f1", "semeval_official_f1", "evaluate_classification", "evaluate_ner", "EvalAccumulator",
           "span_ece", "span_f1", "span_prf", "reliability_diagram"]


def reliability_diagram(*args, **kwargs):
    """Lazy wrapper (matplotlib is imported only when a diagram is drawn)."""
    from umema_jax.metrics.plots import reliability_diagram as _draw
    return _draw(*args, **kwargs)
