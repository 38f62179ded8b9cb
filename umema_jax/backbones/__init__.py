"""Backbones: GPT-2 and LLaMA-family decoders as pure-functional Flax modules (layers scanned)."""
from __future__ import annotations

import functools

import jax.numpy as jnp

from umema_jax.backbones.config import NAMED_CONFIGS, BackboneConfig, get_backbone_config
from umema_jax.backbones.gpt2 import GPT2Backbone
from umema_jax.backbones.llama import LlamaBackbone
from umema_jax.backbones.output import BackboneOutput

__all__ = ["BackboneConfig", "BackboneOutput", "NAMED_CONFIGS", "build_backbone", "get_backbone_config",
           "init_backbone_params"]


def build_backbone(cfg: BackboneConfig, *, lora=None, dtype=jnp.float32, remat: bool = False, matmul: str = "xla",
                   span=None):
    """The backbone module for `cfg`; with a `LoraConfig`, its Dense layers read the `lora` collection
    (and, with `route_top_k` > 0, every block routes over its LoRA experts: MiLoRA).

    `remat=True` rematerialises each scanned layer in the backward pass (activation memory ~ one layer).
    `matmul` ('xla' | 'onednn') is how the per-layer Dense products run (`kernels.cpu_gemm.resolve`).
    `span=(lo, hi)` runs blocks lo..hi-1 only (a split-learning part; `layers.layer_span`)."""
    if isinstance(cfg, str):
        cfg = get_backbone_config(cfg)
    cls = {"gpt2": GPT2Backbone, "llama": LlamaBackbone}[cfg.arch]
    scale = None if lora is None else float(lora.alpha) / float(lora.rank)
    dropout = 0.0 if lora is None else float(lora.dropout)
    route = 0 if lora is None else int(lora.route_top_k)
    return cls(cfg=cfg, dtype=dtype, lora_scale=scale, lora_dropout=dropout, remat=remat, matmul=matmul,
               route_top_k=route, span=None if span is None else tuple(int(i) for i in span))


def init_backbone_params(cfg: BackboneConfig, rng, seq_len: int = 8):
    """Random fp32 params for `cfg` (tiny smoke configs, tests): N(0, 0.02) kernels and embeddings,
    norm scales 1, biases 0. Shapes come from the module (abstract init); values are drawn with numpy
    from a seed derived from `rng`, so no XLA compile is needed (slow on a busy CPU)."""
    import jax
    import numpy as np
    module = build_backbone(cfg)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    shapes = jax.eval_shape(functools.partial(module.init, compute_logits=True), rng, ids)["params"]
    seed = int(np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
                          else rng).ravel()[-1])
    gen = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name == "bias":
            return jnp.zeros(leaf.shape, jnp.float32)
        if name in ("scale", "weight"):
            return jnp.ones(leaf.shape, jnp.float32)
        return jnp.asarray(gen.standard_normal(leaf.shape, np.float32) * 0.02)
    return jax.tree_util.tree_map_with_path(draw, shapes)
