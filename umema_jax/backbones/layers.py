"""Shared building blocks: a LoRA-aware Dense, norms, masks, RoPE.

The Dense reads optional `lora_a [in,r]` / `lora_b [r,out]` variables from the
`lora` collection and adds `scale * (dropout(x) @ A) @ B`; it never forms
`W + A B`, so a gradient taken w.r.t. the lora tree alone never produces a
cotangent for the frozen kernel.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


class Dense(nn.Module):
    """`x @ kernel[in,out] (+ bias)` in `dtype`, plus a LoRA branch when `lora` variables exist."""
    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    lora_scale: float | None = None    # None: the backbone was built without LoRA
    lora_dropout: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), jnp.float32)
        xc = x.astype(self.dtype)
        y = jnp.dot(xc, kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        if self.has_variable("lora", "lora_a"):
            if self.lora_scale is None:
                raise ValueError(f"{'/'.join(self.path)}: lora variables were passed but the backbone was built "
                                 "without a LoraConfig (build_backbone(cfg, lora=LoraConfig(...)))")
            a = self.get_variable("lora", "lora_a").astype(self.dtype)
            b = self.get_variable("lora", "lora_b").astype(self.dtype)
            h = xc
            if self.lora_dropout > 0.0 and not self.deterministic:
                h = nn.Dropout(self.lora_dropout)(h, deterministic=False)
            y = y + (jnp.dot(jnp.dot(h, a), b) * jnp.asarray(self.lora_scale, self.dtype))
        return y


class LayerNorm(nn.Module):
    """GPT-2 LayerNorm (`scale`, `bias`), computed in fp32."""
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return ((x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


class RMSNorm(nn.Module):
    """LLaMA RMSNorm (param `weight`), computed in fp32 like HF."""
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps)
        return (w * x).astype(self.dtype)


def positions_from_mask(attention_mask):
    """Position ids = number of real tokens before each one (so left/right padding agree)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def attention_mask_4d(attention_mask):
    """Boolean `[B,1,n,n]`: causal AND key-is-real; every query may see itself so padded rows stay finite."""
    n = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((n, n), dtype=bool))
    keep = causal[None, None] & (attention_mask[:, None, None, :] > 0)
    return keep | jnp.eye(n, dtype=bool)[None, None]


def attention(q, k, v, mask, dtype):
    """q `[B,n,H,hd]`, k/v `[B,n,K,hd]` (GQA when K < H); returns `[B,n,H*hd]`."""
    out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask)
    return out.reshape(out.shape[:2] + (-1,))


def rope_inv_freq(head_dim: int, theta: float, scaling) -> np.ndarray:
    """HF's inverse frequencies (fp32), with llama3 scaling or llama.cpp-style per-dim `freq_factors`."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "freq_factors":
        return (inv / np.asarray(scaling["factors"], np.float32)).astype(np.float32)
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported")
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > lo_wl, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < hi_wl) & ~(wavelen > lo_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions, inv_freq):
    """cos/sin `[B,n,1,hd]` in HF's rotate-half layout (frequencies repeated over both halves)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos.astype(x.dtype) + rot * sin.astype(x.dtype)).astype(x.dtype)
