"""External memory bank (EMA) as pure functions — METHOD.md §2.

The bank is a buffer, not a parameter: a dict `{'keys' [J,d], 'values' [J,d],
'pointer' [] int32}` stored in the Flax collection `memory`. Reads stop
gradients at the bank, writes are FIFO with `lax.dynamic_update_slice`, so the
bank never has a cotangent and never needs optimizer state. Keeping the logic
here (outside any module) lets the FIFO behaviour be tested on its own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Bank = dict  # {'keys': [J,d], 'values': [J,d], 'pointer': [] int32}


def init_bank(rng: jax.Array, slots: int = 256, dim: int = 768, dtype=jnp.float32) -> Bank:
    """Xavier-uniform keys and values (independent draws), pointer at slot 0."""
    init = jax.nn.initializers.xavier_uniform()
    k_rng, v_rng = jax.random.split(rng)
    return {
        "keys": init(k_rng, (slots, dim), dtype),
        "values": init(v_rng, (slots, dim), dtype),
        "pointer": jnp.zeros((), jnp.int32),
    }


def reset_bank(rng: jax.Array, bank: Bank) -> Bank:
    """Fresh bank of the same shape for a new task (METHOD §2, lifetime)."""
    slots, dim = bank["keys"].shape
    return init_bank(rng, slots, dim, bank["keys"].dtype)


def retrieval_temperature(tau0: float, beta: jax.Array, u_bar: jax.Array) -> jax.Array:
    """`τ = τ0 (1 + softplus(β) ū)`: higher uncertainty gives softer retrieval."""
    return tau0 * (1.0 + jax.nn.softplus(beta) * u_bar)


def read_bank(bank: Bank, query: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`α = softmax(q K^T / (sqrt(d) τ))`, `r = α V`.

    query [..., d], tau broadcastable to query[..., 0] -> (r [..., d], α [..., J]).
    Gradients stop at the bank: it is a buffer (paper: no gradient).
    """
    keys = jax.lax.stop_gradient(bank["keys"]).astype(query.dtype)
    values = jax.lax.stop_gradient(bank["values"]).astype(query.dtype)
    d = query.shape[-1]
    scores = jnp.einsum("...d,jd->...j", query, keys) / (jnp.sqrt(float(d)) * jnp.asarray(tau)[..., None])
    alpha = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...j,jd->...d", alpha, values), alpha


def confidence_weighted_entry(reps: jax.Array, u_bar: jax.Array, weight_mask: jax.Array,
                              axis_name: str | None = None) -> jax.Array:
    """New slot content `Σ_b w_b c̃_b` with `w_b ∝ (1 − ū_b)` over valid rows.

    reps [..., d] (rows [B,d], or tokens [B,n,d] for NER), u_bar and weight_mask
    [...]; rows with weight_mask 0 (padding rows / padded tokens) never count.
    `1 − ū` is clipped at 1e-6 so weights stay positive when ū > 1. The sums run
    over the whole global batch: under `jit` with a sharded batch XLA inserts the
    cross-device reduction; under `shard_map`/`pmap` pass `axis_name` to psum.
    The result carries no gradient.
    """
    reps = jax.lax.stop_gradient(reps).astype(jnp.float32)
    conf = jnp.clip(1.0 - jax.lax.stop_gradient(u_bar).astype(jnp.float32), 1e-6, None)
    w = conf * weight_mask.astype(jnp.float32)
    flat_w = w.reshape(-1)
    numer = jnp.einsum("k,kd->d", flat_w, reps.reshape(-1, reps.shape[-1]))
    denom = jnp.sum(flat_w)
    if axis_name is not None:
        numer = jax.lax.psum(numer, axis_name)
        denom = jax.lax.psum(denom, axis_name)
    return numer / jnp.maximum(denom, 1e-12)


def write_bank(bank: Bank, entry: jax.Array, enabled: jax.Array | bool = True) -> Bank:
    """FIFO write: `K[p] = V[p] = entry`, `p ← (p + 1) mod J`.

    `enabled` (traced bool allowed) turns the write into a no-op, e.g. for a
    batch made only of padding rows, without a Python branch under `jit`.
    """
    slots = bank["keys"].shape[0]
    pointer = bank["pointer"].astype(jnp.int32)
    row = jax.lax.stop_gradient(entry)[None, :]
    written = {
        "keys": jax.lax.dynamic_update_slice(bank["keys"], row.astype(bank["keys"].dtype),
                                             (pointer, jnp.int32(0))),
        "values": jax.lax.dynamic_update_slice(bank["values"], row.astype(bank["values"].dtype),
                                               (pointer, jnp.int32(0))),
        "pointer": ((pointer + 1) % slots).astype(jnp.int32),
    }
    enabled = jnp.asarray(enabled, bool)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(enabled, new, old), written, dict(bank))
