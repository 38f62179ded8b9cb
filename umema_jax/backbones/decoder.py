"""What every decoder backbone shares: its fields, its block fields, and the scanned stack of blocks.

GPT-2 and LLaMA differ in their embeddings, norms, attention and MLP; the options a
method sets on a backbone (dtype, LoRA scale and dropout, remat, matmul path,
MiLoRA routing, a split-learning span) and the way blocks are stacked (one
`nn.scan` over layers, params and LoRA stacked on axis 0) are the same, so they
live here once. A new backbone subclasses `DecoderBlock` and `DecoderBackbone`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from umema_jax.backbones.config import BackboneConfig


class DecoderBlock(nn.Module):
    """Fields of a scan body (one transformer block); `collect` returns its output for hidden states."""
    cfg: BackboneConfig
    dtype: Any
    lora_scale: float | None
    lora_dropout: float
    deterministic: bool
    collect: bool
    matmul: str
    route_top_k: int = 0


class DecoderBackbone(nn.Module):
    """Fields every backbone takes; `blocks` builds the scanned layer stack."""
    cfg: BackboneConfig
    dtype: Any = jnp.float32
    lora_scale: float | None = None
    lora_dropout: float = 0.0
    remat: bool = False            # recompute each layer in the backward pass (less activation memory)
    matmul: str = "xla"            # the per-layer Dense products: "xla" | "onednn" (see layers.Dense)
    route_top_k: int = 0           # > 0: MiLoRA routing over the block's LoRA experts (layers.Router)
    span: tuple | None = None      # (lo, hi): blocks lo..hi-1 only (split learning, see `layers.layer_span`)

    def blocks(self, block: type, n_layers: int, deterministic: bool, collect: bool, name: str):
        """`n_layers` blocks as one scanned module (variables stacked on axis 0), called like one block.

        Called from the subclass's compact `__call__`, so the stack is its submodule `name`."""
        body = nn.remat(block, prevent_cse=False) if self.remat else block
        stack = nn.scan(body, variable_axes={"params": 0, "lora": 0, "lora_gates": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast, length=n_layers)
        return stack(self.cfg, self.dtype, self.lora_scale, self.lora_dropout, deterministic, collect,
                     self.matmul, self.route_top_k, name=name)
