"""Shared building blocks: a LoRA-aware Dense, norms, masks, RoPE.

The Dense reads optional `lora_a [in,r]` / `lora_b [r,out]` variables from the
`lora` collection and adds `scale * (dropout(x) @ A) @ B`; it never forms
`W + A B`, so a gradient taken w.r.t. the lora tree alone never produces a
cotangent for the frozen kernel. `matmul='onednn'` sends the `x @ kernel` product
through oneDNN (umema_jax/kernels/cpu_gemm.py; CPU only, chosen by `model.cpu_matmul`).
Two optional gates on the LoRA branch serve the baselines: rank gates
`lora_gates/gate [r]` (ALoRA switches ranks on and off as data, so shapes never
change) and a per-example gate argument (MiLoRA's router).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def at_least_f32(dtype):
    """fp32 for fp32/bf16 (the precision these layers compute norms and softmax in), fp64 under x64 (tests)."""
    return jnp.promote_types(dtype, jnp.float32)


class Dense(nn.Module):
    """`x @ kernel[in,out] (+ bias)` in `dtype`, plus a LoRA branch when `lora` variables exist."""
    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    lora_scale: float | None = None    # None: the backbone was built without LoRA
    lora_dropout: float = 0.0
    deterministic: bool = True
    matmul: str = "xla"                # "xla" (jnp.dot) | "onednn" (CPU custom call), resolved by the caller

    @nn.compact
    def __call__(self, x, gate=None):
        """`gate [B]`: per-example weight of the LoRA branch (a router's output); None = 1."""
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), jnp.float32)
        xc = x.astype(self.dtype)
        if self.matmul == "onednn":
            from umema_jax.kernels.cpu_gemm import matmul
            y = matmul(xc, kernel.astype(self.dtype))
        elif self.matmul == "xla":
            y = jnp.dot(xc, kernel.astype(self.dtype))
        else:
            raise ValueError(f"Dense.matmul={self.matmul!r}: must be 'xla' or 'onednn' (resolve 'auto' first)")
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
            h = jnp.dot(h, a)
            if self.has_variable("lora_gates", "gate"):          # [r] in {0, 1}
                h = h * self.get_variable("lora_gates", "gate").astype(self.dtype)
            if gate is not None:
                h = h * gate.astype(self.dtype).reshape(gate.shape + (1,) * (h.ndim - gate.ndim))
            y = y + (jnp.dot(h, b) * jnp.asarray(self.lora_scale, self.dtype))
        return y


def block_dense(block: nn.Module, use_bias: bool, experts: tuple, routing: dict | None):
    """`dense_in(group)(features, name)`: the LoRA-aware Dense factory a block hands its attention
    and MLP, built in the calling block's scope from its fields (dtype, LoRA scale/dropout,
    matmul path); under MiLoRA routing each module's LoRA branch is scaled by its expert's gate."""
    def dense_in(group: str):
        def dense(features: int, name: str):
            mod = Dense(features, use_bias, block.dtype, block.lora_scale, block.lora_dropout,
                        block.deterministic, block.matmul, name=name)
            if routing is None:
                return mod
            gate = routing["gates"][:, experts.index(f"{group}/{name}")]
            return lambda x: mod(x, gate)
        return dense
    return dense_in


class Router(nn.Module):
    """Prompt-aware router of one block (MiLoRA): which of its M LoRA experts run, per example.

    Reads `lora/.../router/kernel [d, M]`; absent (model init, before the adapter
    exists) it returns None and the experts run ungated. From the block's input
    `h [B,n,d]` at the prompt's last real token: probs = softmax(GELU(h_last) W_r);
    gates = probs on the top-K experts renormalised to sum to 1 (= a softmax over
    the K chosen logits, as MixLoRA and MoLA route), 0 elsewhere. Unrenormalised
    gates start near 1/M each, which cuts the experts' effective learning rate by
    about M/K. With K = 1 the gate is the raw probability (as Switch routing), else
    it would be a constant 1 and the router would get no gradient."""
    top_k: int

    @nn.compact
    def __call__(self, h, last_idx):
        if not self.has_variable("lora", "kernel"):
            return None
        kernel = self.get_variable("lora", "kernel").astype(jnp.float32)
        h_last = jnp.take_along_axis(h, last_idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
        probs = jax.nn.softmax(jnp.dot(jax.nn.gelu(h_last, approximate=False), kernel), axis=-1)
        _, chosen = jax.lax.top_k(probs, self.top_k)
        selected = jnp.sum(jax.nn.one_hot(chosen, probs.shape[-1], dtype=probs.dtype), axis=-2)
        gates = probs * selected
        if self.top_k > 1:
            gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
        return {"gates": gates, "probs": probs, "selected": selected}


def last_token_index(attention_mask):
    """[B] index of the last real token (right or left padding): where a prompt-level decision reads."""
    n = attention_mask.shape[-1]
    return jnp.max(jnp.where(attention_mask.astype(bool), jnp.arange(n)[None, :], 0), axis=-1)


class LayerNorm(nn.Module):
    """GPT-2 LayerNorm (`scale`, `bias`), computed in fp32."""
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x = x.astype(at_least_f32(x.dtype))
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
        x = x.astype(at_least_f32(x.dtype))
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps)
        return (w * x).astype(self.dtype)


def layer_span(span, num_layers: int, hidden_in, compute_logits: bool = False) -> tuple[int, int]:
    """(lo, hi): the blocks a backbone runs. All by default; split learning runs a client part (0, c),
    which embeds the tokens and returns the raw activations at the cut, and a server part (c, L), which
    starts from those activations (`hidden_in`) and ends with the final norm. The part's params hold
    only its blocks (`[hi - lo, ...]`)."""
    lo, hi = (0, num_layers) if span is None else (int(span[0]), int(span[1]))
    if not 0 <= lo < hi <= num_layers:
        raise ValueError(f"backbone span {span}: must be 0 <= lo < hi <= {num_layers} blocks")
    if (lo > 0) != (hidden_in is not None):
        raise ValueError(f"backbone span {span}: a part starting after block 0 needs `hidden_in` (and only it)")
    if compute_logits and (lo > 0 or hi < num_layers):
        raise ValueError(f"backbone span {span}: LM logits need the whole backbone")
    return lo, hi


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
    """q `[B,n,H,hd]`, k/v `[B,n,K,hd]` (GQA when K < H), mask `[B,1,n,n]` bool; returns `[B,n,H*hd]`.

    The arithmetic of `jax.nn.dot_product_attention(implementation='xla')` (logits
    and softmax in fp32, masked logits set to -0.7 * finfo.max), with the speed-ups
    measured in benchmarks/NOTES.md: heads are moved in front of the sequence once
    (head-major `[B,K,G,n,hd]`, so every score / value product is a plain batched
    GEMM over contiguous `[n,hd]` panels), GQA groups are contracted without
    repeating K/V, and the backward is hand-written (`_attention_bwd`), keeping only
    q, k, v and the probabilities as residuals.
    """
    b, n, h, hd = q.shape
    kv = k.shape[2]
    q = jnp.transpose(q.astype(dtype).reshape(b, n, kv, h // kv, hd), (0, 2, 3, 1, 4))   # [B,K,G,n,hd]
    k = jnp.transpose(k.astype(dtype), (0, 2, 1, 3))                                      # [B,K,n,hd]
    v = jnp.transpose(v.astype(dtype), (0, 2, 1, 3))
    out = _attention_core(q, k, v, mask)                                                  # [B,K,G,n,hd]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, n, h * hd)


def _attention_probs_out(q, k, v, mask):
    """Head-major q `[B,K,G,n,hd]`, k/v `[B,K,n,hd]` -> (out `[B,K,G,n,hd]`, probs `[B,K,G,n,n]`)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=at_least_f32(q.dtype))
    logits = logits * jnp.asarray(scale, logits.dtype)
    big_neg = jnp.asarray(-0.7 * float(jnp.finfo(logits.dtype).max), logits.dtype)
    logits = jnp.where(mask[:, :, None], logits, big_neg)
    probs = jax.nn.softmax(logits, axis=-1).astype(k.dtype)
    return jnp.einsum("bkgqs,bksd->bkgqd", probs, v), probs


@jax.custom_vjp
def _attention_core(q, k, v, mask):
    return _attention_probs_out(q, k, v, mask)[0]


def _attention_fwd(q, k, v, mask):
    out, probs = _attention_probs_out(q, k, v, mask)
    return out, (q, k, v, probs)


def _attention_bwd(res, d_out):
    q, k, v, probs = res
    f32 = at_least_f32(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_v = jnp.einsum("bkgqs,bkgqd->bksd", probs, d_out).astype(v.dtype)
    d_p = jnp.einsum("bkgqd,bksd->bkgqs", d_out, v, preferred_element_type=f32)
    # Softmax backward: dS = P * (dP - rowsum(dP * P)). The probabilities are a residual anyway,
    # so the output is not kept for FlashAttention's rowsum(dO * O) form (one activation less).
    delta = jnp.sum(d_p * probs.astype(f32), axis=-1)                               # [b,k,g,q]
    d_s = (probs.astype(f32) * (d_p - delta[..., None]) * scale).astype(q.dtype)
    d_q = jnp.einsum("bkgqs,bksd->bkgqd", d_s, k).astype(q.dtype)
    d_k = jnp.einsum("bkgqs,bkgqd->bksd", d_s, q).astype(k.dtype)
    return d_q, d_k, d_v, None


_attention_core.defvjp(_attention_fwd, _attention_bwd)


@jax.custom_jvp
def gelu_tanh(x):
    """GPT-2's `gelu_new`: the forward is exactly `jax.nn.gelu(x, approximate=True)`.

    The custom derivative (computed in the forward fusion) leaves ONE activation-sized
    residual for the backward instead of autodiff's chain (x, x^3, tanh, ...): less
    memory written and read per step (benchmarks/NOTES.md).
    """
    return jax.nn.gelu(x, approximate=True)


@gelu_tanh.defjvp
def _gelu_tanh_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    c = math.sqrt(2.0 / math.pi)
    xf = x.astype(at_least_f32(x.dtype))
    th = jnp.tanh(c * (xf + 0.044715 * xf * xf * xf))
    dy = 0.5 * (1.0 + th) + 0.5 * xf * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * xf * xf)
    return jax.nn.gelu(x, approximate=True), dy.astype(x.dtype) * t


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
