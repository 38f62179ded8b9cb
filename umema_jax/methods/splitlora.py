"""SplitLoRA, split-federated LoRA (Lin et al. 2024; docs/METHODS.md), simulated on one machine.

N clients hold the embedding and blocks [0, c) with their own copy of the client-side LoRA; the
server holds blocks [c, L), the server-side LoRA and the head. A client runs to the cut and sends
the activations h, the server finishes the forward and backward and returns ∂L/∂h, the client
finishes its backward. That exchange is the chain rule, so `SplitModel` composes the client part
(vmapped over the clients' copies and sub-batches) with the server part, and the shared train step
differentiates the composition; `two_stage_grads` is the exchange written out (the tests check
that both agree with the unsplit model).

Modes (`methods.splitlora.mode`):
  parallel    (default; the paper's SFL) a step holds ceil(B/N) rows of every client
  sequential  (the released script) the clients take turns, B rows each; the other copies and
              their AdamW moments and counts stay bitwise unchanged (`extra['slot']`, set by the
              controller from the batch plan, names the client of the step)
Every `fedavg_client_batches` client batches (the official `aggregate_step` = 100) the copies are
replaced by their equal-weight mean (FedAvg; moments are not averaged): every ceil(100/N) steps in
parallel mode, every 100 in sequential mode. Evaluation runs the mean copy (the global client model).

One global-norm clip and one schedule for both sides ([U]: the script schedules only the server);
the copies' Adam state is kept per copy (moments and count, `train.state.per_copy`), so a copy's first step is
a first Adam step in either mode.

Traffic: h up and ∂L/∂h down, real rows x padded length x d x bytes each way, per step. The
controller logs `splitlora_traffic_mb` (that step) and `splitlora_traffic_mb_total` (checkpointed).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from umema_jax.methods.registry import register
from umema_jax.train.method import Controller, Method
from umema_jax.train.state import PerCopyState, path_keys

MODES = ("parallel", "sequential")
BLOCK_SCOPES = {"gpt2": "h", "llama": "layers"}     # the scanned blocks under `backbone/`


def default_cut(num_layers: int) -> int:
    """Blocks on the client: 3 of GPT-2's 12 (the official split), the same fraction of any other depth."""
    return max(1, min(num_layers - 1, round(3 * num_layers / 12)))


def _blocks(tree: dict, arch: str, lo: int, hi: int) -> dict:
    """`tree` (params or lora, `{'backbone': ...}` at the top) with the scanned blocks cut to lo..hi-1."""
    scope = BLOCK_SCOPES[arch]
    bb = dict(tree["backbone"])
    bb[scope] = jax.tree.map(lambda x: x[lo:hi], bb[scope])
    return dict(tree, backbone=bb)


class SplitModel:
    """The model contract (`apply(variables, batch, train=...) -> ModelOutput`) over a client and a
    server part of `model` (a plain-LoRA `UmemaModel`), cut after block `cut`.

    `variables['lora']` = {'client': <lora tree, blocks [N, c, ...]>, 'server': <blocks [L-c, ...]>};
    in sequential mode `variables['slot']` names the copy that trains. Without a `client` entry
    (initialisation, shape queries) it is `model` itself; other attributes are `model`'s.
    """

    def __init__(self, model, cut: int, clients: int, mode: str):
        from umema_jax.backbones import build_backbone
        self.model, self.cut, self.clients, self.mode = model, int(cut), int(clients), mode
        self.arch, self.num_layers = model.backbone_cfg.arch, model.backbone_cfg.num_layers
        self.client_part = build_backbone(model.backbone_cfg, lora=model.lora_cfg, dtype=model.dtype,
                                          remat=model.remat, span=(0, self.cut))
        self.server_part = model.clone(span=(self.cut, self.num_layers))

    def __getattr__(self, name):
        return getattr(self.model, name)

    def client_forward(self, params: dict, lora: dict, batch: dict, train: bool, rng) -> jax.Array:
        """One client's activations at the cut, `[b, n, d]` (`lora`: one copy, `{'backbone': ...}`)."""
        p = _blocks(params, self.arch, 0, self.cut)["backbone"]
        out = self.client_part.apply({"params": p, "lora": lora["backbone"]}, batch["input_ids"],
                                     batch["attention_mask"], deterministic=not train, rngs={"dropout": rng})
        return out.last_hidden_state

    def server_forward(self, params: dict, lora: dict, h: jax.Array, batch: dict, train: bool, rng):
        """The server's `ModelOutput` from the cut activations `h` of the whole step's rows."""
        p = _blocks(params, self.arch, self.cut, self.num_layers)
        return self.server_part.apply({"params": p, "lora": lora}, dict(batch, hidden_in=h), train=train,
                                      write_memory=False, rngs={"dropout": rng})

    def cut_activations(self, params: dict, client: dict, batch: dict, train: bool, rng, slot=None):
        """h `[B, n, d]` of the step's rows: each client's rows through its own copy (train), or all
        rows through the mean copy (evaluation: the global client model)."""
        if not train:
            mean = jax.tree.map(lambda x: jnp.mean(x, 0), client)
            return self.client_forward(params, mean, batch, False, rng)
        if self.mode == "sequential":
            return self.client_forward(params, jax.tree.map(lambda x: x[slot], client), batch, True, rng)
        n = self.clients
        rows = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]),
                            {k: batch[k] for k in ("input_ids", "attention_mask")})
        h = jax.vmap(self.client_forward, in_axes=(None, 0, 0, None, 0))(
            params, client, rows, True, jax.random.split(rng, n))
        return h.reshape((-1,) + h.shape[2:])

    def apply(self, variables: dict, batch: dict, train: bool = False, write_memory: bool = True, rngs=None,
              **kwargs):
        lora = variables.get("lora", {})
        if "client" not in lora:
            return self.model.apply(variables, batch, train=train, write_memory=write_memory, rngs=rngs, **kwargs)
        rng = (rngs or {}).get("dropout", jax.random.PRNGKey(0))
        client_rng, server_rng = jax.random.split(rng)
        h = self.cut_activations(variables["params"], lora["client"], batch, train, client_rng,
                                 variables.get("slot"))
        return self.server_forward(variables["params"], lora["server"], h, batch, train, server_rng)


def two_stage_grads(model: SplitModel, params: dict, lora: dict, batch: dict, loss_of_output, rng, slot=None):
    """The split exchange written out: clients' forward to the cut, the server's loss and gradients
    (its LoRA, head and ∂L/∂h), the clients' backward fed with ∂L/∂h (VJP).
    -> (loss, {'client': grads of the copies, 'server': ..., 'head': ...}, h, ∂L/∂h)."""
    h, client_vjp = jax.vjp(lambda c: model.cut_activations(params, c, batch, True, rng, slot), lora["client"])

    def server_loss(server, head, h):
        p = dict(params, head=head)
        return loss_of_output(model.server_forward(p, server, h, batch, True, rng))

    loss, (g_server, g_head, dh) = jax.value_and_grad(server_loss, argnums=(0, 1, 2))(
        lora["server"], params["head"], h)
    (g_client,) = client_vjp(dh)
    return loss, {"client": g_client, "server": g_server, "head": g_head}, h, dh


def _is_client(path) -> bool:
    keys = path_keys(path)
    return len(keys) > 1 and keys[0] == "lora" and keys[1] == "client"


@register
class SplitLoRA(Method):
    name = "splitlora"
    label = "SplitLoRA"
    defaults = {"clients": 3,                  # N, equal random split of the training set
                "cut_layers": -1,              # blocks on the client; -1 = 3 for 12-block GPT-2, proportional
                "fedavg_client_batches": 100,  # FedAvg of the client copies every that many client batches
                "mode": "parallel"}            # parallel | sequential

    @classmethod
    def validate(cls, hp) -> None:
        if int(hp.clients) < 1:
            raise ValueError(f"methods.splitlora.clients={hp.clients}: must be >= 1")
        if int(hp.fedavg_client_batches) < 1:
            raise ValueError(f"methods.splitlora.fedavg_client_batches={hp.fedavg_client_batches}: must be >= 1")
        if hp.mode not in MODES:
            raise ValueError(f"methods.splitlora.mode={hp.mode!r}: must be one of {', '.join(MODES)}")
        if int(hp.cut_layers) == 0 or int(hp.cut_layers) < -1:
            raise ValueError(f"methods.splitlora.cut_layers={hp.cut_layers}: must be >= 1 (or -1 = default)")

    @property
    def clients(self) -> int:
        return int(self.hp.clients)

    @property
    def fedavg_every(self) -> int:
        """Steps between FedAvgs: every client batch counts, N of them per parallel step."""
        per_step = self.clients if self.hp.mode == "parallel" else 1
        return math.ceil(int(self.hp.fedavg_client_batches) / per_step)

    def make_model(self, model_config_view, backbone_cfg):
        model = super().make_model(model_config_view, backbone_cfg)
        L = backbone_cfg.num_layers
        cut = default_cut(L) if int(self.hp.cut_layers) == -1 else int(self.hp.cut_layers)
        if not 1 <= cut < L:
            raise ValueError(f"methods.splitlora.cut_layers={cut}: must leave blocks on both sides of the "
                             f"{L}-block {backbone_cfg.arch} backbone")
        self.cut, self.arch, self.hidden_size = cut, backbone_cfg.arch, backbone_cfg.hidden_size
        return SplitModel(model, cut, self.clients, self.hp.mode)

    def init_trainable(self, trainable: dict) -> dict:
        """The LoRA factors as N identical client copies of blocks [0, c) and one server copy of the rest."""
        L = jax.tree.leaves(trainable["lora"])[0].shape[0]
        client = _blocks(trainable["lora"], self.arch, 0, self.cut)
        client = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.clients,) + x.shape), client)
        return dict(trainable, lora={"client": client, "server": _blocks(trainable["lora"], self.arch, self.cut, L)})

    @property
    def client_schedule(self) -> str:
        """`data.federated` schedule: every client in every step (parallel) or the clients taking turns."""
        return "parallel" if self.hp.mode == "parallel" else "interleaved"

    def step_rows(self, batch_size: int) -> int:
        from umema_jax.data.federated import client_rows
        rows = client_rows(batch_size, self.clients, self.client_schedule)
        return rows * self.clients if self.client_schedule == "parallel" else rows

    def train_batches(self, encoded, batch_size: int, seed: int, pad_multiple: int):
        from umema_jax.data.federated import ClientBatches
        self.batches = ClientBatches(encoded, batch_size, seed, self.clients, self.client_schedule,
                                     pad_multiple=pad_multiple)
        accum = int(self.config.train.grad_accum_steps)
        if self.hp.mode == "parallel" and self.batches.rows % accum:
            # micro-batch i takes rows i, i+A, ...: whole client groups only when A divides b
            raise ValueError(f"train.grad_accum_steps={accum}: must divide the {self.batches.rows} rows each of the "
                             f"{self.clients} splitlora clients sends per step (ceil(batch_size / clients))")
        return self.batches

    def optimizer(self, total_steps):
        """The project's optimizer with the client copies as their own group: per copy moments and count."""
        from umema_jax.train.state import make_optimizer
        return make_optimizer(self.config.optim, total_steps,
                              groups=(lambda p: "client" if _is_client(p) else "shared",
                                      {"client": {"copies": True}, "shared": {}}))

    def init_extra(self, trainable):
        return {"slot": jnp.zeros((), jnp.int32)} if self.hp.mode == "sequential" else {}

    def model_variables(self, frozen, trainable, memory, extra):
        variables = super().model_variables(frozen, trainable, memory, extra)
        if "slot" in extra:
            variables["slot"] = extra["slot"]
        return variables

    def apply_gradients(self, tx, state, grads):
        trainable, opt_state, extra = super().apply_gradients(tx, state, grads)
        client = trainable["lora"]["client"]
        if self.hp.mode == "sequential":
            # Only the copy that trained moves: its factors, its moments, its count.
            keep = jax.nn.one_hot(state.extra["slot"], self.clients, dtype=jnp.bool_)
            select = lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
            client = jax.tree.map(select, client, state.trainable["lora"]["client"])
            is_slots = lambda x: isinstance(x, PerCopyState)
            opt_state = jax.tree.map(lambda n, o: jax.tree.map(select, n, o) if is_slots(n) else n,
                                     opt_state, state.opt_state, is_leaf=is_slots)
        average = (state.step + 1) % self.fedavg_every == 0
        client = jax.tree.map(lambda x: jnp.where(average, jnp.broadcast_to(jnp.mean(x, 0), x.shape), x), client)
        lora = dict(trainable["lora"], client=client)
        return dict(trainable, lora=lora), opt_state, extra

    def controller(self, total_steps, steps_per_epoch):
        return TrafficController(self, total_steps, steps_per_epoch)

    def describe(self):
        return {**super().describe(), "cut_layers": getattr(self, "cut", None), "fedavg_every_steps": self.fedavg_every}


class TrafficController(Controller):
    """Counts the bytes that cross the cut (host side, from the step's batch plan; exact over resumes)."""

    def __init__(self, method, total_steps, steps_per_epoch):
        super().__init__(method, total_steps, steps_per_epoch)
        cfg = method.config
        self.bytes_per_element = 2 * method.hidden_size * jnp.dtype(str(cfg.model.dtype)).itemsize
        self.log_every = int(cfg.train.log_every_steps)
        self.total_mb = 0.0

    def before_step(self, step, state, frozen):
        epoch, k = divmod(step, self.steps_per_epoch)
        if "slot" in state.extra:              # sequential: the copy of the client whose batch this is
            state = state.replace(extra=dict(state.extra, slot=jnp.asarray(self.method.batches.client_at(k),
                                                                           jnp.int32)))
        rows, n = self.method.batches.cut_elements(epoch, k)
        mb = rows * n * self.bytes_per_element / 1e6
        self.total_mb += mb
        if (step + 1) % self.log_every == 0 or step + 1 == self.total_steps:
            self.log(step + 1, {"splitlora_traffic_mb": mb, "splitlora_traffic_mb_total": self.total_mb})
        return state, frozen

    def state_dict(self):
        return {"traffic_mb_total": self.total_mb}

    def load_state_dict(self, d):
        self.total_mb = float(d.get("traffic_mb_total", 0.0))
