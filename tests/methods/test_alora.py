"""ALoRA (docs/METHODS.md) against independent references: plain LoRA on the gathered active ranks, a
brute-force loop of ablated forwards, optax's AdamW, numpy allocation rules."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.smoke import get_config
from umema_jax import methods
from umema_jax.backbones import get_backbone_config
from umema_jax.methods.alora import (ALoRA, ALoRAController, flat_gates, reallocate, round_steps, unflat_gates)
from umema_jax.model import init_variables
from umema_jax.train.state import CountedAdamState
from umema_jax.train.assemble import model_config_view
from umema_jax.train.state import create_train_state, make_optimizer
from umema_jax.train.step import cross_entropy_sum, make_train_step, target_mask

RANK, CAP, LABELS, STEPS = 3, 6, 3, 40


def _config(method="alora", **hp):
    c = get_config()
    c.model.method = method
    c.model.lora.rank = RANK
    c.methods.alora.rank_cap = CAP
    for k, v in hp.items():
        c.methods.alora[k] = v
    return c


def _batch(rows=6, n=12, seed=0):
    r = np.random.default_rng(seed)
    mask = np.ones((rows, n), np.int32)
    mask[0, 9:] = 0
    return {"input_ids": jnp.asarray(r.integers(0, 64, (rows, n)), jnp.int32), "attention_mask": jnp.asarray(mask),
            "labels": jnp.asarray(r.integers(0, LABELS, rows), jnp.int32),
            "example_mask": jnp.ones((rows,), jnp.int32), "task_id": jnp.zeros((rows,), jnp.int32)}


@functools.lru_cache(maxsize=None)
def _built(method_name="alora"):
    """(method, model, frozen, state) on tiny GPT-2 with random, non-zero B (so every rank matters)."""
    config = _config(method_name)
    method = methods.from_config(config)
    backbone = get_backbone_config("gpt2-tiny").replace(vocab_size=64)
    model = method.make_model(model_config_view(config, "cls", LABELS), backbone)
    variables = init_variables(model, jax.random.PRNGKey(0))
    method.bind(model, variables["params"])
    trained, frozen = method.split(variables["params"])
    key = jax.random.PRNGKey(7)
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables["lora"])
    leaves = [jax.random.normal(jax.random.fold_in(key, i), x.shape) * 0.5 if "lora_b" in str(p) else x
              for i, (p, x) in enumerate(leaves)]
    trainable = {"lora": jax.tree_util.tree_unflatten(tree, leaves), "params": trained}
    tx, _ = method.optimizer(STEPS)
    return method, model, frozen, create_train_state(trainable, {}, tx, 0, method)


@functools.lru_cache(maxsize=None)
def _step(method_name="alora"):
    """The jitted train step (compiled once per method for the whole file) and its schedule."""
    method, model, _, _ = _built(method_name)
    tx, schedule = method.optimizer(STEPS)
    return jax.jit(make_train_step(model, tx, schedule, "cls", method=method)), schedule


def _logits(method, model, frozen, state, batch, gates=None):
    extra = state.extra if gates is None else dict(state.extra, gates=gates)
    return _apply(model)(method.model_variables(frozen, state.trainable, state.memory, extra), batch)


@functools.lru_cache(maxsize=None)
def _apply(model):
    return jax.jit(lambda variables, batch: model.apply(variables, batch, train=False).logits)


def _c_attn(tree):
    return tree["backbone"]["h"]["attn"]["c_attn"]


def test_gated_model_equals_plain_lora_on_the_gathered_active_ranks():
    method, model, frozen, state = _built()
    r = np.random.default_rng(1)
    on = np.stack([r.permutation(CAP) < 2 for _ in range(2)])           # 2 of 6 slots per layer, differing
    gates = {"backbone": {"h": {"attn": {"c_attn": {"gate": jnp.asarray(on, jnp.float32)}}}}}
    a, b = (np.asarray(_c_attn(state.trainable["lora"])[k]) for k in ("lora_a", "lora_b"))
    plain_lora = {"backbone": {"h": {"attn": {"c_attn": {
        "lora_a": jnp.asarray(np.stack([a[l][:, on[l]] for l in range(2)])),
        "lora_b": jnp.asarray(np.stack([b[l][on[l]] for l in range(2)]))}}}}}
    lcfg = model.lora_cfg
    plain = model.clone(lora_cfg=dataclasses.replace(lcfg, rank=2, alpha=lcfg.scale * 2))
    variables = {"params": {**frozen, **state.trainable["params"]}, "lora": plain_lora}
    batch = _batch()
    np.testing.assert_allclose(np.asarray(_logits(method, model, frozen, state, batch, gates)),
                               np.asarray(_apply(plain)(variables, batch)), rtol=1e-5, atol=1e-6)


def _brute_force_importance(method, model, frozen, state, batch):
    fwd = jax.jit(lambda g: _logits(method, model, frozen, state, batch, unflat_gates(g, state.extra["gates"])))
    mask = target_mask(batch, "cls")
    S = lambda g: -float(cross_entropy_sum(fwd(jnp.asarray(g)), batch["labels"], mask) / jnp.sum(mask))
    flat = np.asarray(flat_gates(state.extra["gates"]))
    out = np.full(flat.shape, np.nan)
    full = S(flat)
    for m, s in zip(*np.nonzero(flat)):
        without, only = flat.copy(), np.zeros_like(flat)
        without[m, s], only[m, s] = 0, 1
        out[m, s] = full - S(without) + S(only)
    return out


def test_vectorised_importance_equals_a_brute_force_loop_and_a_planted_harmful_rank_goes_first():
    method, model, frozen, state = _built()
    lora = state.trainable["lora"]
    b = _c_attn(lora)["lora_b"]
    planted = (1, 2)                                                    # layer 1, slot 2 (active: slots < RANK)
    b = b.at[planted].set(4.0 * jax.random.normal(jax.random.PRNGKey(3), b.shape[-1:]))
    lora = {"backbone": {"h": {"attn": {"c_attn": dict(_c_attn(lora), lora_b=b)}}}}
    state = state.replace(trainable=dict(state.trainable, lora=lora))
    ctrl = ALoRAController(method, 50, 10)
    ctrl.val_batch = _batch(rows=8)
    vec = ctrl.score(state, frozen)
    ref = _brute_force_importance(method, model, frozen, state, ctrl.val_batch)
    np.testing.assert_allclose(vec, ref, rtol=1e-4, atol=1e-5)          # NaN (inactive) in the same places
    assert np.nanargmin(vec) == np.ravel_multi_index(planted, vec.shape)
    _, pruned, _ = reallocate(np.asarray(flat_gates(state.extra["gates"])), vec, 1)
    assert pruned[planted] and pruned.sum() == 1


def _with_b_scaled(state, factor):
    lora = jax.tree.map(lambda x: x, state.trainable["lora"])
    c = _c_attn(lora)
    lora = {"backbone": {"h": {"attn": {"c_attn": dict(c, lora_b=c["lora_b"] * factor)}}}}
    return state.replace(trainable=dict(state.trainable, lora=lora))


def test_taylor_scoring_has_the_exact_gate_gradients_and_approaches_the_ablation_as_ranks_shrink():
    method, model, frozen, state = _built()
    batch = _batch(rows=8)
    s_full, s_none, g_full, g_none = (np.asarray(x, np.float64) for x in
                                      jax.jit(method.taylor_scores)(state, frozen, batch))
    # gradients equal central finite differences of S in the gate (float32: eps 1e-2, curvature small)
    fwd = jax.jit(lambda g: _logits(method, model, frozen, state, batch, unflat_gates(g, state.extra["gates"])))
    mask = target_mask(batch, "cls")
    S = lambda g: float(-cross_entropy_sum(fwd(jnp.asarray(g, jnp.float32)), batch["labels"], mask) / jnp.sum(mask))
    flat = np.asarray(flat_gates(state.extra["gates"]))
    eps = 1e-2
    for base, grad in ((flat, g_full), (np.zeros_like(flat), g_none)):
        for m, k in ((0, 0), (1, 2), (1, 4)):
            plus, minus = base.copy(), base.copy()
            plus[m, k] += eps
            minus[m, k] -= eps
            assert abs((S(plus) - S(minus)) / (2 * eps) - grad[m, k]) < 2e-3 + 2e-2 * abs(grad[m, k])
    assert s_full == pytest.approx(S(flat), abs=1e-5) and s_none == pytest.approx(S(np.zeros_like(flat)), abs=1e-5)

    # against the exact ablation: the first-order error shrinks quadratically with the ranks' size
    errors = []
    for factor in (1.0, 0.1):
        st = _with_b_scaled(state, factor)
        ctrl = ALoRAController(method, 50, 10)
        ctrl.val_batch = batch
        exact = ctrl.score(st, frozen)
        taylor = _taylor_controller(method).score_with(st, frozen, batch)
        on = ~np.isnan(exact)
        assert np.array_equal(on, ~np.isnan(taylor))
        errors.append(np.abs(taylor[on] - exact[on]).max() / np.abs(exact[on]).max())
        ranks = lambda v: np.argsort(np.argsort(v))
        rho = np.corrcoef(ranks(exact[on]), ranks(taylor[on]))[0, 1]
        if factor < 1:
            assert rho > 0.95, rho                             # same pruning order once ranks are small
    # measured: max error 3.6 % of the largest score at B ~ N(0, 0.5²) (rank correlation .54 among six
    # near-equal scores), 0.05 % at B / 10: quadratic in the ranks' size, as a first-order estimate must be
    assert errors[0] < 0.1 and errors[1] < 0.05 * errors[0], errors
    # a planted harmful rank is still the one pruned
    b = _c_attn(state.trainable["lora"])["lora_b"]
    b = b.at[1, 2].set(4.0 * jax.random.normal(jax.random.PRNGKey(3), b.shape[-1:]))
    st = state.replace(trainable=dict(state.trainable, lora={"backbone": {"h": {"attn": {"c_attn": dict(
        _c_attn(state.trainable["lora"]), lora_b=b)}}}}))
    taylor = _taylor_controller(method).score_with(st, frozen, batch)
    assert np.nanargmin(taylor) == np.ravel_multi_index((1, 2), taylor.shape)


def _taylor_controller(method):
    """An ALoRA controller on the same model and parameters, scoring with `scoring='taylor'`."""
    import copy
    taylor = copy.copy(method)
    taylor.hp = copy.deepcopy(method.hp)
    taylor.hp.scoring = "taylor"

    class Ctrl(ALoRAController):
        def score_with(self, state, frozen, batch):
            self.val_batch = batch
            return self.score(state, frozen)
    return Ctrl(taylor, 50, 10)


def test_allocation_rules_three_three_two_overflow_and_total_rank():
    gates = np.zeros((5, 16))
    gates[:, :8] = 1
    scores = np.ones((5, 16))
    scores[0, :4], scores[1, :4] = -5, -4                             # modules 0 and 1 lose 4 ranks each
    scores[2, :8], scores[3, :8], scores[4, :8] = 3, 1, 2               # priority 2 > 4 > 3
    new, pruned, added = reallocate(gates, scores, 8)
    assert pruned.sum(1).tolist() == [4, 4, 0, 0, 0]
    assert added.sum(1).tolist() == [0, 0, 3, 2, 3]
    assert new.sum() == gates.sum()
    assert not (added & (gates > 0)).any()                              # new ranks take free slots
    # a full module passes its share on, by priority
    gates = np.zeros((3, 4))
    gates[0, :2], gates[1, :], gates[2, :2] = 1, 1, 1
    scores = np.zeros((3, 4))
    scores[0, :2] = -1
    new, _, added = reallocate(gates, scores, 2)                       # module 1 (full, top priority) gets none
    assert added.sum(1).tolist() == [0, 0, 2] and new.sum() == gates.sum()
    # random rounds: the total rank holds unless every module lost one
    r = np.random.default_rng(0)
    gates = np.zeros((6, 8))
    gates[:, :4] = 1
    for _ in range(20):
        new, pruned, _ = reallocate(gates, r.standard_normal(gates.shape), 3)
        assert new.sum() == gates.sum() or pruned.any(axis=1).all()
        gates = new


def test_slot_adam_with_equal_counts_is_optax_adamw():
    config = _config()
    method, _, _, state = _built()
    ours, _ = method.optimizer(50)
    ref, _ = make_optimizer(config.optim, 50)
    params = state.trainable
    s1, s2 = ours.init(params), ref.init(params)
    r = np.random.default_rng(0)
    for _ in range(4):
        g = jax.tree.map(lambda x: jnp.asarray(r.standard_normal(x.shape), jnp.float32), params)
        u1, s1 = jax.jit(ours.update)(g, s1, params)
        u2, s2 = jax.jit(ref.update)(g, s2, params)
        for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-9)
        params = optax.apply_updates(params, u1)


def test_training_before_any_round_equals_plain_lora_at_the_initial_rank():
    """ALoRA (r_cap slots, first r on, per-slot Adam) vs plain LoRA of rank r on the same factors, 3 steps."""
    a_method, a_model, frozen, a_state = _built()
    l_method, l_model, l_frozen, l_state = _built("lora")
    cut = lambda t: jax.tree_util.tree_map_with_path(
        lambda p, x: x[..., :RANK] if "lora_a" in str(p) else (x[..., :RANK, :] if "lora_b" in str(p) else x), t)
    trainable = dict(l_state.trainable, lora=cut(a_state.trainable["lora"]), params=a_state.trainable["params"])
    l_state = create_train_state(trainable, {}, l_method.optimizer(STEPS)[0], 0, l_method)
    step_a, step_l = _step()[0], _step("lora")[0]
    for i in range(3):
        batch = _batch(seed=i)
        a_state, ma = step_a(a_state, frozen, batch)
        l_state, ml = step_l(l_state, frozen, batch)
        np.testing.assert_allclose(float(ma["loss"]), float(ml["loss"]), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(cut(a_state.trainable)), jax.tree.leaves(l_state.trainable)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
    assert float(ma["method/active_ranks"]) == 2 * RANK


def test_a_new_rank_preserves_the_function_and_takes_a_first_step_of_size_lr():
    method, model, frozen, state = _built()
    step, schedule = _step()
    for i in range(5):                                                  # counts of the old slots reach 5
        state, _ = step(state, frozen, _batch(seed=i))
    batch = _batch(seed=9)
    before = _logits(method, model, frozen, state, batch)
    flat = np.asarray(flat_gates(state.extra["gates"]))
    added = np.zeros_like(flat)
    added[0, RANK] = 1                                                  # layer 0, first free slot
    grown = method.grow(state, frozen, jnp.asarray(flat + added), jnp.asarray(added), jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(_logits(method, model, frozen, grown, batch)), np.asarray(before))
    adam = next(x for x in jax.tree.leaves(grown.opt_state, is_leaf=lambda x: isinstance(x, CountedAdamState))
                if isinstance(x, CountedAdamState))
    assert int(_c_attn(adam.count["lora"])["lora_b"][0, RANK, 0]) == 0 and int(_c_attn(adam.count["lora"])["lora_b"][0, 0, 0]) == 5
    assert not np.any(np.asarray(_c_attn(adam.mu["lora"])["lora_b"][0, RANK]))
    new_a = np.asarray(_c_attn(grown.trainable["lora"])["lora_a"][0, :, RANK])
    assert np.abs(new_a).max() <= 1 / np.sqrt(64) and np.std(new_a) > 0
    after, _ = step(grown, frozen, batch)
    delta = np.abs(np.asarray(_c_attn(after.trainable["lora"])["lora_b"][0, RANK]))
    lr = float(schedule(5))
    np.testing.assert_allclose(np.median(delta), lr, rtol=1e-3)          # Adam's first step: |m̂/√v̂| = 1


def test_rounds_keep_the_total_rank_log_the_allocation_and_never_recompile():
    _, model, frozen, state = _built()
    step, _ = _step()
    method = methods.from_config(_config(prune_per_round=1))      # one rank per round: a module always receives
    method.model = model
    ctrl = ALoRAController(method, STEPS, 8)
    ctrl.val_batch = _batch(rows=8)
    logged = []
    ctrl.log = lambda at, scalars: logged.append((at, scalars))
    assert ctrl.steps == round_steps(method.hp, STEPS, 8) == [8, 10, 12, 14, 16, 18, 20, 22]
    total = float(np.sum(flat_gates(state.extra["gates"])))
    compiled = step._cache_size()
    for i in range(24):
        state, frozen = ctrl.before_step(i, state, frozen)
        state, _ = step(state, frozen, _batch(seed=i))
    assert step._cache_size() == max(compiled, 1)                    # the rounds changed no shape
    assert len(ctrl.history) == 8 and [h["step"] for h in ctrl.history] == ctrl.steps
    for h in ctrl.history:
        assert sum(h["ranks"]) == total and h["pruned"] == h["added"] == 1
    gates = np.asarray(flat_gates(state.extra["gates"]))
    assert gates.sum(1).tolist() == ctrl.history[-1]["ranks"]
    assert [s["alora/total_rank"] for _, s in logged] == [total] * 8
    assert "alora/rank/h/attn/c_attn/1" in logged[0][1]
    assert ctrl._scores._cache_size() == 1 and ctrl._grow._cache_size() == 1
    # resuming: a controller restored from its state_dict skips the finished rounds
    again = ALoRAController(method, STEPS, 8)
    again.load_state_dict(ctrl.state_dict())
    assert again.before_step(22, state, frozen)[0] is state


def test_config_errors_name_the_key():
    import ml_collections
    good = dict(ALoRA.defaults)
    for key, bad in (("rounds", 0), ("first_epochs", 0.0), ("rank_cap", -1), ("val_size", 0), ("scoring", "fisher")):
        with pytest.raises(ValueError, match=f"methods.alora.{key}"):
            ALoRA.validate(ml_collections.ConfigDict(dict(good, **{key: bad})))
