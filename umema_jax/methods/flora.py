"""FLoRA, federated LoRA by stacking (Wang et al. 2024; docs/METHODS.md), simulated on one machine.

N IID clients (an equal seeded partition). In round r every client, one after the other, starts
from the global weights (the merged backbone and the global head) with fresh LoRA factors (A as
PEFT initialises it, B = 0) and a fresh AdamW with its own local schedule, and trains
`local_epochs` passes over its shard (3, the official `local_num_epochs`; a fresh HF Trainer per
client and round there, linear decay within it). The server then stacks the clients' factors, A = [p_1 A_1 | … | p_N A_N] and
B = [B_1; …; B_N] with p_k = n_k / n, so that s·A B = s Σ_k p_k A_k B_k exactly (FedAvg of the
factors, s (Σ p_k A_k)(Σ p_k B_k), is not that), merges it into an fp32 master copy of the targeted
kernels, FedAvgs the head with p_k, and the next round starts fresh factors. One loop epoch is one
round (`train.epochs` = rounds), so R rounds x E local epochs visit every example R·E times, and the
per-epoch evaluation (early stopping) scores the merged model.

Heterogeneous ranks (`methods.flora.ranks`, e.g. '64,32,16,16,8,8,4,4,4,4', the official list):
the factors are built at the largest rank and client k trains only its first r_k columns (a rank
mask on A, B and their updates), so nothing recompiles; with alpha = 2r the scale is 2 at any rank.

Carried in `TrainState.extra` (checkpointed): `delta` (Σ of the merged updates per targeted kernel,
fp32; frozen kernel = base + delta), `clients` (this round's finished clients' factors, stacked),
`head_sum` (their p_k-weighted heads), `global_head`, `rank_mask`. The controller swaps clients
between steps; all its work is jitted once.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.methods.registry import register
from umema_jax.train.method import Controller, Method

FLORA_TAG = 0xF10A          # separates the clients' LoRA init keys from the run's other keys


def stack_clients(a: jax.Array, b: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Client factors a `[N, ..., in, r]`, b `[N, ..., r, out]` -> stacked A `[..., in, N·r]` (client k's
    columns scaled by p_k) and B `[..., N·r, out]`: A @ B = Σ_k p_k a_k @ b_k."""
    n = a.shape[0]
    a = a * weights.reshape((n,) + (1,) * (a.ndim - 1)).astype(a.dtype)
    return jnp.concatenate(list(a), axis=-1), jnp.concatenate(list(b), axis=-2)


def parse_ranks(text: str, clients: int, default: int) -> list[int]:
    """'' -> [default] * clients; '64,32,...' -> one rank per client."""
    if not str(text).strip():
        return [int(default)] * clients
    ranks = [int(x) for x in str(text).split(",")]
    if len(ranks) != clients or min(ranks) < 1:
        raise ValueError(f"methods.flora.ranks={text!r}: needs {clients} positive ranks (one per client)")
    return ranks


def _lora_leaves(tree, fn):
    """Maps fn(leaf_name, x) over a lora tree (leaf names lora_a / lora_b)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(getattr(p[-1], "key", p[-1]), x), tree)


def _lora_leaves_pair(new, old, mask):
    def sel(path, n, o):
        name = getattr(path[-1], "key", path[-1])
        m = mask[:, None] if name == "lora_b" else mask
        return jnp.where(m > 0, n, o)
    return jax.tree_util.tree_map_with_path(sel, new, old)


@register
class FLoRA(Method):
    name = "flora"
    label = "FLoRA"
    defaults = {"clients": 10,      # N IID clients, all selected every round
                "local_epochs": 3,  # passes over its shard a client makes per round (official `local_num_epochs`)
                "ranks": ""}        # '' = model.lora.rank for all; or one rank per client, comma-separated

    @classmethod
    def validate(cls, hp) -> None:
        for key in ("clients", "local_epochs"):
            if int(hp[key]) < 1:
                raise ValueError(f"methods.flora.{key}={hp[key]}: must be >= 1")
        try:
            parse_ranks(hp.ranks, int(hp.clients), 1)
        except ValueError as err:
            raise ValueError(str(err).split("\n")[0]) from None

    @property
    def clients(self) -> int:
        return int(self.hp.clients)

    @classmethod
    def cost_hints(cls, get, backbone_cfg) -> dict:
        """Each round (a loop epoch) the clients make `local_epochs` passes over their shards."""
        return {**super().cost_hints(get, backbone_cfg), "passes": int(get("methods.flora.local_epochs", 3))}

    def make_model(self, model_config_view, backbone_cfg):
        from umema_jax.adapters.lora import LoraConfig
        model = super().make_model(model_config_view, backbone_cfg)
        self.ranks = parse_ranks(self.hp.ranks, self.clients, model.lora_cfg.rank)
        if max(self.ranks) != model.lora_cfg.rank:
            if float(self.config.model.lora.alpha) != -1:
                raise ValueError("methods.flora.ranks: heterogeneous ranks need model.lora.alpha=-1 (alpha = 2r, "
                                 "one scale for every rank)")
            model = model.clone(lora_cfg=LoraConfig(rank=max(self.ranks), dropout=model.lora_cfg.dropout,
                                                    target_regex=model.lora_cfg.target_regex))
        self.lora_cfg, self.arch = model.lora_cfg, backbone_cfg.arch
        return model

    def bind(self, model, params):
        """Also keeps the targeted kernels as loaded (fp32): the base the merged updates are added to."""
        from umema_jax.adapters.lora import _flatten, _unflatten, target_modules
        super().bind(model, params)
        flat = _flatten(params["backbone"])
        self.base = _unflatten({m + ("kernel",): jnp.asarray(flat[m + ("kernel",)], jnp.float32)
                                for m in target_modules(params["backbone"], self.lora_cfg, self.arch)})

    def train_batches(self, encoded, batch_size, seed, pad_multiple):
        from umema_jax.data.federated import ClientBatches
        self.batches = ClientBatches(encoded, batch_size, seed, self.clients, "blocked", pad_multiple=pad_multiple,
                                     local_epochs=int(self.hp.local_epochs))
        sizes = np.asarray(self.batches.shard_sizes, np.float64)
        self.weights = (sizes / sizes.sum()).astype(np.float32)       # p_k
        return self.batches

    def optimizer(self, total_steps):
        """A client's AdamW and schedule over its own local epoch (restarted with every client: a fresh
        AdamW's count is the client's local step). The returned schedule, of the global step, is the
        one the logged `learning_rate` reads."""
        from umema_jax.train.state import make_optimizer
        if getattr(self, "batches", None) is None:          # no data (bench, shape queries): one long client
            return make_optimizer(self.config.optim, total_steps)
        starts = self.batches.starts
        tx, local = make_optimizer(self.config.optim, int(np.max(np.diff(starts))))
        spe, begin = int(starts[-1]), jnp.asarray(starts[:-1], jnp.int32)

        def schedule(step):
            k = jnp.asarray(step, jnp.int32) % spe
            return local(k - begin[jnp.searchsorted(begin, k, side="right") - 1])
        return tx, schedule

    def init_extra(self, trainable):
        lora = trainable["lora"]["backbone"]
        delta = jax.tree.map(lambda k: jnp.zeros(k.shape, jnp.float32), self.base)
        clients = jax.tree.map(lambda x: jnp.zeros((self.clients,) + x.shape, x.dtype), lora)
        head = trainable["params"]["head"]      # copied: a donated state must not hold one buffer twice
        return {"delta": delta, "clients": clients, "head_sum": jax.tree.map(jnp.zeros_like, head),
                "global_head": jax.tree.map(jnp.array, head), "rank_mask": jnp.ones((self.lora_cfg.rank,), jnp.float32)}

    def apply_gradients(self, tx, state, grads):
        trainable, opt_state, extra = super().apply_gradients(tx, state, grads)
        lora = _lora_leaves_pair(trainable["lora"], state.trainable["lora"], state.extra["rank_mask"])
        return dict(trainable, lora=lora), opt_state, extra

    # ------------------------------------------------------------ host-side round logic (jitted)
    def start_client(self, state, round_, client):
        """Fresh factors (seeded by round and client; columns beyond r_k zero), the global head, a fresh AdamW."""
        from umema_jax.adapters.lora import init_lora
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed) ^ FLORA_TAG), round_),
                                 client)
        mask = (jnp.arange(self.lora_cfg.rank) < jnp.asarray(self.ranks)[client]).astype(jnp.float32)
        fresh = init_lora(key, self.base, self.lora_cfg, self.arch)
        fresh = _lora_leaves(fresh, lambda name, x: x * (mask[:, None] if name == "lora_b" else mask))
        trainable = dict(state.trainable, lora={"backbone": fresh},
                         params=dict(state.trainable["params"], head=state.extra["global_head"]))
        fresh_adam = jax.tree.map(jnp.zeros_like, state.opt_state)   # = tx.init: every initial leaf is 0
        return state.replace(trainable=trainable, opt_state=fresh_adam,
                             extra=dict(state.extra, rank_mask=mask))

    def store_client(self, state, client):
        """The finished client's factors into slot `client`; its head into the p_k-weighted sum."""
        p = jnp.asarray(self.weights)[client]
        clients = jax.tree.map(lambda s, x: s.at[client].set(x), state.extra["clients"],
                               state.trainable["lora"]["backbone"])
        head_sum = jax.tree.map(lambda s, h: s + p * h, state.extra["head_sum"], state.trainable["params"]["head"])
        return state.replace(extra=dict(state.extra, clients=clients, head_sum=head_sum))

    def merge_round(self, state):
        """Stack, merge into `delta`, FedAvg the head; leaves B = 0 and the global head (= the merged model)."""
        from umema_jax.adapters.lora import LoraConfig, _flatten, _unflatten, merge_lora
        flat = _flatten(state.extra["clients"])
        w = jnp.asarray(self.weights)
        stacked = {}
        for path, a in flat.items():
            if path[-1] == "lora_a":
                b = flat[path[:-1] + ("lora_b",)]
                stacked[path], stacked[path[:-1] + ("lora_b",)] = stack_clients(a, b, w)
        n_rank = self.clients * self.lora_cfg.rank
        cfg = LoraConfig(rank=n_rank, alpha=self.lora_cfg.scale * n_rank)   # scale unchanged
        delta = merge_lora(state.extra["delta"], _unflatten(stacked), cfg)
        head = state.extra["head_sum"]
        lora = jax.tree.map(jnp.zeros_like, state.trainable["lora"])
        trainable = dict(state.trainable, lora=lora, params=dict(state.trainable["params"], head=head))
        extra = dict(state.extra, delta=delta, global_head=head, head_sum=jax.tree.map(jnp.zeros_like, head),
                     clients=jax.tree.map(jnp.zeros_like, state.extra["clients"]))
        return state.replace(trainable=trainable, extra=extra)

    def merged_frozen(self, frozen, delta):
        """The frozen params with every targeted kernel = base + delta (in the frozen storage dtype)."""
        from umema_jax.adapters.lora import _flatten, _unflatten
        flat = dict(_flatten(frozen["backbone"]))
        for path, d in _flatten(delta).items():
            flat[path] = (_flatten(self.base)[path] + d).astype(flat[path].dtype)
        return dict(frozen, backbone=_unflatten(flat))

    def controller(self, total_steps, steps_per_epoch):
        return FLoRAController(self, total_steps, steps_per_epoch)

    def describe(self):
        return {**super().describe(), "client_ranks": getattr(self, "ranks", None)}


class FLoRAController(Controller):
    """Client k of round r trains on steps [starts[k], starts[k+1]) of epoch r; epoch end = stack + merge."""

    def __init__(self, method, total_steps, steps_per_epoch):
        super().__init__(method, total_steps, steps_per_epoch)
        self._start = jax.jit(method.start_client)
        self._store = jax.jit(method.store_client)
        self._merge = jax.jit(method.merge_round)
        self._frozen = jax.jit(method.merged_frozen)
        self.round = 0

    def before_step(self, step, state, frozen):
        epoch, k = divmod(step, self.steps_per_epoch)
        client = self.method.batches.client_at(k)
        if k != self.method.batches.starts[client]:
            return state, frozen
        if client > 0:
            state = self._store(state, jnp.asarray(client - 1, jnp.int32))
        self.round = epoch
        return self._start(state, jnp.asarray(epoch, jnp.int32), jnp.asarray(client, jnp.int32)), frozen

    def end_epoch(self, epoch, step, state, frozen):
        state = self._merge(self._store(state, jnp.asarray(self.method.clients - 1, jnp.int32)))
        self.log(step, {"flora_round": float(epoch + 1)})
        return state, self._frozen(frozen, state.extra["delta"])

    def after_restore(self, state, frozen):
        return state, self._frozen(frozen, state.extra["delta"])

    def state_dict(self):
        return {"round": self.round}

    def load_state_dict(self, d):
        self.round = int(d.get("round", 0))
