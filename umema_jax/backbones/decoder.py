"""What every decoder backbone shares: its fields, its block fields, and the scanned stack of blocks.

GPT-2 and LLaMA differ in their embeddings, norms, attention and MLP; the options a
method sets on a backbone (dtype, LoRA scale and dropout, remat, matmul path,
MiLoRA routing, a split-learning span) and the way blocks are stacked (one
`nn.scan` over layers, params and LoRA stacked on axis 0) are the same, so they
live here once. A new backbone subclasses `DecoderBlock` and `DecoderBackbone`.

Layer slots (LISA's efficient form, docs/METHODS.md): when the variables hold a
`layer_slots` collection — `slot_of [L]` (int32, -1 = frozen) and, under the
stack's name, a block tree with a leading `[γ]` axis — block l runs with the
weights of slot `slot_of[l]` if it has one, else with its stacked params under
`stop_gradient`. The choice is a `lax.cond` around the whole block, so the
backward pass computes weight gradients for the γ slots only (the frozen
branch has none), and a new choice of layers is data: nothing recompiles.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from umema_jax.backbones.config import BackboneConfig
from umema_jax.backbones.layers import layer_span


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

    def span_and_mask(self, input_ids, attention_mask, hidden_in, compute_logits: bool):
        """(lo, hi, attention_mask): the blocks this (part of the) backbone runs, and the mask (default all ones)."""
        lo, hi = layer_span(self.span, self.cfg.num_layers, hidden_in, compute_logits)
        return lo, hi, (jnp.ones_like(input_ids) if attention_mask is None else attention_mask)

    def blocks(self, block: type, n_layers: int, deterministic: bool, collect: bool, name: str):
        """`n_layers` blocks as one scanned module (variables stacked on axis 0), called like one block.

        Called from the subclass's compact `__call__`, so the stack is its submodule `name`. With a
        `layer_slots` collection the stack runs its slotted form (module docstring)."""
        if self.has_variable("layer_slots", "slot_of"):
            return self._slotted_blocks(block, n_layers, deterministic, collect, name)
        body = nn.remat(block, prevent_cse=False) if self.remat else block
        stack = nn.scan(body, variable_axes={"params": 0, "lora": 0, "lora_gates": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast, length=n_layers)
        return stack(self.cfg, self.dtype, self.lora_scale, self.lora_dropout, deterministic, collect,
                     self.matmul, self.route_top_k, name=name)

    def _slotted_blocks(self, block: type, n_layers: int, deterministic: bool, collect: bool, name: str):
        """The stack with the weights of layer `l` taken from slot `slot_of[l]` when >= 0 (else frozen)."""
        if self.is_initializing():
            raise ValueError("layer_slots: initialise the model without them (they replace existing blocks)")
        if name in self.variables.get("lora", {}):
            raise ValueError("layer_slots: the slotted blocks are full weights; the stack must carry no LoRA")
        stacked = jax.tree.map(jax.lax.stop_gradient, self.variables["params"][name])
        slots = self.variables["layer_slots"][name]
        slot_of = self.get_variable("layer_slots", "slot_of")
        if slot_of.shape != (n_layers,):
            raise ValueError(f"layer_slots/slot_of has shape {slot_of.shape}; the stack has {n_layers} blocks")
        one = block(self.cfg, self.dtype, self.lora_scale, self.lora_dropout, deterministic, collect, self.matmul,
                    self.route_top_k, parent=None)

        def take(tree, i):
            return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), tree)

        def layer(h, l, args):
            slot = slot_of[l]
            run = lambda params, h: one.apply({"params": params}, h, *args)   # noqa: E731
            return jax.lax.cond(slot >= 0, lambda h: run(take(slots, jnp.maximum(slot, 0)), h),
                                lambda h: run(take(stacked, l), h), h)

        if self.remat:
            layer = jax.checkpoint(layer, prevent_cse=False)

        def stack(h, *args):
            return jax.lax.scan(lambda h, l: layer(h, l, args), h, jnp.arange(n_layers))

        return stack
