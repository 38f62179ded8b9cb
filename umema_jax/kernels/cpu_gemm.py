"""CPU matmuls through oneDNN (an XLA FFI custom call), for the backbone's large Dense products.

Why: XLA:CPU's dot runtime is slower than oneDNN's JIT kernels on the train step's
matmul chain, and it never uses AMX / AVX512-BF16 for bf16 (benchmarks/README.md).
`matmul(x, w)` is `x @ w` for x `[..., k]`, w `[k, n]`, both float32 or both bfloat16
(oneDNN accumulates in fp32; a bf16 result is rounded to bf16 like XLA's bf16 dot);
other dtypes use `jnp.dot`. Its `custom_vjp` sends the backward's products through the
same call (transposes as strides, no copies) and skips the weight gradient when nothing
asks for it (frozen weights), so jit, scan, remat and donation work as with `jnp.dot`.

The extension (`cpu_gemm.cc`) is compiled on first use with the host's C++ compiler
against jaxlib's FFI headers and the `onednn-devel-cpu-gomp` wheel (requirements.txt)
into `$UMEMA_CACHE_DIR` (default `~/.cache/umema_jax/ext`). If the compiler or the
library is missing, `available()` is False and `resolve("auto")` picks XLA, saying so
once on stderr.

`model.cpu_matmul=auto` chooses by measurement (`measured_choice`): the first time a host meets a
shape class (hidden and MLP sizes, dtype) it times a frozen-weight MLP block's forward and backward
on both paths, alternated, and keeps oneDNN only when it is at least 5 % faster; the choice is cached
per host, jax version and shape class in `$UMEMA_CACHE_DIR/matmul_choice.json`, and every run records
the path it used (`results.json`: `numerics.matmul_path`), because the two paths round differently.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import sys
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from umema_jax import runtime

CHOICES = ("auto", "xla", "onednn")
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_gemm.cc")
_TARGET = "umema_cpu_gemm"
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _find_onednn() -> str | None:
    """The environment prefix holding oneDNN's header and library (the onednn wheels install into lib/, include/)."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable)))):
        if all(os.path.exists(os.path.join(prefix, *p)) for p in (("include", "dnnl.h"), ("lib", "libdnnl.so"))):
            return prefix
    return None


def _cache_dir() -> str:
    return os.environ.get("UMEMA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "umema_jax", "ext")


def _build(prefix: str) -> str:
    """Compile cpu_gemm.cc once per (source, jax, oneDNN prefix, compiler); returns the .so path."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++/c++/clang++) on PATH")
    include, lib = jax.ffi.include_dir(), os.path.join(prefix, "lib")
    with open(_SRC, "rb") as f:
        key = hashlib.sha256(f.read() + f"{include}|{prefix}|{jax.__version__}|{cxx}".encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    out = os.path.join(out_dir, f"umema_cpu_gemm_{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", include, "-I", os.path.join(prefix, "include"),
           _SRC, "-o", tmp, "-L", lib, "-ldnnl", f"-Wl,-rpath,{lib}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise RuntimeError(f"compiling {os.path.basename(_SRC)} failed: {last}")
    os.replace(tmp, out)          # atomic: concurrent test workers may build at once
    return out


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded extension, '') with the custom call registered, or (None, why not) in one line."""
    if os.environ.get("UMEMA_CPU_GEMM_DISABLE"):
        return None, "disabled by UMEMA_CPU_GEMM_DISABLE"
    prefix = _find_onednn()
    if prefix is None:
        return None, "oneDNN not found: pip install -r requirements.txt"
    try:
        lib = ctypes.CDLL(_build(prefix))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.UmemaCpuGemm), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
        return None, f"{type(e).__name__}: {e}"
    return lib, ""


def available() -> bool:
    """True when the oneDNN custom call is built and registered (CPU only)."""
    return _library()[0] is not None


def impl_info(dtype, m: int, n: int, k: int) -> str:
    """oneDNN's kernel for `[m,k] @ [k,n]` in `dtype` (e.g. 'brg:avx512_core_amx', 'ref:any'): what runs."""
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"oneDNN matmul unavailable ({reason})")
    buf = ctypes.create_string_buffer(256)
    rc = lib.umema_cpu_gemm_impl(int(jnp.dtype(dtype) == jnp.bfloat16), ctypes.c_int64(m), ctypes.c_int64(n),
                                 ctypes.c_int64(k), buf, len(buf))
    if rc:
        raise RuntimeError(f"oneDNN matmul for {jnp.dtype(dtype).name} [{m},{k}]x[{k},{n}] not created (code {rc})")
    return buf.value.decode()


@functools.cache
def bf16_native() -> bool:
    """Whether oneDNN has a bf16 matmul on this CPU (AMX / AVX512-BF16 / AVX2-VNNI-2); without one, bf16
    operands are widened to fp32 before the call (oneDNN has no bf16 kernel there, XLA widens too)."""
    try:
        return not impl_info(jnp.bfloat16, 64, 64, 64).startswith("ref")
    except RuntimeError:
        return False


@functools.cache
def _notice(reason: str) -> None:
    print(f"umema_jax: model.cpu_matmul=auto uses XLA's dot ({reason})", file=sys.stderr, flush=True)


def resolve(choice: str, platform: str | None = None, shape_class: tuple = (768, 3072),
            dtype: str = "float32") -> str:
    """'xla' or 'onednn' for `model.cpu_matmul`.

    auto = XLA off CPU or without the oneDNN extension; on CPU the faster path for `shape_class`
    (hidden size, MLP size) and `dtype`, measured once per host (`measured_choice`). `onednn` forces it.
    """
    if choice not in CHOICES:
        raise ValueError(f"model.cpu_matmul={choice!r}: must be one of {', '.join(CHOICES)}")
    platform = platform or jax.default_backend()
    if choice == "xla" or (choice == "auto" and platform != "cpu"):
        return "xla"
    if platform != "cpu":
        raise ValueError(f"model.cpu_matmul=onednn runs on the CPU backend only, not {platform!r}")
    reason = _library()[1]
    if reason:
        if choice == "onednn":
            raise RuntimeError(f"model.cpu_matmul=onednn: oneDNN matmul unavailable ({reason})")
        _notice(reason)
        return "xla"
    return "onednn" if choice == "onednn" else measured_choice(tuple(int(v) for v in shape_class), dtype)


PROBE_ROWS = 512                  # tokens of the probe's block: a batch of 8 x 64, the order of a CPU step
MARGIN = 0.95                     # oneDNN is chosen only when it takes at most this fraction of XLA's time


def probe_times(shape_class: tuple, dtype: str, rounds: int = 3, calls: int = 3) -> dict:
    """Median seconds of one forward + backward (input gradient only: frozen weights, as the backbone's)
    of an MLP block `[rows, d] @ [d, f] -> gelu -> @ [f, d]` on each path, the paths alternated."""
    d, f = shape_class
    dt = jnp.dtype(dtype)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (PROBE_ROWS, d), dt)
    w1 = (jax.random.normal(keys[1], (d, f), jnp.float32) / math.sqrt(d)).astype(dt)
    w2 = (jax.random.normal(keys[2], (f, d), jnp.float32) / math.sqrt(f)).astype(dt)

    def block(mm):
        return jax.jit(jax.grad(lambda x, a, b: jnp.sum(mm(jax.nn.gelu(mm(x, a)), b).astype(jnp.float32) ** 2)))
    steps = {"xla": block(jnp.dot), "onednn": block(matmul)}
    for fn in steps.values():
        fn(x, w1, w2).block_until_ready()                      # compile and warm up
    times: dict = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn(x, w1, w2).block_until_ready()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _choices_path() -> str:
    return os.path.join(_cache_dir(), "matmul_choice.json")


def measured_choice(shape_class: tuple, dtype: str = "float32") -> str:
    """The faster matmul path on this host for `shape_class` and `dtype`, from the cache or measured now
    (a few seconds, once; one line on stderr says what was measured)."""
    key = (f"{runtime.cpu_model() or 'unknown'} | jax {jax.__version__} | {shape_class[0]}x{shape_class[1]} | "
           f"{jnp.dtype(dtype).name}")
    if os.environ.get("XLA_FLAGS", "").strip():     # XLA's timing depends on them (the suite compiles at -O0)
        key += f" | XLA_FLAGS {os.environ['XLA_FLAGS'].strip()}"
    path = _choices_path()
    try:
        with open(path, encoding="utf-8") as fh:
            cached = json.load(fh)
    except (OSError, ValueError):
        cached = {}
    if key in cached and cached[key].get("choice") in ("xla", "onednn"):
        return cached[key]["choice"]
    times = probe_times(shape_class, dtype)
    choice = "onednn" if times["onednn"] <= MARGIN * times["xla"] else "xla"
    cached[key] = {"choice": choice, "seconds": times}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(cached, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)                 # atomic: two runners may measure at once
    print(f"umema_jax: model.cpu_matmul=auto measured XLA {1e3 * times['xla']:.1f} ms, oneDNN "
          f"{1e3 * times['onednn']:.1f} ms per block ({shape_class[0]}x{shape_class[1]}, {jnp.dtype(dtype).name}); "
          f"using {choice} on this host (cached in {path})", file=sys.stderr, flush=True)
    return choice


def gemm(a, b, transpose_a: bool = False, transpose_b: bool = False):
    """fp32 `op(a) @ op(b)` of rank-2 a, b (both float32 or both bfloat16) through oneDNN."""
    reason = _library()[1]
    if reason:
        raise RuntimeError(f"oneDNN matmul unavailable ({reason})")
    if jnp.dtype(a.dtype) == jnp.bfloat16 and not bf16_native():
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    m = a.shape[1] if transpose_a else a.shape[0]
    n = b.shape[0] if transpose_b else b.shape[1]
    call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32),
                            vmap_method="sequential")
    return call(a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))


def _rows(t):
    """`[..., d]` -> `[prod(...), d]` (explicit size: -1 is ambiguous for empty arrays)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _forward(x, w):
    return gemm(_rows(x), w).astype(x.dtype).reshape(*x.shape[:-1], w.shape[1])


_matmul = jax.custom_vjp(_forward)


def _matmul_fwd(x, w):
    # Keep only what the backward uses, as autodiff of jnp.dot does: x only when W is trained
    # (a frozen layer saves no input activation), W only when x needs a gradient.
    return _forward(x.value, w.value), (x.value if w.perturbed else None, w.value if x.perturbed else None)


def _matmul_bwd(res, g):
    x, w = res                        # the cotangent g has x's dtype and shape [..., n]
    if isinstance(g, SymbolicZero):
        return None, None
    g2 = _rows(g)
    dx = None if w is None else gemm(g2, w, transpose_b=True).astype(g.dtype).reshape(*g.shape[:-1], w.shape[0])
    dw = None if x is None else gemm(_rows(x), g2, transpose_a=True).astype(x.dtype)
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd, symbolic_zeros=True)


def matmul(x, w):
    """`jnp.dot(x, w)` for x `[..., k]`, w `[k, n]` through oneDNN (fp32 or bf16 operands of one dtype)."""
    if x.dtype != w.dtype or jnp.dtype(x.dtype) not in _DTYPES or w.ndim != 2 or x.ndim < 1:
        return jnp.dot(x, w)
    return _matmul(x, w)
