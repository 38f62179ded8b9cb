"""Training telemetry of the UM and EMA branches: scalars per step, inside the jitted step.

A collapse of the method shows in these curves while it happens: the
temperature drifting up with no spread across the batch (`temperature_std` → 0),
the uncertainty summary `M_U` and the head's input becoming the same for every
example (`*_cosine` → 1), retrieval going one-hot on one slot
(`memory_max_weight` → 1, `memory_distinct_slots` → 1), the read swamping the
representation (`memory_update_ratio`). Every statistic is masked to real rows
(cls) or valid tokens of real rows (NER), so padding never shows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PREFIX = "branch/"


def _weights(batch: dict, leading: tuple) -> jax.Array:
    rows = batch["example_mask"].astype(jnp.float32)
    if len(leading) == 2:                      # per token (NER)
        return rows[:, None] * batch["attention_mask"].astype(jnp.float32)
    return rows


def _mean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _std(x: jax.Array, w: jax.Array) -> jax.Array:
    mu = _mean(x, w)
    return jnp.sqrt(_mean(jnp.square(x - mu), w))


def mean_pairwise_cosine(x: jax.Array, w: jax.Array) -> jax.Array:
    """Mean cosine similarity over pairs of distinct valid vectors; 1 = all point the same way.

    x [..., d], w [...] in {0, 1}. O(N·d): `(‖Σ x̂‖² − N) / (N(N − 1))`.
    """
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    wf = w.reshape(-1).astype(jnp.float32)
    unit = flat * jax.lax.rsqrt(jnp.sum(jnp.square(flat), -1, keepdims=True) + 1e-12)
    total = jnp.einsum("k,kd->d", wf, unit)
    n = jnp.sum(wf)
    return (jnp.sum(jnp.square(total)) - n) / jnp.maximum(n * (n - 1.0), 1.0)


def branch_telemetry(aux: dict, internals: dict, batch: dict, memory: dict) -> dict:
    """{'branch/<name>': scalar} from one forward pass (`memory`: the bank it read). The written-slot
    count is added by the train step after its write (`memory_written_slots`)."""
    out: dict = {}
    features = internals.get("features")
    if features is None:
        return out
    w = _weights(batch, features.shape[:-1])
    out["features_cosine"] = mean_pairwise_cosine(features, w)
    if "temperature" in aux:                   # an uncertainty head: its temperature, and UM's ū
        out["temperature_mean"] = _mean(aux["temperature"], w)
        out["temperature_std"] = _std(aux["temperature"], w)
        out["temperature_max"] = jnp.max(jnp.where(w > 0, aux["temperature"], 0.0))
    if "u_bar" in aux:
        out["u_bar_mean"] = _mean(aux["u_bar"], w)
        out["u_bar_std"] = _std(aux["u_bar"], w)
    if "memory_embedding" in internals:
        m_u = internals["memory_embedding"]
        out["memory_embedding_cosine"] = mean_pairwise_cosine(m_u, batch["example_mask"].astype(jnp.float32))
    if "memory_top_weights" in aux:
        out["memory_max_weight"] = _mean(aux["memory_top_weights"][..., 0], w)
        slots = memory["keys"].shape[0]
        hits = jax.nn.one_hot(aux["memory_top_indices"][..., 0], slots) * w[..., None]
        out["memory_distinct_slots"] = jnp.sum(jnp.any(hits.reshape(-1, slots) > 0, axis=0)).astype(jnp.float32)
        out["memory_update_ratio"] = _mean(internals["memory_update_ratio"], w)
    return {PREFIX + k: v for k, v in out.items()}
