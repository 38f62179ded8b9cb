"""The backbone's return value (a pytree, so it passes through jit)."""
from __future__ import annotations

from typing import Any, NamedTuple


class BackboneOutput(NamedTuple):
    embeddings: Any            # [B,n,d] output of the embedding layer (H0)
    hidden_states: Any         # [L,B,n,d] every layer's output (before the final norm), or None
    last_hidden_state: Any     # [B,n,d] after the final norm
    logits: Any                # [B,n,V] fp32, or None
    routing: Any = None        # MiLoRA: {'gates', 'probs', 'selected'} each [L,B,M], or None
