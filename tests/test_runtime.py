"""`runtime.compiler_options` reach XLA through the project's jitted steps (CPU), and change no result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax import runtime
from umema_jax.train import sharding as shd
from umema_jax.train.step import jit_eval_step, jit_train_step


def _matmul_chain(state, frozen, batch):
    h = jnp.tanh(batch @ frozen)
    return state, {"y": h @ frozen.T}


def _fused_kinds(compiled) -> bool:
    return "ynn_fusion" in compiled.as_text()


def test_options_only_on_multicore_cpu():
    assert runtime.compiler_options("cpu", cores=2) == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert runtime.compiler_options("cpu", cores=1) is None          # slower on one core (NOTES.md)
    assert runtime.compiler_options("gpu", cores=8) is None and runtime.compiler_options("tpu") is None
    # callers may mutate what they get without changing the module's defaults
    runtime.compiler_options("cpu", cores=2).clear()
    assert runtime.compiler_options("cpu", cores=2)


@pytest.mark.skipif(runtime.host_cores() < 2, reason="the options apply on 2+ cores only")
def test_steps_are_compiled_with_the_options_and_give_the_same_numbers():
    mesh = shd.make_mesh(1, 1, jax.devices()[:1])
    rep = shd.replicated(mesh)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(256, 256)), jnp.float32) / 16
    state = jnp.zeros(())
    default = jax.jit(_matmul_chain).lower(state, w, x).compile()
    train = jit_train_step(_matmul_chain, rep, rep, rep, rep).lower(state, w, x).compile()
    evals = jit_eval_step(lambda s, f, b: _matmul_chain(s, f, b)[1], rep, rep, rep, rep).lower(state, w, x).compile()
    # XLA:CPU's default fuses these dots into YNNPACK fusions; the project's steps must not.
    assert _fused_kinds(default)
    assert not _fused_kinds(train) and not _fused_kinds(evals)
    want = default(state, w, x)[1]["y"]
    np.testing.assert_allclose(evals(state, w, x)["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(train(jnp.zeros(()), w, x)[1]["y"], want, rtol=1e-5, atol=1e-5)   # donates state
