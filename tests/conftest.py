"""Suite-wide set-up: XLA's persistent compilation cache, as launch.py uses it.

Many tests compile the same smoke-config programs (train / eval steps of the tiny GPT-2); with the
cache each is compiled once per suite run on a fresh machine and never again on a developer's.
Executables are identical either way. `UMEMA_JAX_CACHE=off` disables it.
"""
from umema_jax.runtime import enable_compilation_cache


def pytest_configure(config):
    enable_compilation_cache()
