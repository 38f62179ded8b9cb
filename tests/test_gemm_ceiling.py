"""benchmarks/gemm_ceiling.py: its chain is the same program in any framework, and its FLOP count is XLA's."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gemm_ceiling.py")


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("gemm_ceiling", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _weights(rng, d, f, layers, std=0.2):
    shapes = dict(qkv=(d, 3 * d), o=(d, d), fc=(d, f), pr=(f, d))
    return [{k: rng.normal(0, std, s).astype(np.float32) for k, s in shapes.items()} for _ in range(layers)]


@pytest.mark.parametrize("attention", [False, True])
def test_chain_flops_match_xla_cost_analysis(ceiling, attention):
    batch, seq, d, f, layers, heads = 2, 8, 16, 32, 3, 4
    rng = np.random.default_rng(0)
    weights = jax.tree.map(jnp.asarray, _weights(rng, d, f, layers))
    x = jnp.asarray(rng.normal(size=(batch * seq, d)), jnp.float32)
    ops = dict(mm=jnp.matmul, einsum=jnp.einsum, cat=lambda p: jnp.concatenate(p, -1), t=jnp.transpose)
    compiled = jax.jit(ceiling.make_chain(ops, attention, batch, seq, heads)).lower(x, weights).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] == pytest.approx(ceiling.chain_flops(attention, batch, seq, d, f, layers), rel=1e-6)


def test_chain_is_the_same_program_in_numpy_and_jax(ceiling):
    batch, seq, d, f, layers, heads = 2, 8, 16, 32, 1, 4
    rng = np.random.default_rng(1)
    weights = _weights(rng, d, f, layers, std=0.15)   # no softmax in the chain: this std keeps values O(1-10)
    x = rng.normal(size=(batch * seq, d)).astype(np.float32)
    np_ops = dict(mm=np.matmul, einsum=np.einsum, cat=lambda p: np.concatenate(p, -1), t=np.transpose)
    jnp_ops = dict(mm=jnp.matmul, einsum=jnp.einsum, cat=lambda p: jnp.concatenate(p, -1), t=jnp.transpose)
    want = ceiling.make_chain(np_ops, True, batch, seq, heads)(x, weights)
    got = jax.jit(ceiling.make_chain(jnp_ops, True, batch, seq, heads))(jnp.asarray(x),
                                                                      jax.tree.map(jnp.asarray, weights))
    assert got.shape == (batch * seq, d) and 1.0 < float(np.abs(want).max()) < 1e3
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=1e-4 * float(np.abs(want).max()))
