"""ALoRA, allocating LoRA ranks by ablation (Liu et al. 2024; docs/METHODS.md).

Each targeted module (one per layer: `c_attn` of layer 3 is one module) has
`rank_cap` rank slots; the LoRA branch is `((x A) * g) B` with gates
`g ∈ {0, 1}` that are never trained (`extra['gates']`, read by `layers.Dense`
from the `lora_gates` collection). The first `model.lora.rank` slots start on.
The scale stays α/r_init whatever a module's rank becomes [U].

Algorithm 1 [P], on the host between steps (`ALoRAController`):
train K₁ epochs, then N_A rounds, each K₂ epochs apart: score every active
rank on a fixed batch of `val_size` dev examples with AB-LoRA,
IS(r) = S(M) − S(M∖r) + S(M_r) (S = −CE; M∖r: rank r off; M_r: only r on;
`scoring='taylor'` estimates both to first order in the gates, for CPUs),
prune the `prune_per_round` lowest (default one per module), and give as many
new ranks to the modules that lost none, split evenly, the remainder to the
higher mean importance first (8 over 3 → 3, 3, 2; a full module passes its
share on). K₁ and K₂ shrink in proportion when the run is shorter than
K₁ + N_A·K₂ epochs; after the rounds training continues to the budget.

A new rank is function-preserving (fresh Kaiming column of A, zero row of B)
and gets zero moments and its own Adam step count (`slot_count_shape`: one
count per rank slot, docs/METHODS.md). Shapes never change, so neither
the train step nor the scoring (one jitted `vmap` over a fixed-size chunk of
gate vectors) recompiles. The allocation is in the checkpointed state (gates)
and logged per round (`split: method`, `alora/rank/<module>/<layer>`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.methods.registry import register
from umema_jax.train.method import Controller, Method
from umema_jax.train.state import CountedAdamState, path_keys

INIT_TAG = 0xA10A          # separates the new-rank initialisation keys from the run's other keys


# ------------------------------------------------------------------ Adam with a step count per rank slot

SlotAdamState = CountedAdamState     # count leaves: [..., 1, r] (lora_a), [..., r, 1] (lora_b), [] otherwise


def _leaf_name(path) -> str:
    return str(getattr(path[-1], "key", path[-1]))


def slot_count_shape(path, leaf) -> tuple:
    """The count's shape: one per rank slot of a LoRA factor, broadcastable against the factor."""
    name = _leaf_name(path)
    if name == "lora_a":
        return tuple(leaf.shape[:-2]) + (1, leaf.shape[-1])
    if name == "lora_b":
        return tuple(leaf.shape[:-2]) + (leaf.shape[-2], 1)
    return ()


# ------------------------------------------------------------------ gates: a tree, or one [N_mod, r_cap] matrix

def flat_gates(gates) -> jax.Array:
    """Gate leaves `[L, r_cap]` (sorted by path) stacked into modules × slots `[N_mod, r_cap]`."""
    return jnp.concatenate(jax.tree.leaves(gates), axis=0)


def unflat_gates(flat, like):
    """Inverse of `flat_gates` (`like`: a gate tree giving the structure)."""
    leaves, treedef = jax.tree.flatten(like)
    bounds = np.cumsum([x.shape[0] for x in leaves])[:-1]
    return jax.tree.unflatten(treedef, jnp.split(flat, bounds, axis=0))


def module_names(gates) -> list:
    """`<path>/<layer>` of every row of `flat_gates`."""
    names = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(gates):
        mod = "/".join(k for k in path_keys(path[:-1]) if k != "backbone")
        names += [f"{mod}/{layer}" for layer in range(leaf.shape[0])]
    return names


def initial_gates(lora: dict, rank: int) -> dict:
    """A `gate [L, r_cap]` beside every `lora_a`, the first `rank` slots on."""
    def gate(a):
        return jnp.broadcast_to((jnp.arange(a.shape[-1]) < rank).astype(jnp.float32), a.shape[:-2] + a.shape[-1:])
    out = {}
    for k, v in lora.items():
        if isinstance(v, dict) and "lora_a" in v:
            out[k] = {"gate": gate(v["lora_a"])}
        elif isinstance(v, dict):
            sub = initial_gates(v, rank)
            if sub:
                out[k] = sub
    return out


# ------------------------------------------------------------------ one round, host side

def reallocate(gates: np.ndarray, scores: np.ndarray, n_prune: int):
    """Algorithm 1, step 2 on modules × slots: -> (new gates, pruned, added) `[N_mod, r_cap]`.

    Prunes the `n_prune` lowest-scored active slots (ties: lower index first); the modules that lost
    none receive as many new slots, split evenly, the remainder to the higher mean importance first,
    a full module's share passed on by the same priority. New ranks take a module's lowest free slots."""
    on = np.asarray(gates) > 0
    scores = np.asarray(scores, np.float64)
    n_mod, r_cap = on.shape
    active = np.flatnonzero(on.ravel())
    order = active[np.argsort(scores.ravel()[active], kind="stable")]
    pruned = np.zeros(on.size, bool)
    pruned[order[:n_prune]] = True
    pruned = pruned.reshape(on.shape)
    kept = on & ~pruned
    added = np.zeros_like(on)
    receivers = np.flatnonzero(~pruned.any(axis=1))
    n_add = int(pruned.sum())
    if len(receivers) and n_add:
        mean = np.array([scores[m][on[m]].mean() if on[m].any() else -np.inf for m in receivers])
        receivers = receivers[np.argsort(-mean, kind="stable")]
        quota = np.full(len(receivers), n_add // len(receivers))
        quota[: n_add % len(receivers)] += 1
        free = r_cap - kept[receivers].sum(axis=1)
        overflow = int(np.maximum(quota - free, 0).sum())
        quota = np.minimum(quota, free)
        while overflow and (quota < free).any():
            for i in np.flatnonzero(quota < free):
                if overflow:
                    quota[i] += 1
                    overflow -= 1
        for m, q in zip(receivers, quota):
            added[m, np.flatnonzero(~kept[m])[:q]] = True
    return (kept | added).astype(np.float32), pruned, added


def importance(s_full, s_without, s_only) -> np.ndarray:
    """AB-LoRA: IS(r) = S(M) − S(M∖r) + S(M_r)."""
    return np.asarray(s_full) - np.asarray(s_without) + np.asarray(s_only)


# ------------------------------------------------------------------ the method

@register
class ALoRA(Method):
    name = "alora"
    label = "ALoRA"
    defaults = {"rank_cap": 0,             # slots per module; 0 = 2 · model.lora.rank (docs/METHODS.md)
                "first_epochs": 1.0,       # K₁ [P]
                "round_epochs": 0.25,      # K₂ [P]
                "rounds": 8,               # N_A [P]
                "prune_per_round": 0,      # n_A; 0 = one rank per module [U]
                "val_size": 32,            # |B_val| dev examples scored [P]
                "score_chunk": 8,          # rank ablations per scoring call (memory vs calls; no effect on results)
                "scoring": "ablation"}     # ablation [P] | taylor: first-order estimate, 2 backward passes a round

    @classmethod
    def validate(cls, hp) -> None:
        for key in ("rank_cap", "prune_per_round"):
            if int(hp[key]) < 0:
                raise ValueError(f"methods.alora.{key}={hp[key]}: must be >= 0 (0 = default)")
        for key in ("rounds", "val_size", "score_chunk"):
            if int(hp[key]) < 1:
                raise ValueError(f"methods.alora.{key}={hp[key]}: must be >= 1")
        for key in ("first_epochs", "round_epochs"):
            if not float(hp[key]) > 0:
                raise ValueError(f"methods.alora.{key}={hp[key]}: must be > 0")
        if hp["scoring"] not in ("ablation", "taylor"):
            raise ValueError(f"methods.alora.scoring={hp['scoring']!r}: must be 'ablation' or 'taylor'")

    @property
    def rank(self) -> int:
        return int(self.config.model.lora.rank)

    @property
    def rank_cap(self) -> int:
        return int(self.hp.rank_cap) or 2 * self.rank

    @classmethod
    def cost_hints(cls, get, backbone_cfg) -> dict:
        """Forward passes (in examples) the rounds spend scoring ranks: two backward passes (~3 forward)
        a round to first order, 2 per active rank by ablation."""
        from umema_jax.adapters.lora import DEFAULT_TARGETS
        hp = {k: get(f"methods.alora.{k}", v) for k, v in cls.defaults.items()}
        regex = str(get("model.lora.target_regex", "") or DEFAULT_TARGETS[backbone_cfg.arch])
        targets = len(regex.split("|"))                     # modules per layer (c_attn | q_proj, v_proj by default)
        active = backbone_cfg.num_layers * targets * int(get("model.lora.rank", 8))
        per_round = 2 * 3 if hp["scoring"] == "taylor" else 2 * (active + 1)
        return {**super().cost_hints(get, backbone_cfg),
                "extra_forward_examples": float(int(hp["rounds"]) * per_round * int(hp["val_size"]))}

    def make_model(self, model_config_view, backbone_cfg):
        model = super().make_model(model_config_view, backbone_cfg)
        if self.rank_cap < self.rank:
            raise ValueError(f"methods.alora.rank_cap={self.rank_cap}: below model.lora.rank={self.rank}")
        lora = model.lora_cfg                  # factors sized r_cap, scale kept at alpha / r_init
        model = model.clone(lora_cfg=dataclasses.replace(lora, rank=self.rank_cap,
                                                         alpha=lora.scale * self.rank_cap))
        return model

    def count_trainable(self, trainable):
        """LoRA at the active rank budget (r_init per module, kept by the rounds) + the rest."""
        slots = lambda p: _leaf_name(p) in ("lora_a", "lora_b")
        leaves = jax.tree_util.tree_leaves_with_path(trainable)
        lora = sum(x.size for p, x in leaves if slots(p))
        return int(sum(x.size for p, x in leaves if not slots(p)) + lora * self.rank // self.rank_cap)

    def optimizer(self, total_steps):
        """The project's optimizer with one Adam count per rank slot (a re-created slot restarts its own)."""
        from umema_jax.train.state import make_optimizer
        return make_optimizer(self.config.optim, total_steps, count_shape=slot_count_shape)

    def init_extra(self, trainable):
        return {"gates": initial_gates(trainable["lora"], self.rank)}

    def model_variables(self, frozen, trainable, memory, extra):
        variables = super().model_variables(frozen, trainable, memory, extra)
        if "gates" in extra:
            variables["lora_gates"] = extra["gates"]
        return variables

    def step_metrics(self, old_state, new_state):
        return {"active_ranks": sum(jnp.sum(g) for g in jax.tree.leaves(new_state.extra["gates"]))}

    # ---------------------------------------------------------------- traced helpers of the controller
    def _score_fn(self, state, frozen, batch):
        """S(g) = −mean CE of B_val under gates `g` (flat), everything else as in `state`."""
        from umema_jax.train.step import cross_entropy_sum, target_mask
        gates = state.extra["gates"]
        mask = target_mask(batch, self.model.task_type)

        def score(flat):
            extra = dict(state.extra, gates=unflat_gates(flat, gates))
            out = self.model.apply(self.model_variables(frozen, state.trainable, state.memory, extra), batch,
                                   train=False)
            return -cross_entropy_sum(out.logits, batch["labels"], mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return score

    def scores(self, state, frozen, batch, idx):
        """(S(M∖r), S(M_r)) for the flat slot indices `idx [C]` (-1: none, so S(M∖-1) = S(M))."""
        flat = flat_gates(state.extra["gates"])
        slot = jnp.arange(flat.size).reshape(flat.shape)[None]
        hit = slot == idx[:, None, None]
        configs = jnp.concatenate([jnp.where(hit, 0.0, flat[None]), hit.astype(flat.dtype)])
        s = jax.vmap(self._score_fn(state, frozen, batch))(configs)
        return s[: idx.shape[0]], s[idx.shape[0]:]

    def taylor_scores(self, state, frozen, batch):
        """(S(M), S(M_∅), ∂S/∂g at the current gates, ∂S/∂g with every gate off), gradients flat.

        First-order AB-LoRA: S(M∖r) ≈ S(M) − ∂S/∂g_r|_M and S(M_r) ≈ S(M_∅) + ∂S/∂g_r|_∅, so every rank
        is scored from two backward passes instead of 2·(active ranks) forward passes. Exact when the
        loss is linear in a single gate; `tests/methods/test_alora.py` measures the gap to the ablation.
        """
        score = self._score_fn(state, frozen, batch)
        flat = flat_gates(state.extra["gates"])
        s_full, g_full = jax.value_and_grad(score)(flat)
        s_none, g_none = jax.value_and_grad(score)(jnp.zeros_like(flat))
        return s_full, s_none, g_full, g_none

    def grow(self, state, frozen, new_gates, added, key):
        """Sets the gates and gives every `added` slot a fresh A column, a zero B row, zero moments, count 0."""
        from umema_jax.adapters.lora import init_lora
        gates = state.extra["gates"]
        by_module = jax.tree_util.tree_leaves_with_path(unflat_gates(added, gates))
        by_module = {tuple(path_keys(p[:-1])): m for p, m in by_module}
        fresh = {"backbone": init_lora(key, frozen["backbone"], self.model.lora_cfg, self.model.backbone_cfg.arch)}

        def slot_mask(path, leaf):
            keys = tuple(path_keys(path))
            if keys[0] != "lora" or keys[-1] not in ("lora_a", "lora_b"):
                return None
            m = by_module[keys[1:-1]] > 0
            return m[:, None, :] if keys[-1] == "lora_a" else m[:, :, None]

        def reset(tree, new):
            return jax.tree_util.tree_map_with_path(
                lambda p, x, n: x if slot_mask(p, x) is None else jnp.where(slot_mask(p, x), n, x), tree, new)

        zeros = jax.tree.map(jnp.zeros_like, state.trainable)
        is_adam = lambda x: isinstance(x, SlotAdamState)
        opt_state = jax.tree.map(
            lambda s: SlotAdamState(count=reset(s.count, jax.tree.map(jnp.zeros_like, s.count)),
                                    mu=reset(s.mu, zeros), nu=reset(s.nu, zeros)) if is_adam(s) else s,
            state.opt_state, is_leaf=is_adam)
        trainable = reset(state.trainable, dict(state.trainable, lora=fresh))
        return state.replace(trainable=trainable, opt_state=opt_state,
                             extra=dict(state.extra, gates=unflat_gates(new_gates, gates)))

    def controller(self, total_steps, steps_per_epoch):
        return ALoRAController(self, total_steps, steps_per_epoch)


def round_steps(hp, total_steps: int, steps_per_epoch: int) -> list:
    """Steps (already taken) at which rounds run: K₁, K₁ + K₂, ..., shrunk to fit a shorter budget."""
    planned = float(hp.first_epochs) + int(hp.rounds) * float(hp.round_epochs)
    shrink = min(1.0, total_steps / (planned * steps_per_epoch))
    k1 = max(1, round(float(hp.first_epochs) * steps_per_epoch * shrink))
    k2 = max(1, round(float(hp.round_epochs) * steps_per_epoch * shrink))
    return [k1 + i * k2 for i in range(int(hp.rounds)) if k1 + i * k2 < total_steps]


class ALoRAController(Controller):
    """Runs the pruning/re-allocation rounds before the steps `round_steps` names."""

    def __init__(self, method, total_steps, steps_per_epoch):
        super().__init__(method, total_steps, steps_per_epoch)
        self.steps = round_steps(method.hp, total_steps, steps_per_epoch)
        self.history: list = []            # per round: step, pruned/added module names, ranks per module
        self._scores = jax.jit(method.scores)
        self._taylor = jax.jit(method.taylor_scores)
        self._grow = jax.jit(method.grow)
        self.val_batch = None              # B_val, loaded at the first round (`load_validation`)

    def load_validation(self) -> None:
        """The fixed scoring batch B_val: `val_size` examples of the run's dev set (the same `load_splits`,
        tokenizer and encoding as `train.build`), drawn with the run's seed, as one padded batch."""
        from umema_jax.data.encode import encode_classification, encode_token_classification
        from umema_jax.data.pipeline import collate
        from umema_jax.tokenization import load_tokenizer
        from umema_jax.train.build import load_splits, tokenizer_name
        config = self.method.config
        splits = load_splits(config)
        size = min(int(self.method.hp.val_size), len(splits.dev))
        self.val_indices = sorted(int(i) for i in np.random.default_rng(int(config.seed)).permutation(len(splits.dev))[:size])
        encode = encode_classification if splits.task_type == "cls" else encode_token_classification
        dev = encode([splits.dev[i] for i in self.val_indices], load_tokenizer(tokenizer_name(config.model.name)),
                     splits.labels, int(config.data.max_len))
        batch = collate(dev, range(size), size, pad_multiple=int(config.data.pad_to_multiple))
        self.val_batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "example_index"}

    def score(self, state, frozen) -> np.ndarray:
        """IS of every slot `[N_mod, r_cap]` (NaN where the gate is off)."""
        flat = np.asarray(jax.device_get(flat_gates(state.extra["gates"])))
        active = np.flatnonzero(flat.ravel() > 0)
        if self.method.hp.scoring == "taylor":
            s_full, s_none, g_full, g_none = (np.asarray(x, np.float64) for x in
                                              jax.device_get(self._taylor(state, frozen, self.val_batch)))
            out = np.full(flat.size, np.nan)
            out[active] = importance(s_full, s_full - g_full.ravel()[active], s_none + g_none.ravel()[active])
            return out.reshape(flat.shape)
        chunk = int(self.method.hp.score_chunk)
        todo = np.concatenate([[-1], active])
        todo = np.concatenate([todo, np.full(-len(todo) % chunk, -1)]).astype(np.int32)
        without, only = [], []
        for i in range(0, len(todo), chunk):
            w, o = self._scores(state, frozen, self.val_batch, jnp.asarray(todo[i:i + chunk]))
            without.append(w)
            only.append(o)
        without, only = (np.concatenate(jax.device_get(x)) for x in (without, only))
        out = np.full(flat.size, np.nan)
        out[active] = importance(without[0], without[1:len(active) + 1], only[1:len(active) + 1])
        return out.reshape(flat.shape)

    def before_step(self, step, state, frozen):
        if step not in self.steps or len(self.history) > self.steps.index(step):
            return state, frozen
        if self.val_batch is None:
            self.load_validation()
        n = self.steps.index(step)
        gates = np.asarray(jax.device_get(flat_gates(state.extra["gates"])))
        scores = self.score(state, frozen)
        n_prune = int(self.method.hp.prune_per_round) or gates.shape[0]
        new, pruned, added = reallocate(gates, scores, n_prune)
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.method.config.seed) ^ INIT_TAG), n)
        state = self._grow(state, frozen, jnp.asarray(new), jnp.asarray(added, jnp.float32), key)
        names = module_names(state.extra["gates"])
        ranks = new.sum(axis=1).astype(int)
        self.history.append({"step": step, "ranks": ranks.tolist(), "pruned": int(pruned.sum()),
                             "added": int(added.sum())})
        # Logged at the first step trained under the new allocation: a resume from the checkpoint of
        # `step` (taken before this round) rewinds the log to `step` and logs the round once more.
        self.log(step + 1, {"alora/round": float(n + 1), "alora/total_rank": float(ranks.sum()),
                        "alora/pruned": float(pruned.sum()), "alora/added": float(added.sum()),
                        **{f"alora/rank/{name}": float(r) for name, r in zip(names, ranks)}})
        return state, frozen

    def state_dict(self):
        return {"history": self.history, "val_indices": getattr(self, "val_indices", [])}

    def load_state_dict(self, d):
        self.history = list(d.get("history", []))
