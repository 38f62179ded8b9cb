"""The jitted train and eval steps.

`train_step(state, frozen, batch) -> (state, metrics)` is one XLA program:
forward, masked cross-entropy on the model's calibrated logits, gradients
w.r.t. `state.trainable` only (`frozen` is an ordinary argument that is never
differentiated), clipped AdamW update, and the carried `memory` collection
returned by `apply(..., mutable=['memory'])`. No host sync inside.

Gradient accumulation (`grad_accum_steps = A > 1`) splits the mini-batch into
A micro-batches and `lax.scan`s over them. Losses are sums divided by the
*mini-batch's* valid-target count, so accumulated gradients equal the
un-accumulated ones. The bank is written once per mini-batch (docs/METHOD.md): every
micro-batch reads the bank as it was at the start of the step and returns the
two sums of its confidence-weighted entry (`memory_entry_numer/denom`); the
step adds them over micro-batches and writes their ratio into one slot, so the
entry is exactly the confidence-weighted mean over the whole mini-batch, and
the pointer advances iff any row was real. A = 1 takes the same path.

Branch telemetry (`train/telemetry.py`, keys `branch/...`) is computed inside
the step from the same forward pass (the micro-batches' mean under A > 1).

A non-finite loss or gradient leaves the state untouched (`finite=0` in the
metrics); the loop then stops the run, so the last checkpoint stays good.

What differs between training methods (variables, extra loss, gradient
transform, the optimizer update, carried `extra`, metrics) comes from the
`method` (the interface of umema_jax/train/method.py); None = the default method (plain update).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from umema_jax import runtime
from umema_jax.memory.bank import write_moments
from umema_jax.train.method import METRIC_PREFIX, Method
from umema_jax.train.state import TrainState
from umema_jax.train.telemetry import PREFIX as TELEMETRY_PREFIX, branch_telemetry

IGNORE = -100


def target_mask(batch: dict, task_type: str) -> jax.Array:
    """1.0 where a target is scored: real rows (`example_mask`) and, for NER, labels != -100."""
    rows = batch["example_mask"].astype(jnp.float32)
    if task_type == "ner":
        return (batch["labels"] != IGNORE).astype(jnp.float32) * rows[:, None]
    return rows


def cross_entropy_sum(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over scored targets of -log softmax(logits)[label] (logits already divided by T)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    safe = jnp.where(labels == IGNORE, 0, labels)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(nll * mask)


def make_loss_fn(model, task_type: str, method: Method | None = None) -> Callable:
    """(trainable, frozen, memory, batch, rng, denom, extra={}) -> (summed CE / denom + the method's aux loss,
    (entry sums, telemetry)).

    Differentiate arg 0. The model does not write the bank here (`write_memory=False`):
    it returns the entry's sums, and the step writes once per mini-batch.
    """
    method = method or Method()

    def loss_fn(trainable, frozen, memory, micro, rng, denom, extra=None):
        extra = {} if extra is None else extra
        out = model.apply(method.model_variables(frozen, trainable, memory, extra), micro, train=True,
                          write_memory=False, rngs={"dropout": rng})
        mask = target_mask(micro, task_type)
        loss = cross_entropy_sum(out.logits, micro["labels"], mask) / denom
        internals = out.internals or {}
        sums = {k: internals[k] for k in ("memory_entry_numer", "memory_entry_denom") if k in internals}
        telemetry = branch_telemetry(out.aux or {}, internals, micro, memory)
        aux, aux_metrics = method.aux_loss(out, micro, extra)
        telemetry.update({METRIC_PREFIX + k: v for k, v in aux_metrics.items()})
        head = getattr(model, "uncertainty", None)
        head_term = head.aux_loss(out, micro["labels"], mask) if head is not None else None
        if head_term is not None:                 # the head's own training term (e.g. UM's error_weight)
            aux = aux + head_term[0]
            telemetry.update({METRIC_PREFIX + k: v for k, v in head_term[1].items()})
        return loss + aux, (sums, telemetry)

    return loss_fn


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    task_type: str, grad_accum_steps: int = 1, method: Method | None = None) -> Callable:
    """Un-jitted step; `jit_train_step` adds shardings and donation. `method`: None = the default method."""
    method = method or Method()
    loss_fn = make_loss_fn(model, task_type, method)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, frozen: dict, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        n_targets = jnp.sum(target_mask(batch, task_type))
        denom = jnp.maximum(n_targets, 1.0)
        if grad_accum_steps == 1:
            (loss, (sums, telemetry)), grads = grad_fn(state.trainable, frozen, state.memory, batch, rng, denom,
                                                       state.extra)
        else:
            A = grad_accum_steps
            # Micro-batch i = rows i, i+A, i+2A, ...: every device's contiguous shard of the
            # batch contributes equally to each micro-batch, so no rows move between devices.
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // A, A) + x.shape[1:]), 0, 1),
                                 batch)

            def body(acc, inputs):
                mb, i = inputs
                (l, (s, t)), g = grad_fn(state.trainable, frozen, state.memory, mb,
                                         jax.random.fold_in(rng, i), denom, state.extra)
                return (acc[0] + l, jax.tree.map(jnp.add, acc[1], g), jax.tree.map(jnp.add, acc[2], s)), t

            zeros = jax.tree.map(jnp.zeros_like, state.trainable)
            sums0 = jax.eval_shape(lambda: grad_fn(state.trainable, frozen, state.memory,
                                                   jax.tree.map(lambda x: x[0], micro), rng, denom,
                                                   state.extra)[0][1][0])
            sums0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums0)
            (loss, grads, sums), tels = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros, sums0),
                                                     (micro, jnp.arange(A)))
            telemetry = jax.tree.map(lambda x: jnp.mean(x, 0), tels)
        memory = state.memory
        if sums:
            memory = write_moments(memory, sums["memory_entry_numer"], sums["memory_entry_denom"])
            telemetry[TELEMETRY_PREFIX + "memory_written_slots"] = memory["filled"].astype(jnp.float32)
        grads = method.transform_gradients(grads, state)
        grad_norm = optax.tree.norm(grads)
        trainable, opt_state, extra = method.apply_gradients(tx, state, grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                            memory=memory, extra=extra)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        telemetry.update({METRIC_PREFIX + k: v for k, v in method.step_metrics(state, new).items()})
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "tokens": jnp.sum(batch["attention_mask"] * batch["example_mask"][:, None]),
                   "targets": n_targets, "finite": finite.astype(jnp.int32), **telemetry}
        return new, metrics

    return train_step


def eval_samples(model) -> int:
    """Forward passes the model's evaluation averages (> 1: a sampling head such as MC dropout)."""
    return int(model.eval_samples()) if hasattr(model, "eval_samples") else 1


def make_eval_step(model, task_type: str, method: Method | None = None, features: bool = False) -> Callable:
    """(state, frozen, batch) -> probabilities, summed NLL, target count, aux outputs. Never writes the bank.

    `features=True` (the feature step): a deterministic pass that also returns, in `aux`, the task head's
    input `features` [..., d] and the model's `temperature`, what post-hoc calibrators fit on
    (`uncertainty.posthoc`). Its probabilities are the deterministic ones, so for a deterministic model the
    final evaluation scores the run and feeds the calibrators from this one pass."""
    method = method or Method()

    samples = 1 if features else eval_samples(model)

    def eval_step(state: TrainState, frozen: dict, batch: dict):
        variables = method.model_variables(frozen, state.trainable, state.memory, state.extra)
        if samples > 1:
            return sampled(variables, batch)
        out = model.apply(variables, batch, train=False)
        mask = target_mask(batch, task_type)
        probs = jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
        aux = dict(out.aux or {})
        if getattr(out, "temperature", None) is not None:
            aux.setdefault("temperature", out.temperature)
        if features and getattr(out, "features", None) is not None:      # a model without the field: none
            aux["features"] = out.features
        return {"probs": probs, "nll_sum": cross_entropy_sum(out.logits, batch["labels"], mask),
                "targets": jnp.sum(mask), "aux": aux}

    def sampled(variables, batch):
        """The sampling hook (heads with `eval_samples() > 1`): the mean of `samples` forward passes with
        the dropout on (keys fixed: evaluation stays deterministic), its NLL, and as scores the predictive
        entropy and the mutual information (entropy of the mean minus the mean entropy)."""
        keys = jax.random.split(jax.random.PRNGKey(EVAL_SAMPLE_SEED), samples)

        def one(key):
            out = model.apply(variables, batch, train=False, sample=True, rngs={"dropout": key})
            return jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
        each = jax.lax.map(one, keys)                                   # [S, ..., C], one pass at a time
        probs = jnp.mean(each, axis=0)
        entropy = lambda p: -jnp.sum(p * jnp.log(jnp.clip(p, 1e-30)), axis=-1)   # noqa: E731
        mean_entropy = jnp.mean(entropy(each), axis=0)
        mask = target_mask(batch, task_type)
        labels = jnp.where(mask > 0, batch["labels"], 0)
        picked = jnp.take_along_axis(probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
        nll_sum = -jnp.sum(jnp.log(jnp.clip(picked, 1e-30)) * mask)
        aux = {"predictive_entropy": entropy(probs), "mutual_information": entropy(probs) - mean_entropy}
        return {"probs": probs, "nll_sum": nll_sum, "targets": jnp.sum(mask), "aux": aux}

    return eval_step


def make_feature_step(model, task_type: str, method: Method | None = None) -> Callable:
    """The deterministic eval step with the head's input in `aux` (`make_eval_step(..., features=True)`)."""
    return make_eval_step(model, task_type, method, features=True)


EVAL_SAMPLE_SEED = 0x5A3E   # the dropout keys of sampled evaluation: the same for every run and batch


def _platform(sharding) -> str:
    return next(iter(sharding.device_set)).platform


def jit_train_step(step_fn, state_shardings, frozen_shardings, batch_sharding, replicated):
    """jit with explicit in/out shardings; the state (arg 0) is donated, `frozen` is not.

    `runtime.compiler_options` adds the measured XLA:CPU settings on CPU meshes.
    """
    return jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,),
                   compiler_options=runtime.compiler_options(_platform(batch_sharding)))


def jit_eval_step(step_fn, state_shardings, frozen_shardings, batch_sharding, replicated):
    """Outputs replicated: every host can read the whole batch's predictions (multi-host safe)."""
    return jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                   out_shardings=replicated, compiler_options=runtime.compiler_options(_platform(batch_sharding)))
