"""Suite-wide set-up: XLA's persistent compilation cache, as launch.py uses it, and a cheaper compiler.

Many tests compile the same smoke-config programs (train / eval steps of the tiny GPT-2); with the
cache each is compiled once per suite run on a fresh machine and never again on a developer's.
Executables are identical either way. `UMEMA_JAX_CACHE=off` disables it.

Compilation, not execution, is most of the suite's time (tiny models, dozens of distinct programs), so
the tests ask XLA's CPU backend for LLVM optimisation level 0 (`benchmarks/README.md`, "The test suite's
wall time": the heaviest test files ran 28-34 % faster). The tests check behaviour: numerical ones
compare with tolerances, and bit-identity ones compare two runs under the same flags. Set the level in
`XLA_FLAGS` yourself (e.g. `--xla_backend_optimization_level=3`) to test the optimised programs.
"""
import os

_LEVEL = "--xla_backend_optimization_level"
if _LEVEL not in os.environ.get("XLA_FLAGS", ""):          # before any test initialises a JAX backend
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_LEVEL}=0".strip()

from umema_jax.runtime import enable_compilation_cache  # noqa: E402


def pytest_configure(config):
    enable_compilation_cache()
