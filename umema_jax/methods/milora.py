"""MiLoRA, a prompt-aware mixture of LoRA experts (Zhang et al. 2024; docs/METHODS.md).

Every linear module of a block carries a LoRA module, and each is an expert
(4 per GPT-2 block, 7 per LLaMA block). Before each block a router reads the
block's input at the prompt's last real token and picks the top-K experts for
that example: `y = W x + 1[m ∈ TopK] G_m (α/r) B_m A_m x` with
`P = softmax(GELU(h_last) W_r)` and the gates G = P renormalised over the K chosen
experts (K = 1: G = P) [U: the official code is not public; MixLoRA and MoLA
renormalise this way]. The decision is made once per prompt, for every token.
All of it lives in the backbone (`layers.Router`, the `gate` argument of
`layers.Dense`): the method only turns it on, adds the optional Switch
load-balancing loss `λ · M · Σ_m f_m P_m` (averaged over blocks) and logs how
often each expert is chosen (`method/usage/<expert>`, share of examples).

Experts are computed densely (static shapes) and masked per example, so the
step costs about as much as LoRA on every module. No carried state.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from umema_jax.methods.registry import register
from umema_jax.train.method import Method


def expert_regex(arch: str) -> str:
    """LoRA targets of MiLoRA: every linear module of every block (the router's experts)."""
    from umema_jax.adapters.lora import experts
    return "^[^/]+/(" + "|".join(experts(arch)) + ")$"


def usage_and_balance(selected: jnp.ndarray, probs: jnp.ndarray, rows: jnp.ndarray):
    """(f [L,M], Switch balance M·Σ_m f_m P_m averaged over blocks) over real rows.

    selected/probs [L,B,M] (1 where m is in the example's top-K / router probabilities),
    rows [B] (example_mask). f_m = share of rows that chose m, P_m = mean probability of m."""
    w = rows.astype(jnp.float32)[None, :, None]
    n = jnp.maximum(jnp.sum(rows.astype(jnp.float32)), 1.0)
    f = jnp.sum(selected * w, axis=1) / n
    p = jnp.sum(probs * w, axis=1) / n
    return f, probs.shape[-1] * jnp.mean(jnp.sum(f * p, axis=-1))


@register
class MiLoRA(Method):
    name = "milora"
    label = "MiLoRA"
    defaults = {"top_k": 2,                 # K experts per example and block [U]; ablate 1, 2, 3
                "balance_weight": 0.01}     # λ of the Switch load-balancing loss [U]; 0 = off

    @classmethod
    def validate(cls, hp) -> None:
        if int(hp.top_k) < 1:
            raise ValueError(f"methods.milora.top_k={hp.top_k}: must be >= 1")
        if not float(hp.balance_weight) >= 0:
            raise ValueError(f"methods.milora.balance_weight={hp.balance_weight}: must be >= 0")

    def make_model(self, model_config_view, backbone_cfg):
        from umema_jax.adapters.lora import experts
        model = super().make_model(model_config_view, backbone_cfg)
        arch = model.backbone_cfg.arch
        if model.lora_cfg.target_regex:
            raise ValueError(f"model.lora.target_regex={model.lora_cfg.target_regex!r}: milora puts an expert on "
                             f"every linear module of a block; leave it ''")
        if int(self.hp.top_k) > len(experts(arch)):
            raise ValueError(f"methods.milora.top_k={self.hp.top_k}: more than the {len(experts(arch))} experts "
                             f"of a {arch} block")
        self.experts = experts(arch)
        lora = dataclasses.replace(model.lora_cfg, target_regex=expert_regex(arch), route_top_k=int(self.hp.top_k))
        return model.clone(lora_cfg=lora)

    def aux_loss(self, out, batch, extra):
        internals = out.internals or {}
        if "router_selected" not in internals:
            return 0.0, {}
        f, balance = usage_and_balance(internals["router_selected"], internals["router_probs"],
                                       batch["example_mask"])
        names = getattr(self, "experts", None) or [str(m) for m in range(f.shape[-1])]
        metrics = {"balance_loss": balance, **{f"usage/{e}": f[:, m].mean() for m, e in enumerate(names)}}
        # Each micro-batch adds its term: divide so accumulation averages them (as the CE's shared denominator).
        accum = int(self.config.train.grad_accum_steps) if self.config is not None else 1
        weight = float(self.hp.balance_weight) / accum
        return (weight * balance if weight else 0.0), metrics
