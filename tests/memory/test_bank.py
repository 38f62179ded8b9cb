"""EMA bank as pure functions (METHOD §2): FIFO, no gradient, masked writes, uncertainty-softened reads."""
import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.memory.bank import (confidence_weighted_entry, init_bank, read_bank, reset_bank,
                                   retrieval_temperature, write_bank)

J, D = 256, 8


def test_init_is_xavier_uniform_and_pointer_zero():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    limit = np.sqrt(6.0 / (J + D))
    assert bank["keys"].shape == bank["values"].shape == (J, D)
    assert bank["pointer"].dtype == jnp.int32 and int(bank["pointer"]) == 0
    assert np.abs(bank["keys"]).max() <= limit and np.abs(bank["keys"]).max() > 0.8 * limit
    assert not np.allclose(bank["keys"], bank["values"])


def test_fifo_order_and_wrap_around_after_256_writes():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    write = jax.jit(write_bank)
    total = J + 3
    for t in range(total):
        bank = write(bank, jnp.full((D,), float(t)))
    assert int(bank["pointer"]) == 3
    expected = np.arange(J, dtype=np.float32)
    expected[:3] = [J, J + 1, J + 2]          # the three oldest slots were overwritten
    np.testing.assert_array_equal(bank["keys"][:, 0], expected)
    np.testing.assert_array_equal(bank["values"], bank["keys"])


def test_disabled_write_is_a_no_op():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    same = write_bank(bank, jnp.ones((D,)), enabled=jnp.array(False))
    for k in bank:
        np.testing.assert_array_equal(same[k], bank[k])


def test_reset_bank_gives_fresh_xavier_bank():
    bank = write_bank(init_bank(jax.random.PRNGKey(0), J, D), jnp.ones((D,)))
    fresh = reset_bank(jax.random.PRNGKey(7), bank)
    assert int(fresh["pointer"]) == 0 and fresh["keys"].shape == (J, D)
    assert not np.any(np.all(np.asarray(fresh["keys"]) == 1.0, axis=-1))


def test_no_gradient_reaches_the_bank():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    w = jax.random.normal(jax.random.PRNGKey(1), (D, D))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, D))

    def loss(w, bank):
        r, _ = read_bank(bank, x @ w, jnp.ones((4,)))
        new = write_bank(bank, confidence_weighted_entry(r, jnp.zeros(4), jnp.ones(4)))
        r2, _ = read_bank(new, x @ w, jnp.ones((4,)))
        return jnp.sum(r ** 2) + jnp.sum(r2 ** 2)

    g_w, g_bank = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(w, bank)
    assert float(jnp.abs(g_w).sum()) > 0
    assert float(jnp.abs(g_bank["keys"]).sum()) == 0 and float(jnp.abs(g_bank["values"]).sum()) == 0


def test_padding_rows_do_not_change_the_entry():
    r = np.random.RandomState(0)
    reps, ubar = r.randn(3, D).astype(np.float32), np.array([0.1, 0.5, 0.9], np.float32)
    entry = confidence_weighted_entry(reps, ubar, np.ones(3))
    padded = confidence_weighted_entry(np.concatenate([reps, 100 * r.randn(2, D)]),
                                       np.concatenate([ubar, [0.0, 0.0]]), np.array([1, 1, 1, 0, 0]))
    np.testing.assert_allclose(entry, padded, rtol=1e-6)
    w = (1 - ubar) / (1 - ubar).sum()
    np.testing.assert_allclose(entry, w @ reps, rtol=1e-5)


def test_token_level_entry_over_valid_tokens():
    r = np.random.RandomState(1)
    reps = r.randn(2, 4, D).astype(np.float32)
    ubar = r.rand(2, 4).astype(np.float32) * 0.5
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], np.float32)
    entry = confidence_weighted_entry(reps, ubar, mask)
    w = (1 - ubar) * mask
    np.testing.assert_allclose(entry, (w[..., None] * reps).sum((0, 1)) / w.sum(), rtol=1e-5)


def test_retrieval_gets_flatter_with_uncertainty():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    query = 20.0 * jax.random.normal(jax.random.PRNGKey(3), (D,))
    us = jnp.linspace(0.0, 3.0, 7)
    tau = retrieval_temperature(1.0, jnp.float32(0.0), us)
    entropies = []
    for t in tau:
        _, alpha = read_bank(bank, query, t)
        np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
        entropies.append(float(-(alpha * jnp.log(alpha)).sum()))
    assert np.all(np.diff(np.asarray(tau)) > 0)
    assert np.all(np.diff(entropies) > 0), entropies
