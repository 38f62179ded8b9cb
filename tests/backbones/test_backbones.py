"""Backbone modules: named configs, scan layout, masks/positions, hidden states, dtypes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.backbones import BackboneConfig, build_backbone, get_backbone_config, init_backbone_params
from umema_jax.backbones.layers import rope_inv_freq


def _n_params(cfg):
    init = functools.partial(build_backbone(cfg).init, compute_logits=True)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_named_configs_match_published_sizes():
    """Parameter counts of the real models pin every dimension (GPT-2 small 124,439,808; SmolLM2 134,515,008)."""
    assert _n_params(get_backbone_config("gpt2")) == 124_439_808
    assert _n_params(get_backbone_config("smollm2-135m")) == 134_515_008
    llama = get_backbone_config("llama3-8b")
    assert (llama.num_heads, llama.num_kv_heads, llama.vocab_size, llama.hidden_size, llama.num_layers,
            llama.intermediate_size, llama.rope_theta, llama.tie_word_embeddings) == \
        (32, 8, 128256, 4096, 32, 14336, 500000.0, False)
    assert _n_params(llama) == 8_030_261_248   # Meta-Llama-3-8B
    assert [get_backbone_config(n).hidden_size for n in ("gpt2-medium", "gpt2-large", "gpt2-xl")] == [1024, 1280, 1600]


@functools.lru_cache(maxsize=None)
def _setup(name, dtype=jnp.float32):
    """Tiny config with a small vocabulary, its params and ONE jitted forward for all checks (compiles are slow)."""
    cfg = get_backbone_config(name).replace(vocab_size=256)
    params = init_backbone_params(cfg, jax.random.PRNGKey(1))
    module = build_backbone(cfg, dtype=dtype)
    fwd = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask, output_hidden_states=True,
                                                    compute_logits=True))
    return cfg, params, module, fwd


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_scanned_params_and_single_scan(name):
    """Layer params are stacked on a leading axis and the forward holds one `scan`, no per-layer unrolling."""
    cfg, params, module, _ = _setup(name)
    block = params["h"] if cfg.arch == "gpt2" else params["layers"]
    assert all(x.shape[0] == cfg.num_layers for x in jax.tree_util.tree_leaves(block))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    jaxpr = jax.make_jaxpr(lambda p, i: module.apply({"params": p}, i).last_hidden_state)(
        params, jnp.ones((1, 4), jnp.int32))
    prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert prims.count("scan") == 1


SEQ = [11, 42, 7, 99, 5]
PAD = 3


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_padding_side_and_causality(name):
    """Left/right padding give the unpadded logits on real tokens; future tokens never leak backwards."""
    cfg, params, _, fwd = _setup(name)
    n = len(SEQ) + PAD
    ids = jnp.array([SEQ + [0] * PAD, [0] * PAD + SEQ], jnp.int32)
    mask = jnp.array([[1] * 5 + [0] * PAD, [0] * PAD + [1] * 5])
    out = fwd(params, ids, mask).logits
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1, PAD:], out[0, :5], atol=1e-5)
    # unpadded reference: the same sequence filling the row (different values after it are invisible)
    full = jnp.array([SEQ + [17, 18, 19], SEQ[:4] + [3, 17, 18, 19]], jnp.int32)
    ref = fwd(params, full, jnp.ones((2, n), jnp.int32)).logits
    np.testing.assert_allclose(out[0, :5], ref[0, :5], atol=1e-5)
    np.testing.assert_allclose(ref[1, :4], ref[0, :4], atol=1e-6)     # causal: changing token 4 ...
    assert np.abs(ref[1, 4] - ref[0, 4]).max() > 1e-4                 # ... only changes position >= 4


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_hidden_states_and_embeddings(name):
    """`hidden_states` is every layer's output [L,B,n,d]; the last one, normed, is `last_hidden_state`."""
    cfg, params, _, fwd = _setup(name)
    ids = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10], [7, 8, 0, 0, 0, 0, 0, 0]], jnp.int32)
    mask = jnp.array([[1] * 8, [1, 1] + [0] * 6])
    out = fwd(params, ids, mask)
    assert out.hidden_states.shape == (cfg.num_layers, 2, 8, cfg.hidden_size)
    assert out.logits.shape == (2, 8, cfg.vocab_size)
    if cfg.arch == "gpt2":
        pos = jnp.array([list(range(8)), [0, 1] + [1] * 6])
        emb = params["wte"]["embedding"][ids] + params["wpe"]["embedding"][pos]
        h = out.hidden_states[-1]
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        normed = (h - mu) / jnp.sqrt(var + cfg.norm_eps) * params["ln_f"]["scale"] + params["ln_f"]["bias"]
        table = params["wte"]["embedding"]
    else:
        emb = params["embed_tokens"]["embedding"][ids]
        h = out.hidden_states[-1]
        normed = h / jnp.sqrt((h * h).mean(-1, keepdims=True) + cfg.norm_eps) * params["norm"]["weight"]
        table = params["embed_tokens"]["embedding"]
    np.testing.assert_allclose(out.embeddings, emb, atol=1e-6)
    np.testing.assert_allclose(out.last_hidden_state, normed, atol=1e-4)
    np.testing.assert_allclose(out.logits, out.last_hidden_state @ table.T, atol=1e-4)   # tied head
    assert not np.allclose(out.hidden_states[0], out.hidden_states[1])


@pytest.mark.parametrize("name", ["llama-tiny"])   # one arch: bf16 CPU compiles are slow; Dense/norms are shared
def test_bf16_compute_keeps_fp32_params(name):
    """bf16 compute stays close to fp32 (loose tolerance) while params stay fp32."""
    _, params, _, fwd = _setup(name)
    _, _, _, fwd_bf = _setup(name, jnp.bfloat16)
    ids = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 2, jnp.int32)
    mask = jnp.ones_like(ids)
    f32 = np.asarray(fwd(params, ids, mask).logits)
    bf = fwd_bf(params, ids, mask)
    assert bf.last_hidden_state.dtype == jnp.bfloat16 and bf.logits.dtype == jnp.float32
    assert np.abs(np.asarray(bf.logits) - f32).max() < 0.05 * np.abs(f32).max() + 0.05


def test_llama3_rope_scaling_matches_reference_formula():
    """Long wavelengths are divided by `factor`, short ones kept, the band between interpolated."""
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    base = rope_inv_freq(128, 500000.0, None)
    scaled = rope_inv_freq(128, 500000.0, sc)
    wl = 2 * np.pi / base
    np.testing.assert_allclose(scaled[wl < 8192 / 4], base[wl < 8192 / 4])
    np.testing.assert_allclose(scaled[wl > 8192], base[wl > 8192] / 8, rtol=1e-6)
    mid = (wl >= 2048) & (wl <= 8192)
    assert mid.any() and np.all(scaled[mid] <= base[mid]) and np.all(scaled[mid] >= base[mid] / 8)


def test_from_hf_config_rejects_unsupported():
    with pytest.raises(ValueError, match="model_type 'bert'"):
        BackboneConfig.from_hf_config({"model_type": "bert"})
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        BackboneConfig.from_hf_config({"model_type": "llama", "vocab_size": 8, "hidden_size": 8,
                                       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
                                       "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
