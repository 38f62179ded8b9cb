"""LoRA: PEFT-like init (step 0 = pretrained), merge, no frozen-weight gradients, PEFT file format."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from umema_jax.adapters.lora import LoraConfig, init_lora, load_peft, merge_lora, save_peft
from umema_jax.backbones import build_backbone, get_backbone_config, init_backbone_params
from umema_jax.weights import load_backbone_weights

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "parity")
IDS = jnp.array([[5, 9, 17, 3, 8, 2, 0, 0], [7, 1, 4, 4, 6, 10, 11, 12]], jnp.int32)
MASK = jnp.array([[1] * 6 + [0] * 2, [1] * 8], jnp.int32)


@functools.lru_cache(maxsize=None)
def _tiny(name):
    cfg = get_backbone_config(name).replace(vocab_size=256)
    return cfg, init_backbone_params(cfg, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def _fwd(cfg, lcfg):
    m = build_backbone(cfg, lora=lcfg)
    return jax.jit(lambda variables: m.apply(variables, IDS, MASK, compute_logits=True).logits)


def _logits(cfg, lcfg, params, lora):
    variables = {"params": params} if lora is None else {"params": params, "lora": lora}
    return np.asarray(_fwd(cfg, lcfg)(variables))


def _randomize_b(lora, seed=3):
    leaves, tree = jax.tree_util.tree_flatten_with_path(lora)
    key = jax.random.PRNGKey(seed)
    out = [jax.random.normal(jax.random.fold_in(key, i), x.shape) * 0.3 if str(p[-1]).find("lora_b") >= 0 else x
           for i, (p, x) in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(tree, out)


def test_defaults_and_init_like_peft():
    cfg = LoraConfig()
    assert (cfg.rank, cfg.alpha, cfg.scale) == (8, 16.0, 2.0)
    assert LoraConfig(rank=32).alpha == 64.0
    bcfg, params = _tiny("gpt2-tiny")
    lora = init_lora(jax.random.PRNGKey(1), params, LoraConfig(rank=16), "gpt2")
    assert list(lora) == ["h"] and list(lora["h"]["attn"]) == ["c_attn"]
    a, b = lora["h"]["attn"]["c_attn"]["lora_a"], lora["h"]["attn"]["c_attn"]["lora_b"]
    assert a.shape == (2, 64, 16) and b.shape == (2, 16, 192) and not np.any(b)
    bound = 1 / np.sqrt(64)   # kaiming_uniform(a=sqrt(5)) on [r, in] -> U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    assert abs(float(np.std(a)) - bound / np.sqrt(3)) < 0.1 * bound
    llama_cfg, lparams = _tiny("llama-tiny")
    lora = init_lora(jax.random.PRNGKey(1), lparams, LoraConfig(), "llama")
    assert sorted(lora["layers"]["self_attn"]) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="matches no kernel"):
        init_lora(jax.random.PRNGKey(1), lparams, LoraConfig(target_regex="nonexistent"), "llama")


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_step0_equals_pretrained_and_merge_matches(name):
    cfg, params = _tiny(name)
    lcfg = LoraConfig(rank=4)
    lora = init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch)
    base = _logits(cfg, None, params, None)
    np.testing.assert_array_equal(_logits(cfg, lcfg, params, lora), base)
    lora = _randomize_b(lora)
    adapted = _logits(cfg, lcfg, params, lora)
    assert np.abs(adapted - base).max() > 1e-2
    merged = _logits(cfg, None, merge_lora(params, lora, lcfg), None)
    np.testing.assert_allclose(adapted, merged, atol=1e-4)


def test_lora_dropout_only_in_training_mode():
    """Dropout acts on the LoRA branch in training mode only (and needs a `dropout` rng)."""
    cfg, params = _tiny("llama-tiny")
    lcfg = LoraConfig(rank=4, dropout=0.5)
    lora = _randomize_b(init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch))
    m = build_backbone(cfg, lora=lcfg)
    both = jax.jit(lambda v, k: [m.apply(v, IDS, MASK, deterministic=d, compute_logits=True,
                                         rngs={"dropout": k}).logits for d in (True, False)])
    det, train = both({"params": params, "lora": lora}, jax.random.PRNGKey(0))
    _, train0 = both({"params": params, "lora": jax.tree_util.tree_map(jnp.zeros_like, lora)},
                     jax.random.PRNGKey(0))
    np.testing.assert_allclose(det, _logits(cfg, lcfg, params, lora), atol=1e-5)
    assert np.abs(np.asarray(train) - np.asarray(det)).max() > 1e-3
    np.testing.assert_allclose(train0, _logits(cfg, None, params, None), atol=1e-5)  # backbone has no dropout


def test_lora_variables_without_lora_config_raise():
    cfg, params = _tiny("gpt2-tiny")
    lora = init_lora(jax.random.PRNGKey(1), params, LoraConfig(), "gpt2")
    with pytest.raises(ValueError, match="without a LoraConfig"):
        _logits(cfg, None, params, lora)


def _dot_shapes(jaxpr):
    """Output shapes of every dot_general in a jaxpr, including scan/pjit/custom-vjp sub-jaxprs."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes += [tuple(v.aval.shape) for v in eqn.outvars]
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _dot_shapes(inner)
    return shapes


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_grad_wrt_lora_never_computes_frozen_weight_cotangents(name):
    """No dot_general in grad-w.r.t.-lora yields a frozen-kernel-shaped [in,out] array (neither dW nor A@B).

    The same inspection of grad w.r.t. the params finds them, so the check can fail."""
    cfg, params = _tiny(name)
    lcfg = LoraConfig(rank=8)
    lora = init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch)
    m = build_backbone(cfg, lora=lcfg)

    def loss(p, l):
        return m.apply({"params": p, "lora": l}, IDS, MASK, compute_logits=True).logits.mean()

    block = params["h"] if cfg.arch == "gpt2" else params["layers"]
    kernel_shapes = {tuple(x.shape[1:]) for path, x in jax.tree_util.tree_leaves_with_path(block)
                     if "kernel" in jax.tree_util.keystr(path)}
    kernel_shapes |= {s[::-1] for s in kernel_shapes}
    lora_jaxpr = jax.make_jaxpr(jax.grad(lambda l: loss(params, l)))(lora).jaxpr
    full_jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p, lora)))(params).jaxpr
    assert not kernel_shapes & set(_dot_shapes(lora_jaxpr))
    assert kernel_shapes & set(_dot_shapes(full_jaxpr))


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_peft_round_trip(tmp_path, name):
    cfg, params = _tiny(name)
    lcfg = LoraConfig(rank=4, alpha=12.0, dropout=0.05)
    lora = _randomize_b(init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch))
    save_peft(str(tmp_path), lora, lcfg, cfg.arch)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (conf["peft_type"], conf["task_type"], conf["r"], conf["lora_alpha"], conf["lora_dropout"]) == \
        ("LORA", "CAUSAL_LM", 4, 12.0, 0.05)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    if cfg.arch == "gpt2":
        assert conf["fan_in_fan_out"] is True and conf["target_modules"] == ["c_attn"]
        assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 64)
        assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (192, 4)
    else:
        assert conf["fan_in_fan_out"] is False and conf["target_modules"] == ["q_proj", "v_proj"]
        assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
        assert tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape == (32, 4)
    lora2, lcfg2 = load_peft(str(tmp_path))
    assert (lcfg2.rank, lcfg2.alpha, lcfg2.dropout) == (4, 12.0, 0.05)
    jax.tree_util.tree_map(np.testing.assert_array_equal, lora, lora2)
    np.testing.assert_array_equal(_logits(cfg, lcfg2, params, lora2), _logits(cfg, lcfg, params, lora))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_saved_by_hf_peft_reproduces_peft_logits(arch, tmp_path):
    """An adapter written by HF PEFT (fixture script) loads and gives PEFT's logits (max|diff| <= 1e-4);
    re-saving it with `save_peft` writes exactly PEFT's tensor names, shapes and values."""
    cfg, params = load_backbone_weights(os.path.join(FIX, arch))
    lora, lcfg = load_peft(os.path.join(FIX, arch, "peft"))
    ref = np.load(os.path.join(FIX, arch, "peft", "peft_reference.npz"))
    out = build_backbone(cfg, lora=lcfg).apply({"params": params, "lora": lora}, ref["input_ids"],
                                               ref["attention_mask"], compute_logits=True).logits
    diff = np.abs(np.where(ref["attention_mask"][..., None] > 0, np.asarray(out) - ref["logits"], 0)).max()
    print(f"{arch}: PEFT adapter parity max|diff|={diff:.2e}")
    assert diff <= 1e-4
    save_peft(str(tmp_path), lora, lcfg, arch)
    ours = load_file(str(tmp_path / "adapter_model.safetensors"))
    theirs = load_file(os.path.join(FIX, arch, "peft", "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k])
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    ref_conf = json.load(open(os.path.join(FIX, arch, "peft", "adapter_config.json")))
    for key in ("r", "lora_alpha", "target_modules", "fan_in_fan_out", "peft_type", "task_type"):
        assert conf[key] == ref_conf[key], key


def test_remat_gives_the_same_lora_gradient():
    """`build_backbone(..., remat=True)` only changes memory/compute, not the LoRA gradient."""
    cfg, params = _tiny("llama-tiny")
    lcfg = LoraConfig(rank=4)
    lora = _randomize_b(init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch))

    def grad_fn(module):
        return jax.grad(lambda l: module.apply({"params": params, "lora": l}, IDS, MASK).last_hidden_state[:, -1]
                        .sum())

    both = jax.jit(lambda l: (grad_fn(build_backbone(cfg, lora=lcfg))(l),
                              grad_fn(build_backbone(cfg, lora=lcfg, remat=True))(l)))
    g_plain, g_remat = both(lora)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_plain,
                           g_remat)
    assert np.abs(g_plain["layers"]["self_attn"]["q_proj"]["lora_a"]).max() > 0
    jaxpr = str(jax.make_jaxpr(grad_fn(build_backbone(cfg, lora=lcfg, remat=True)))(lora))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
