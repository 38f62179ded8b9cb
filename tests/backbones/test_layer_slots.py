"""Layer slots (LISA's efficient form): block l runs with slot `slot_of[l]`'s weights, the rest frozen.

Checked against the plain scanned stack: equal outputs when the slots hold copies of their layers, and
gradients w.r.t. the slots equal the plain stack's gradients of those layers (the frozen layers get none)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.backbones import build_backbone, get_backbone_config, init_backbone_params
from umema_jax.train.state import BLOCK_SCOPES


def _case(name, layers=4):
    cfg = get_backbone_config(name).replace(vocab_size=128, num_layers=layers)
    params = init_backbone_params(cfg, jax.random.PRNGKey(2))
    scope = next(s for s in BLOCK_SCOPES if s in params)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 128, (3, 7)), jnp.int32)
    mask = jnp.ones((3, 7), jnp.int32).at[0, 5:].set(0)
    return cfg, params, scope, ids, mask


def _slot_vars(params, scope, active, layers):
    slot_of = np.full(layers, -1, np.int32)
    slot_of[list(active)] = np.arange(len(active))
    slots = jax.tree.map(lambda x: x[np.asarray(active)], params[scope])
    return {"slot_of": jnp.asarray(slot_of), scope: slots}


@pytest.mark.parametrize("name,remat", [("gpt2-tiny", False), ("llama-tiny", True)])
def test_slotted_stack_equals_the_plain_one_in_value_and_in_the_active_layers_gradients(name, remat):
    cfg, params, scope, ids, mask = _case(name)
    module = build_backbone(cfg, remat=remat)
    active = (3, 1)                                   # slot 0 -> layer 3, slot 1 -> layer 1 (any order)

    def plain_loss(p):
        out = module.apply({"params": p}, ids, mask, output_hidden_states=True)
        return jnp.sum(out.last_hidden_state ** 2) + 0.1 * jnp.sum(out.hidden_states ** 2)

    def slotted_loss(slots, p):
        variables = {"params": p, "layer_slots": {"slot_of": _slot_vars(p, scope, active, 4)["slot_of"],
                                                  scope: slots}}
        out = module.apply(variables, ids, mask, output_hidden_states=True)
        return jnp.sum(out.last_hidden_state ** 2) + 0.1 * jnp.sum(out.hidden_states ** 2)

    slots0 = _slot_vars(params, scope, active, 4)[scope]
    loss, g_plain = jax.jit(jax.value_and_grad(plain_loss))(params)
    loss_s, (g_slots, g_frozen) = jax.jit(jax.value_and_grad(slotted_loss, argnums=(0, 1)))(slots0, params)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(g_slots):
        ref = g_plain[scope]
        for k in path:
            ref = ref[k.key]
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref)[list(active)], rtol=2e-5, atol=1e-6,
                                   err_msg=str(path))
        assert np.abs(np.asarray(ref)[[0, 2]]).max() > 0          # the plain stack does move frozen layers
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(g_frozen[scope]))   # the stack gets none


def test_slots_replace_the_stacked_weights_of_their_layers():
    """A slot's weights, not the stacked ones, run its layer: a changed slot changes the output exactly as
    the same change in the plain stack would."""
    cfg, params, scope, ids, mask = _case("llama-tiny")
    module = build_backbone(cfg)
    moved = jax.tree.map(lambda x: x.at[2].multiply(1.5), params[scope])
    plain = module.apply({"params": {**params, scope: moved}}, ids, mask).last_hidden_state
    slots = jax.tree.map(lambda x: x[np.array([2])], moved)
    variables = {"params": params, "layer_slots": {"slot_of": jnp.array([-1, -1, 0, -1], jnp.int32), scope: slots}}
    slotted = module.apply(variables, ids, mask).last_hidden_state
    unchanged = module.apply({"params": params}, ids, mask).last_hidden_state
    np.testing.assert_allclose(slotted, plain, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(slotted - unchanged)).max() > 1e-3
    with pytest.raises(ValueError, match="slot_of has shape"):
        bad = {"params": params, "layer_slots": {"slot_of": jnp.array([0, -1], jnp.int32), scope: slots}}
        module.apply(bad, ids, mask)
