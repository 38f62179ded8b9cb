"""EMA bank as pure functions (docs/METHOD.md): FIFO, no gradient, masked writes, uncertainty-softened reads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.memory.bank import (confidence_weighted_entry, confidence_weighted_moments, init_bank, read_bank,
                                   reset_bank, retrieval_temperature, write_bank, write_moments)

J, D = 256, 8


def _written(bank, count, seed=5):
    """`bank` with its first `count` slots written with random entries (FIFO writes)."""
    rows = np.random.RandomState(seed).randn(count, D).astype(np.float32)
    for row in rows:
        bank = write_bank(bank, jnp.asarray(row))
    return bank, rows


def test_init_is_xavier_uniform_and_pointer_zero():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    limit = np.sqrt(6.0 / (J + D))
    assert bank["keys"].shape == bank["values"].shape == (J, D)
    assert bank["pointer"].dtype == jnp.int32 and int(bank["pointer"]) == 0
    assert bank["filled"].dtype == jnp.int32 and int(bank["filled"]) == 0
    assert np.abs(bank["keys"]).max() <= limit and np.abs(bank["keys"]).max() > 0.8 * limit
    assert not np.allclose(bank["keys"], bank["values"])


def test_fifo_order_and_wrap_around_after_256_writes():
    bank = init_bank(jax.random.PRNGKey(0), J, D)
    write = jax.jit(write_bank)
    total = J + 3
    filled = []
    for t in range(total):
        bank = write(bank, jnp.full((D,), float(t)))
        filled.append(int(bank["filled"]))
    assert int(bank["pointer"]) == 3
    assert filled == [min(t + 1, J) for t in range(total)]   # counts writes, saturates at J
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
    assert int(fresh["pointer"]) == 0 and int(fresh["filled"]) == 0 and fresh["keys"].shape == (J, D)
    assert not np.any(np.all(np.asarray(fresh["keys"]) == 1.0, axis=-1))


def test_no_gradient_reaches_the_bank():
    bank, _ = _written(init_bank(jax.random.PRNGKey(0), J, D), 5)
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


@pytest.mark.parametrize("retrieval", ["cosine", "dot"])
def test_retrieval_gets_flatter_with_uncertainty(retrieval):
    bank, _ = _written(init_bank(jax.random.PRNGKey(0), J, D), 40)
    query = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (D,))
    us = jnp.linspace(0.0, 3.0, 7)
    tau = retrieval_temperature(1.0, jnp.float32(0.0), us)
    entropies = []
    for t in tau:
        _, alpha = read_bank(bank, query, t, retrieval)
        np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
        a = np.asarray(alpha)[:40]
        entropies.append(float(-(a * np.log(np.maximum(a, 1e-30))).sum()))
    assert np.all(np.diff(np.asarray(tau)) > 0)
    assert np.all(np.diff(entropies) > 0), entropies


def test_cosine_retrieval_matches_numpy_and_ignores_query_scale():
    """with dot-product scores a growing query norm makes retrieval one-hot; cosine cannot."""
    bank, rows = _written(init_bank(jax.random.PRNGKey(0), J, D), 20)
    q = np.random.RandomState(2).randn(3, D).astype(np.float32)
    tau = np.array([1.0, 1.5, 2.0], np.float32)
    r, alpha = read_bank(bank, jnp.asarray(q), jnp.asarray(tau), "cosine", 10.0)
    cos = (q / np.linalg.norm(q, axis=-1, keepdims=True)) @ (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).T
    logits = 10.0 * cos / tau[:, None]
    ref = np.exp(logits - logits.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(alpha)[:, :20], ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(alpha)[:, 20:], 0.0)
    np.testing.assert_allclose(r, ref @ rows, rtol=1e-4, atol=1e-6)
    _, scaled = read_bank(bank, jnp.asarray(100.0 * q), jnp.asarray(tau), "cosine", 10.0)
    np.testing.assert_allclose(scaled, alpha, rtol=1e-5, atol=1e-7)
    _, dot1 = read_bank(bank, jnp.asarray(q), jnp.asarray(tau), "dot")
    _, dot100 = read_bank(bank, jnp.asarray(100.0 * q), jnp.asarray(tau), "dot")
    assert float(np.max(dot100)) > 0.99 > float(np.max(dot1))   # the dot form's one-hot collapse


def test_never_written_slots_get_no_weight():
    empty = init_bank(jax.random.PRNGKey(0), J, D)
    q = jnp.asarray(np.random.RandomState(3).randn(4, D), jnp.float32)
    r, alpha = read_bank(empty, q, jnp.ones((4,)))
    np.testing.assert_array_equal(alpha, 0.0)     # nothing written: nothing read, r = 0
    np.testing.assert_array_equal(r, 0.0)
    _, unmasked = read_bank(empty, q, jnp.ones((4,)), mask_unwritten=False)
    np.testing.assert_allclose(np.asarray(unmasked).sum(-1), 1.0, rtol=1e-5)
    bank, rows = _written(empty, 3)
    r, alpha = read_bank(bank, q, jnp.ones((4,)))
    np.testing.assert_allclose(np.asarray(alpha)[:, :3].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(alpha)[:, 3:], 0.0)
    np.testing.assert_allclose(r, np.asarray(alpha)[:, :3] @ rows, rtol=1e-5, atol=1e-6)


def test_moments_over_micro_batches_give_the_mini_batch_entry():
    """under accumulation the slot is the confidence-weighted mean over the whole
    mini-batch; a micro-batch of padding rows adds nothing; the pointer moves iff a row was real."""
    r = np.random.RandomState(4)
    reps = r.randn(8, D).astype(np.float32)
    ubar = r.rand(8).astype(np.float32)
    mask = np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)
    w = (1 - ubar) * mask
    expected = (w[:, None] * reps).sum(0) / w.sum()
    numer, denom = 0.0, 0.0
    for rows in (slice(0, 3), slice(3, 5), slice(5, 8)):     # uneven micro-batches, the last all padding
        n_, d_ = confidence_weighted_moments(reps[rows], ubar[rows], mask[rows])
        numer, denom = numer + n_, denom + d_
    bank = write_moments(init_bank(jax.random.PRNGKey(0), J, D), numer, denom)
    np.testing.assert_allclose(bank["keys"][0], expected, rtol=1e-5)
    assert int(bank["pointer"]) == 1 and int(bank["filled"]) == 1
    n_, d_ = confidence_weighted_moments(reps[5:], ubar[5:], mask[5:])
    same = write_moments(bank, n_, d_)
    assert int(same["pointer"]) == 1 and int(same["filled"]) == 1
    np.testing.assert_array_equal(same["keys"], bank["keys"])
