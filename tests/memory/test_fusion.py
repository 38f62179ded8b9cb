"""EMA query/retrieval/gated fusion module (docs/METHOD.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.memory.bank import init_bank, write_bank
from umema_jax.memory.fusion import EMAConfig, MemoryFusion

D, DU = 16, 4
CFG = EMAConfig(slots=32, d_u=DU)


def _bank(written=10):
    """A 32-slot bank whose first `written` slots hold entries (the rest: Xavier noise, masked)."""
    bank = init_bank(jax.random.PRNGKey(0), 32, D)
    for row in np.random.RandomState(7).randn(written, D).astype(np.float32):
        bank = write_bank(bank, jnp.asarray(row))
    return bank


def _layer_norm(x):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def init_params():
    """One real init (jit: eager init compiles every initializer separately)."""
    c = jnp.zeros((3, D))
    return jax.jit(MemoryFusion(CFG).init)(jax.random.PRNGKey(3), c, _bank(), jnp.zeros((3, DU)),
                                           jnp.zeros((3,)))["params"]


def test_zero_init_residual_keeps_c_and_reports_top3(init_params):
    c = jax.random.normal(jax.random.PRNGKey(1), (3, D))
    m_u = jax.random.normal(jax.random.PRNGKey(2), (3, DU))
    variables = {"params": init_params}
    out = MemoryFusion(CFG).apply(variables, c, _bank(), m_u, jnp.full((3,), 0.4))
    np.testing.assert_array_equal(out.fused, c)
    assert not np.any(np.asarray(variables["params"]["retrieved_up"]["kernel"]))
    assert out.top_indices.shape == (3, 3) and out.top_weights.shape == (3, 3)
    alpha = np.asarray(out.attention)
    np.testing.assert_allclose(out.top_weights, -np.sort(-alpha, -1)[:, :3], rtol=1e-6)
    assert set(variables) == {"params"}  # the bank is an input, never a parameter of the module


def test_fusion_matches_formula_with_trained_weights(init_params):
    c = jax.random.normal(jax.random.PRNGKey(1), (2, D))
    m_u = jax.random.normal(jax.random.PRNGKey(2), (2, DU))
    u_bar = jnp.array([0.1, 0.7])
    module = MemoryFusion(CFG)
    params = jax.tree_util.tree_map(lambda x: x + 0.1, init_params)  # W_r ≠ 0, β ≠ 0
    out = module.apply({"params": params}, c, _bank(), m_u, u_bar)
    p = jax.tree_util.tree_map(np.asarray, params)
    # Independent reference: LayerNorm'd query inputs, cosine scores over the 10 written slots only.
    q = (_layer_norm(c) @ p["query_from_context"]["kernel"] + _layer_norm(m_u) @ p["query_from_um"]["kernel"]) \
        @ p["query_up"]["kernel"] + p["query_up"]["bias"]
    tau = 1.0 * (1 + np.log1p(np.exp(p["beta"])) * np.asarray(u_bar))
    keys = np.random.RandomState(7).randn(10, D)
    cos = (q / np.linalg.norm(q, axis=-1, keepdims=True)) @ (keys / np.linalg.norm(keys, axis=-1, keepdims=True)).T
    alpha = _softmax(CFG.retrieval_scale * cos / tau[:, None])
    r = alpha @ keys
    np.testing.assert_allclose(np.asarray(out.attention)[:, :10], alpha, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.attention)[:, 10:], 0.0)
    g = 1 / (1 + np.exp(-((np.asarray(c) @ p["gate_from_context"]["kernel"] + r @ p["gate_from_memory"]["kernel"])
                          @ p["gate_up"]["kernel"] + p["gate_up"]["bias"] + np.asarray(u_bar)[:, None] * p["gate_uncertainty"])))
    expected = np.asarray(c) + g * (r @ p["retrieved_down"]["kernel"] @ p["retrieved_up"]["kernel"])
    np.testing.assert_allclose(out.fused, expected, atol=1e-4)
    np.testing.assert_allclose(out.tau, tau, rtol=1e-5)
    ratio = np.linalg.norm(expected - np.asarray(c), axis=-1) / np.linalg.norm(np.asarray(c), axis=-1)
    np.testing.assert_allclose(out.update_ratio, ratio, rtol=1e-3)
    assert np.all(ratio > 0)


def test_query_norm_stops_a_large_m_u_from_taking_over_the_query(init_params):
    """a constant, growing M_U dominated the query; with query_norm its scale is irrelevant."""
    c = jax.random.normal(jax.random.PRNGKey(1), (2, D))
    m_u = jax.random.normal(jax.random.PRNGKey(2), (2, DU))
    params = jax.tree_util.tree_map(lambda x: x + 0.1, init_params)
    out1 = MemoryFusion(CFG).apply({"params": params}, c, _bank(), m_u, jnp.zeros((2,)))
    out100 = MemoryFusion(CFG).apply({"params": params}, c, _bank(), 100.0 * m_u, jnp.zeros((2,)))
    np.testing.assert_allclose(out100.attention, out1.attention, rtol=1e-4, atol=1e-6)
    raw = EMAConfig(slots=32, d_u=DU, query_norm=False)
    raw1 = MemoryFusion(raw).apply({"params": params}, c, _bank(), m_u, jnp.zeros((2,)))
    raw100 = MemoryFusion(raw).apply({"params": params}, c, _bank(), 100.0 * m_u, jnp.zeros((2,)))
    assert float(np.max(np.abs(np.asarray(raw100.attention) - np.asarray(raw1.attention)))) > 1e-3


def test_per_token_query_without_um(init_params):
    """NER: one query per token; ablation without UM has no M_U projection and ū = 0."""
    h = jax.random.normal(jax.random.PRNGKey(1), (2, 5, D))
    module = MemoryFusion(CFG)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(3), h, _bank())
    assert "query_from_um" not in shapes["params"] and "query_from_context" in shapes["params"]
    params = {k: v for k, v in init_params.items() if k != "query_from_um"}
    out = module.apply({"params": params}, h, _bank())
    assert out.fused.shape == (2, 5, D) and out.attention.shape == (2, 5, 32)
    assert out.top_indices.shape == (2, 5, 3)
    np.testing.assert_allclose(out.tau, 1.0)


def test_per_token_with_um_broadcasts_m_u(init_params):
    h = jax.random.normal(jax.random.PRNGKey(1), (2, 5, D))
    m_u = jax.random.normal(jax.random.PRNGKey(2), (2, DU))
    params = jax.tree_util.tree_map(lambda x: x + 0.1, init_params)
    out = MemoryFusion(CFG).apply({"params": params}, h, _bank(), m_u, jnp.zeros((2, 5)))
    assert out.fused.shape == (2, 5, D)
    # token i of row b uses M_U of row b: row 0 alone gives the same result
    alone = MemoryFusion(CFG).apply({"params": params}, h[:1], _bank(), m_u[:1], jnp.zeros((1, 5)))
    np.testing.assert_allclose(alone.fused, out.fused[:1], atol=1e-5)
