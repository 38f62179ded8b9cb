"""Training methods behind one interface (`base.Method`), selected by `model.method` (docs/METHODS.md).

Importing this package registers every method module listed below; a new
method is one module here plus one line in `_MODULES`.
"""
from __future__ import annotations

import importlib

from umema_jax.methods.base import METRIC_PREFIX, REGISTRY, Controller, Method, register

_MODULES = ("paper", "full_ft", "lisa", "milora", "alora", "splitlora", "flora")
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def names() -> tuple:
    """Every registered `model.method` value, in registration order."""
    return tuple(REGISTRY)


def get(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"model.method={name!r}: must be one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def from_config(config) -> Method:
    """The run's method instance (`config.model.method`, hyper-parameters from `config.methods.<name>`)."""
    return get(str(config.model.method))(config)


def default_config():
    """`methods.<name>.<key>` sections with each method's defaults (configs/common.py calls this)."""
    import ml_collections
    c = ml_collections.ConfigDict()
    for name, cls in REGISTRY.items():
        if cls.defaults:
            c[name] = ml_collections.ConfigDict(dict(cls.defaults))
    return c


__all__ = ["METRIC_PREFIX", "REGISTRY", "Controller", "Method", "default_config", "from_config", "get", "names",
           "register"]
