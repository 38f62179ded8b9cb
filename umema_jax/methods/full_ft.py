"""Full fine-tuning (docs/METHODS.md): every backbone weight and the head, one AdamW, no adapter.

Decay on matrices only (`train.state.adamw`); GPT-2's tied `wte` trains as the
input embedding; LLaMA's untied `lm_head` (present in loaded weights only: the
classification model never calls it) stays frozen, since it would get no
gradient and AdamW would still decay it.

Memory option for big models (`methods.full_ft.param_dtype=bfloat16`, with
`model.remat=True`): the trained weights are stored in bf16, gradients arrive
in bf16, the AdamW moments stay fp32 and each update is computed in fp32 and
rounded once. 12 B/param instead of 16 (`memory_bytes`; docs/METHODS.md has the
numbers). There is no fp32 master copy, so updates below half a bf16 ulp of a
weight are lost; prefer fp32 whenever it fits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from umema_jax.methods.registry import register
from umema_jax.train.method import Method

ALL_BUT_LM_HEAD = r"^(?!backbone/lm_head/)"
PARAM_DTYPES = ("float32", "bfloat16")


@register
class FullFT(Method):
    name = "full_ft"
    label = "full FT"
    family = "full_weight"
    use_lora = False
    defaults = {"param_dtype": "float32"}     # float32 | bfloat16 (weights and grads; moments stay fp32)
    trainable_regex = ALL_BUT_LM_HEAD

    @classmethod
    def validate(cls, hp) -> None:
        if hp.param_dtype not in PARAM_DTYPES:
            raise ValueError(f"methods.full_ft.param_dtype={hp.param_dtype!r}: must be one of {', '.join(PARAM_DTYPES)}")

    @property
    def _bf16(self) -> bool:
        return self.hp is not None and self.hp.param_dtype == "bfloat16"

    def split(self, params):
        trained, frozen = super().split(params)
        return (_cast(trained, jnp.bfloat16) if self._bf16 else trained), frozen

    def init_opt_state(self, tx, trainable):
        return tx.init(_cast(trainable, jnp.float32))          # fp32 moments whatever the weights' dtype

    def apply_gradients(self, tx, state, grads):
        if not self._bf16:
            return super().apply_gradients(tx, state, grads)
        master = _cast(state.trainable, jnp.float32)
        updates, opt_state = tx.update(_cast(grads, jnp.float32), state.opt_state, master)
        trainable = jax.tree.map(lambda p, q: q.astype(p.dtype), state.trainable, optax.apply_updates(master, updates))
        return trainable, opt_state, state.extra


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def memory_bytes(backbone: str, param_dtype: str = "float32", num_labels: int = 2) -> dict:
    """Training-state bytes of full FT from shapes alone (`jax.eval_shape`, nothing materialised):
    weights + gradients (param_dtype) + two fp32 AdamW moments; activations not included."""
    from umema_jax.backbones import build_backbone, get_backbone_config
    cfg = get_backbone_config(backbone)
    shapes = jax.eval_shape(lambda r: build_backbone(cfg).init(r, jnp.zeros((1, 4), jnp.int32), compute_logits=True),
                            jax.random.PRNGKey(0))["params"]
    lm_head = sum(x.size for x in jax.tree.leaves(shapes.get("lm_head", {})))
    n = sum(x.size for x in jax.tree.leaves(shapes)) - lm_head + cfg.hidden_size * num_labels + num_labels
    width = jnp.dtype(param_dtype).itemsize
    out = {"trainable_params": int(n), "frozen_lm_head_params": int(lm_head), "weights": n * width,
           "grads": n * width, "moments": n * 8}
    out["total"] = out["weights"] + out["grads"] + out["moments"]
    return out
