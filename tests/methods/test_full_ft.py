"""Full fine-tuning (docs/METHODS.md): finite-difference gradients, a hand-written numpy AdamW step,
every leaf moving, the LM head excluded, the bf16 option."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.methods.helpers import flat, method_setup, random_batch
from umema_jax.model import count_params
from umema_jax.train.step import make_loss_fn


def test_gradient_matches_central_finite_differences_in_x64():
    with jax.enable_x64(True):
        s = method_setup("full_ft")
        trainable = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), s.trainable)
        model = s.model.clone(dtype=jnp.float64)
        batch = random_batch()
        loss_fn = make_loss_fn(model, "cls", s.method)
        loss = lambda t: loss_fn(t, {}, {}, batch, jax.random.PRNGKey(0), 4.0)[0]
        grads = flat(jax.jit(jax.grad(loss))(trainable))
        leaves = flat(trainable)
        loss_jit = jax.jit(loss)
        rng = np.random.default_rng(0)
        checked = 0
        for name, g in grads.items():
            g = np.asarray(g)
            # the largest-gradient coordinate plus 4 random ones (most embedding rows are unused: gradient 0)
            coords = [np.unravel_index(np.argmax(np.abs(g)), g.shape)] + \
                     [tuple(rng.integers(0, d) for d in g.shape) for _ in range(4)]
            for c in coords:
                h = 1e-6
                def shifted(delta):
                    t = dict(leaves)
                    t[name] = leaves[name].at[c].add(delta)
                    return jax.tree_util.tree_unflatten(jax.tree.structure(trainable), [t[k] for k in leaves])
                fd = (float(loss_jit(shifted(h))) - float(loss_jit(shifted(-h)))) / (2 * h)
                np.testing.assert_allclose(g[c], fd, rtol=1e-4, atol=1e-9, err_msg=f"{name}{c}")
                checked += 1
        assert checked == 5 * len(grads) and any(k.startswith("params/backbone/h/") for k in grads)


def test_two_steps_equal_numpy_adamw_with_clipping_bias_correction_and_decoupled_decay():
    s = method_setup("full_ft", **{"optim.grad_clip_norm": 0.05, "optim.weight_decay": 0.1, "optim.eps": 1e-4,
                                   "optim.learning_rate": 1e-3, "optim.warmup_ratio": 0.3})
    o = s.config.optim
    loss_fn = make_loss_fn(s.model, "cls", s.method)
    grad = jax.jit(lambda t, b: jax.grad(lambda t: loss_fn(t, s.frozen, {}, b, jax.random.PRNGKey(0), 4.0)[0])(t))
    step = jax.jit(s.step)
    state = s.state
    want = {k: np.asarray(v, np.float64) for k, v in flat(s.trainable).items()}
    m = {k: 0.0 for k in want}
    v = {k: 0.0 for k in want}
    for t in (1, 2):
        batch = random_batch(seed=t)
        g = {k: np.asarray(x, np.float64) for k, x in flat(grad(state.trainable, batch)).items()}
        state, metrics = step(state, s.frozen, batch)
        norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
        assert norm > o.grad_clip_norm                     # clipping is exercised
        np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)
        lr = float(s.schedule(t - 1))
        for k, p in want.items():
            gc = g[k] * min(1.0, o.grad_clip_norm / norm)
            m[k] = o.b1 * m[k] + (1 - o.b1) * gc
            v[k] = o.b2 * v[k] + (1 - o.b2) * gc ** 2
            u = (m[k] / (1 - o.b1 ** t)) / (np.sqrt(v[k] / (1 - o.b2 ** t)) + o.eps)
            # decay on matrices only: a scanned block's stacked bias/norm [L, d] is per-layer a vector
            per_layer_ndim = p.ndim - (1 if k.startswith("params/backbone/h/") else 0)
            want[k] = p - lr * (u + (o.weight_decay * p if per_layer_ndim >= 2 else 0.0))
        for k, x in flat(state.trainable).items():
            np.testing.assert_allclose(np.asarray(x), want[k], rtol=0, atol=1e-6, err_msg=f"step {t}: {k}")


def test_every_leaf_trains_and_the_lm_head_is_excluded():
    s = method_setup("full_ft")
    assert s.trainable["lora"] == {} and s.model.lora_cfg is None    # no adapter to train by accident
    assert s.frozen == {}
    new, _ = jax.jit(s.step)(s.state, s.frozen, random_batch())
    before, after = flat(s.trainable), flat(new.trainable)
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged, unchanged
    # LLaMA with an untied LM head (as loaded weights carry it): frozen, and not counted.
    s = method_setup("full_ft", model="llama-tiny")
    params = dict(s.variables["params"])
    cfg = s.backbone
    lm_head = {"kernel": jnp.zeros((cfg.hidden_size, cfg.vocab_size))}
    params["backbone"] = dict(params["backbone"], lm_head=lm_head)
    trained, frozen = s.method.split(params)
    assert frozen == {"backbone": {"lm_head": lm_head}}
    trainable = {"lora": {}, "params": trained}
    assert s.method.count_trainable(trainable) == \
        count_params(params["backbone"]) - count_params(lm_head) + count_params(params["head"])


def test_bf16_option_keeps_fp32_moments_and_rounds_the_fp32_update():
    s = method_setup("full_ft", **{"methods.full_ft.param_dtype": "bfloat16"})
    assert {x.dtype for x in jax.tree.leaves(s.trainable)} == {jnp.dtype(jnp.bfloat16)}
    adam = s.state.opt_state[1][0]
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.float32)}
    ref = method_setup("full_ft")
    batch = random_batch()
    new, m = jax.jit(s.step)(s.state, s.frozen, batch)
    assert int(m["finite"]) == 1
    assert {x.dtype for x in jax.tree.leaves(new.trainable)} == {jnp.dtype(jnp.bfloat16)}
    # From the same (bf16-representable) weights, the update is the fp32 one rounded once.
    start = jax.tree.map(lambda x: x.astype(jnp.float32), s.trainable)
    ref_new, _ = jax.jit(ref.step)(ref.state.replace(trainable=start), ref.frozen, batch)
    for (k, a), b in zip(flat(new.trainable).items(), jax.tree.leaves(ref_new.trainable)):
        err = np.abs(np.asarray(a, np.float32) - np.asarray(b))
        assert err.max() <= 2 ** -7 * np.abs(np.asarray(b)).max() + 1e-6, k
