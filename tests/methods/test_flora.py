"""FLoRA (docs/METHODS.md): stacking, merging, rounds, the merged checkpoint.

Independent references: numpy sums of per-client products, the un-merged LoRA model's logits.
"""
import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.defaults import base_config
from umema_jax.backbones import get_backbone_config
from umema_jax.methods.flora import FLoRA, stack_clients
from umema_jax.model import init_variables
from umema_jax.train.assemble import model_config_view
from umema_jax.train.state import create_train_state, split_params


def test_stacking_is_the_weighted_sum_of_products_and_fedavg_is_not():
    rng = np.random.default_rng(0)
    ranks, d_in, d_out = [6, 4, 2, 2], 12, 10
    r = max(ranks)
    # heterogeneous ranks, zero-padded to the largest (as FLoRA's rank masks leave them)
    a = np.zeros((4, d_in, r), np.float32)
    b = np.zeros((4, r, d_out), np.float32)
    for k, rk in enumerate(ranks):
        a[k, :, :rk] = rng.normal(size=(d_in, rk))
        b[k, :rk] = rng.normal(size=(rk, d_out))
    p = np.array([0.4, 0.3, 0.2, 0.1], np.float32)
    sa, sb = stack_clients(jnp.asarray(a), jnp.asarray(b), jnp.asarray(p))
    assert sa.shape == (d_in, 4 * r) and sb.shape == (4 * r, d_out)
    want = sum(p[k] * a[k].astype(np.float64) @ b[k] for k in range(4))
    np.testing.assert_allclose(np.asarray(sa @ sb), want, rtol=1e-6, atol=1e-6)
    fedavg = np.einsum("k,kir->ir", p, a) @ np.einsum("k,kro->ro", p, b)
    assert np.abs(fedavg - want).max() > 1e-2
    # identical clients: the stack is the one client's product (Σ p_k = 1)
    same_a, same_b = np.repeat(a[:1], 4, 0), np.repeat(b[:1], 4, 0)
    sa, sb = stack_clients(jnp.asarray(same_a), jnp.asarray(same_b), jnp.asarray(p))
    np.testing.assert_allclose(np.asarray(sa @ sb), a[0] @ b[0], rtol=1e-5, atol=1e-6)


def _flora(clients=1, ranks="", model="gpt2-tiny"):
    c = base_config()
    c.model.name, c.model.method, c.model.init_from_scratch = model, "flora", True
    c.methods.flora.clients, c.methods.flora.ranks = clients, ranks
    method = FLoRA(c)
    model = method.make_model(model_config_view(c, "cls", 3), get_backbone_config(c.model.name))
    variables = init_variables(model, jax.random.PRNGKey(0))
    method.bind(model, variables["params"])
    trained, frozen = method.split(variables["params"])
    method.weights = np.full((clients,), 1.0 / clients, np.float32)
    return c, method, model, variables, trained, frozen


def test_one_client_one_round_merged_logits_equal_the_unmerged_lora_model():
    c, method, model, variables, trained, frozen = _flora(clients=1)
    lora = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape), variables["lora"])
    method.tx = __import__("optax").sgd(0.0)
    state = create_train_state({"lora": lora, "params": trained}, {}, method.tx, 0, method)
    merged_state = jax.jit(method.merge_round)(jax.jit(method.store_client)(state, 0))
    merged = method.merged_frozen(frozen, merged_state.extra["delta"])
    batch = {"input_ids": jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 12)), jnp.int32),
             "attention_mask": jnp.ones((3, 12), jnp.int32)}
    apply = jax.jit(lambda v: model.apply(v, batch).logits)
    want = apply({"params": dict(frozen, **trained), "lora": lora})
    got = apply({"params": dict(merged, **merged_state.trainable["params"]), "lora": merged_state.trainable["lora"]})
    assert np.abs(np.asarray(want) - np.asarray(apply({"params": dict(frozen, **trained),
                                                        "lora": merged_state.trainable["lora"]}))).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_round_trips_the_merged_weights_bitwise(tmp_path):
    from umema_jax.train.checkpoint import Checkpoints
    c, method, model, variables, trained, frozen = _flora(clients=2)
    method.tx = __import__("optax").sgd(0.0)
    state = create_train_state({"lora": variables["lora"], "params": trained}, {}, method.tx, 0, method)
    delta = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(5), x.shape) * 1e-3, state.extra["delta"])
    state = state.replace(extra=dict(state.extra, delta=delta))
    ckpt = Checkpoints(str(tmp_path), async_save=False)
    ckpt.save_latest(1, state, {"x": 1})
    ckpt.wait()
    restored, _ = ckpt.restore_latest(state)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, restored.extra, state.extra)
    jax.tree.map(np.testing.assert_array_equal, method.merged_frozen(frozen, restored.extra["delta"]),
                 method.merged_frozen(frozen, delta))


def test_heterogeneous_ranks_confine_each_client_to_its_own_columns():
    import optax
    c, method, model, variables, trained, frozen = _flora(clients=2, ranks="8,3")
    method.tx = optax.adam(1e-2)
    state = create_train_state({"lora": variables["lora"], "params": trained}, {}, method.tx, 0, method)
    state = jax.jit(method.start_client)(state, 0, 1)                  # client 1: rank 3 of 8
    grads = jax.tree.map(jnp.ones_like, state.trainable)
    trainable, _, _ = jax.jit(lambda s, g: method.apply_gradients(method.tx, s, g))(state, grads)
    for path, x in jax.tree_util.tree_leaves_with_path(trainable["lora"]):
        x = np.asarray(x)
        beyond = x[..., 3:] if path[-1].key == "lora_a" else x[..., 3:, :]
        within = x[..., :3] if path[-1].key == "lora_a" else x[..., :3, :]
        assert np.all(beyond == 0) and np.any(within != 0), path
