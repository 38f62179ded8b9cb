"""LLaMA / SmolLM2 (HF parameter names, kernels `[in,out]`, GQA, RoPE with llama3 scaling), layers scanned."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from umema_jax.backbones.config import BackboneConfig
from umema_jax.backbones.decoder import DecoderBackbone, DecoderBlock
from umema_jax.backbones.layers import (Dense, RMSNorm, Router, apply_rope, attention, attention_mask_4d,
                                        block_dense, last_token_index, positions_from_mask,
                                        rope_cos_sin, rope_inv_freq)
from umema_jax.backbones.output import BackboneOutput

# Every linear module of a block, in the order of a router's expert axis (MiLoRA).
EXPERTS = ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
           "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")


class LlamaAttention(nn.Module):
    cfg: BackboneConfig
    dense: Any

    @nn.compact
    def __call__(self, x, mask, cos, sin):
        cfg = self.cfg
        b, n, _ = x.shape
        hd = cfg.head_dim
        q = self.dense(cfg.num_heads * hd, "q_proj")(x).reshape(b, n, cfg.num_heads, hd)
        k = self.dense(cfg.num_kv_heads * hd, "k_proj")(x).reshape(b, n, cfg.num_kv_heads, hd)
        v = self.dense(cfg.num_kv_heads * hd, "v_proj")(x).reshape(b, n, cfg.num_kv_heads, hd)
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask, q.dtype)
        return self.dense(cfg.hidden_size, "o_proj")(out)


class LlamaMLP(nn.Module):
    cfg: BackboneConfig
    dense: Any

    @nn.compact
    def __call__(self, x):
        g = self.dense(self.cfg.intermediate_size, "gate_proj")(x)
        u = self.dense(self.cfg.intermediate_size, "up_proj")(x)
        return self.dense(self.cfg.hidden_size, "down_proj")(jax.nn.silu(g) * u)


class LlamaBlock(DecoderBlock):
    """Pre-RMSNorm block; a scan body: (h, mask, cos, sin, last_idx) -> (h, (h or None, routing or None)).

    With `route_top_k` > 0 a `Router` picks K of the block's `EXPERTS` per example (as GPT2Block)."""

    @nn.compact
    def __call__(self, h, mask, cos, sin, last_idx):
        routing = Router(self.route_top_k, name="router")(h, last_idx) if self.route_top_k else None

        dense_in = block_dense(self, False, EXPERTS, routing)
        eps = self.cfg.norm_eps
        h = h + LlamaAttention(self.cfg, dense_in("self_attn"), name="self_attn")(
            RMSNorm(eps, self.dtype, name="input_layernorm")(h), mask, cos, sin)
        h = h + LlamaMLP(self.cfg, dense_in("mlp"), name="mlp")(
            RMSNorm(eps, self.dtype, name="post_attention_layernorm")(h))
        return h, (h if self.collect else None, routing)


class LlamaBackbone(DecoderBackbone):
    """LLaMA / SmolLM2: RoPE, RMSNorm, tied or separate LM head; blocks under params `layers`."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True, output_hidden_states=False,
                 compute_logits=False, hidden_in=None):
        cfg = self.cfg
        lo, hi, attention_mask = self.span_and_mask(input_ids, attention_mask, hidden_in, compute_logits)
        if lo == 0:
            embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02),
                             param_dtype=jnp.float32, dtype=self.dtype, name="embed_tokens")
            emb = embed(input_ids)
        else:
            emb = hidden_in.astype(self.dtype)
        pos = positions_from_mask(attention_mask)
        cos, sin = rope_cos_sin(pos, rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
        mask = attention_mask_4d(attention_mask)
        h, (hs, routing) = self.blocks(LlamaBlock, hi - lo, deterministic, output_hidden_states, "layers")(
            emb, mask, cos, sin, last_token_index(attention_mask))
        if hi < cfg.num_layers:         # a client's part: the raw activations at the cut
            return BackboneOutput(emb, hs, h, None, routing)
        last = RMSNorm(cfg.norm_eps, self.dtype, name="norm")(h)
        logits = None
        if compute_logits:
            if cfg.tie_word_embeddings:
                logits = embed.attend(last)
            else:
                logits = Dense(cfg.vocab_size, False, self.dtype, name="lm_head")(last)
            logits = logits.astype(jnp.float32)
        return BackboneOutput(emb, hs, last, logits, routing)
