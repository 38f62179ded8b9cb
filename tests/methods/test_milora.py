"""MiLoRA (docs/METHODS.md) against independent references: a numpy router driving plain LoRA, one example
at a time; the adapter-free backbone; padding; gradients of unchosen experts; the balance loss in numpy."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from umema_jax.adapters.lora import LoraConfig, experts, init_lora
from umema_jax.backbones import build_backbone, get_backbone_config, init_backbone_params
from umema_jax.methods.milora import MiLoRA, expert_regex, usage_and_balance

IDS = np.array([[5, 9, 17, 3, 8, 2, 0, 0], [7, 1, 4, 4, 6, 10, 11, 12], [3, 3, 9, 0, 0, 0, 0, 0]], np.int32)
MASK = np.array([[1] * 6 + [0] * 2, [1] * 8, [1] * 3 + [0] * 5], np.int32)


@functools.lru_cache(maxsize=None)
def _setup(name="gpt2-tiny", top_k=2, seed=0):
    cfg = get_backbone_config(name).replace(vocab_size=64)
    params = init_backbone_params(cfg, jax.random.PRNGKey(seed))
    lcfg = LoraConfig(rank=4, target_regex=expert_regex(cfg.arch), route_top_k=top_k)
    lora = init_lora(jax.random.PRNGKey(1), params, lcfg, cfg.arch)
    key = jax.random.PRNGKey(2)
    # B != 0 and a router strong enough that the choice differs between examples and layers
    leaves, tree = jax.tree_util.tree_flatten_with_path(lora)
    leaves = [jax.random.normal(jax.random.fold_in(key, i), x.shape) * (2.0 if "router" in str(p) else 0.3)
              if ("lora_b" in str(p) or "router" in str(p)) else x for i, (p, x) in enumerate(leaves)]
    return cfg, params, lcfg, jax.tree_util.tree_unflatten(tree, leaves)


@functools.lru_cache(maxsize=None)
def _forward(cfg, lcfg, hidden):
    model = build_backbone(cfg, lora=lcfg)
    return jax.jit(lambda variables, ids, mask: model.apply(variables, ids, mask, output_hidden_states=hidden))


def _apply(cfg, lcfg, params, lora, ids, mask, hidden=False):
    variables = {"params": params} if lora is None else {"params": params, "lora": lora}
    return _forward(cfg, lcfg, hidden)(variables, jnp.asarray(ids), jnp.asarray(mask))


def _np_route(h_last, kernel, k):
    g = 0.5 * h_last * (1 + erf(h_last / np.sqrt(2)))
    z = g @ kernel
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    gates = np.zeros_like(p)
    top = np.argsort(-p, kind="stable")[:k]
    gates[top] = p[top] / (p[top].sum() if k > 1 else 1.0)
    return gates


def _reference(cfg, params, lcfg, lora, row):
    """Example `row` alone through *plain* LoRA (no router), its B factors scaled by gates that a numpy
    router computes layer by layer from the plain model's own hidden states."""
    plain = dataclasses.replace(lcfg, route_top_k=0)
    scope = "h" if cfg.arch == "gpt2" else "layers"
    kernel = np.asarray(lora[scope]["router"]["kernel"], np.float64)
    names = experts(cfg.arch)
    L, M = kernel.shape[0], kernel.shape[-1]
    gates = np.zeros((L, M))
    ids, mask = IDS[row:row + 1], MASK[row:row + 1]
    last = int(mask[0].sum()) - 1

    def scaled():
        out = {k: v for k, v in lora[scope].items() if k != "router"}
        out = jax.tree.map(lambda x: x, out)
        for m, e in enumerate(names):
            group, name = e.split("/")
            b = out[group][name]["lora_b"]
            out[group][name] = dict(out[group][name], lora_b=b * jnp.asarray(gates[:, m], b.dtype)[:, None, None])
        return {scope: out}

    for layer in range(L):
        o = _apply(cfg, plain, params, scaled(), ids, mask, hidden=True)
        h_in = o.embeddings if layer == 0 else o.hidden_states[layer - 1]
        gates[layer] = _np_route(np.asarray(h_in, np.float64)[0, last], kernel[layer], lcfg.route_top_k)
    return _apply(cfg, plain, params, scaled(), ids, mask).last_hidden_state[0], gates


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_mixture_equals_numpy_router_driving_plain_lora_per_example(name):
    cfg, params, lcfg, lora = _setup(name)
    out = _apply(cfg, lcfg, params, lora, IDS, MASK)
    routing = jax.tree.map(np.asarray, out.routing)
    for row in range(len(IDS)):
        ref_h, ref_gates = _reference(cfg, params, lcfg, lora, row)
        np.testing.assert_allclose(routing["gates"][:, row], ref_gates, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out.last_hidden_state[row]), np.asarray(ref_h), rtol=1e-4, atol=1e-5)
    # exactly K nonzero gates per (layer, example): the chosen probabilities renormalised to sum to 1
    assert ((routing["gates"] > 0).sum(-1) == lcfg.route_top_k).all()
    chosen = routing["probs"] * routing["selected"]
    np.testing.assert_allclose(routing["gates"], chosen / chosen.sum(-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(routing["gates"].sum(-1), 1.0, rtol=1e-6)
    # the choice differs somewhere (else the test could not see a mixed-up example or layer)
    sel = routing["selected"]
    assert len({tuple(s) for s in sel.reshape(-1, sel.shape[-1])}) > 1


def test_zero_b_equals_adapter_free_backbone_for_any_router():
    cfg, params, lcfg, lora = _setup()
    zero_b = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if "lora_b" in str(p) else x, lora)
    with_router = _apply(cfg, lcfg, params, zero_b, IDS, MASK).last_hidden_state
    bare = _apply(cfg, None, params, None, IDS, MASK).last_hidden_state
    np.testing.assert_array_equal(np.asarray(with_router), np.asarray(bare))


def test_all_experts_with_uniform_router_equals_lora_on_every_module_scaled():
    """K = M and W_r = 0: every gate is exactly 1/M, i.e. plain LoRA on all modules with B/M."""
    cfg, params, lcfg, lora = _setup(top_k=4)
    lora = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if "router" in str(p) else x, lora)
    routed = _apply(cfg, lcfg, params, lora, IDS, MASK)
    assert np.all(np.asarray(routed.routing["gates"]) == 0.25)
    plain = {"h": {k: v for k, v in lora["h"].items() if k != "router"}}
    plain = jax.tree_util.tree_map_with_path(lambda p, x: x / 4 if "lora_b" in str(p) else x, plain)
    ref = _apply(cfg, dataclasses.replace(lcfg, route_top_k=0), params, plain, IDS, MASK)
    np.testing.assert_allclose(np.asarray(routed.last_hidden_state), np.asarray(ref.last_hidden_state),
                               rtol=1e-5, atol=1e-6)


def test_appended_padding_leaves_gates_and_outputs_unchanged():
    cfg, params, lcfg, lora = _setup()
    short = _apply(cfg, lcfg, params, lora, IDS, MASK)
    pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], 8), x.dtype)], axis=1)
    long = _apply(cfg, lcfg, params, lora, pad(IDS), pad(MASK))
    np.testing.assert_allclose(np.asarray(long.routing["gates"]), np.asarray(short.routing["gates"]), atol=1e-6)
    for row, n in enumerate(MASK.sum(1)):
        np.testing.assert_allclose(np.asarray(long.last_hidden_state[row, :n]),
                                   np.asarray(short.last_hidden_state[row, :n]), rtol=1e-5, atol=1e-5)


def test_unchosen_experts_get_zero_gradient_and_the_router_a_nonzero_one():
    cfg, params, lcfg, lora = _setup()
    ids, mask = IDS[:1], MASK[:1]                 # one example: M - K experts per layer are never chosen

    def loss(lora):
        out = _apply(cfg, lcfg, params, lora, ids, mask)
        return jnp.sum(out.last_hidden_state[0, int(mask.sum()) - 1] ** 2), out.routing["selected"]
    grads, selected = jax.grad(loss, has_aux=True)(lora)
    selected = np.asarray(selected)[:, 0]          # [L, M]
    for m, e in enumerate(experts(cfg.arch)):
        group, name = e.split("/")
        for leaf in ("lora_a", "lora_b"):
            g = np.asarray(grads["h"][group][name][leaf])
            for layer in range(g.shape[0]):
                assert bool(np.any(g[layer] != 0)) == bool(selected[layer, m]), (e, leaf, layer)
    router = np.asarray(grads["h"]["router"]["kernel"])
    assert np.all(np.abs(router).sum(axis=(1, 2)) > 0)


def test_balance_loss_and_usage_match_numpy():
    rng = np.random.default_rng(0)
    L, B, M, K = 3, 5, 4, 2
    logits = rng.standard_normal((L, B, M))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    selected = np.zeros_like(probs)
    for l in range(L):
        for b in range(B):
            selected[l, b, np.argsort(-probs[l, b])[:K]] = 1
    rows = np.array([1, 1, 1, 0, 1])
    f, bal = usage_and_balance(jnp.asarray(selected, jnp.float32), jnp.asarray(probs, jnp.float32), jnp.asarray(rows))
    real = rows == 1
    ref_f = selected[:, real].mean(1)
    ref = np.mean([M * np.sum(ref_f[l] * probs[l, real].mean(0)) for l in range(L)])
    np.testing.assert_allclose(np.asarray(f), ref_f, rtol=1e-6)
    np.testing.assert_allclose(float(bal), ref, rtol=1e-6)


def test_config_errors_name_the_key():
    import ml_collections
    from configs.smoke import get_config
    from umema_jax import methods
    from umema_jax.train.assemble import model_config_view
    c = get_config()
    c.model.method, c.model.lora.target_regex = "milora", "c_attn"
    with pytest.raises(ValueError, match="model.lora.target_regex='c_attn': milora puts an expert"):
        methods.from_config(c).make_model(model_config_view(c, "cls", 2), get_backbone_config("gpt2-tiny"))
    with pytest.raises(ValueError, match="methods.milora.top_k"):
        MiLoRA.validate(ml_collections.ConfigDict({"top_k": 0, "balance_weight": 0.01}))
    with pytest.raises(ValueError, match="methods.milora.balance_weight"):
        MiLoRA.validate(ml_collections.ConfigDict({"top_k": 2, "balance_weight": -1.0}))
