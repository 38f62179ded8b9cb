"""LISA, Layerwise Importance Sampled AdamW (Pan et al. 2024; docs/METHODS.md).

Embeddings, final norm and head always train; every `interval_steps` (K)
steps `gamma` (γ) blocks are drawn uniformly without replacement from all
blocks and train with their full weights until the next draw. As in LMFlow's
trainer (one optimizer for the whole run; a draw only switches which blocks
get gradients), every block keeps its own AdamW moments and step count while
it is frozen and resumes them when drawn again, frozen blocks are not decayed,
and the LR schedule runs over the global step.

Two forms of docs/METHODS.md with the same numerics (`methods.lisa.form`):

- `simple`: all blocks are in the trainable tree (scanned, `[L, …]`); the
  active set is `extra['layer_mask'] [L]`, traced data, so a new draw never
  recompiles. Inactive blocks get zero gradient (so the global-norm clip sees
  only active ones) and their parameters *and* AdamW state (moments, per-block
  count) are *selected* back (`where`), not multiplied by a mask: AdamW's
  decoupled decay moves zero-gradient weights and Adam decays their moments, so
  only a select keeps them bitwise frozen. Gradients and the update cover all L.
- `efficient` (default): the trainable tree holds the γ active blocks as
  *slots* (`trainable['layer_slots']`, `[γ, …]`); all L blocks live in
  `extra['body']` and their AdamW state in `extra['body_adam']` (checkpointed,
  never differentiated), and `extra['slot_of'] [L]` says which layer runs from
  which slot (`backbones/decoder.py`: a `lax.cond` per layer, so the frozen
  layers compute no weight gradient). At each draw the slots and their AdamW
  state are written back and the new active blocks' gathered, in one jitted
  function. Gradients and the update cover γ blocks, not L.

The draw of period p uses `fold_in(extra['sampler_key'], p)`, a function of
the checkpointed state and the step, so resume repeats it exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from umema_jax.methods.registry import register
from umema_jax.train.method import Controller, Method
from umema_jax.methods.full_ft import ALL_BUT_LM_HEAD
from umema_jax.train.state import BLOCK_SCOPES, CountedAdamState, is_block_leaf

FORMS = ("efficient", "simple")
SLOTS = "layer_slots"             # trainable[SLOTS] = {'backbone': {scope: block tree [γ, …]}}

SAMPLER_TAG = 0x115A                  # separates the sampler's key from the run's other keys


def is_body(path) -> bool:
    """True for leaves of the scanned blocks (`params/backbone/h|layers/…`, leading axis [L])."""
    return is_block_leaf(path)


def sample_layers(key: jax.Array, period, num_layers: int, gamma: int) -> jax.Array:
    """float32 [L] with exactly `gamma` ones, uniform without replacement, for draw number `period`."""
    chosen = jax.random.permutation(jax.random.fold_in(key, period), num_layers)[:gamma]
    return jnp.zeros((num_layers,), jnp.float32).at[chosen].set(1.0)


def _layer_select(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)) > 0, new, old)


def slot_indices(mask: jax.Array, gamma: int) -> tuple[jax.Array, jax.Array]:
    """(active layers [γ] ascending, slot_of [L]: the slot of each layer, -1 = frozen) for a 0/1 mask."""
    idx = jnp.nonzero(mask > 0, size=gamma)[0].astype(jnp.int32)
    slot_of = jnp.full(mask.shape, -1, jnp.int32).at[idx].set(jnp.arange(gamma, dtype=jnp.int32))
    return idx, slot_of


def _concrete(tree):
    """Arrays as they are; shapes-only leaves (`jax.eval_shape` estimates) as zeros, abstract under tracing."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


BlockAdamState = CountedAdamState    # count leaves [n, 1, …]: one per stacked block


def _block_count(x):
    return jnp.zeros(_block_count_shape(None, x), jnp.int32)


def _block_count_shape(path, x) -> tuple:
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _is_block_adam(x) -> bool:
    return isinstance(x, BlockAdamState)


def block_adam_state(opt_state) -> BlockAdamState:
    """The body group's `BlockAdamState` inside LISA's optimizer state."""
    groups = opt_state[1]                   # (clip, groups, [lr scale])
    return next(x for x in jax.tree.leaves(groups.inner_states["body"], is_leaf=_is_block_adam) if _is_block_adam(x))


def with_block_adam_state(opt_state, new: BlockAdamState):
    clip_state, groups, *rest = opt_state
    body = jax.tree.map(lambda x: new if _is_block_adam(x) else x, groups.inner_states["body"], is_leaf=_is_block_adam)
    return (clip_state, groups._replace(inner_states=dict(groups.inner_states, body=body)), *rest)


@register
class LISA(Method):
    name = "lisa"
    label = "LISA"
    family = "full_weight"
    use_lora = False
    defaults = {"gamma": 2,                # γ active blocks (paper, 7B runs)
                "interval_steps": 20,      # K steps between draws (LMFlow `lisa_interval_steps`)
                "form": "efficient"}       # efficient (γ blocks trained) | simple (all L, masked); module doc
    trainable_regex = ALL_BUT_LM_HEAD      # E + H + blocks (efficient: the blocks then move to extra['body'])

    @classmethod
    def validate(cls, hp) -> None:
        for key in ("gamma", "interval_steps"):
            if int(hp[key]) < 1:
                raise ValueError(f"methods.lisa.{key}={hp[key]}: must be >= 1")
        if hp.form not in FORMS:
            raise ValueError(f"methods.lisa.form={hp.form!r}: must be one of {', '.join(FORMS)}")

    @classmethod
    def cost_hints(cls, get, backbone_cfg) -> dict:
        """The efficient form computes only the γ active blocks' weight gradients (measured 1.19x LoRA's
        step on SmolLM2, docs/METHODS.md): LoRA-like for the estimate; the simple form is full-weight."""
        hints = super().cost_hints(get, backbone_cfg)
        return {**hints, "full_gradients": str(get("methods.lisa.form", "efficient")) != "efficient"}

    @property
    def efficient(self) -> bool:
        return self.hp is None or self.hp.form == "efficient"

    def bind(self, model, params):
        """The block count, and (efficient form) the body that leaves the trained tree for `extra['body']`."""
        super().bind(model, params)
        trained, _ = super().split(params)
        layers = {x.shape[0] for p, x in jax.tree_util.tree_leaves_with_path({"params": trained}) if is_body(p)}
        if len(layers) != 1:
            raise ValueError(f"lisa: expected scanned blocks under backbone/{'|'.join(BLOCK_SCOPES)}, found {layers}")
        self.num_layers = layers.pop()
        if int(self.hp.gamma) > self.num_layers:
            raise ValueError(f"methods.lisa.gamma={self.hp.gamma}: more than the {self.num_layers} blocks of "
                             f"{self.config.model.name}")
        if self.efficient:
            self.scope = next(k for k in BLOCK_SCOPES if k in trained["backbone"])
            self._body = {"backbone": {self.scope: trained["backbone"][self.scope]}}

    def split(self, params):
        trained, frozen = super().split(params)
        if self.efficient:                 # the blocks leave the trained tree for extra['body'] (init_extra)
            backbone = {k: v for k, v in trained["backbone"].items() if k != self.scope}
            trained = {**trained, "backbone": backbone}
        return trained, frozen

    def init_trainable(self, trainable):
        if not self.efficient:
            return trainable
        idx, _ = slot_indices(self._first_draw(), int(self.hp.gamma))
        return {**trainable, SLOTS: jax.tree.map(lambda x: x[idx], _concrete(self._body))}

    def _sampler_key(self):
        return jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), SAMPLER_TAG)

    def _first_draw(self):
        return sample_layers(self._sampler_key(), 0, self.num_layers, int(self.hp.gamma))

    def count_trainable(self, trainable):
        if self.efficient:                 # E + H + the γ slots: exactly the trained tree
            return int(sum(x.size for x in jax.tree.leaves(trainable)))
        body = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(trainable) if is_body(p))
        total = sum(x.size for x in jax.tree.leaves(trainable))
        layers = {x.shape[0] for p, x in jax.tree_util.tree_leaves_with_path(trainable) if is_body(p)}.pop()
        return int(total - body + body * int(self.hp.gamma) // layers)

    def optimizer(self, total_steps):
        """The project's optimizer; the body's blocks are a group with one Adam count per block."""
        from umema_jax.train.state import make_optimizer
        return make_optimizer(self.config.optim, total_steps,
                              groups=(lambda p: "body" if is_body(p) else "eh",
                                      {"eh": {}, "body": {"count_shape": _block_count_shape}}))

    def init_extra(self, trainable):
        extra = {"layer_mask": self._first_draw(), "sampler_key": self._sampler_key()}
        if self.efficient:
            extra["slot_of"] = slot_indices(extra["layer_mask"], int(self.hp.gamma))[1]
            extra["body"] = body = _concrete(self._body)
            # every block's AdamW state between its turns (the slots' live in the optimizer state)
            extra["body_adam"] = {"count": jax.tree.map(_block_count, body), "mu": jax.tree.map(jnp.zeros_like, body),
                                  "nu": jax.tree.map(jnp.zeros_like, body)}
        return extra

    def model_variables(self, frozen, trainable, memory, extra):
        if not self.efficient:
            return super().model_variables(frozen, trainable, memory, extra)
        from umema_jax.train.state import merge_params
        variables = super().model_variables(merge_params(frozen, extra["body"]),
                                            {k: v for k, v in trainable.items() if k != SLOTS}, memory, extra)
        slots = trainable[SLOTS]["backbone"]
        variables[SLOTS] = {"backbone": {**slots, "slot_of": extra["slot_of"]}}
        return variables

    def transform_gradients(self, grads, state):
        if self.efficient:                 # every trained leaf is active
            return grads
        mask = state.extra["layer_mask"]
        return jax.tree_util.tree_map_with_path(
            lambda p, g: _layer_select(mask, g, jnp.zeros_like(g)) if is_body(p) else g, grads)

    def apply_gradients(self, tx, state, grads):
        trainable, opt_state, extra = super().apply_gradients(tx, state, grads)
        if self.efficient:
            return trainable, opt_state, extra
        mask = state.extra["layer_mask"]
        select = lambda new, old: _layer_select(mask, new, old)                     # noqa: E731
        trainable = jax.tree_util.tree_map_with_path(
            lambda p, new, old: select(new, old) if is_body(p) else new, trainable, state.trainable)
        # frozen blocks keep their moments and count too (Adam would decay the moments of a zero gradient)
        kept = jax.tree.map(select, block_adam_state(opt_state), block_adam_state(state.opt_state))
        return trainable, with_block_adam_state(opt_state, kept), extra

    def resample(self, state, period):
        """New draw for `period` (jitted once by the controller). Efficient form: the slots and their AdamW
        state go back to their blocks, the new active blocks and theirs come in; nothing is reset."""
        gamma = int(self.hp.gamma)
        mask = sample_layers(state.extra["sampler_key"], period, state.extra["layer_mask"].shape[0], gamma)
        extra, trainable, opt_state = dict(state.extra, layer_mask=mask), state.trainable, state.opt_state
        if self.efficient:
            old, _ = slot_indices(state.extra["layer_mask"], gamma)
            new, extra["slot_of"] = slot_indices(mask, gamma)
            extra["body"] = body = self._written_back(state)
            trainable = {**trainable, SLOTS: jax.tree.map(lambda b: b[new], body)}
            live = block_adam_state(opt_state)
            store = {k: jax.tree.map(lambda b, x: b.at[old].set(x), state.extra["body_adam"][k], getattr(live, k)[SLOTS])
                     for k in ("count", "mu", "nu")}
            extra["body_adam"] = store
            gathered = {k: {**getattr(live, k), SLOTS: jax.tree.map(lambda b: b[new], store[k])}
                        for k in ("count", "mu", "nu")}
            opt_state = with_block_adam_state(opt_state, BlockAdamState(**gathered))
        return state.replace(trainable=trainable, opt_state=opt_state, extra=extra)

    def _written_back(self, state):
        """Efficient form: `extra['body']` with the current slots written into their layers."""
        old, _ = slot_indices(state.extra["layer_mask"], int(self.hp.gamma))
        return jax.tree.map(lambda b, x: b.at[old].set(x.astype(b.dtype)), state.extra["body"], state.trainable[SLOTS])

    def final_body(self, state):
        """All L blocks as trained so far (`{module: [L, …]}`), in either form."""
        if self.efficient:
            return self._written_back(state)["backbone"][self.scope]
        backbone = state.trainable["params"]["backbone"]
        return backbone[next(k for k in BLOCK_SCOPES if k in backbone)]

    def controller(self, total_steps, steps_per_epoch):
        return LISAController(self, total_steps, steps_per_epoch)


class LISAController(Controller):
    """Draws a new active set at every multiple of K (step 0 included: its draw equals the initial one)."""

    def __init__(self, method, total_steps, steps_per_epoch):
        super().__init__(method, total_steps, steps_per_epoch)
        self.interval = int(method.hp.interval_steps)
        self._resample = jax.jit(method.resample)
        self.period = 0

    def before_step(self, step, state, frozen):
        if step % self.interval:
            return state, frozen
        self.period = step // self.interval
        state = self._resample(state, jnp.asarray(self.period, jnp.int32))
        active = [int(i) for i in jax.device_get(jnp.nonzero(state.extra["layer_mask"])[0])]
        self.log(step + 1, {"lisa_period": float(self.period), **{f"lisa_active_{j}": float(i) for j, i in enumerate(active)}})
        return state, frozen

    def state_dict(self):
        return {"period": self.period}

    def load_state_dict(self, d):
        self.period = int(d.get("period", 0))
