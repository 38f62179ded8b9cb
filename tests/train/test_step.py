"""Train/eval step semantics on the stand-in model (fast): masking, accumulation, bank writes, NaN guard."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.train.standins import NestedTinyModel, TinyModel, reorganise
from umema_jax.train.state import create_train_state, make_optimizer, split_params
from umema_jax.train.step import make_eval_step, make_train_step
from umema_jax.defaults import base_config


def _setup(seed=0):
    batch = {"input_ids": jnp.ones((2, 4), jnp.int32), "attention_mask": jnp.ones((2, 4), jnp.int32),
             "example_mask": jnp.ones((2,), jnp.int32)}
    variables = reorganise(TinyModel().init(jax.random.PRNGKey(seed), batch))
    trained, frozen = split_params(variables["params"], r"^(head|um|ema)/")
    tx, schedule = make_optimizer(base_config().optim, total_steps=10)
    state = create_train_state({"lora": variables["lora"], "params": trained}, variables["memory"], tx, 0)
    return NestedTinyModel(), state, frozen, tx, schedule


def _batch(rows, n=6, pad_rows=0, seed=1):
    rng = np.random.default_rng(seed)
    total = rows + pad_rows
    ids = rng.integers(1, 50, size=(total, n)).astype(np.int32)
    mask = np.ones((total, n), np.int32)
    mask[:, n - 2:] = rng.integers(0, 2, size=(total, 2))
    labels = rng.integers(0, 3, size=(total,)).astype(np.int32)
    example_mask = np.array([1] * rows + [0] * pad_rows, np.int32)
    labels[rows:] = -100
    ids[rows:] = rng.integers(1, 50, size=(pad_rows, n))   # garbage in padding rows must not matter
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "example_mask": example_mask,
            "task_id": np.zeros(total, np.int32)}


def _close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def test_frozen_backbone_is_neither_trained_nor_in_optimizer_state():
    model, state, frozen, tx, schedule = _setup()
    assert set(state.trainable["params"]) == {"head"} and "backbone" in frozen
    shapes = {tuple(x.shape) for x in jax.tree.leaves(state.opt_state)}
    assert (50, 16) not in shapes and (16, 16) not in shapes      # no Adam moments for frozen weights
    step = jax.jit(make_train_step(model, tx, schedule, "cls"))
    before = jax.tree.map(np.asarray, frozen)
    new, m = step(state, frozen, _batch(4))
    _close(before, frozen, atol=0)
    assert int(new.step) == 1 and int(m["finite"]) == 1
    assert not np.allclose(np.asarray(new.trainable["lora"]["b"]), 0.0)   # LoRA B moved off zero


def test_padding_rows_change_nothing():
    model, state, frozen, tx, schedule = _setup()
    step = jax.jit(make_train_step(model, tx, schedule, "cls"))
    real = _batch(4, pad_rows=0)
    padded = _batch(4, pad_rows=4)
    for k in real:
        padded[k][:4] = real[k]
    s1, m1 = step(state, frozen, real)
    s2, m2 = step(state, frozen, padded)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    _close(s1.trainable, s2.trainable)
    _close(s1.memory, s2.memory)                                    # bank write ignores padding rows


def test_gradient_accumulation_equals_one_big_batch():
    model, state, frozen, tx, schedule = _setup()
    batch = _batch(8)
    full_step = jax.jit(make_train_step(model, tx, schedule, "cls", grad_accum_steps=1))
    accum_step = jax.jit(make_train_step(model, tx, schedule, "cls", grad_accum_steps=2))
    s1, m1 = full_step(state, frozen, batch)
    s2, m2 = accum_step(state, frozen, batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-5)
    _close(s1.trainable, s2.trainable)
    # One bank write per mini-batch: pointer advances once; equal-size micro-batches average to the batch mean.
    assert int(s1.memory["pointer"]) == int(s2.memory["pointer"]) == 1
    _close(s1.memory, s2.memory, atol=1e-6)


@pytest.mark.parametrize("order", ["real_last", "padding_last"])
def test_accumulated_bank_write_is_the_mini_batch_mean_once(order):
    """micro-batches with different numbers of real rows (one of them only padding) write
    one slot holding the mean over the mini-batch's real rows, and the pointer advances once."""
    model, state, frozen, tx, schedule = _setup()
    batch = _batch(8)
    # micro-batch i holds rows i, i+A, ... (A = 2): real rows 0, 2, 4 and 1 | padding 3, 5, 6, 7
    # ("padding_last": the micro-batch of rows 1, 3, 5, 7 is all padding)
    real = [0, 2, 4, 1] if order == "real_last" else [0, 2, 4, 6]
    batch["example_mask"] = np.isin(np.arange(8), real).astype(np.int32)
    batch["labels"] = np.where(batch["example_mask"] > 0, batch["labels"], -100).astype(np.int32)
    s1, _ = jax.jit(make_train_step(model, tx, schedule, "cls", grad_accum_steps=1))(state, frozen, batch)
    s2, _ = jax.jit(make_train_step(model, tx, schedule, "cls", grad_accum_steps=2))(state, frozen, batch)
    assert int(s1.memory["pointer"]) == int(s2.memory["pointer"]) == 1
    assert int(s2.memory["filled"]) == 1
    # The stand-in's entry is the plain mean of its pooled rows (ū = 0): recompute it independently.
    out = model.apply({"params": {**frozen, **state.trainable["params"]}, "lora": state.trainable["lora"],
                       "memory": state.memory}, batch, train=True, write_memory=False)
    pooled = np.asarray(out.internals["features"])[np.asarray(real)]
    np.testing.assert_allclose(np.asarray(s2.memory["keys"])[0], pooled.mean(0), rtol=1e-5, atol=1e-6)
    _close(s1.memory, s2.memory, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s2.memory["keys"])[1:], np.asarray(state.memory["keys"])[1:])


def test_loss_is_masked_mean_cross_entropy_of_calibrated_logits():
    model, state, frozen, tx, schedule = _setup()
    batch = _batch(5, pad_rows=3)
    _, m = jax.jit(make_train_step(model, tx, schedule, "cls"))(state, frozen, batch)
    out = model.apply({"params": {**frozen, **state.trainable["params"]}, "lora": state.trainable["lora"],
                       "memory": state.memory}, batch, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits[:5], batch["labels"][:5])
    np.testing.assert_allclose(float(m["loss"]), float(ce.mean()), rtol=1e-5)


def test_non_finite_loss_leaves_state_untouched():
    model, state, frozen, tx, schedule = _setup()
    params = jax.tree.map(lambda x: x, state.trainable["params"])
    params["head"]["bias"] = params["head"]["bias"].at[0].set(jnp.inf)
    state = state.replace(trainable={**state.trainable, "params": params})
    new, m = jax.jit(make_train_step(model, tx, schedule, "cls"))(state, frozen, _batch(4))
    assert int(m["finite"]) == 0 and int(new.step) == 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_step_never_writes_the_bank():
    """The eval step returns no memory (nothing to carry) and scores with train=False, i.e. the
    probabilities equal softmax of an independent train=False forward pass on the same state."""
    model, state, frozen, tx, schedule = _setup()
    batch = _batch(3, pad_rows=1)
    out = jax.jit(make_eval_step(model, "cls"))(state, frozen, batch)
    assert set(out) == {"probs", "nll_sum", "targets", "aux"}
    assert out["probs"].shape == (4, 3)
    ref = model.apply({"params": {**frozen, **state.trainable["params"]}, "lora": state.trainable["lora"],
                       "memory": state.memory}, batch, train=False)
    np.testing.assert_allclose(out["probs"], jax.nn.softmax(ref.logits, -1), rtol=1e-5, atol=1e-7)
    assert float(out["targets"]) == 3.0 and "u_bar" in out["aux"]


@pytest.mark.parametrize("task", ["ner"])
def test_ner_loss_ignores_minus_100_positions(task):
    from umema_jax.train.step import cross_entropy_sum, target_mask
    logits = jnp.zeros((2, 3, 4)).at[0, 0, 1].set(5.0)
    labels = jnp.array([[1, -100, 2], [-100, -100, -100]])
    batch = {"labels": labels, "example_mask": jnp.array([1, 0])}
    mask = target_mask(batch, task)
    assert float(mask.sum()) == 2.0
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0, [0, 2]], jnp.array([1, 2])).sum()
    np.testing.assert_allclose(float(cross_entropy_sum(logits, labels, mask)), float(expected), rtol=1e-6)


def test_lr_scale_equals_adamw_at_the_scaled_rate_for_the_matched_group():
    """`optim.lr_scale`: the matched leaves move as under AdamW at lr·scale (decay included), the rest as at lr;
    brute force: two plain optax.adamw runs over 5 steps."""
    cfg = base_config().optim
    cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio = 1e-2, 0.1, 0.0
    cfg.lr_scale = 0.2
    rng = np.random.default_rng(0)
    tree = {"params": {"um": {"W": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
                       "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}}}
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), tree) for _ in range(5)]
    tx, _ = make_optimizer(cfg, total_steps=5)

    def run(tx, params):
        state = tx.init(params)
        for g in grads:
            g = optax.clip_by_global_norm(cfg.grad_clip_norm).update(g, optax.EmptyState())[0]
            upd, state = tx.update(g, state, params)
            params = optax.apply_updates(params, upd)
        return params

    def reference(lr):
        sched = lambda step: lr * (1.0 - step / 5)                      # the project's linear decay, no warm-up
        return run(optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay), tree)

    # the project's tx clips jointly; the reference clips the same joint gradient before adamw
    state, params = tx.init(tree), tree
    for g in grads:
        upd, state = tx.update(g, state, params)
        params = optax.apply_updates(params, upd)
    slow, fast = reference(cfg.learning_rate * cfg.lr_scale), reference(cfg.learning_rate)
    np.testing.assert_allclose(params["params"]["um"]["W"], slow["params"]["um"]["W"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["params"]["head"]["kernel"], fast["params"]["head"]["kernel"], rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(slow["params"]["um"]["W"], fast["params"]["um"]["W"], atol=1e-3)   # the test can fail
    cfg.lr_scale = 1.0                                                  # off: the optimizer state is as before
    assert len(make_optimizer(cfg, 5)[0].init(tree)) == 2
