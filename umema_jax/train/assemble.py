"""The one way to assemble a trainable setup: model → variables → bind → split → cast → the method's trained
tree → optimizer → state → shardings → the jitted train and eval steps.

Training (`train/build.py` + `train/loop.py`), the benchmark (`umema_jax.bench`) and the memory
estimate (`umema_jax.memory_estimate`) all call these two functions, so the benchmark times the step
training runs and the estimate measures it. `abstract=True` builds the same trees as
`jax.ShapeDtypeStruct`s (no weights are materialised: an 8B backbone's plan on a laptop).

`method` is a `train.method.Method` (a concrete one from `umema_jax.methods`); nothing here knows
which.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax
import jax.numpy as jnp

from umema_jax.model import init_variables
from umema_jax.train import sharding as shd
from umema_jax.train.state import cast_tree, create_train_state
from umema_jax.train.step import (eval_samples, jit_eval_step, jit_train_step, make_eval_step, make_feature_step,
                                  make_train_step)


def model_config_view(config, task_type: str, num_labels: int):
    """The root-config view `make_model` reads: `model.*` plus the data-derived `task.*`."""
    return types.SimpleNamespace(model=config.model,
                                 task=types.SimpleNamespace(type=task_type, num_labels=num_labels))


@dataclasses.dataclass
class Setup:
    """A method's model and its trees, before any optimizer exists."""
    model: Any
    frozen: dict              # params without gradient, cast to `model.frozen_param_dtype`
    trainable: dict           # the method's trained tree ({'lora', 'params'} or its own form)
    memory: dict              # the EMA bank ({} without EMA)
    params: dict = dataclasses.field(default_factory=dict)   # the model's own `params` (for counts)
    lora: dict = dataclasses.field(default_factory=dict)     # the model's own `lora` collection


def build_setup(config, method, task_type: str, num_labels: int, backbone_cfg, weights=None,
                abstract: bool = False, frozen_dtype: str | None = None) -> Setup:
    """The model `method` builds for `config`, initialised with `config.seed` (loaded backbone `weights`
    go straight in, never randomly initialised first), split into frozen and trained trees."""
    model = method.make_model(model_config_view(config, task_type, num_labels), backbone_cfg)
    key = jax.random.PRNGKey(config.seed)
    if abstract:
        variables = jax.eval_shape(lambda r: init_variables(model, r), key)
    else:
        backbone = None if weights is None else jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), weights)
        variables = init_variables(model, key, backbone_params=backbone)
    params = dict(variables["params"])
    method.bind(model, params)
    trained, frozen = method.split(params)
    dtype = jnp.dtype(frozen_dtype or config.model.frozen_param_dtype)
    if abstract:
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), frozen)   # as cast_tree
        trainable = jax.eval_shape(method.init_trainable, {"lora": variables.get("lora", {}), "params": trained})
    else:
        frozen = cast_tree(frozen, dtype)
        trainable = method.init_trainable({"lora": variables.get("lora", {}), "params": trained})
    return Setup(model=model, frozen=frozen, trainable=trainable, memory=variables.get("memory", {}),
                 params=params, lora=variables.get("lora", {}))


@dataclasses.dataclass
class Steps:
    """The optimizer, the placed state and frozen trees, their shardings and the jitted steps."""
    tx: Any
    schedule: Any
    state: Any
    state_sharding: Any
    frozen: Any
    frozen_sharding: Any
    train_step: Any           # (state, frozen, batch) -> (state, metrics), the state donated
    eval_step: Any            # (state, frozen, batch) -> predictions
    feature_step: Any = None  # (state, frozen, batch) -> predictions + the head's input (post-hoc calibrators)
    eval_samples: int = 1     # forward passes per eval prediction (> 1: a sampling head such as MC dropout)


def assemble_steps(setup: Setup, method, *, task_type: str, total_steps: int, grad_accum_steps: int,
                   seed: int, mesh, fsdp_rules: str = "default", abstract: bool = False,
                   placed_frozen=None) -> Steps:
    """Frozen backbone placed by the FSDP rules, everything else replicated; the train step is the
    method's (`make_train_step` with its hooks), jitted with those shardings. `placed_frozen`: a frozen
    tree already on the mesh with this setup's structure (the benchmark shares one across methods)."""
    tx, schedule = method.optimizer(total_steps)
    frozen_sh = shd.named(mesh, shd.tree_specs(setup.frozen, shd.FSDP_RULE_SETS[fsdp_rules], mesh))
    if abstract:
        frozen = setup.frozen
        state = jax.eval_shape(lambda t, m: create_train_state(t, m, tx, seed, method), setup.trainable,
                               setup.memory)
    else:
        frozen = placed_frozen if placed_frozen is not None else jax.device_put(setup.frozen, frozen_sh)
        state = create_train_state(setup.trainable, setup.memory, tx, seed, method)
    state_sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
    if not abstract:
        state = jax.device_put(state, state_sh)
    train_step = jit_train_step(make_train_step(setup.model, tx, schedule, task_type, grad_accum_steps,
                                                method=method),
                                state_sh, frozen_sh, shd.batch_sharding(mesh), shd.replicated(mesh))
    eval_step = jit_eval_step(make_eval_step(setup.model, task_type, method), state_sh, frozen_sh,
                              shd.batch_sharding(mesh), shd.replicated(mesh))
    feature_step = jit_eval_step(make_feature_step(setup.model, task_type, method), state_sh, frozen_sh,
                                 shd.batch_sharding(mesh), shd.replicated(mesh))     # compiled only when called
    return Steps(tx=tx, schedule=schedule, state=state, state_sharding=state_sh, frozen=frozen,
                 frozen_sharding=frozen_sh, train_step=train_step, eval_step=eval_step, feature_step=feature_step,
                 eval_samples=eval_samples(setup.model))
