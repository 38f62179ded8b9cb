"""`load_pretrained(name_or_path)`: config + fp32 params + tokenizer + module + a jitted `logits` function."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.backbones import BackboneConfig, build_backbone, get_backbone_config, init_backbone_params
from umema_jax.backbones.config import NAMED_CONFIGS, TOKENIZER_FOR


@dataclasses.dataclass
class Pretrained:
    config: BackboneConfig
    params: Any
    tokenizer: Any
    module: Any

    def __post_init__(self):
        module = self.module

        @jax.jit
        def _logits(params, ids, mask):
            return module.apply({"params": params}, ids, mask, compute_logits=True).logits
        self._logits = _logits

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """fp32 numpy `[batch, seq, vocab]` next-token logits."""
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return np.asarray(self._logits(self.params, ids, mask))


@functools.lru_cache(maxsize=4)
def load_pretrained(name_or_path: str, dtype=jnp.float32, seed: int = 0) -> Pretrained:
    """Built-in / HF dir / hub id / `.gguf`. Tiny test configs (`gpt2-tiny`, `llama-tiny`) get random weights."""
    from umema_jax.tokenization import load_tokenizer
    from umema_jax.weights import load_backbone_weights
    if name_or_path in TOKENIZER_FOR:
        cfg = get_backbone_config(name_or_path)
        params = init_backbone_params(cfg, jax.random.PRNGKey(seed))
        tok = load_tokenizer(TOKENIZER_FOR[name_or_path])
    else:
        cfg, params = load_backbone_weights(name_or_path)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        tok = load_tokenizer(name_or_path)
    return Pretrained(cfg, params, tok, build_backbone(cfg, dtype=dtype))


__all__ = ["Pretrained", "load_pretrained", "NAMED_CONFIGS"]
