"""Small stand-ins for the layers below `train/` (test-only), honouring docs/CONTRACTS.md.

`TinyModel` has the three collections (`params` with a frozen `backbone/` and
a trained `head/`, `lora`, `memory` with a FIFO bank written once per train
call) and compiles in a fraction of a second, so step/loop logic can be tested
without the cost of the real backbone.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from umema_jax.data.encode import EncodedDataset
from umema_jax.memory.bank import confidence_weighted_moments, write_moments


@struct.dataclass
class Out:
    logits: jax.Array
    raw_logits: jax.Array
    temperature: jax.Array
    aux: dict
    internals: dict = struct.field(default_factory=dict)


class TinyModel(nn.Module):
    vocab: int = 50
    dim: int = 16
    num_labels: int = 3
    task_type: str = "cls"
    slots: int = 4

    @nn.compact
    def __call__(self, batch, train: bool = False, write_memory: bool = True):
        emb = self.param("backbone_emb", nn.initializers.normal(1.0), (self.vocab, self.dim))
        w = self.param("backbone_w", nn.initializers.normal(0.3), (self.dim, self.dim))
        a = self.variable("lora", "a", lambda: jnp.full((self.dim, 2), 0.1)).value
        b = self.variable("lora", "b", lambda: jnp.zeros((2, self.dim))).value
        keys = self.variable("memory", "keys", lambda: jnp.zeros((self.slots, self.dim)))
        values = self.variable("memory", "values", lambda: jnp.zeros((self.slots, self.dim)))
        ptr = self.variable("memory", "pointer", lambda: jnp.zeros((), jnp.int32))
        filled = self.variable("memory", "filled", lambda: jnp.zeros((), jnp.int32))
        mask = batch["attention_mask"].astype(jnp.float32)
        h = jnp.tanh(emb[batch["input_ids"]] @ (w + a @ b))          # [B,n,d]
        h = h + jnp.mean(keys.value, 0)                               # read the bank
        if self.task_type == "cls":
            h = (h * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
        logits = nn.Dense(self.num_labels, name="head")(h)
        internals = {}
        if train:
            rows = batch["example_mask"].astype(jnp.float32)
            pooled = h if h.ndim == 2 else h.mean(1)
            numer, denom = confidence_weighted_moments(pooled, jnp.zeros_like(rows), rows)
            internals = {"memory_entry_numer": numer, "memory_entry_denom": denom, "features": pooled}
            if write_memory and self.is_mutable_collection("memory"):
                bank = write_moments({"keys": keys.value, "values": values.value, "pointer": ptr.value,
                                      "filled": filled.value}, numer, denom)
                keys.value, values.value, ptr.value, filled.value = (bank["keys"], bank["values"],
                                                                     bank["pointer"], bank["filled"])
        temp = jnp.ones(logits.shape[:-1])
        return Out(logits=logits, raw_logits=logits, temperature=temp, aux={"u_bar": temp * 0.5},
                   internals=internals)


def reorganise(variables: dict) -> dict:
    """Nests the flat stand-in params under `backbone/` so the default trainable regex applies."""
    p = dict(variables["params"])
    params = {"backbone": {"emb": p.pop("backbone_emb"), "w": p.pop("backbone_w")}, **p}
    return {**variables, "params": params}


class NestedTinyModel(TinyModel):
    """TinyModel whose frozen weights live under `params/backbone/…` like the real model."""

    def apply(self, variables, *args, **kwargs):  # noqa: D401 - flattening shim for the stand-in
        p = dict(variables["params"])
        bb = p.pop("backbone")
        flat = {**variables, "params": {**p, "backbone_emb": bb["emb"], "backbone_w": bb["w"]}}
        return super().apply(flat, *args, **kwargs)


def synthetic_encoded(n: int, vocab: int = 50, num_labels: int = 3, max_len: int = 12, seed: int = 0,
                      task_type: str = "cls", last_token: bool = False) -> EncodedDataset:
    """Learnable toy data: the label is (first token mod num_labels), or the last token's with `last_token`."""
    rng = np.random.default_rng(seed)
    ids, labels, word_index = [], [], []
    for _ in range(n):
        length = int(rng.integers(3, max_len + 1))
        x = rng.integers(1, vocab, size=length).astype(np.int32)
        ids.append(x)
        if task_type == "cls":
            labels.append(int(x[-1 if last_token else 0]) % num_labels)
        else:
            labels.append((x % num_labels).astype(np.int32))
            word_index.append(np.arange(length, dtype=np.int32))
    return EncodedDataset(
        input_ids=ids, labels=np.asarray(labels, np.int32) if task_type == "cls" else labels,
        ids=[str(i) for i in range(n)], task_type=task_type, pad_id=0, max_len=max_len,
        label_names=[f"c{i}" for i in range(num_labels)],
        word_index=word_index or None, num_words=[len(x) for x in ids] if task_type == "ner" else None,
        truncated=np.zeros(n, bool))


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    from umema_jax.defaults import base_config
    c = base_config()
    c.seed = 0
    c.data.pad_to_multiple = 12          # one padded shape: one compile per step function
    c.train.epochs = 2
    c.train.batch_size = 8
    c.train.eval_batch_size = 16
    c.train.checkpoint_every_steps = 3
    c.train.log_every_steps = 1
    c.train.early_stopping_patience = 0
    c.optim.learning_rate = 1e-2
    c.output.progress_bar = False
    c.output.tensorboard = False
    c.output.posthoc = ""                # the stand-in models export no head features to calibrate
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return c


def tiny_experiment(n_train: int = 40, seed: int = 0):
    """An Experiment over synthetic data with the stand-in model (accuracy as the dev metric)."""
    from umema_jax.train.loop import Experiment
    from umema_jax.train.state import split_params
    model = NestedTinyModel()
    enc = {s: synthetic_encoded(k, seed=i) for i, (s, k) in enumerate(
        (("train", n_train), ("dev", 20), ("test", 20)))}
    batch = {"input_ids": jnp.ones((2, 4), jnp.int32), "attention_mask": jnp.ones((2, 4), jnp.int32),
             "example_mask": jnp.ones((2,), jnp.int32)}
    variables = reorganise(TinyModel().init(jax.random.PRNGKey(seed), batch))
    trained, frozen = split_params(variables["params"], r"^(head|um|ema)/")

    def evaluate(split, preds):
        labels = np.asarray(enc[split].labels)
        acc = float((np.asarray(preds["probs"]).argmax(-1) == labels).mean())
        return {"accuracy": acc, "primary": acc, "loss": preds["nll_sum"] / preds["targets"],
                "ece": 0.0}

    return Experiment(model=model, frozen=frozen, trainable={"lora": variables["lora"], "params": trained},
                      memory=variables["memory"], task_type="cls", encoded=enc, evaluate=evaluate)


def killed_after(run_dir, step: int, dest):
    """A copy of finished run `run_dir` at `dest` as a run killed after `step` would leave it: every
    checkpoint (latest and best) newer than `step` removed. Resuming it must reproduce the run."""
    import os
    import shutil
    shutil.copytree(run_dir, dest)
    for sub in ("latest", "best"):
        folder = os.path.join(dest, "checkpoints", sub)
        for name in os.listdir(folder):
            if int(name) > step:
                shutil.rmtree(os.path.join(folder, name))
    return dest
