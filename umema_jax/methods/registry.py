"""The one list of training methods: every `model.method` value, derived from the registered classes."""
from __future__ import annotations

from umema_jax import registries
from umema_jax.train.method import Method

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes `model.method=<cls.name>` select `cls` (`registries.add`)."""
    return registries.add(REGISTRY, cls, "method")
