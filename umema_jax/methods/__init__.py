"""Training methods behind one interface (`umema_jax.train.method.Method`), selected by `model.method`
(docs/METHODS.md).

Importing this package registers every method module listed below; a new method is one module here
plus one line in `_MODULES` (or, outside the package, one module that applies `@register`).
"""
from __future__ import annotations

import importlib

from umema_jax.methods.registry import REGISTRY, register
from umema_jax.train.method import Controller, Method

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


def validate_config(config) -> None:
    """Every check before anything is built: `model.method` names a registered method, then every key
    (`train.validate.validate_config`, the method's own section and `validate` included). Raises
    `train.validate.ConfigError` with one line naming the key."""
    from umema_jax.train.validate import ConfigError
    from umema_jax.train.validate import validate_config as validate_keys
    name = config.model.method
    if name not in REGISTRY:
        raise ConfigError(f"model.method={name!r}: must be one of {', '.join(REGISTRY)}")
    validate_keys(config, REGISTRY[name])


def unused_config_prefixes(name: str) -> tuple:
    """Config sections that cannot change method `name`'s results (`Method.unused_config_prefixes`);
    () for an unknown name."""
    cls = REGISTRY.get(name)
    return () if cls is None else cls.unused_config_prefixes()


def default_config():
    """`methods.<name>.<key>` sections with each method's defaults (umema_jax/defaults.py calls this)."""
    import ml_collections
    c = ml_collections.ConfigDict()
    for name, cls in REGISTRY.items():
        if cls.defaults:
            c[name] = ml_collections.ConfigDict(dict(cls.defaults))
    return c


__all__ = ["REGISTRY", "Controller", "Method", "default_config", "from_config", "get", "names", "register",
           "unused_config_prefixes", "validate_config"]
