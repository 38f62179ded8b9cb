"""The method interface: the hooks the trainer calls, which a training method (LoRA, full FT, LISA, a
baseline) may override.

The trainer (`train/`) defines this interface and calls nothing else; it never imports a concrete
method. A method is one subclass of `Method` in its own module under `umema_jax/methods/`, registered
there with `@register`. The shared pipeline (`train/build.py`, `train/loop.py`,
`train/step.py`, `bench.py`) calls these hooks and nothing else, so a new
method never edits the pipeline. Every hook has a default that is exactly
plain LoRA training; override only what differs. docs/METHODS.md explains each
hook and walks through adding a method.

Hook        | when                  | default
------------|-----------------------|-----------------------------------------------
make_model  | build, once           | `model.make_model` (+ LoRA iff `use_lora`)
bind        | build, once           | keeps the model as `self.model`
split       | build, once           | trained/frozen by `train.trainable_regex`
init_trainable | build, once        | {'lora', 'params'} unchanged (SplitLoRA: per-client copies)
train_batches | loop start          | `data.pipeline.TrainBatches` (SplitLoRA, FLoRA: clients' batches)
optimizer   | loop start            | `train.state.make_optimizer` (clip + AdamW)
init_extra  | loop start            | {} (arrays carried in `TrainState.extra`)
model_variables | every step (traced) | params (frozen+trained), lora, memory
aux_loss    | every micro-batch (traced) | none
transform_gradients | every step (traced) | identity
apply_gradients | every step (traced) | `tx.update` + `optax.apply_updates`
step_metrics | every step (traced)  | {}
controller  | loop start            | `Controller()`: host hooks that do nothing
count_trainable | build, bench      | every trainable leaf's size

The hooks run in the order of the table. State a method keeps on `self` is created in one of
three places, never as a side effect of another hook: `make_model` (what it decides about the model
from the config, e.g. SplitLoRA's cut), `bind` (what it reads off the initialised model and params,
e.g. LISA's block count and the body it carries outside the trained tree) and `train_batches` (what
it reads off the data, e.g. FLoRA's client shards, which its `optimizer` then uses). `split`,
`init_trainable`, `init_extra` and the traced hooks are pure functions of their arguments and that
state.

Host-side hooks (`Controller`) run between jitted steps. They may replace the
state (and `frozen`) with arrays of the same shapes and dtypes, so the train
step never recompiles; their own bookkeeping (`state_dict`) is JSON saved in
every checkpoint's `meta`. Anything evaluation needs must live in
`TrainState` (arrays), because the final numbers come from the best
checkpoint read back from disk.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import jax
import optax

METRIC_PREFIX = "method/"       # step-metric keys a method adds; the loop averages and logs them


class Controller:
    """Host-side hooks between jitted steps. Subclass per method when needed.

    Every hook gets and returns `(state, frozen)`; return them unchanged when
    nothing happens. Replacements must keep every shape and dtype (no
    recompilation); the loop re-places a replaced state on the state's shardings.
    `step` is the number of optimizer steps already taken (0 before the first).
    """

    def __init__(self, method: "Method", total_steps: int, steps_per_epoch: int):
        self.method = method
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        # Set by the loop: `log(step, {name: float})` writes host-side metrics under split 'method'.
        # Log what `before_step(step)` decides under `step + 1` (the step it affects): on resume from a
        # checkpoint at step s, records with step > s are dropped and written again, never twice.
        self.log: Callable[[int, dict], None] = lambda step, scalars: None
        # Set by the loop before any hook (None in tests that drive a controller by hand): the run's
        # `train.loop.Experiment` (model, encoded splits: e.g. a fixed dev batch to score with) and mesh.
        self.experiment = None
        self.mesh = None

    def before_step(self, step: int, state, frozen):
        """Before the step that takes the state from `step` to `step + 1` (e.g. LISA resamples at step % K == 0)."""
        return state, frozen

    def end_epoch(self, epoch: int, step: int, state, frozen):
        """After the last step of epoch `epoch` (0-based), before that step's evaluation (e.g. pruning rounds)."""
        return state, frozen

    def after_restore(self, state, frozen):
        """After a checkpoint was restored (resume, and the best state before final evaluation)."""
        return state, frozen

    def state_dict(self) -> dict:
        """JSON-serialisable host bookkeeping, saved in every checkpoint's `meta['method']`."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Inverse of `state_dict`, called on resume with what the checkpoint held ({} if nothing)."""


class Method:
    """Default = plain LoRA (+ UM/EMA by the flags). Instantiated once per run from the root config.

    Class attributes a subclass sets:
      name      the `model.method` value that selects it
      label     its name in the paper's tables (the experiment runner's rows)
      family    'adapter' (LR chosen on the LoRA baseline) | 'full_weight' (own LR grid), docs/EXPERIMENTS.md
      use_lora, use_um, use_ema   what `UmemaModel` builds
      defaults  hyper-parameters with their docs/METHODS.md defaults; they become the config keys
                `methods.<name>.<key>` (read as `self.hp.<key>`); {} = no section
                so `optim.lr_scale` would be ignored: validation then refuses lr_scale != 1
    """
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    family: ClassVar[str] = "adapter"
    use_lora: ClassVar[bool] = True
    use_um: ClassVar[bool] = False
    use_ema: ClassVar[bool] = False
    defaults: ClassVar[dict] = {}

    def __init__(self, config=None):
        """`config`: the root ConfigDict (None only for tests that call traced hooks directly)."""
        self.config = config
        self.hp = config.methods[self.name] if (config is not None and self.defaults) else None

    # ---------------------------------------------------------------- config
    @classmethod
    def validate(cls, hp) -> None:
        """Check `methods.<name>.*` before anything is built; raise `ValueError` with one line naming the key."""

    # ---------------------------------------------------------------- build
    def make_model(self, model_config_view, backbone_cfg):
        """The flax module (`model_config_view`: what `model.make_model` reads). Must honour the model contract
        (docs/CONTRACTS.md): `apply(variables, batch, train=…) -> ModelOutput`."""
        from umema_jax.model import make_model
        return make_model(model_config_view, backbone_cfg, use_lora=self.use_lora, use_um=self.use_um,
                          use_ema=self.use_ema)

    def bind(self, model, params: dict) -> None:
        """Once, after `make_model` and initialisation (`params`: the model's whole `params` tree, arrays
        or `jax.ShapeDtypeStruct`s), before `split`: the one build hook that keeps what later hooks read
        off the model and its params on `self`. The default keeps the model, which the traced hooks of
        methods that apply it themselves (ALoRA's scoring) use."""
        self.model = model

    @property
    def trainable_regex(self) -> str:
        """Params (paths like `backbone/h/attn/c_attn/kernel`) trained besides the `lora` collection."""
        return self.config.train.trainable_regex

    def split(self, params: dict) -> tuple[dict, dict]:
        """(trained, frozen) sub-trees of the model's `params`. Frozen params get no gradient, no optimizer
        state and are not checkpointed."""
        from umema_jax.train.state import split_params
        return split_params(params, self.trainable_regex)

    def init_trainable(self, trainable: dict) -> dict:
        """The trained tree `{'lora', 'params'}` as the method carries it (e.g. per-client copies of the
        LoRA factors); called once at build, after `split`."""
        return trainable

    def train_batches(self, encoded, batch_size: int, seed: int, pad_multiple: int):
        """The training batches (`data.pipeline.TrainBatches`' interface: `steps_per_epoch`, `iterate`);
        a pure function of (seed, epoch, step), so resuming repeats them."""
        from umema_jax.data.pipeline import TrainBatches
        return TrainBatches(encoded, batch_size, seed, pad_multiple=pad_multiple)

    def step_rows(self, batch_size: int) -> int:
        """Rows one train step holds for `train.batch_size` (what `umema_jax.bench` times a step on)."""
        return int(batch_size)

    # ---------------------------------------------------------------- optimizer and carried state
    def optimizer(self, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
        from umema_jax.train.state import make_optimizer
        return make_optimizer(self.config.optim, total_steps)

    def init_opt_state(self, tx: optax.GradientTransformation, trainable: dict):
        return tx.init(trainable)

    def init_extra(self, trainable: dict) -> dict:
        """Arrays carried through the jitted step in `TrainState.extra` (masks, gates, counters) and
        checkpointed with it. Never static: changing them must not recompile."""
        return {}

    # ---------------------------------------------------------------- traced, inside the train step
    def model_variables(self, frozen: dict, trainable: dict, memory: dict, extra: dict) -> dict:
        """The `variables` the model is applied to (train and eval)."""
        from umema_jax.train.state import merge_params
        variables = {"params": merge_params(frozen, trainable.get("params", {}))}
        if trainable.get("lora"):
            variables["lora"] = trainable["lora"]
        if memory:
            variables["memory"] = memory
        return variables

    def aux_loss(self, out, batch: dict, extra: dict) -> tuple[jax.Array | float, dict]:
        """(term added to the micro-batch's loss, {metric: scalar}) — e.g. a load-balancing loss."""
        return 0.0, {}

    def transform_gradients(self, grads: dict, state) -> dict:
        """Gradients before clipping and the optimizer (e.g. zero those of inactive layers)."""
        return grads

    def apply_gradients(self, tx: optax.GradientTransformation, state, grads: dict):
        """-> (trainable, opt_state, extra) after one optimizer step."""
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        return optax.apply_updates(state.trainable, updates), opt_state, state.extra

    def step_metrics(self, old_state, new_state) -> dict:
        """{name: scalar} logged as `method/<name>` (averaged over the logging window)."""
        return {}

    # ---------------------------------------------------------------- host side
    def controller(self, total_steps: int, steps_per_epoch: int) -> Controller:
        return Controller(self, total_steps, steps_per_epoch)

    def count_trainable(self, trainable: dict) -> int:
        """Parameters one optimizer step can change (reported as "trainable"; LISA: E + H + γ blocks)."""
        return int(sum(x.size for x in jax.tree.leaves(trainable)))

    @classmethod
    def cost_hints(cls, get, backbone_cfg) -> dict:
        """What the experiment runner's time estimate needs to know, from config values only
        (`get(key, default)`, no model is built): `full_gradients` (every weight gets a gradient),
        `passes` over the training data per epoch, `extra_forward_examples` (forward passes of one
        example the method spends besides training and evaluation, e.g. scoring)."""
        full = cls.family == "full_weight" or str(get("train.trainable_regex", "")) == ".*"
        return {"full_gradients": full, "passes": 1, "extra_forward_examples": 0.0}

    @classmethod
    def unused_config_prefixes(cls) -> tuple:
        """`model.um.` / `model.ema.` when the method builds no UM / EMA branch: their settings cannot change
        its results, so a new default there must not make its runs unresumable or its ledger entries stale."""
        return tuple(p for p, used in (("model.um.", cls.use_um), ("model.ema.", cls.use_ema)) if not used)

    def describe(self) -> dict:
        """Recorded in results.json / info: the method and its hyper-parameters."""
        hp = self.hp.to_dict() if hasattr(self.hp, "to_dict") else (dict(self.hp) if self.hp else {})
        return {"name": self.name, "family": self.family, **({"hp": hp} if hp else {})}

