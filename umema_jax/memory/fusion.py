"""EMA query, uncertainty-controlled retrieval and gated fusion — docs/METHOD.md

The module owns only the trainable projections (`ema/...` params); the bank is
passed in (it lives in the `memory` collection of the enclosing model) and is
read through `bank.read_bank`, which stops gradients at the bank.

Every map between the hidden size d and the branch is factorised through the
bottleneck d_u (`W = U·D`, D: d→d_u, U: d_u→d), so the branch costs O(d·d_u).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from umema_jax.memory.bank import Bank, read_bank, retrieval_temperature
from umema_jax.uncertainty.um import layer_norm_no_params


@dataclasses.dataclass(frozen=True)
class EMAConfig:
    """Settings of the EMA branch (every field is a `model.ema.*` config key).

    slots: J (paper: 256). tau0: base retrieval temperature τ0. d_u: bottleneck.
    top_k: how many top slots to report. axis_name: mesh axis when the bank
    write runs under shard_map/pmap (None under jit+sharding, where XLA reduces).
    The stability settings (docs/METHOD.md, "Stability"; each was an
    ablation row of the stability study): retrieval 'cosine' (norm-invariant, sharpness fixed
    by retrieval_scale) or 'dot' (docs/METHOD.md as written); query_norm: parameter-
    free LayerNorm on c and M_U before the query projection, so neither term
    can dominate the query by growing its norm; mask_unwritten: never-written
    (Xavier-noise) slots get no retrieval weight.
    """
    slots: int = 256
    tau0: float = 1.0
    d_u: int = 64
    top_k: int = 3
    axis_name: str | None = None
    retrieval: str = "cosine"
    retrieval_scale: float = 10.0
    query_norm: bool = True
    mask_unwritten: bool = True


@struct.dataclass
class FusionOutput:
    fused: jax.Array          # c̃ [..., d]
    attention: jax.Array      # α [..., J]
    tau: jax.Array            # τ [...]
    gate: jax.Array           # g [..., d]
    top_indices: jax.Array    # [..., top_k] int32
    top_weights: jax.Array    # [..., top_k]
    update_ratio: jax.Array   # ‖g ⊙ W_r r‖ / ‖c‖ [...] (telemetry: how much the read moves c)


class MemoryFusion(nn.Module):
    """`q = W_q[c; M_U]`, `α = softmax(qK^T/(sqrt(d)τ))`, `τ = τ0(1+softplus(β)ū)`,
    `g = σ(W_g[c; r] + w_g ū + b_g)`, `c̃ = c + g ⊙ W_r r` with W_r = 0 at init.

    c: [B,d] (classification) or [B,n,d] (per token for NER). m_u: [B,d_u] or
    None (ablation without UM: M_U is omitted from the query). u_bar: same
    leading shape as c without d, or None (treated as 0).
    """
    config: EMAConfig = EMAConfig()

    @nn.compact
    def __call__(self, c: jax.Array, bank: Bank, m_u: jax.Array | None = None,
                 u_bar: jax.Array | None = None) -> FusionOutput:
        cfg = self.config
        f32 = jnp.float32
        c = c.astype(f32)
        d = c.shape[-1]
        lead = c.shape[:-1]
        if u_bar is None:
            u_bar = jnp.zeros(lead, f32)
        u_bar = jnp.broadcast_to(u_bar.astype(f32), lead)
        dense = lambda name, feats, **kw: nn.Dense(feats, name=name, dtype=f32, param_dtype=f32, **kw)

        # Query through the d_u bottleneck; M_U is broadcast over tokens for NER.
        norm = layer_norm_no_params if cfg.query_norm else (lambda x: x)
        z = dense("query_from_context", cfg.d_u, use_bias=False)(norm(c))
        if m_u is not None:
            m = dense("query_from_um", cfg.d_u, use_bias=False)(norm(m_u.astype(f32)))
            z = z + m.reshape(m.shape[:1] + (1,) * (c.ndim - 2) + m.shape[1:])
        query = dense("query_up", d)(z)

        beta = self.param("beta", nn.initializers.zeros, ())
        tau = retrieval_temperature(cfg.tau0, beta, u_bar)
        retrieved, alpha = read_bank(bank, query, tau, cfg.retrieval, cfg.retrieval_scale, cfg.mask_unwritten)

        gate_low = (dense("gate_from_context", cfg.d_u, use_bias=False)(c)
                    + dense("gate_from_memory", cfg.d_u, use_bias=False)(retrieved))
        gate_u = self.param("gate_uncertainty", nn.initializers.zeros, (d,))
        gate = jax.nn.sigmoid(dense("gate_up", d)(gate_low) + u_bar[..., None] * gate_u)

        update = dense("retrieved_up", d, use_bias=False, kernel_init=nn.initializers.zeros)(
            dense("retrieved_down", cfg.d_u, use_bias=False)(retrieved))
        delta = gate * update
        fused = c + delta
        ratio = jnp.linalg.norm(delta, axis=-1) / jnp.maximum(jnp.linalg.norm(c, axis=-1), 1e-12)

        k = min(cfg.top_k, alpha.shape[-1])
        top_w, top_i = jax.lax.top_k(alpha, k)
        return FusionOutput(fused=fused, attention=alpha, tau=tau, gate=gate,
                            top_indices=top_i.astype(jnp.int32), top_weights=top_w, update_ratio=ratio)
