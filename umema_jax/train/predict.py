"""The evaluation pass: a jitted step over every example of a split, predictions back on the host."""
from __future__ import annotations

import jax
import numpy as np

from umema_jax.data.pipeline import eval_batches, num_eval_batches
from umema_jax.train import sharding as shd
from umema_jax.train.progress import Progress

HOST_ONLY_KEYS = ("example_index",)   # batch keys the pipeline adds for bookkeeping; never sent to devices


def device_batch(batch: dict, mesh) -> dict:
    return shd.put_batch({k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh)


def _per_row(x: np.ndarray, rows: int) -> bool:
    return x.ndim >= 1 and x.shape[0] == rows


def predict(eval_fn, state, frozen, encoded, batch_size: int, pad_multiple: int, mesh,
            progress: bool = False, desc: str = "eval") -> dict:
    """Runs the model over every example once; returns host arrays indexed like `encoded`.

    cls: `probs [N,C]`, aux leaves with a per-example axis `[N,…]`.
    ner: `probs` list of `[words_i, C]` (first sub-token of every kept word),
    per-token aux leaves likewise; per-sentence aux as `[N]`.
    Also the summed NLL and target count (loss over real rows only).
    """
    n = len(encoded)
    ner = encoded.task_type == "ner"
    probs: list = [None] * n
    aux: dict = {}
    nll_sum, targets = 0.0, 0.0
    bar = Progress(num_eval_batches(encoded, batch_size), desc=desc, enabled=progress, leave=False)
    for batch in eval_batches(encoded, batch_size, pad_multiple=pad_multiple):
        out = jax.device_get(eval_fn(state, frozen, device_batch(batch, mesh)))
        nll_sum += float(out["nll_sum"])
        targets += float(out["targets"])
        rows = batch["input_ids"].shape[0]
        for row, idx in enumerate(batch["example_index"]):
            if idx < 0:
                continue
            if ner:
                pos = np.nonzero(encoded.word_index[idx] >= 0)[0]
                probs[idx] = out["probs"][row, pos]
            else:
                probs[idx] = out["probs"][row]
            for k, v in out["aux"].items():
                v = np.asarray(v)
                if not _per_row(v, rows):
                    continue
                per = v[row]
                if ner and per.ndim >= 1 and per.shape[0] == batch["input_ids"].shape[1]:
                    per = per[np.nonzero(encoded.word_index[idx] >= 0)[0]]
                aux.setdefault(k, [None] * n)[idx] = per
        bar.update(1, tokens=int((batch["attention_mask"] * batch["example_mask"][:, None]).sum()))
    bar.close()
    result = {"probs": probs if ner else np.stack(probs), "nll_sum": nll_sum, "targets": targets,
              "aux": {}}
    for k, vals in aux.items():
        if all(np.ndim(v) == 0 for v in vals) or not ner:
            try:
                result["aux"][k] = np.stack(vals)
                continue
            except ValueError:
                pass
        result["aux"][k] = vals
    return result
