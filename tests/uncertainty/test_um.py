"""UM branch (docs/METHOD.md) on random arrays: formulas against numpy references, masks, monotonic T."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.uncertainty.um import (UMConfig, UncertaintyModule, calibration_temperature, causal_mixing_weights,
                                      confidence_weighted_mean, last_valid_token, masked_mean,
                                      straight_through_quantize)

B, N, D, L = 3, 7, 16, 4
CFG = UMConfig(d_u=8, quant_levels=8, num_tasks=2)


def temperature_input_np(m_u):
    """What `w_T` reads under CFG (the default): M_U's direction ('unit') or M_U itself ('raw')."""
    m_u = np.asarray(m_u, np.float64)
    return m_u / np.sqrt((m_u ** 2).sum(-1, keepdims=True) + 1e-12) if CFG.temperature_input == "unit" else m_u


def _inputs(seed=0):
    r = np.random.RandomState(seed)
    emb = r.randn(B, N, D).astype(np.float32)
    hs = r.randn(L, B, N, D).astype(np.float32) * 3.0
    last = r.randn(B, N, D).astype(np.float32)
    mask = np.ones((B, N), np.int32)
    mask[1, 4:] = 0   # right padding
    mask[2, :2] = 0   # left padding
    task = np.array([0, 1, 1], np.int32)
    return emb, hs, last, mask, task


def _randomise(params, seed=1):
    """Non-zero w_u, w_λ, γ so every path is exercised (they start at zero)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def setup():
    emb, hs, last, mask, task = _inputs()
    module = UncertaintyModule(CFG, pooling="mean")
    init_params = jax.jit(module.init)(jax.random.PRNGKey(0), emb, hs, last, mask, task)["params"]
    params = _randomise(init_params)
    apply = jax.jit(lambda p, *a: module.apply({"params": p}, *a))
    return module, params, apply, (emb, hs, last, mask, task), init_params


def _ln(x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def test_straight_through_quantizer_values_and_gradient():
    u = jnp.array([0.0, 0.06, 0.07, 0.5, 0.93, 1.0])
    q = straight_through_quantize(u, 8)
    np.testing.assert_allclose(q, np.round(np.asarray(u) * 8) / 8, atol=1e-7)
    g = jax.grad(lambda x: jnp.sum(straight_through_quantize(x, 8) * jnp.arange(6.0)))(u)
    np.testing.assert_allclose(g, np.arange(6.0))


def test_propagation_and_decomposition_match_numpy_reference(setup):
    module, params, apply, (emb, hs, last, mask, task), _ = setup
    out = apply(params, emb, hs, last, mask, task)
    p = jax.tree_util.tree_map(np.asarray, params)
    m = mask.astype(np.float64)
    u, q, lam = np.asarray(out.confidence), np.asarray(out.quantized), np.asarray(out.importance)
    # importance: softmax over valid tokens only
    np.testing.assert_allclose(lam.sum(-1), 1.0, rtol=1e-5)
    assert np.all(lam[mask == 0] == 0) and np.all(u[mask == 0] == 0)
    rho = 1 / (1 + np.exp(-p["rho_logit"]))
    U = (1 - q) * m
    layers = []
    for l in range(L):
        hn = _ln(hs[l].astype(np.float64))
        a = 1 / (1 + np.exp(-(hn @ p["layer_w"][l] + p["layer_b"][l])))
        qs, ks = hn @ p["mix_query"], hn @ p["mix_key"]
        new = np.zeros_like(U)
        for b in range(B):
            for i in range(N):
                if not m[b, i]:
                    continue
                js = [j for j in range(i + 1) if m[b, j]]
                s = np.array([qs[b, i] @ ks[b, j] for j in js]) / np.sqrt(CFG.d_u)
                w = np.exp(s - s.max()); w /= w.sum()
                new[b, i] = (1 - rho) * (w @ U[b, js]) + rho * a[b, i]
        U = new
        layers.append(U)
    layers = np.stack(layers)
    np.testing.assert_allclose(out.layer_uncertainty, layers, atol=1e-5)
    mu = (lam * U).sum(-1)
    s = np.sqrt((lam * (U - mu[:, None]) ** 2).sum(-1) + CFG.spread_eps)
    ale = (lam * (q * (1 - q) + np.abs(u - q))).sum(-1)
    var_l = layers.var(0)
    epi = s + (var_l * m).sum(-1) / m.sum(-1)
    np.testing.assert_allclose(out.mu_u, mu, atol=1e-5)
    np.testing.assert_allclose(out.u_ale, ale, atol=1e-5)
    np.testing.assert_allclose(out.u_epi, epi, atol=1e-5)
    np.testing.assert_allclose(out.u_bar, ale + epi, atol=1e-5)
    tok_bar = (q * (1 - q) + np.abs(u - q) + np.abs(U - mu[:, None]) + var_l) * m
    np.testing.assert_allclose(out.token_u_bar, tok_bar, atol=1e-5)
    # confidence-weighted mean pooling c = Σ λ q h / Σ λ q
    w = lam * q
    c = (w[..., None] * last).sum(1) / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.representation, c, atol=1e-4)


def test_guidance_confidence_importance_and_temperature_match_numpy(setup):
    """E, u, q, λ, M_U and T recomputed from the parameters alone (nothing taken from the module)."""
    module, params, apply, (emb, hs, last, mask, task), _ = setup
    out = apply(params, emb, hs, last, mask, task)
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    m = mask.astype(np.float64)
    dense = lambda name, x: x @ p[name]["kernel"] + p[name]["bias"] if "bias" in p[name] else x @ p[name]["kernel"]
    ln = lambda name, x, eps=1e-6: _ln(x, eps) * p[name]["scale"] + p[name]["bias"]
    kd = (emb * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    ks = np.where(m[..., None] > 0, emb, -np.inf).max(1)
    kt = p["task_embedding"][task]
    kp = np.broadcast_to(p["prior"], (B, CFG.d_u))
    e = ln("guidance_norm", dense("W_f", np.concatenate(
        [dense("W_d", kd), dense("W_t", kt), dense("W_s", ks), dense("W_p", kp)], -1)))
    hn = ln("token_norm", last.astype(np.float64))
    feat = np.tanh(dense("W_h", hn) + (e @ p["W_e"]["kernel"])[:, None])
    u = 1 / (1 + np.exp(-dense("w_u", feat)[..., 0]))
    q = np.round(u * CFG.quant_levels) / CFG.quant_levels
    z = np.where(m > 0, dense("w_lambda", hn)[..., 0], -np.inf)
    lam = np.exp(z - z.max(-1, keepdims=True))
    lam /= lam.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.guidance, e, atol=1e-4)
    np.testing.assert_allclose(out.confidence, u * m, atol=1e-5)
    np.testing.assert_allclose(out.quantized, q * m, atol=1e-6)
    np.testing.assert_allclose(out.importance, lam, atol=1e-5)
    m_u = dense("W_m", np.concatenate([np.asarray(out.mu_u)[:, None], np.asarray(out.s_u)[:, None], e], -1))
    np.testing.assert_allclose(out.memory_embedding, m_u, atol=1e-4)
    sp = lambda x: np.log1p(np.exp(x))
    raw = sp(dense("w_T", temperature_input_np(m_u))[:, 0]) + sp(p["kappa"]) * np.asarray(out.u_bar)
    span = CFG.temperature_max - 1
    np.testing.assert_allclose(out.temperature, 1 + span * np.tanh(raw / span), rtol=1e-5)


def test_propagation_program_does_not_grow_with_depth():
    """Propagation is one scan over layers, not a Python loop: the traced program has the same
    number of equations for 2 and for 12 layers."""
    sizes = []
    for layers in (2, 12):
        r = np.random.RandomState(0)
        args = (r.randn(2, 5, D).astype(np.float32), r.randn(layers, 2, 5, D).astype(np.float32),
                r.randn(2, 5, D).astype(np.float32), np.ones((2, 5), np.int32), np.zeros(2, np.int32))
        module = UncertaintyModule(CFG)
        params = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
        params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
        jaxpr = jax.make_jaxpr(lambda p: module.apply({"params": p}, *args))(params)
        sizes.append(len(str(jaxpr).splitlines()))
    assert sizes[0] == sizes[1], sizes


def test_padding_never_contributes(setup):
    module, params, apply, (emb, hs, last, mask, task), _ = setup
    out = apply(params, emb, hs, last, mask, task)
    pad = (mask == 0)
    r = np.random.RandomState(5)
    emb2, last2, hs2 = emb.copy(), last.copy(), hs.copy()
    emb2[pad] = r.randn(pad.sum(), D) * 50
    last2[pad] = r.randn(pad.sum(), D) * 50
    hs2[:, pad] = r.randn(L, pad.sum(), D) * 50
    out2 = apply(params, emb2, hs2, last2, mask, task)
    for name in ("u_ale", "u_epi", "u_bar", "temperature", "memory_embedding", "representation"):
        np.testing.assert_allclose(getattr(out, name), getattr(out2, name), atol=1e-5, err_msg=name)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.token_u_bar)[valid], np.asarray(out2.token_u_bar)[valid], atol=1e-5)
    assert np.all(np.asarray(out.token_temperature)[~valid] == 1.0)
    assert np.all(np.asarray(out.token_u_bar)[~valid] == 0.0)


def test_temperature_grows_with_uncertainty(setup):
    module, params, apply, args, _ = setup
    us = jnp.linspace(0.0, 2.0, 21)
    t = calibration_temperature(jnp.float32(0.3), jnp.float32(-1.0), us)
    assert np.all(np.diff(np.asarray(t)) > 0) and np.all(np.asarray(t) > 1.0)
    # In the module: T − (1 + softplus(w_T·M_U + b_T)) = softplus(κ)·ū, for sequences and tokens.
    out = apply(params, *args)
    base = temperature_input_np(np.asarray(out.memory_embedding)) @ np.asarray(params["w_T"]["kernel"])[:, 0] \
        + np.asarray(params["w_T"]["bias"])[0]
    sp = lambda x: np.log1p(np.exp(x))
    raw = sp(base) + sp(np.asarray(params["kappa"])) * np.asarray(out.u_bar)
    span = CFG.temperature_max - 1
    np.testing.assert_allclose(out.temperature, 1 + span * np.tanh(raw / span), rtol=1e-5)
    # In the module, with w_T = 0 (T depends on the input through ū alone), T orders the
    # examples exactly as ū does.
    flat = dict(params, w_T={"kernel": jnp.zeros_like(params["w_T"]["kernel"]), "bias": params["w_T"]["bias"]},
                kappa=jnp.float32(1.0))
    out = apply(flat, *args)
    assert len(set(np.round(np.asarray(out.u_bar), 6))) == B
    np.testing.assert_array_equal(np.argsort(out.temperature), np.argsort(out.u_bar))


def test_token_level_shapes_and_layer_subset():
    emb, hs, last, mask, task = _inputs()
    cfg = UMConfig(d_u=8, layers=(0, -1))
    module = UncertaintyModule(cfg, pooling="token")
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), emb, hs, last, mask, task)["params"]
    assert shapes["layer_w"].shape == (2, D)
    params = _randomise(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    out = module.apply({"params": params}, emb, hs, last, mask, task)
    assert out.layer_uncertainty.shape == (2, B, N)
    for name in ("token_u_ale", "token_u_epi", "token_u_bar", "token_temperature"):
        assert getattr(out, name).shape == (B, N), name
    assert out.representation.shape == (B, N, D)
    assert out.temperature.shape == (B,) and out.memory_embedding.shape == (B, 8)
    # only layers 0 and L-1 are read: changing another layer changes nothing
    hs2 = hs.copy()
    hs2[1] += 5.0
    np.testing.assert_array_equal(module.apply({"params": params}, emb, hs2, last, mask, task).u_bar, out.u_bar)


def test_init_weighting_is_identity(setup):
    """At init w_u = w_λ = γ = 0: q ≡ 1/2, λ uniform, so pooling equals plain pooling."""
    _, _, _, (emb, hs, last, mask, task), init_params = setup
    for name in ("w_u", "w_lambda"):
        assert not np.any(np.asarray(init_params[name]["kernel"]))
    assert float(init_params["gamma"]) == 0.0
    for pooling, ref in (("mean", masked_mean(jnp.asarray(last), jnp.asarray(mask, jnp.float32))),
                         ("last", last_valid_token(jnp.asarray(last), jnp.asarray(mask))),
                         ("token", jnp.asarray(last))):
        module = UncertaintyModule(CFG, pooling=pooling)
        out = module.apply({"params": init_params}, emb, hs, last, mask, task)
        np.testing.assert_allclose(out.representation, ref, atol=1e-5, err_msg=pooling)
        np.testing.assert_allclose(np.asarray(out.quantized)[mask == 1], 0.5)
        assert np.all((np.asarray(out.temperature) > 1.0) & (np.asarray(out.temperature) < 1.1))


def test_last_valid_token_left_and_right_padding():
    h = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_allclose(last_valid_token(h, mask)[:, 0], [1.0, 7.0])


def test_causal_mixing_rows_are_causal_and_masked():
    r = np.random.RandomState(0)
    qk = jnp.asarray(r.randn(1, 5, 4), jnp.float32)
    mask = jnp.array([[1, 1, 0, 1, 0]])
    p = np.asarray(causal_mixing_weights(qk, qk, mask))[0]
    assert np.allclose(np.triu(p, 1), 0)
    assert np.allclose(p[:, [2, 4]], 0) and np.allclose(p[[2, 4]], 0)
    np.testing.assert_allclose(p[[0, 1, 3]].sum(-1), 1.0, rtol=1e-6)


def test_confidence_weighted_mean_prefers_confident_tokens():
    h = jnp.array([[[1.0], [10.0]]])
    c = confidence_weighted_mean(h, jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]]), jnp.ones((1, 2)))
    np.testing.assert_allclose(c, [[1.0]])


def test_error_correlation_is_the_masked_pearson_correlation_and_trains_only_u_bar():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from umema_jax.uncertainty.um import UMConfig, error_correlation
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4, 6)).astype(np.float32)
    logits = rng.normal(size=(4, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(4, 6))
    mask = (rng.random((4, 6)) > 0.3).astype(np.float32)
    labels = np.where(mask > 0, labels, -100)                     # NER sub-tokens carry -100
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keep = mask > 0
    t = 1 - np.take_along_axis(p, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    expected = np.corrcoef(u[keep], t[keep])[0, 1]
    got = error_correlation(jnp.asarray(u), jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    assert float(got) == pytest.approx(expected, abs=1e-5)
    d_logits = jax.grad(lambda z: error_correlation(jnp.asarray(u), z, jnp.asarray(labels), jnp.asarray(mask)))(
        jnp.asarray(logits))
    assert float(jnp.abs(d_logits).max()) == 0.0                  # the target 1 - p_y is a constant
    assert UMConfig().aux_loss(None, None, None) is None           # default: the paper's objective, no term

    out = type("Out", (), {"aux": {"u_bar": jnp.asarray(u)}, "logits": jnp.asarray(logits)})()
    loss, metrics = UMConfig(error_weight=0.5).aux_loss(out, jnp.asarray(labels), jnp.asarray(mask))
    assert float(loss) == pytest.approx(0.5 * (1 - expected), abs=1e-5)
    assert float(metrics["um_error_corr"]) == pytest.approx(expected, abs=1e-5)
