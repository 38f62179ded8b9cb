"""The oneDNN matmul custom call (umema_jax/kernels/cpu_gemm.py) against numpy / jnp.dot / autodiff,
in a whole train step, and its XLA fallback. Skipped parts say why (no compiler or no oneDNN)."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.adapters.lora import LoraConfig
from umema_jax.backbones.config import NAMED_CONFIGS, get_backbone_config
from umema_jax.flops import linear_shapes
from umema_jax.kernels import cpu_gemm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_lib = pytest.mark.skipif(not cpu_gemm.available(), reason=f"oneDNN matmul unavailable: {cpu_gemm._library()[1]}")
U32 = 2.0 ** -24


def _backbone_shapes():
    """Every distinct (in, out) Dense shape of every named backbone."""
    return sorted({(i, o) for cfg in NAMED_CONFIGS.values() for _, i, o in linear_shapes(cfg)})


def _bound(a, b, k):
    """Rounding bound of an fp32-accumulated product: k * u * (|A| @ |B|), computed in float64."""
    return k * U32 * (np.abs(a) @ np.abs(b)) + 1e-30


@needs_lib
def test_every_backbone_shape_matches_float64_with_transposes():
    """fp32 and bf16 operands (fp32 result) in the layouts the step uses: x @ W (forward), g @ W^T
    (input gradient, W read transposed), x^T @ g (weight gradient, x read transposed), plus both
    transposed for the smaller shapes; odd row counts. The float64 reference is taken on up to 64
    sampled output columns / rows so that the 8B shapes stay fast; one compile per shape."""
    rng = np.random.default_rng(0)

    @functools.partial(jax.jit, static_argnums=(3, 4))
    def products(x, w, g, cols, rows):
        out, cols, rows = [], np.asarray(cols), np.asarray(rows)
        for dtype in (jnp.float32, jnp.bfloat16):
            xq, wq, gq = (t.astype(dtype) for t in (x, w, g))
            got = [cpu_gemm.gemm(xq, wq)[:, cols], cpu_gemm.gemm(gq, wq, transpose_b=True)[:, rows],
                   cpu_gemm.gemm(xq, gq, transpose_a=True)[rows, :]]
            if w.size <= 2 ** 21:
                got.append(cpu_gemm.gemm(wq, xq, True, True)[cols, :])
            rounded = [t.astype(jnp.float32) for t in (xq, gq, wq[:, cols], wq[rows])]
            out.append((got, rounded))
        return out

    for idx, (k, n) in enumerate(_backbone_shapes()):
        m = (3, 5, 17)[idx % 3]
        w = rng.standard_normal((k, n), np.float32)
        x = rng.standard_normal((m, k), np.float32)
        g = rng.standard_normal((m, n), np.float32)
        cols = tuple(sorted(rng.choice(n, min(n, 64), replace=False).tolist()))
        rows = tuple(sorted(rng.choice(k, min(k, 64), replace=False).tolist()))
        for dtype, (got, rounded) in zip(("float32", "bfloat16"), products(x, w, g, cols, rows)):
            x64, g64, w_cols, w_rows = (np.asarray(t, np.float64) for t in rounded)
            refs = [(x64, w_cols), (g64, w_rows.T), (x64[:, list(rows)].T, g64), (w_cols.T, x64.T)]
            for i, (out, (ra, rb)) in enumerate(zip(got, refs)):
                assert out.dtype == jnp.float32
                err = np.abs(np.asarray(out, np.float64) - ra @ rb)
                bound = _bound(ra, rb, ra.shape[1])
                assert np.all(err <= bound), (k, n, i, dtype, float((err / bound).max()))


@needs_lib
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_equals_jnp_dot_batched_odd_and_empty(dtype):
    rng = np.random.default_rng(1)
    for lead, k, n in [((3, 5), 11, 7), ((1,), 1, 1), ((2, 1, 3), 13, 9), ((4,), 0, 6), ((0, 2), 5, 3)]:
        x = jnp.asarray(rng.standard_normal((*lead, k)), dtype)
        w = jnp.asarray(rng.standard_normal((k, n)), dtype)
        got = jax.jit(cpu_gemm.matmul)(x, w)
        ref = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32), precision="highest")
        assert got.dtype == dtype and got.shape == (*lead, n)
        # fp32: accumulation-order rounding; bf16: the result is rounded to bf16 (half an ulp, 2^-8 relative).
        tol = 2 ** -8 if dtype == jnp.bfloat16 else 1e-6
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=tol, atol=tol * (1 + k))


@needs_lib
@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2 ** -7)])
def test_gradients_equal_autodiff_of_jnp_dot(dtype, rtol):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 5, 24)), dtype)
    w = jnp.asarray(rng.standard_normal((24, 10)), dtype)
    c = jnp.asarray(rng.standard_normal((2, 5, 10)), jnp.float32)

    def loss(mm):
        return lambda x, w: jnp.sum(mm(x, w).astype(jnp.float32) * c)

    got = jax.jit(jax.grad(loss(cpu_gemm.matmul), argnums=(0, 1)))(x, w)
    ref = jax.grad(loss(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)), argnums=(0, 1))(x, w)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype == dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=rtol,
                                   atol=rtol * float(jnp.abs(r.astype(jnp.float32)).max()))


@needs_lib
def test_frozen_weight_gets_no_gradient_product():
    """Differentiating w.r.t. x alone runs two products (forward, x-gradient), not the weight gradient too."""
    x, w = jnp.ones((4, 8)), jnp.ones((8, 3))
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(cpu_gemm.matmul(x, w) ** 2))).lower(x).as_text()
    assert hlo.count("umema_cpu_gemm") == 2
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(cpu_gemm.matmul(x, w) ** 2), argnums=(0, 1))).lower(x, w).as_text()
    assert hlo.count("umema_cpu_gemm") == 3


@needs_lib
@pytest.mark.parametrize("name,remat,dtype,tol", [("gpt2-tiny", False, jnp.float32, 1e-4),
                                                   ("llama-tiny", True, jnp.bfloat16, 3e-2)])
def test_backbone_forward_and_lora_gradient_equal_xla(name, remat, dtype, tol):
    """Through nn.scan over layers, with remat, under jit, fp32 and bf16: the outputs and LoRA gradient of jnp.dot."""
    from umema_jax.adapters.lora import init_lora
    from umema_jax.backbones import build_backbone, init_backbone_params
    cfg = get_backbone_config(name).replace(vocab_size=97)
    params = init_backbone_params(cfg, jax.random.PRNGKey(0))
    lcfg = LoraConfig(rank=4)
    lora = init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch)
    lora = jax.tree.map(lambda t: t + 0.01 * jnp.ones_like(t), lora)         # B != 0: the branch matters
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 9)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, :2].set(0)

    def run(matmul, remat):
        module = build_backbone(cfg, lora=lcfg, remat=remat, matmul=matmul, dtype=dtype)
        f = lambda l: module.apply({"params": params, "lora": l}, ids, mask).last_hidden_state.astype(jnp.float32)
        return jax.jit(lambda l: (f(l), jax.grad(lambda l: jnp.sum(f(l)[:, -1] ** 2))(l)))(lora)

    ref_h, ref_g = run("xla", False)
    h, g = run("onednn", remat)
    np.testing.assert_allclose(h, ref_h, rtol=tol / 10, atol=tol / 10 * np.abs(ref_h).max())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
                                                         atol=tol * np.abs(np.asarray(b, np.float32)).max()), g, ref_g)


@needs_lib
def test_train_step_with_onednn_equals_xla(dtype="float32", tol=1e-5):
    """Two donated, jitted train steps of the real step function (gpt2-tiny, LoRA): loss and updates agree.
    (bf16 is covered at the backbone level above: one train-step compile per variant is the slow part.)"""
    import types
    from umema_jax.model import init_variables, make_model
    from umema_jax.train.state import create_train_state, make_optimizer, split_params
    from umema_jax.train.step import jit_train_step, make_train_step
    from umema_jax.train import sharding as shd
    from umema_jax.defaults import base_config
    rng = np.random.default_rng(4)
    batch = {"input_ids": rng.integers(0, 97, (4, 8)).astype(np.int32), "attention_mask": np.ones((4, 8), np.int32),
             "example_mask": np.ones((4,), np.int32), "task_id": np.zeros((4,), np.int32),
             "labels": rng.integers(0, 3, (4,)).astype(np.int32)}
    cfg = get_backbone_config("gpt2-tiny").replace(vocab_size=97)
    out = {}
    for matmul in ("xla", "onednn"):
        view = types.SimpleNamespace(
            model=types.SimpleNamespace(name="gpt2-tiny", method="lora", pooling="last", dtype=dtype, cpu_matmul=matmul,
                                        lora=dict(rank=4, alpha=8.0), um={}, ema={}),
            task=types.SimpleNamespace(type="cls", num_labels=3))
        model = make_model(view, cfg, use_lora=True, use_um=False, use_ema=False)
        assert model.cpu_matmul == matmul
        variables = init_variables(model, jax.random.PRNGKey(0))
        trained, frozen = split_params(variables["params"], r"^(head|um|ema)/")
        frozen = jax.tree.map(lambda t: t.astype(dtype), frozen)
        tx, schedule = make_optimizer(base_config().optim, total_steps=10)
        state = create_train_state({"lora": variables["lora"], "params": trained}, {}, tx, 0)
        mesh = shd.make_mesh(data=1, model=1, devices=jax.devices()[:1])
        rep = shd.replicated(mesh)
        step = jit_train_step(make_train_step(model, tx, schedule, "cls"), jax.tree.map(lambda _: rep, state),
                              jax.tree.map(lambda _: rep, frozen), shd.batch_sharding(mesh), rep)
        losses = []
        for _ in range(2):
            state, metrics = step(state, frozen, batch)
            losses.append(float(metrics["loss"]))
        out[matmul] = (losses, jax.tree.map(np.asarray, state.trainable))
    np.testing.assert_allclose(out["onednn"][0], out["xla"][0], rtol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 1e-2),
                 out["onednn"][1], out["xla"][1])


def test_resolve_choices_and_platforms(tmp_path, monkeypatch):
    monkeypatch.setenv("UMEMA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_gemm, "_cache_dir", lambda: str(tmp_path))
    assert cpu_gemm.resolve("xla", "cpu") == "xla"
    assert cpu_gemm.resolve("auto", "gpu") == "xla"          # GPUs always use XLA's dot
    monkeypatch.setattr(cpu_gemm, "probe_times", lambda shape, dtype: {"xla": 1.0, "onednn": 0.5})
    assert cpu_gemm.resolve("auto", "cpu") == ("onednn" if cpu_gemm.available() else "xla")
    with pytest.raises(ValueError, match="model.cpu_matmul='mkl'"):
        cpu_gemm.resolve("mkl", "cpu")
    with pytest.raises(ValueError, match="CPU backend only"):
        cpu_gemm.resolve("onednn", "gpu")


def test_validate_rejects_unknown_cpu_matmul():
    sys.path.insert(0, REPO)
    from configs.smoke import get_config
    from umema_jax.methods import validate_config
    from umema_jax.train.validate import ConfigError
    c = get_config()
    c.model.cpu_matmul = "blas"
    with pytest.raises(ConfigError, match=r"model\.cpu_matmul='blas'"):
        validate_config(c)


def test_build_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setenv("UMEMA_CACHE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="compiling cpu_gemm.cc failed"):
        cpu_gemm._build(sys.prefix)
    assert os.listdir(tmp_path) == []                         # no half-written library left behind


def test_fallback_without_the_library_runs_on_xla():
    """No oneDNN / no compiler: auto gives XLA with one stderr line, onednn fails in one line, a model still runs."""
    code = textwrap.dedent("""
        import types, jax, jax.numpy as jnp
        from umema_jax.backbones.config import get_backbone_config
        from umema_jax.model import init_variables, make_model
        from umema_jax.kernels import cpu_gemm
        view = lambda m: types.SimpleNamespace(
            model=types.SimpleNamespace(name="gpt2-tiny", method="lora", cpu_matmul=m, lora=dict(rank=2)),
            task=types.SimpleNamespace(type="cls", num_labels=2))
        cfg = get_backbone_config("gpt2-tiny")
        cpu_gemm.probe_times = lambda shape, dtype: {"xla": 1.0, "onednn": 0.1}   # where auto would choose oneDNN
        for _ in range(2):
            model = make_model(view("auto"), cfg, use_lora=True, use_um=False, use_ema=False)
        assert model.cpu_matmul == "xla", model.cpu_matmul
        v = init_variables(model, jax.random.PRNGKey(0))
        out = model.apply(v, {"input_ids": jnp.ones((1, 4), jnp.int32)})
        assert bool(jnp.all(jnp.isfinite(out.logits)))
        try:
            make_model(view("onednn"), cfg, use_lora=True, use_um=False, use_ema=False)
        except RuntimeError as e:
            print("ERR", e)
    """)
    env = dict(os.environ, UMEMA_CPU_GEMM_DISABLE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notices = [ln for ln in proc.stderr.splitlines() if "model.cpu_matmul=auto uses XLA" in ln]
    assert len(notices) == 1, proc.stderr[-2000:]           # once per process, not per model
    assert "ERR model.cpu_matmul=onednn: oneDNN matmul unavailable (disabled by UMEMA_CPU_GEMM_DISABLE)" in proc.stdout


def test_auto_measures_once_per_host_and_shape_class_and_keeps_xla_on_a_tie(tmp_path, monkeypatch):
    """`auto` times both paths the first time a shape class is met, caches the choice, and prefers XLA
    (every published run's path) unless oneDNN is at least 5 % faster."""
    monkeypatch.setattr(cpu_gemm, "_cache_dir", lambda: str(tmp_path))
    monkeypatch.delenv("XLA_FLAGS", raising=False)                  # as a launch has it (the suite sets -O0)
    calls = []

    def fake(times):
        def probe(shape, dtype):
            calls.append((shape, dtype))
            return times
        return probe
    monkeypatch.setattr(cpu_gemm, "probe_times", fake({"xla": 1.0, "onednn": 0.97}))
    assert cpu_gemm.measured_choice((64, 256)) == "xla"              # 3 % faster: not enough
    assert cpu_gemm.measured_choice((64, 256)) == "xla" and len(calls) == 1   # cached
    monkeypatch.setattr(cpu_gemm, "probe_times", fake({"xla": 1.0, "onednn": 0.9}))
    assert cpu_gemm.measured_choice((64, 512)) == "onednn" and len(calls) == 2   # another shape class
    saved = json.load(open(tmp_path / "matmul_choice.json"))
    assert sorted(v["choice"] for v in saved.values()) == ["onednn", "xla"]
    # other XLA flags (the suite's -O0) time XLA differently: measured apart, never read by a launch
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
    monkeypatch.setattr(cpu_gemm, "probe_times", fake({"xla": 0.5, "onednn": 1.0}))
    assert cpu_gemm.measured_choice((64, 512)) == "xla" and len(calls) == 3
    monkeypatch.delenv("XLA_FLAGS")
    assert cpu_gemm.measured_choice((64, 512)) == "onednn" and len(calls) == 3


@pytest.mark.skipif(not cpu_gemm.available(), reason="oneDNN extension not built here")
def test_the_probe_times_both_paths():
    times = cpu_gemm.probe_times((64, 128), "float32", rounds=1, calls=1)
    assert set(times) == {"xla", "onednn"} and all(t > 0 for t in times.values())
