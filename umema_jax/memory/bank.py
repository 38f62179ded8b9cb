"""External memory bank (EMA) as pure functions — docs/METHOD.md

The bank is a buffer, not a parameter: a dict `{'keys' [J,d], 'values' [J,d],
'pointer' [] int32, 'filled' [] int32}` stored in the Flax collection `memory`.
`filled` counts written slots (saturating at J); FIFO order means slots
`[0, filled)` hold written entries and the rest are still Xavier noise, which
retrieval masks out (docs/METHOD.md, "Stability"). Reads stop
gradients at the bank, writes are FIFO with `lax.dynamic_update_slice`, so the
bank never has a cotangent and never needs optimizer state. Keeping the logic
here (outside any module) lets the FIFO behaviour be tested on its own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Bank = dict  # {'keys': [J,d], 'values': [J,d], 'pointer': [] int32, 'filled': [] int32}


def init_bank(rng: jax.Array, slots: int = 256, dim: int = 768, dtype=jnp.float32) -> Bank:
    """Xavier-uniform keys and values (independent draws), pointer at slot 0, nothing written."""
    init = jax.nn.initializers.xavier_uniform()
    k_rng, v_rng = jax.random.split(rng)
    return {
        "keys": init(k_rng, (slots, dim), dtype),
        "values": init(v_rng, (slots, dim), dtype),
        "pointer": jnp.zeros((), jnp.int32),
        "filled": jnp.zeros((), jnp.int32),
    }


def reset_bank(rng: jax.Array, bank: Bank) -> Bank:
    """Fresh bank of the same shape for a new task (docs/METHOD.md)."""
    slots, dim = bank["keys"].shape
    return init_bank(rng, slots, dim, bank["keys"].dtype)


def retrieval_temperature(tau0: float, beta: jax.Array, u_bar: jax.Array) -> jax.Array:
    """`τ = τ0 (1 + softplus(β) ū)`: higher uncertainty gives softer retrieval."""
    return tau0 * (1.0 + jax.nn.softplus(beta) * u_bar)


RETRIEVALS = ("cosine", "dot")


def retrieval_scores(bank: Bank, query: jax.Array, tau: jax.Array, retrieval: str = "cosine",
                     scale: float = 10.0) -> jax.Array:
    """Retrieval logits [..., J] before masking.

    'dot' (docs/METHOD.md as written): `q K^T / (sqrt(d) τ)`. Its sharpness grows with
    the query norm, which the optimizer can raise without bound until retrieval
    is one-hot and passes no gradient (the stability study, docs/METHOD.md). 'cosine': `scale · cos(q, K_j) / τ`,
    invariant to the query's and keys' norms, so the sharpness is fixed by
    `scale` (max weight ratio e^{2·scale/τ}).
    """
    keys = jax.lax.stop_gradient(bank["keys"]).astype(query.dtype)
    tau = jnp.asarray(tau)[..., None]
    if retrieval == "dot":
        return jnp.einsum("...d,jd->...j", query, keys) / (jnp.sqrt(float(query.shape[-1])) * tau)
    if retrieval == "cosine":
        qn = query * jax.lax.rsqrt(jnp.sum(jnp.square(query), -1, keepdims=True) + 1e-12)
        kn = keys * jax.lax.rsqrt(jnp.sum(jnp.square(keys), -1, keepdims=True) + 1e-12)
        return scale * jnp.einsum("...d,jd->...j", qn, kn) / tau
    raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")


def written_slots(bank: Bank) -> jax.Array:
    """[J] bool: slots holding a written entry (FIFO from slot 0, so `j < filled`)."""
    slots = bank["keys"].shape[0]
    return jnp.arange(slots) < bank["filled"]


def read_bank(bank: Bank, query: jax.Array, tau: jax.Array, retrieval: str = "cosine",
              scale: float = 10.0, mask_unwritten: bool = True) -> tuple[jax.Array, jax.Array]:
    """`α = softmax(scores)`, `r = α V` (scores from `retrieval_scores`).

    query [..., d], tau broadcastable to query[..., 0] -> (r [..., d], α [..., J]).
    With `mask_unwritten`, never-written slots get weight exactly 0, and before
    the first write α = 0 and r = 0 (the fusion is then a no-op). Gradients
    stop at the bank: it is a buffer (paper: no gradient).
    """
    values = jax.lax.stop_gradient(bank["values"]).astype(query.dtype)
    scores = retrieval_scores(bank, query, tau, retrieval, scale)
    if mask_unwritten:
        valid = written_slots(bank)
        alpha = jax.nn.softmax(jnp.where(valid, scores, -1e30), axis=-1)
        alpha = jnp.where(valid, alpha, 0.0)
    else:
        alpha = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...j,jd->...d", alpha, values), alpha


def confidence_weighted_moments(reps: jax.Array, u_bar: jax.Array, weight_mask: jax.Array,
                                axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """(`Σ_b w_b c̃_b` [d], `Σ_b w_b` []) with `w_b = (1 − ū_b)·mask_b`.

    The two sums of the new slot's confidence-weighted mean, kept apart so that
    micro-batches (gradient accumulation) add them up and the slot is written
    once per mini-batch with exactly the mini-batch's mean. reps [..., d] (rows
    [B,d], or tokens [B,n,d] for NER), u_bar and weight_mask [...]; rows with
    weight_mask 0 (padding rows / padded tokens) never count. `1 − ū` is clipped
    at 1e-6 so weights stay positive when ū > 1. Under `jit` with a sharded
    batch XLA inserts the cross-device reduction; under `shard_map`/`pmap` pass
    `axis_name` to psum. No gradient flows through either sum.
    """
    reps = jax.lax.stop_gradient(reps).astype(jnp.float32)
    conf = jnp.clip(1.0 - jax.lax.stop_gradient(u_bar).astype(jnp.float32), 1e-6, None)
    flat_w = (conf * weight_mask.astype(jnp.float32)).reshape(-1)
    numer = jnp.einsum("k,kd->d", flat_w, reps.reshape(-1, reps.shape[-1]))
    denom = jnp.sum(flat_w)
    if axis_name is not None:
        numer = jax.lax.psum(numer, axis_name)
        denom = jax.lax.psum(denom, axis_name)
    return numer, denom


def confidence_weighted_entry(reps: jax.Array, u_bar: jax.Array, weight_mask: jax.Array,
                              axis_name: str | None = None) -> jax.Array:
    """New slot content `Σ_b w_b c̃_b / Σ_b w_b` (see `confidence_weighted_moments`)."""
    numer, denom = confidence_weighted_moments(reps, u_bar, weight_mask, axis_name)
    return numer / jnp.maximum(denom, 1e-12)


def write_moments(bank: Bank, numer: jax.Array, denom: jax.Array) -> Bank:
    """Writes `numer / denom` as one FIFO slot; a no-op when no real row contributed (denom == 0)."""
    return write_bank(bank, numer / jnp.maximum(denom, 1e-12), enabled=denom > 0)


def write_bank(bank: Bank, entry: jax.Array, enabled: jax.Array | bool = True) -> Bank:
    """FIFO write: `K[p] = V[p] = entry`, `p ← (p + 1) mod J`, `filled ← min(filled + 1, J)`.

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
        "filled": jnp.minimum(bank["filled"] + 1, slots).astype(jnp.int32),
    }
    enabled = jnp.asarray(enabled, bool)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(enabled, new, old), written, dict(bank))
