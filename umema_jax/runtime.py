"""XLA compiler options for the jitted train / eval steps (measured in benchmarks/NOTES.md).

On CPU hosts with two or more cores, turning YNNPACK *fusions* off
(`xla_cpu_experimental_ynn_fusion_type=""`) sends every large matmul to
XLA:CPU's plain dot runtime, which scales better over the cores: single GEMMs
of the GPT-2 step's shapes run 1.1-1.2x faster on 2 cores, the LoRA train step
takes 0.92-0.96x the time and the eval step 0.89x (variants compiled in one
process, steps alternated). On a single core it is the other way round (train
step 1.09x), so there the default stays. Results are equal up to float
summation order. Other backends get no options. Not measured above 2 cores.
"""
from __future__ import annotations

import os

_MULTICORE_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under `taskset` or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo), recorded with runs and benchmarks; '' where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""


def compiler_options(platform: str, cores: int | None = None) -> dict | None:
    """XLA compiler options for the train / eval steps on `platform` ('cpu', 'gpu', 'tpu')."""
    if platform != "cpu":
        return None
    cores = host_cores() if cores is None else cores
    return dict(_MULTICORE_CPU_OPTIONS) if cores >= 2 else None


def enable_compilation_cache() -> None:
    """Persistent XLA cache ($UMEMA_JAX_CACHE, default ~/.cache/umema_jax/xla; 'off' disables):
    a resumed or repeated run (and the test suite) skips recompiling the same programs (identical
    executables)."""
    import jax
    path = os.environ.get("UMEMA_JAX_CACHE", os.path.expanduser("~/.cache/umema_jax/xla"))
    if path.lower() in ("", "off", "none", "0"):
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
