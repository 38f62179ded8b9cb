"""Uncertainty heads (`heads.py`: the interface and registry) and post-hoc calibration (`temperature.py`).

Importing the package registers the built-in heads: the paper's UM (`um.py`) and MC dropout
(`mc_dropout.py`); a new head is one module that applies `@register_head` (docs/EXTENDING.md).
"""
from umema_jax.uncertainty import mc_dropout, um  # noqa: F401  (registers the built-in heads)
