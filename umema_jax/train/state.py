"""What training carries from step to step, and how params split into trained/frozen.

The frozen backbone never enters `TrainState`: it is a separate, non-donated,
non-differentiated argument of the step, so no gradient and no optimizer state
is ever allocated for it, and it is not written into checkpoints.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 [], optimizer steps taken
    trainable: dict          # {'lora': …, 'params': <paths matching trainable_regex>}
    opt_state: Any
    memory: dict             # the model's `memory` collection (EMA bank); {} when absent
    rng: jax.Array           # uint32 [2]; per-step keys are fold_in(rng, step)
    extra: dict = flax.struct.field(default_factory=dict)   # the method's carried arrays (train/method.py)


def split_params(params: dict, trainable_regex: str) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts; a path is trainable iff the regex *searches* it."""
    pattern = re.compile(trainable_regex)
    flat = traverse_util.flatten_dict(params, sep="/")
    trained = {k: v for k, v in flat.items() if pattern.search(k)}
    frozen = {k: v for k, v in flat.items() if not pattern.search(k)}
    return (traverse_util.unflatten_dict(trained, sep="/"),
            traverse_util.unflatten_dict(frozen, sep="/"))


def merge_params(frozen: dict, trained: dict) -> dict:
    """Inverse of `split_params` (paths are disjoint)."""
    flat = traverse_util.flatten_dict(frozen, sep="/")
    flat.update(traverse_util.flatten_dict(trained, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def learning_rate_schedule(peak: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warm-up to `peak` over `warmup` steps, then linear decay towards 0 (paper).

    Shifted by one so no step is wasted: the first step uses peak/warmup (not 0)
    and the last uses peak/(total-warmup) (not 0).
    """
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0
    decay = max(1, total_steps - warmup)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        up = peak * (step + 1.0) / max(warmup, 1)
        down = peak * jnp.clip((total_steps - step) / decay, 0.0, 1.0)
        return jnp.where(step < warmup, up, down)
    return schedule


def make_optimizer(optim_cfg, total_steps: int, groups=None,
                   count_shape=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The one optimizer every method uses: global-norm clipping, then AdamW (`adamw`: weight decay on
    matrices only), then `optim.lr_scale` on the leaves `optim.lr_scale_regex` names, under the linear
    warm-up / decay schedule. So `optim.*` means the same thing for every method.

    A method whose leaves need their own Adam bookkeeping says so, never builds its own chain:
    `count_shape` (one group) or `groups = (label_of, {group: adamw keyword arguments})`, `label_of(path)`
    naming each leaf's group (LISA's blocks, SplitLoRA's per-client copies, ALoRA's rank slots)."""
    schedule = learning_rate_schedule(optim_cfg.learning_rate, total_steps, optim_cfg.warmup_ratio)
    if groups is None:
        body = adamw(optim_cfg, schedule, count_shape)
    else:
        label_of, kinds = groups
        body = optax.multi_transform({name: adamw(optim_cfg, schedule, **kw) for name, kw in kinds.items()},
                                     lambda tree: jax.tree_util.tree_map_with_path(lambda p, _: label_of(p), tree))
    parts = [optax.clip_by_global_norm(optim_cfg.grad_clip_norm), body]
    scale = float(optim_cfg.lr_scale)
    if scale != 1.0:              # only then: the optimizer state of every other run keeps its structure
        parts.append(scale_updates_by_path(optim_cfg.lr_scale_regex, scale))
    return optax.chain(*parts), schedule


def path_keys(path) -> list[str]:
    """The keys of a pytree path (`jax.tree_util` DictKey / SequenceKey / ...) as strings."""
    return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def tree_path_name(path) -> str:
    """'/'-joined keys of a pytree path: `params/um/W_h/kernel`, `lora/backbone/h/attn/...`."""
    return "/".join(path_keys(path))


def scale_updates_by_path(regex: str, factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of the trained leaves whose path (`tree_path_name`) the regex searches by
    `factor`: a learning rate of `factor`·lr for that group. AdamW's update, decay included, is linear in
    the LR, so this equals AdamW run at the scaled LR for those leaves (tested)."""
    pattern = re.compile(regex)

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor if pattern.search(tree_path_name(path)) else u, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


BLOCK_SCOPES = ("h", "layers")   # the backbone's scanned blocks (GPT-2, LLaMA): leaves carry a leading [L] axis


def is_block_leaf(path) -> bool:
    """True for a leaf of the scanned blocks: `(…, 'backbone', 'h' | 'layers', …)` (params or lora trees)."""
    keys = path_keys(path)
    return any(a == "backbone" and b in BLOCK_SCOPES for a, b in zip(keys, keys[1:]))


def decays(path, x, copies: int = 0) -> bool:
    """Weight decay on matrices only: ndim >= 2 per layer (a block's stacked bias [L, d] is a vector) and
    per copy (`copies` leading axes of per-client copies)."""
    return x.ndim - copies - (1 if is_block_leaf(path) else 0) >= 2


def adamw(optim_cfg, schedule: optax.Schedule, count_shape=None, copies: bool = False) -> optax.GradientTransformation:
    """The project's AdamW (decay on matrices only, `decays`), for one group of leaves.
    `count_shape`: one bias-correction count per slice of each leaf (`scale_by_counted_adam`), for methods
    that pause or re-create slices (LISA's blocks, ALoRA's rank slots); None = optax's one count.
    `copies`: the leaves carry a leading axis of independent copies (SplitLoRA's clients), each with its
    own moments and count (`per_copy`)."""
    o = optim_cfg
    if count_shape is None and not copies:
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=_decay_mask)
    adam = optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps) if count_shape is None else \
        scale_by_counted_adam(o.b1, o.b2, o.eps, count_shape)
    if copies:
        adam = per_copy(adam)
    mask = (lambda tree: jax.tree_util.tree_map_with_path(lambda p, x: decays(p, x, copies=1), tree)) if copies \
        else _decay_mask
    return optax.chain(adam, optax.add_decayed_weights(o.weight_decay, mask), optax.scale_by_learning_rate(schedule))


def _decay_mask(tree):
    return jax.tree_util.tree_map_with_path(decays, tree)


class PerCopyState(NamedTuple):
    inner: optax.OptState          # leaves with a leading copy axis


def per_copy(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to each slice of the leading (copy) axis on its own: own moments, own count."""
    def init(params):
        if not jax.tree.leaves(params):             # a group with no leaves in this tree
            return PerCopyState(inner.init(params))
        return PerCopyState(jax.vmap(inner.init)(params))

    def update(updates, state, params=None):
        if not jax.tree.leaves(updates):
            return updates, state
        updates, new = jax.vmap(lambda u, s: inner.update(u, s))(updates, state.inner)
        return updates, PerCopyState(new)
    return optax.GradientTransformation(init, update)


class CountedAdamState(NamedTuple):
    """Adam's state with a step count per slice of a leaf (`count` leaves broadcast against their parameter)."""
    count: Any
    mu: Any
    nu: Any


def scale_by_counted_adam(b1: float, b2: float, eps: float,
                          count_shape: Callable[[Any, Any], tuple]) -> optax.GradientTransformation:
    """`optax.scale_by_adam` whose bias correction counts each slice's own steps: `count_shape(path, leaf)`
    gives a shape broadcastable against the leaf (() = one count, as optax). A method that pauses or
    re-creates slices (LISA's blocks, ALoRA's rank slots) keeps or resets their counts in the state; with
    equal counts the update is optax's exactly."""

    def init(params):
        count = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros(count_shape(p, x), jnp.int32), params)
        return CountedAdamState(count=count, mu=jax.tree.map(jnp.zeros_like, params),
                                nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = jax.tree.map(optax.safe_increment, state.count)

        def adam(m, v, c):
            return (m / (1 - b1 ** c).astype(m.dtype)) / (jnp.sqrt(v / (1 - b2 ** c).astype(v.dtype)) + eps)
        return jax.tree.map(adam, mu, nu, count), CountedAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def create_train_state(trainable: dict, memory: dict, tx: optax.GradientTransformation,
                       seed: int, method=None) -> TrainState:
    """`method` (train/method.py) supplies the optimizer state's init and the carried `extra`; None = plain."""
    opt_state = tx.init(trainable) if method is None else method.init_opt_state(tx, trainable)
    extra = {} if method is None else method.init_extra(trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt_state, memory=memory,
                      rng=jax.random.PRNGKey(seed ^ 0x5EED), extra=extra)


def cast_tree(tree: Any, dtype) -> Any:
    """Cast floating leaves (e.g. the frozen backbone to bf16 storage)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
