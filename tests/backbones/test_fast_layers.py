"""The hand-written attention backward and GELU derivative equal autodiff of the reference ops."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.backbones.layers import attention, attention_mask_4d, gelu_tanh


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_attention_matches_jax_dot_product_attention(heads, kv_heads):
    b, n, hd = 2, 7, 8
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(ks[0], (b, n, heads, hd))
    k = jax.random.normal(ks[1], (b, n, kv_heads, hd))
    v = jax.random.normal(ks[2], (b, n, kv_heads, hd))
    w = jax.random.normal(ks[3], (b, n, heads * hd))
    mask = attention_mask_4d(jnp.array([[1] * n, [0, 0] + [1] * (n - 2)]))   # right and left padding

    def ref(q, k, v):
        rep = heads // kv_heads
        out = jax.nn.dot_product_attention(q, jnp.repeat(k, rep, 2), jnp.repeat(v, rep, 2), mask=mask)
        return out.reshape(b, n, -1)

    def new(q, k, v):
        return attention(q, k, v, mask, jnp.float32)

    np.testing.assert_allclose(new(q, k, v), ref(q, k, v), atol=1e-6)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    g_new = jax.grad(lambda *a: jnp.sum(new(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(g_new, g_ref):
        np.testing.assert_allclose(a, r, atol=5e-6)


def test_attention_bf16_runs_and_is_close():
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    q, k, v = (jax.random.normal(kk, (1, 5, 2, 8)) for kk in ks)
    mask = attention_mask_4d(jnp.ones((1, 5), jnp.int32))
    hi = attention(q, k, v, mask, jnp.float32)
    lo = attention(q, k, v, mask, jnp.bfloat16)
    assert lo.dtype == jnp.bfloat16
    np.testing.assert_allclose(lo.astype(jnp.float32), hi, atol=5e-2)
    g = jax.grad(lambda q: jnp.sum(attention(q, k, v, mask, jnp.bfloat16).astype(jnp.float32)))(q)
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_gelu_tanh_value_and_derivative():
    x = jnp.linspace(-8.0, 8.0, 2001)
    ref = lambda t: jax.nn.gelu(t, approximate=True)
    np.testing.assert_array_equal(gelu_tanh(x), ref(x))
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_tanh))(x), jax.vmap(jax.grad(ref))(x), atol=5e-6)
    # second order still works (custom_jvp)
    assert np.isfinite(float(jax.grad(jax.grad(gelu_tanh))(0.3)))
