"""A method's model, partition, optimizer and state on a tiny random backbone, without data (seconds)."""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.defaults import base_config
from umema_jax import methods
from umema_jax.backbones.config import get_backbone_config
from umema_jax.model import init_variables
from umema_jax.train.assemble import model_config_view
from umema_jax.train.state import create_train_state
from umema_jax.train.step import make_train_step


def method_setup(name: str, model: str = "gpt2-tiny", total_steps: int = 10, backbone_cfg=None,
                 dtype: str = "float32", **overrides):
    """Everything `train/loop.py` builds for `model.method=name`, as a namespace. `overrides`: {'a.b': v}."""
    c = base_config()
    c.model.name, c.model.method, c.model.init_from_scratch, c.model.dtype = model, name, True, "float32"
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    method = methods.from_config(c)
    cfg = backbone_cfg or get_backbone_config(model)
    net = method.make_model(model_config_view(c, "cls", 3), cfg)
    if dtype != "float32":
        net = net.clone(dtype=jnp.dtype(dtype))
    variables = init_variables(net, jax.random.PRNGKey(0))
    method.bind(net, dict(variables["params"]))
    trained, frozen = method.split(dict(variables["params"]))
    trainable = method.init_trainable({"lora": variables.get("lora", {}), "params": trained})
    tx, schedule = method.optimizer(total_steps)
    state = create_train_state(trainable, variables.get("memory", {}), tx, 0, method)
    step = make_train_step(net, tx, schedule, "cls", method=method)
    return types.SimpleNamespace(config=c, method=method, model=net, variables=variables, trainable=trainable,
                                 frozen=frozen, tx=tx, schedule=schedule, state=state, step=step, backbone=cfg)


def random_batch(rows: int = 4, n: int = 8, vocab: int = 200, labels: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, n), np.int32)
    mask[0, n - 3:] = 0                               # one padded row end
    return {"input_ids": jnp.asarray(rng.integers(1, vocab, (rows, n)), jnp.int32),
            "attention_mask": jnp.asarray(mask), "example_mask": jnp.ones((rows,), jnp.int32),
            "task_id": jnp.zeros((rows,), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, labels, (rows,)), jnp.int32)}


def flat(tree) -> dict:
    """{'a/b/c': array} of a nested dict."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): x
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}
