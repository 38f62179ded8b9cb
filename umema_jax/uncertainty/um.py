"""Uncertainty modeling (UM) branch — docs/METHOD.md

The branch reads the backbone's embedding output, its per-layer hidden states
and its last hidden state, and returns token confidences, the sequence summary
`M_U`, the aleatoric/epistemic decomposition, the calibration temperature and
the confidence-weighted representation. Everything is computed in float32
(the branch is tiny; bf16 would quantise the confidences) and every reduction
over tokens is masked, so padded tokens never contribute.

Maps from the hidden size `d` go straight to the bottleneck `d_u`, so the
branch costs O(d·d_u) parameters (see docs/METHOD.md for the count).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from umema_jax.backbones.layers import last_token_index
from umema_jax.uncertainty.heads import Head, HeadOutput, register_head

_NEG = -1e30  # additive mask value; finite so fully-masked rows never produce NaN


@register_head
@dataclasses.dataclass(frozen=True)
class UMConfig(Head):
    """The paper's uncertainty head (`model.uncertainty=um`): the settings of the UM branch.

    layers: indices of the backbone layers used for propagation (negative
      indices count from the end); None = all layers.
    num_tasks: rows of the learnable task-embedding table (task_id is clipped).
    temperature_bias_init / kappa_init: initial `b_T` and `κ`; softplus(-4) ≈
      0.018, so T starts just above 1 (raw logits are what equals LoRA at
      step 0, see model.py).
    temperature_max: soft upper bound of T (`calibration_temperature`); 0 =
      unbounded, docs/METHOD.md as written, which collapses (the stability study, docs/METHOD.md).
    temperature_input: what `w_T` reads: 'raw' `M_U` (docs/METHOD.md) or its
      'unit'-norm direction. Adam moves `w_T·M_U` by up to lr·‖M_U‖₁ per step,
      so on the raw `M_U` T reached the bound within 30 steps at lr 5e-3 and
      the saturated tanh then passed no gradient to T, κ or ū; with T pinned
      at 3, `full` collapsed to the label prior in seed 2 (the stability study, docs/METHOD.md). 'unit'
      is the default (docs/METHOD.md, deviation 13).
    error_weight: 0 = the paper's objective. > 0 adds error_weight · (1 − corr(ū, 1 − p_y)) per batch
      (p_y: the model's probability of the gold label, not differentiated): nothing in the paper's
      objective tells ū what an error is, and with it alone ū detects errors at chance. A correlation
      ties ū's ranking to the model's errors without fixing its scale, which T and the memory also read.
    """
    d_u: int = 64
    quant_levels: int = 8
    layers: tuple[int, ...] | None = None
    num_tasks: int = 1
    temperature_bias_init: float = -4.0
    kappa_init: float = -4.0
    temperature_max: float = 3.0
    temperature_input: str = "unit"
    spread_eps: float = 1e-6
    error_weight: float = 0.0

    name: ClassVar[str] = "um"
    scores: ClassVar[tuple] = ("u_ale", "u_epi", "u_bar")
    needs_hidden_states: ClassVar[bool] = True

    def build(self, task_type: str, pooling: str):
        return UncertaintyModule(self, pooling="token" if task_type == "ner" else pooling)

    def output(self, raw: "UMOutput", ner: bool) -> HeadOutput:
        """Per token for NER (the sequence's M_U broadcast by the memory), per sequence otherwise."""
        if ner:
            return HeadOutput(raw.representation, raw.token_temperature,
                              {"u_ale": raw.token_u_ale, "u_epi": raw.token_u_epi, "u_bar": raw.token_u_bar},
                              raw.memory_embedding, raw.token_u_bar)
        return HeadOutput(raw.representation, raw.temperature,
                          {"u_ale": raw.u_ale, "u_epi": raw.u_epi, "u_bar": raw.u_bar}, raw.memory_embedding,
                          raw.u_bar)

    def aux_loss(self, out, labels, mask):
        if not self.error_weight:
            return None
        corr = error_correlation(out.aux["u_bar"], out.logits, labels, mask)
        return self.error_weight * (1.0 - corr), {"um_error_corr": corr}

    @classmethod
    def from_section(cls, section) -> "UMConfig":
        values = dict(section)
        if "layers" in values:        # () / None = all layers
            values["layers"] = tuple(int(i) for i in values["layers"]) if values["layers"] else None
        return cls(**values)


# ----------------------------------------------------------------------------
# Pure helpers (masked reductions, quantiser, token mixing, temperature)
# ----------------------------------------------------------------------------

def masked_mean(x: jax.Array, mask: jax.Array, axis: int = -2) -> jax.Array:
    """Mean of `x` over `axis` counting only mask==1 entries (0 if none)."""
    m = jnp.expand_dims(mask.astype(x.dtype), -1) if x.ndim == mask.ndim + 1 else mask.astype(x.dtype)
    total = jnp.sum(x * m, axis=axis)
    count = jnp.sum(m, axis=axis)
    return total / jnp.maximum(count, 1.0)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Max over tokens of `x [B,n,d]` among valid tokens (0 for an all-padding row)."""
    valid = mask.astype(bool)[..., None]
    out = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-2)
    return jnp.where(jnp.any(valid, axis=-2), out, 0.0)


def masked_softmax(logits: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax over valid entries; padded entries get exactly 0 weight."""
    valid = mask.astype(bool)
    p = jax.nn.softmax(jnp.where(valid, logits, _NEG), axis=axis)
    return jnp.where(valid, p, 0.0)


def straight_through_quantize(u: jax.Array, levels: int) -> jax.Array:
    """`round(u·Q)/Q` in the forward pass, identity gradient in the backward pass."""
    return u + jax.lax.stop_gradient(jnp.round(u * levels) / levels - u)


def layer_norm_no_params(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (hidden states of different layers
    have very different scales; the learnable parts live in the per-layer `w_l, b_l`)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def causal_mixing_weights(queries: jax.Array, keys: jax.Array, mask: jax.Array) -> jax.Array:
    """`P = causal_softmax(Q K^T / sqrt(d_u))` over valid keys j ≤ i.

    queries/keys [B,n,d_u], mask [B,n] -> P [B,n,n]. Rows of padded queries and
    columns of padded keys are exactly 0, so padding never mixes into real tokens.
    """
    n = queries.shape[-2]
    scores = jnp.einsum("bid,bjd->bij", queries, keys) / jnp.sqrt(queries.shape[-1]).astype(queries.dtype)
    causal = jnp.tril(jnp.ones((n, n), dtype=bool))
    m = mask.astype(bool)
    allowed = causal[None] & m[:, None, :] & m[:, :, None]
    p = jax.nn.softmax(jnp.where(allowed, scores, _NEG), axis=-1)
    return jnp.where(allowed, p, 0.0)


def error_correlation(u_bar: jax.Array, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Pearson correlation, over the scored targets (`mask`), between ū and 1 − p_y, the model's
    probability of missing the gold label (a constant: only ū is trained by it)."""
    m = mask.astype(jnp.float32)
    safe = jnp.where(m > 0, labels, 0).astype(jnp.int32)
    p_y = jnp.take_along_axis(jax.nn.softmax(logits.astype(jnp.float32), -1), safe[..., None], -1)[..., 0]
    t = jax.lax.stop_gradient(1.0 - p_y)
    n = jnp.maximum(jnp.sum(m), 1.0)
    du = u_bar - jnp.sum(m * u_bar) / n
    dt = t - jnp.sum(m * t) / n
    cov = jnp.sum(m * du * dt) / n
    return cov / jnp.sqrt(jnp.sum(m * du * du) / n * jnp.sum(m * dt * dt) / n + 1e-12)


def calibration_temperature(base_logit: jax.Array, kappa: jax.Array, u_bar: jax.Array,
                            t_max: float = 0.0) -> jax.Array:
    """`T = 1 + s`, `s = softplus(w_T·M_U + b_T) + softplus(κ)·ū` (docs/METHOD.md), strictly increasing in ū.

    With `t_max > 1`, s is softly bounded: `T = 1 + (t_max − 1)·tanh(s / (t_max − 1))`,
    equal to the unbounded form to first order near T = 1 and below t_max always.
    Unbounded, raising T while the head scales its raw logits up is a free
    direction of the loss: T drifted to 20 and shrank every input-dependent
    gradient 20-fold (the stability study, docs/METHOD.md).
    """
    s = jax.nn.softplus(base_logit) + jax.nn.softplus(kappa) * u_bar
    if t_max and t_max > 1.0:
        span = t_max - 1.0
        return 1.0 + span * jnp.tanh(s / span)
    return 1.0 + s


TEMPERATURE_INPUTS = ("raw", "unit")


def temperature_input(m_u: jax.Array, kind: str) -> jax.Array:
    """What the temperature head reads: `M_U` itself, or its direction (a unit
    vector, so an Adam step moves `w_T·x` by at most lr·sqrt(d_u))."""
    if kind == "raw":
        return m_u
    if kind == "unit":
        return m_u * jax.lax.rsqrt(jnp.sum(jnp.square(m_u), -1, keepdims=True) + 1e-12)
    raise ValueError(f"model.um.temperature_input={kind!r}: must be one of {TEMPERATURE_INPUTS}")


def last_valid_token(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Hidden state of the last valid token, for right or left padding. h [B,n,d], mask [B,n]."""
    return jnp.take_along_axis(h, last_token_index(mask)[:, None, None], axis=1)[:, 0]


def confidence_weighted_mean(h: jax.Array, lam: jax.Array, q: jax.Array, mask: jax.Array) -> jax.Array:
    """`c = Σ_i λ_i q_i h_i / Σ_i λ_i q_i` (§1.7, mean pooling with UM)."""
    w = lam * q * mask.astype(lam.dtype)
    return jnp.einsum("bn,bnd->bd", w, h) / jnp.maximum(jnp.sum(w, axis=-1), 1e-6)[:, None]


# ----------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------

@struct.dataclass
class UMOutput:
    """Outputs of the UM branch. Sequence-level fields are [B], per-token [B,n]
    (0 at padded tokens, temperature 1 there)."""
    guidance: jax.Array          # E [B,d_u]
    confidence: jax.Array        # u [B,n]
    quantized: jax.Array         # q [B,n]
    importance: jax.Array        # λ [B,n], sums to 1 over valid tokens
    layer_uncertainty: jax.Array  # U(l) for each chosen layer [L_sel,B,n]
    mu_u: jax.Array              # [B]
    s_u: jax.Array               # [B]
    memory_embedding: jax.Array  # M_U [B,d_u]
    u_ale: jax.Array             # [B]
    u_epi: jax.Array             # [B]
    u_bar: jax.Array             # [B]
    temperature: jax.Array       # [B]
    token_u_ale: jax.Array       # [B,n]
    token_u_epi: jax.Array       # [B,n]
    token_u_bar: jax.Array       # [B,n]
    token_temperature: jax.Array  # [B,n]
    representation: jax.Array    # pooled c [B,d] (cls) or per-token h̃ [B,n,d] (ner)


def _select_layers(hidden_states: jax.Array, layers: Sequence[int] | None) -> jax.Array:
    if layers is None:
        return hidden_states
    num = hidden_states.shape[0]
    idx = sorted({i % num for i in layers})
    return hidden_states[jnp.asarray(idx)]


class UncertaintyModule(nn.Module):
    """docs/METHOD.md: guidance, token confidence, layer propagation, summary,
    decomposition, calibration temperature and representation weighting.

    pooling: 'last' | 'mean' (classification, returns c [B,d]) or 'token'
    (NER, returns h̃ [B,n,d]).
    """
    config: UMConfig = UMConfig()
    pooling: str = "last"

    @nn.compact
    def __call__(self, embeddings: jax.Array, hidden_states: jax.Array, last_hidden: jax.Array,
                 mask: jax.Array, task_id: jax.Array) -> UMOutput:
        cfg = self.config
        f32 = jnp.float32
        d_u = cfg.d_u
        m = mask.astype(f32)
        h0 = embeddings.astype(f32)
        h = last_hidden.astype(f32)
        d = h.shape[-1]
        dense = lambda name, feats=d_u, **kw: nn.Dense(feats, name=name, dtype=f32, param_dtype=f32, **kw)

        # 1. Guidance E = LN(W_f [W_d Kd; W_t Kt; W_s Ks; W_p Kp]).
        # Kt and Kp are learnable, so they live directly in d_u space.
        task_table = self.param("task_embedding", nn.initializers.normal(0.02), (cfg.num_tasks, d_u))
        prior = self.param("prior", nn.initializers.normal(0.02), (d_u,))
        k_task = task_table[jnp.clip(task_id.astype(jnp.int32), 0, cfg.num_tasks - 1)]
        k_prior = jnp.broadcast_to(prior, (h.shape[0], d_u))
        parts = [dense("W_d")(masked_mean(h0, m)), dense("W_t")(k_task),
                 dense("W_s")(masked_max(h0, m)), dense("W_p")(k_prior)]
        guidance = nn.LayerNorm(name="guidance_norm", dtype=f32)(dense("W_f")(jnp.concatenate(parts, -1)))

        # 2. Token confidence u, quantised q (straight-through), importance λ.
        # w_u and w_λ start at zero: u ≡ 1/2, q ≡ 1/2, λ uniform, so the
        # confidence-weighted pooling equals plain pooling at step 0.
        hn = nn.LayerNorm(name="token_norm", dtype=f32)(h)
        feat = jnp.tanh(dense("W_h")(hn) + dense("W_e", use_bias=False)(guidance)[:, None, :])
        u = jax.nn.sigmoid(dense("w_u", 1, kernel_init=nn.initializers.zeros)(feat)[..., 0])
        q = straight_through_quantize(u, cfg.quant_levels)
        lam = masked_softmax(dense("w_lambda", 1, kernel_init=nn.initializers.zeros)(hn)[..., 0], m)
        u0 = (1.0 - q) * m

        # 3. Layer-wise propagation U(l) = (1-ρ) P(l) U(l-1) + ρ a(l), scanned over layers.
        chosen = _select_layers(hidden_states, cfg.layers)
        num_sel = chosen.shape[0]
        layer_w = self.param("layer_w", nn.initializers.normal(1.0 / float(d) ** 0.5), (num_sel, d))
        layer_b = self.param("layer_b", nn.initializers.zeros, (num_sel,))
        mix_q = self.param("mix_query", nn.initializers.lecun_normal(), (d, d_u))
        mix_k = self.param("mix_key", nn.initializers.lecun_normal(), (d, d_u))
        rho = jax.nn.sigmoid(self.param("rho_logit", nn.initializers.zeros, ()))

        def propagate(u_prev, xs):
            h_l, w_l, b_l = xs
            hn_l = layer_norm_no_params(h_l.astype(f32))
            local = jax.nn.sigmoid(hn_l @ w_l + b_l)
            mix = causal_mixing_weights(hn_l @ mix_q, hn_l @ mix_k, m)
            u_next = ((1.0 - rho) * jnp.einsum("bij,bj->bi", mix, u_prev) + rho * local) * m
            return u_next, u_next

        u_last, u_layers = jax.lax.scan(jax.checkpoint(propagate), u0, (chosen, layer_w, layer_b))

        # 4. Summary μ_U, s_U and M_U = W_m [μ_U; s_U; E].
        mu = jnp.sum(lam * u_last, -1)
        s = jnp.sqrt(jnp.sum(lam * jnp.square(u_last - mu[:, None]), -1) + cfg.spread_eps)
        m_u = dense("W_m")(jnp.concatenate([mu[:, None], s[:, None], guidance], -1))

        # 5. Decomposition. Per token: ale_i = q(1-q)+|u-q|, epi_i = |U(L)_i-μ_U| + Var_l U(l)_i
        # (the λ-weighted square of the first term sums to s_U²).
        tok_ale = (q * (1.0 - q) + jnp.abs(u - q)) * m
        layer_var = jnp.var(u_layers, axis=0) * m
        tok_epi = (jnp.abs(u_last - mu[:, None]) + layer_var) * m
        u_ale = jnp.sum(lam * tok_ale, -1)
        u_epi = s + masked_mean(layer_var, m, axis=-1)
        u_bar = u_ale + u_epi
        tok_bar = tok_ale + tok_epi

        # 6. Temperature from M_U, growing with ū (per sequence and per token).
        base = dense("w_T", 1, kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.constant(cfg.temperature_bias_init))(
            temperature_input(m_u, cfg.temperature_input))[..., 0]
        kappa = self.param("kappa", nn.initializers.constant(cfg.kappa_init), ())
        temperature = calibration_temperature(base, kappa, u_bar, cfg.temperature_max)
        tok_temperature = jnp.where(m > 0, calibration_temperature(base[:, None], kappa, tok_bar,
                                                                   cfg.temperature_max), 1.0)

        # 7. Confidence-weighted representation; γ starts at 0 (identity scaling).
        gamma = self.param("gamma", nn.initializers.zeros, ())
        if self.pooling == "mean":
            rep = confidence_weighted_mean(h, lam, q, m)
        elif self.pooling == "last":
            rep = last_valid_token(h, m) * (1.0 + gamma * (1.0 - u_bar))[:, None]
        elif self.pooling == "token":
            rep = h * (1.0 + gamma * (1.0 - tok_bar))[..., None]
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}")

        return UMOutput(
            guidance=guidance, confidence=u * m, quantized=q * m, importance=lam,
            layer_uncertainty=u_layers, mu_u=mu, s_u=s, memory_embedding=m_u,
            u_ale=u_ale, u_epi=u_epi, u_bar=u_bar, temperature=temperature,
            token_u_ale=tok_ale, token_u_epi=tok_epi, token_u_bar=tok_bar,
            token_temperature=tok_temperature, representation=rep)
