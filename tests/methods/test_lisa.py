"""LISA: bitwise-frozen blocks under weight decay, the resample schedule, uniform draws, a fresh AdamW over
the gathered active slices as reference, each block's AdamW state kept across draws (a numpy per-block
AdamW as reference), no recompilation, resume."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.methods.helpers import flat, method_setup, random_batch
from tests.train.standins import killed_after
from umema_jax import methods
from umema_jax.backbones.config import get_backbone_config
from umema_jax.methods.lisa import block_adam_state, sample_layers

L, GAMMA, K = 8, 2, 2
BODY = "params/backbone/h/"


def _setup(form="simple", total_steps=3 * K, **overrides):
    cfg = dataclasses.replace(get_backbone_config("gpt2-tiny"), num_layers=L)
    # eps 1e-4: the reference below takes gradients from another XLA program; they differ by float
    # rounding, which Adam's first steps amplify to ~lr where |g| ~ eps (a larger eps keeps that < 1e-6)
    opts = {"methods.lisa.gamma": GAMMA, "methods.lisa.interval_steps": K, "optim.weight_decay": 0.1,
            "optim.warmup_ratio": 0.0, "optim.learning_rate": 1e-3, "optim.grad_clip_norm": 0.05,
            "optim.eps": 1e-4, "methods.lisa.form": form, **overrides}
    return method_setup("lisa", backbone_cfg=cfg, total_steps=total_steps, **opts)


def _run(form):
    """3K steps in the loop's order (controller.before_step, then the one jitted step), traces counted."""
    s = _setup(form)
    traces = []

    def counted(*args):
        traces.append(1)
        return s.step(*args)

    step_fn = jax.jit(counted)
    ctrl = s.method.controller(3 * K, 3 * K)
    state, frozen, states, masks = s.state, s.frozen, [s.state], []
    for t in range(3 * K):
        state, frozen = ctrl.before_step(t, state, frozen)
        masks.append(np.asarray(state.extra["layer_mask"]))
        state, m = step_fn(state, frozen, random_batch(seed=t))
        assert int(m["finite"]) == 1
        states.append(state)
    return types.SimpleNamespace(s=s, states=states, masks=masks, ctrl=ctrl, traces=traces, step_fn=step_fn)


@pytest.fixture(scope="module")
def run():
    return _run("simple")


@pytest.fixture(scope="module")
def run_efficient():
    return _run("efficient")


def test_efficient_form_trains_gamma_slots_and_equals_the_simple_form(run, run_efficient):
    """The efficient form (γ slots trained, all L blocks in extra['body']) takes the same steps as the simple
    form: same draws, same embeddings / norm / head and the same L blocks after every step (the slots
    written back), with gradients and AdamW moments over γ blocks only."""
    eff, simple = run_efficient, run
    assert [m.tolist() for m in eff.masks] == [m.tolist() for m in simple.masks]
    slots = flat(eff.s.state.trainable)
    assert all(x.shape[0] == GAMMA for k, x in slots.items() if k.startswith("layer_slots/"))
    assert not any(k.startswith(BODY) for k in slots)                      # the body is not trained as a tree
    mu = block_adam_state(eff.states[1].opt_state).mu
    assert {x.shape[0] for x in jax.tree.leaves(mu)} == {GAMMA}            # live moments: γ blocks, not L
    assert eff.s.method.count_trainable(eff.s.state.trainable) == \
        simple.s.method.count_trainable(simple.s.state.trainable)
    for t in range(1, len(simple.states)):
        a, b = simple.states[t], eff.states[t]
        body_a = flat(simple.s.method.final_body(a))
        body_b = flat(eff.s.method.final_body(b))
        for k in body_a:
            np.testing.assert_allclose(np.asarray(body_b[k]), np.asarray(body_a[k]), rtol=0, atol=2e-6,
                                       err_msg=f"step {t}: block {k}")
        other_a, other_b = flat(a.trainable["params"]), flat(b.trainable["params"])
        assert set(other_b) == {k for k in other_a if not k.startswith("backbone/h/")}
        for k in other_b:
            np.testing.assert_allclose(np.asarray(other_b[k]), np.asarray(other_a[k]), rtol=0, atol=2e-6,
                                       err_msg=f"step {t}: {k}")
    sampled = np.any(eff.masks, axis=0) > 0
    first, last = flat(eff.s.method.final_body(eff.states[0])), flat(eff.s.method.final_body(eff.states[-1]))
    assert not sampled.all()
    for k, x in first.items():                                  # never-drawn blocks: bitwise unchanged
        np.testing.assert_array_equal(np.asarray(last[k])[~sampled], np.asarray(x)[~sampled], err_msg=k)
    assert len(eff.traces) == 1 and eff.step_fn._cache_size() == 1 and eff.ctrl._resample._cache_size() == 1


def test_unsampled_blocks_stay_bitwise_frozen_under_weight_decay_and_the_set_changes_only_every_k(run):
    states, masks = run.states, run.masks
    sampled = np.zeros(L, bool)
    for t, mask in enumerate(masks):
        assert mask.sum() == GAMMA and set(np.unique(mask)) <= {0.0, 1.0}
        if t % K:
            np.testing.assert_array_equal(mask, masks[t - 1])       # changes only at multiples of K
        sampled |= mask > 0
    assert not sampled.all()                                       # some block was never drawn
    first, last = flat(states[0].trainable), flat(states[-1].trainable)
    for name, x in first.items():
        if name.startswith(BODY):
            np.testing.assert_array_equal(np.asarray(last[name])[~sampled], np.asarray(x)[~sampled], err_msg=name)
    for t in range(1, len(states)):
        before, after = flat(states[t - 1].trainable), flat(states[t].trainable)
        changed = np.zeros(L, bool)
        for name in before:
            b, a = np.asarray(before[name]), np.asarray(after[name])
            if name.startswith(BODY):
                changed |= (a != b).reshape(L, -1).any(1)
            else:                                                  # embeddings, final norm, head: every step
                assert (a != b).any(), f"step {t}: {name} did not move"
        assert changed.sum() <= GAMMA and not (changed & (masks[t - 1] == 0)).any(), (t, changed, masks[t - 1])
        assert changed.sum() > 0


def test_draws_are_uniform_without_replacement_chi_square():
    key = jax.random.PRNGKey(3)
    draws = np.asarray(jax.jit(jax.vmap(lambda p: sample_layers(key, p, L, GAMMA)))(jnp.arange(10_000)))
    assert (draws.sum(1) == GAMMA).all() and set(np.unique(draws)) == {0.0, 1.0}    # γ distinct blocks each
    counts = draws.sum(0)
    expected = 10_000 * GAMMA / L
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 24.32, (chi2, counts)                             # χ²(7 dof), p = 0.001
    assert len({tuple(np.nonzero(d)[0]) for d in draws[:200]}) > 20     # the draws do vary


def test_one_period_equals_a_fresh_adamw_over_the_gathered_active_slices(run):
    s, states, masks = run.s, run.states, run.masks
    idx = np.nonzero(masks[0])[0]
    o = s.config.optim
    full0 = flat(s.trainable)
    keys = list(full0)
    gather = lambda d: {k: (v[idx] if k.startswith(BODY) else v) for k, v in d.items()}
    # decay on matrices only, judged per layer by hand (body leaves carry the layer axis)
    decay = {k: (v.ndim - (1 if k.startswith(BODY) else 0)) >= 2 for k, v in full0.items()}
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm),
                     optax.adamw(s.schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                                 mask=decay))
    from umema_jax.train.step import make_loss_fn
    loss_fn = make_loss_fn(s.model, "cls", None)
    tree = jax.tree.structure(s.trainable)

    @jax.jit
    def grads_at(params, batch):
        full = jax.tree_util.tree_unflatten(tree, [params[k] for k in keys])
        g = jax.grad(lambda t: loss_fn(t, s.frozen, {}, batch, jax.random.PRNGKey(0), 4.0)[0])(full)
        return flat(g)

    ref = gather(full0)
    opt = tx.init(ref)
    current = dict(full0)
    for t in range(K):
        batch = random_batch(seed=t)
        g = gather(grads_at(current, batch))
        updates, opt = tx.update(g, opt, ref)
        ref = optax.apply_updates(ref, updates)
        current = {k: (full0[k].at[idx].set(ref[k]) if k.startswith(BODY) else ref[k]) for k in keys}
        got = flat(states[t + 1].trainable)
        for k in keys:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(current[k]), rtol=0, atol=1e-6,
                                       err_msg=f"step {t + 1}: {k}")


def _adam_states(opt_state, group):
    inner = opt_state[1].inner_states[group].inner_state
    return [s for s in jax.tree.leaves(inner, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]


def test_resample_keeps_every_blocks_adam_state_and_the_embedding_head_state_and_the_schedule(run):
    before = run.states[K]
    body = block_adam_state(before.opt_state)
    counts = np.asarray(jax.tree.leaves(body.count)[0]).reshape(L)
    np.testing.assert_array_equal(counts, K * run.masks[0])          # each block counts its own steps
    after, _ = run.ctrl.before_step(K, before, run.s.frozen)
    for a, b in zip(jax.tree.leaves(block_adam_state(after.opt_state)), jax.tree.leaves(body)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))     # nothing reset at a draw
    eh = _adam_states(after.opt_state, "eh")[0]
    assert int(eh.count) == K and any(np.asarray(x).any() for x in jax.tree.leaves(eh.mu))


def _numpy_lisa(s, masks, steps):
    """LMFlow's LISA in numpy: one AdamW for the run; a block gets a gradient (and an update, moments, a step
    count of its own) only while drawn; embeddings / norm / head every step; the LR of the global step."""
    from umema_jax.train.step import make_loss_fn
    from umema_jax.train.state import decays
    o = s.config.optim
    loss_fn = make_loss_fn(s.model, "cls", None)
    tree = jax.tree.structure(s.trainable)
    params = {k: np.asarray(v, np.float64) for k, v in flat(s.trainable).items()}
    keys = list(params)
    decay = {k: decays(p, x) for (p, x), k in zip(jax.tree_util.tree_leaves_with_path(s.trainable), keys)}
    grads_at = jax.jit(lambda full, batch: jax.grad(
        lambda t: loss_fn(t, s.frozen, {}, batch, jax.random.PRNGKey(0), 4.0)[0])(full))
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    count = {k: (np.zeros(L) if k.startswith(BODY) else np.zeros(())) for k in keys}
    for t in range(steps):
        full = jax.tree_util.tree_unflatten(tree, [jnp.asarray(params[k], jnp.float32) for k in keys])
        g = {k: np.asarray(v, np.float64) for k, v in flat(grads_at(full, random_batch(seed=t))).items()}
        active = masks[t] > 0
        for k in keys:
            if k.startswith(BODY):
                g[k][~active] = 0.0
        norm = np.sqrt(sum((v ** 2).sum() for v in g.values()))
        clip = min(1.0, o.grad_clip_norm / norm)
        lr = float(s.schedule(t))
        for k in keys:
            rows = active if k.startswith(BODY) else np.ones((), bool)
            gk = g[k] * clip
            m, v, c = mu[k], nu[k], count[k]
            c_new = np.where(rows, c + 1, c)
            m_new = np.where(_b(rows, gk), o.b1 * m + (1 - o.b1) * gk, m)
            v_new = np.where(_b(rows, gk), o.b2 * v + (1 - o.b2) * gk ** 2, v)
            cc = _b(np.maximum(c_new, 1), gk)
            step = (m_new / (1 - o.b1 ** cc)) / (np.sqrt(v_new / (1 - o.b2 ** cc)) + o.eps)
            if decay[k]:
                step = step + o.weight_decay * params[k]
            params[k] = np.where(_b(rows, gk), params[k] - lr * step, params[k])
            mu[k], nu[k], count[k] = m_new, v_new, c_new
    return params


def _b(rows, like):
    return np.reshape(rows, np.shape(rows) + (1,) * (np.ndim(like) - np.ndim(rows)))


@pytest.mark.parametrize("form", ["simple", "efficient"])
def test_a_block_drawn_again_resumes_its_own_adamw_state_as_lmflow_does(form):
    steps = 6 * K
    s = _setup(form, total_steps=steps)
    ctrl = s.method.controller(steps, steps)
    state, frozen, masks = s.state, s.frozen, []
    step_fn = jax.jit(s.step)
    for t in range(steps):
        state, frozen = ctrl.before_step(t, state, frozen)
        masks.append(np.asarray(state.extra["layer_mask"]))
        state, _ = step_fn(state, frozen, random_batch(seed=t))
    periods = [np.nonzero(m)[0].tolist() for m in masks[::K]]
    # the draws must bring some block back after a pause, else the test could not see a reset
    assert any(set(periods[i]) & set(periods[j]) - set(periods[i + 1]) for i in range(len(periods))
               for j in range(i + 2, len(periods))), periods
    ref = _numpy_lisa(_setup("simple", total_steps=steps), masks, steps)
    got = flat(state.trainable) if form == "simple" else {
        **{k: v for k, v in flat(state.trainable).items() if not k.startswith("layer_slots/")},
        **{BODY + k: v for k, v in flat(s.method.final_body(state)).items()}}
    for k, v in ref.items():
        np.testing.assert_allclose(np.asarray(got[k]), v, rtol=0, atol=5e-6, err_msg=k)


def test_no_recompilation_when_the_active_set_changes(run):
    assert len({tuple(m) for m in run.masks}) > 1           # the set did change
    assert len(run.traces) == 1 and run.step_fn._cache_size() == 1
    assert run.ctrl._resample._cache_size() == 1


@pytest.mark.parametrize("form", ["efficient", "simple"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, form):
    """Smoke config end to end (fixture data, tiny GPT-2): a crash after step 6 (a resample point, K = 3)
    and a resume give the same metrics, predictions and logs, method records included."""
    from configs.smoke import get_config
    from umema_jax.train.build import build_experiment
    from umema_jax.train.loop import train_and_evaluate
    from umema_jax.train.sharding import make_mesh
    config = get_config()
    config.model.method = "lisa"
    config.methods.lisa.interval_steps = 3
    config.methods.lisa.gamma = 1                              # gpt2-tiny has 2 blocks: one active at a time
    config.methods.lisa.form = form
    config.train.checkpoint_every_steps = 2
    config.train.max_to_keep = 20
    config.output.tensorboard = False
    exp = build_experiment(config, methods.from_config(config))
    full = train_and_evaluate(config, str(tmp_path / "full"), exp, make_mesh())
    part = killed_after(tmp_path / "full", 6, tmp_path / "part")
    resumed = train_and_evaluate(config, str(part), exp, make_mesh())
    assert resumed.test == full.test and resumed.dev == full.dev and resumed.steps == full.steps == 14
    np.testing.assert_array_equal(resumed.predictions["test"]["probs"], full.predictions["test"]["probs"])
    import json
    records = lambda d: [json.loads(x) for x in open(d / "metrics.jsonl")]
    assert records(part) == records(tmp_path / "full")
    periods = [r["lisa_period"] for r in records(part) if r["split"] == "method"]
    assert periods == [0, 1, 2, 3, 4]                          # steps 0, 3, 6, 9, 12
    if form == "simple":      # all blocks in the tree; one step changes E + H + γ of them
        assert exp.info["params"]["trainable"] < exp.info["params"]["trainable_tree"]
    else:                     # the tree is E + H + the γ slots
        assert exp.info["params"]["trainable"] == exp.info["params"]["trainable_tree"]


def test_efficient_form_holds_gamma_blocks_of_optimizer_state_on_llama3_8b_shapes():
    """From shapes alone (nothing materialised): the trained tree and AdamW state of the efficient form cover
    embeddings + final norm + head + γ = 2 of the 32 blocks; the 32 blocks ride in the method state."""
    from umema_jax.memory_estimate import estimate
    r = estimate("llama3-8b", "lisa", devices=1)
    block = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096   # q,o + k,v (GQA) + MLP + 2 norms
    eh = 128256 * 4096 + 4096 + 4096 * 19 + 19                               # embedding, final norm, head
    assert r["params_trainable"] == eh + 2 * block
    rows = r["per_device_bytes"]
    assert rows["trainable (replicated)"] == 4 * (eh + 2 * block)
    assert rows["AdamW moments (fp32)"] < 2 * 4 * (eh + 2 * block) + 1024
    assert rows["method state (LISA blocks, FLoRA delta)"] >= 4 * 32 * block
