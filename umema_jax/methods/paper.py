"""The paper's four variants (docs/METHOD.md): LoRA, LoRA+UM, LoRA+EMA and the full method LoRA+UM+EMA.

They differ only in what `UmemaModel` builds; everything else is the default
`Method` (train LoRA + `train.trainable_regex`, one clipped AdamW).
NB: `full` is the paper's method (LoRA + UM + EMA), not full fine-tuning (`full_ft`).
"""
from __future__ import annotations

from umema_jax.methods.registry import register
from umema_jax.train.method import Method


@register
class LoRA(Method):
    name = "lora"
    label = "LoRA"


@register
class LoRAUM(Method):
    name = "lora+um"
    label = "+UM"
    use_um = True


@register
class LoRAEMA(Method):
    name = "lora+ema"
    label = "+EMA"
    use_ema = True


@register
class Full(Method):
    name = "full"
    label = "Ours (LoRA+UM+EMA)"
    use_um = True
    use_ema = True
