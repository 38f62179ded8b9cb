"""GPT-2 (HF parameter names, Conv1D kernels stored `[in,out]`, fused qkv `c_attn`), layers scanned."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from umema_jax.backbones.config import BackboneConfig
from umema_jax.backbones.decoder import DecoderBackbone, DecoderBlock
from umema_jax.backbones.layers import (LayerNorm, Router, attention, attention_mask_4d, block_dense, gelu_tanh,
                                        last_token_index, positions_from_mask)
from umema_jax.backbones.output import BackboneOutput

# Every linear module of a block, in the order of a router's expert axis (MiLoRA).
EXPERTS = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")


class GPT2Attention(nn.Module):
    cfg: BackboneConfig
    dense: Any

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.cfg
        b, n, d = x.shape
        qkv = self.dense(3 * d, name="c_attn")(x)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, cfg.num_heads, cfg.head_dim), 3, axis=2)
        out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mask, qkv.dtype)
        return self.dense(d, name="c_proj")(out)


class GPT2MLP(nn.Module):
    cfg: BackboneConfig
    dense: Any

    @nn.compact
    def __call__(self, x):
        h = self.dense(self.cfg.intermediate_size, name="c_fc")(x)
        return self.dense(self.cfg.hidden_size, name="c_proj")(gelu_tanh(h))


class GPT2Block(DecoderBlock):
    """Pre-LN transformer block; a scan body: (h, mask, last_idx) -> (h, (h or None, routing or None)).

    With `route_top_k` > 0 a `Router` picks K of the block's `EXPERTS` per example from
    the block's input at the last real token, and scales their LoRA branches."""

    @nn.compact
    def __call__(self, h, mask, last_idx):
        routing = Router(self.route_top_k, name="router")(h, last_idx) if self.route_top_k else None

        dense_in = block_dense(self, True, EXPERTS, routing)
        eps = self.cfg.norm_eps
        h = h + GPT2Attention(self.cfg, dense_in("attn"), name="attn")(LayerNorm(eps, self.dtype, name="ln_1")(h),
                                                                      mask)
        h = h + GPT2MLP(self.cfg, dense_in("mlp"), name="mlp")(LayerNorm(eps, self.dtype, name="ln_2")(h))
        return h, (h if self.collect else None, routing)


class GPT2Backbone(DecoderBackbone):
    """GPT-2: learned positions, LayerNorm, tied LM head; blocks under params `h`."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic=True, output_hidden_states=False,
                 compute_logits=False, hidden_in=None):
        cfg = self.cfg
        lo, hi, attention_mask = self.span_and_mask(input_ids, attention_mask, hidden_in, compute_logits)
        pos = positions_from_mask(attention_mask)
        if lo == 0:
            wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02),
                           param_dtype=jnp.float32, dtype=self.dtype, name="wte")
            wpe = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                           embedding_init=nn.initializers.normal(0.01), param_dtype=jnp.float32, dtype=self.dtype,
                           name="wpe")
            emb = wte(input_ids) + wpe(pos)
        else:
            emb = hidden_in.astype(self.dtype)
        mask = attention_mask_4d(attention_mask)
        h, (hs, routing) = self.blocks(GPT2Block, hi - lo, deterministic, output_hidden_states, "h")(
            emb, mask, last_token_index(attention_mask))
        if hi < cfg.num_layers:         # a client's part: the raw activations at the cut
            return BackboneOutput(emb, hs, h, None, routing)
        last = LayerNorm(cfg.norm_eps, self.dtype, name="ln_f")(h)
        logits = wte.attend(last).astype(jnp.float32) if compute_logits else None
        return BackboneOutput(emb, hs, last, logits, routing)
