"""SplitLoRA (docs/METHODS.md): the split exchange against the unsplit model, FedAvg, modes, traffic.

Independent references: the plain (unsplit) `UmemaModel` with each client's copy concatenated to
the server's LoRA, differentiated by `jax.grad`; plain LoRA training; numpy means.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.defaults import base_config
from umema_jax.backbones import get_backbone_config
from umema_jax.methods.splitlora import SplitLoRA, two_stage_grads
from umema_jax.model import init_variables, make_model
from umema_jax.train.assemble import model_config_view
from umema_jax.train.step import cross_entropy_sum, make_train_step, target_mask
from umema_jax.train.state import create_train_state, make_optimizer, split_params

N_LABELS = 3


def _config(clients=3, mode="parallel", fedavg=100, cut=1, model="gpt2-tiny"):
    c = base_config()
    c.model.name, c.model.method, c.model.init_from_scratch = model, "splitlora", True
    c.methods.splitlora.clients, c.methods.splitlora.mode = clients, mode
    c.methods.splitlora.fedavg_client_batches, c.methods.splitlora.cut_layers = fedavg, cut
    c.optim.learning_rate, c.optim.warmup_ratio = 1e-2, 0.0
    return c


def _build(config, seed=0):
    """(method, split model, plain model, params, trainable in the method's layout)."""
    method = SplitLoRA(config)
    cfg = get_backbone_config(config.model.name)
    view = model_config_view(config, "cls", N_LABELS)
    model = method.make_model(view, cfg)
    plain = model.model          # the unsplit UmemaModel (plain LoRA head)
    variables = init_variables(plain, jax.random.PRNGKey(seed))
    # non-zero B so that every factor gets a gradient
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), variables["lora"])
    trained, frozen = split_params(variables["params"], config.train.trainable_regex)
    trainable = method.init_trainable({"lora": lora, "params": trained})
    return method, model, plain, variables["params"], frozen, trainable


def _batch(rows, n=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, n), np.int32)
    mask[:, n - 3:] = rng.integers(0, 2, (rows, 1))        # some rows right-padded
    return {"input_ids": jnp.asarray(rng.integers(0, 256, (rows, n)), jnp.int32), "attention_mask": jnp.asarray(mask),
            "labels": jnp.asarray(rng.integers(0, N_LABELS, rows), jnp.int32),
            "example_mask": jnp.ones((rows,), jnp.int32), "task_id": jnp.zeros((rows,), jnp.int32)}


def _loss(out, batch):
    mask = target_mask(batch, "cls")
    return cross_entropy_sum(out.logits, batch["labels"], mask) / jnp.sum(mask)


def _unsplit_loss(plain, params, client, server, head, batch, clients, arch_scope="h"):
    """Σ_k CE of client k's rows through the whole model with LoRA = [copy k ; server] / all targets."""
    b = batch["input_ids"].shape[0] // clients
    total = 0.0
    for k in range(clients):
        rows = jax.tree.map(lambda x: x[k * b:(k + 1) * b], batch)
        lora = jax.tree.map(lambda c, s: jnp.concatenate([c[k], s]), client, server)
        out = plain.apply({"params": dict(params, head=head), "lora": lora}, rows, train=True)
        total = total + cross_entropy_sum(out.logits, rows["labels"], target_mask(rows, "cls"))
    return total / jnp.sum(target_mask(batch, "cls"))


def test_two_stage_vjp_equals_grad_of_the_composed_loss():
    method, model, plain, params, frozen, trainable = _build(_config(clients=3, cut=1))
    params = dict(params, head=trainable["params"]["head"])
    lora = trainable["lora"]
    # distinct client copies
    lora = dict(lora, client=jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
                                          lora["client"]))
    batch = _batch(6)
    rng = jax.random.PRNGKey(0)
    loss, grads, h, dh = jax.jit(lambda p, lo, b, r: two_stage_grads(model, p, lo, b, lambda out: _loss(out, b), r))(
        params, lora, batch, rng)
    ref_loss, ref = jax.jit(jax.value_and_grad(lambda *a: _unsplit_loss(plain, *a, 3), argnums=(1, 2, 3)))(
        params, lora["client"], lora["server"], params["head"], batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for got, want in zip((grads["client"], grads["server"], grads["head"]), ref):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert np.abs(w).max() > 0
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)
    # the same gradient as the train step takes (jax.grad through SplitModel.apply)
    def through_apply(lo, head):
        out = model.apply({"params": dict(params, head=head), "lora": lo}, batch, train=True, rngs={"dropout": rng})
        return _loss(out, batch)
    g_apply = jax.jit(jax.grad(through_apply, argnums=(0, 1)))(lora, params["head"])
    for g, w in zip(jax.tree.leaves(g_apply), jax.tree.leaves((grads["client"], grads["server"], grads["head"]))):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    assert h.shape == dh.shape == (6, 16, model.backbone_cfg.hidden_size)
    # the traffic the controller counts for a step is what crossed the cut: h up, ∂L/∂h down
    from umema_jax.methods.splitlora import TrafficController
    traffic = TrafficController(method, 10, 1)
    assert traffic.bytes_per_element * 6 * 16 == h.nbytes + dh.nbytes


def test_llama_client_and_server_parts_compose_to_the_whole_model():
    method, model, plain, params, frozen, trainable = _build(_config(clients=2, cut=1, model="llama-tiny"))
    batch = _batch(4)
    lora = jax.tree.map(lambda c, s: jnp.concatenate([c[0], s]), trainable["lora"]["client"],
                        trainable["lora"]["server"])
    params = dict(params, head=trainable["params"]["head"])
    whole = jax.jit(lambda: plain.apply({"params": params, "lora": lora}, batch).logits)()
    split = jax.jit(lambda: model.apply({"params": params, "lora": trainable["lora"]}, batch).logits)()
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)      # evaluation: the (equal) copies' mean


def _state(method, trainable, total_steps=10):
    tx, _ = method.optimizer(total_steps)
    return create_train_state(trainable, {}, tx, 0, method), tx


def _random_like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_fedavg_sets_every_copy_to_the_prior_mean_and_leaves_the_rest_alone():
    config = _config(clients=3, fedavg=3)                       # parallel: every ceil(3/3) = 1 step
    method, _, _, _, _, trainable = _build(config)
    never = SplitLoRA(_config(clients=3, fedavg=10 ** 6))
    state, tx = _state(method, trainable)
    grads = _random_like(trainable, 3)
    averaged = jax.jit(lambda s, g: method.apply_gradients(tx, s, g))(state, grads)
    plain = jax.jit(lambda s, g: never.apply_gradients(tx, s, g))(state, grads)
    for avg, raw in zip(jax.tree.leaves(averaged[0]["lora"]["client"]), jax.tree.leaves(plain[0]["lora"]["client"])):
        raw = np.asarray(raw)
        assert np.abs(raw[0] - raw[1]).max() > 0                # the copies differed before the FedAvg
        for k in range(3):
            np.testing.assert_allclose(avg[k], raw.mean(0), rtol=1e-6, atol=1e-7)
    for key in ("server",):
        jax.tree.map(np.testing.assert_array_equal, averaged[0]["lora"][key], plain[0]["lora"][key])
    jax.tree.map(np.testing.assert_array_equal, averaged[0]["params"], plain[0]["params"])
    jax.tree.map(np.testing.assert_array_equal, averaged[1], plain[1])   # moments are not averaged


def test_sequential_mode_leaves_idle_copies_and_their_adam_state_bitwise_unchanged():
    config = _config(clients=3, mode="sequential", fedavg=10 ** 6)
    method, _, _, _, _, trainable = _build(config)
    state, tx = _state(method, trainable)
    update = jax.jit(lambda s, g: s.replace(step=s.step + 1, **dict(zip(("trainable", "opt_state", "extra"),
                                                                          method.apply_gradients(tx, s, g)))))
    step = lambda s, slot, seed: update(s.replace(extra=dict(s.extra, slot=jnp.asarray(slot, jnp.int32))),
                                        _random_like(trainable, seed))
    for i, slot in enumerate((0, 1, 2, 0)):                    # every copy has Adam history
        state = step(state, slot, 10 + i)
    before = state
    after = step(state, 1, 20)                                 # gradients everywhere; only slot 1 may move
    from umema_jax.train.state import PerCopyState
    slots = lambda s: [x for x in jax.tree.leaves(s.opt_state, is_leaf=lambda x: isinstance(x, PerCopyState))
                       if isinstance(x, PerCopyState)]
    for new, old in zip(jax.tree.leaves((after.trainable["lora"]["client"], slots(after))),
                        jax.tree.leaves((before.trainable["lora"]["client"], slots(before)))):
        new, old = np.asarray(new), np.asarray(old)
        for k in (0, 2):
            np.testing.assert_array_equal(new[k], old[k])
        assert not np.array_equal(new[1], old[1])
    counts = [np.asarray(x.inner.count) for x in slots(after)]
    np.testing.assert_array_equal(counts[0], [2, 2, 1])         # per-copy Adam counts


def test_one_client_reproduces_plain_lora_training():
    config = _config(clients=1, fedavg=1)                       # a FedAvg of one copy is the identity
    method, model, plain, params, frozen, trainable = _build(config)
    state, tx = _state(method, trainable)
    ptx, sched = make_optimizer(config.optim, 10)
    lora = jax.tree.map(lambda c, s: jnp.concatenate([c[0], s]), trainable["lora"]["client"],
                        trainable["lora"]["server"])
    pstate = create_train_state({"lora": lora, "params": trainable["params"]}, {}, ptx, 0)
    split_step = jax.jit(make_train_step(model, tx, sched, "cls", 1, method))
    plain_step = jax.jit(make_train_step(plain, ptx, sched, "cls"))
    for i in range(3):
        batch = _batch(4, seed=i)
        state, m = split_step(state, frozen, batch)
        pstate, pm = plain_step(pstate, frozen, batch)
        np.testing.assert_allclose(m["loss"], pm["loss"], rtol=1e-6)
    got = jax.tree.map(lambda c, s: jnp.concatenate([c[0], s]), state.trainable["lora"]["client"],
                       state.trainable["lora"]["server"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, pstate.trainable["lora"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), state.trainable["params"],
                 pstate.trainable["params"])
