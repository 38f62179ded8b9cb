"""Training batches of N simulated clients: an equal, seeded random partition of the training set
and three schedules of the clients' batches (SplitLoRA, FLoRA; docs/METHODS.md, §6).

* `parallel` (SplitLoRA's SFL): every step holds one sub-batch of b = ceil(B/N) rows from *every*
  client, client k in rows [k·b, (k+1)·b); a step has N·b rows.
* `interleaved` (SplitLoRA's released script): the clients take turns, one batch of B rows each
  (client t mod N while every client has batches left; a client whose shard ran out is skipped).
* `blocked` (FLoRA): client 0's whole local epoch, then client 1's, ...; one epoch is one round.

An epoch visits every example exactly once. In `parallel`, a client whose shard ran out sends a
sub-batch of padding rows (`example_mask` 0). Each client's own order is a
`TrainBatches` of its shard, so, as there, batches are a pure function of (seed, epoch, step) and
resuming repeats them. `example_index` is the row within the client's shard (bookkeeping only).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from umema_jax.data.encode import IGNORE_INDEX, EncodedDataset
from umema_jax.data.pipeline import TrainBatches, iterate_from, padded_length

SCHEDULES = ("parallel", "interleaved", "blocked")
_SALT = 0xFED5


def partition(n: int, clients: int, seed: int) -> list[np.ndarray]:
    """`clients` disjoint sorted index arrays covering range(n), sizes differing by at most one."""
    if not 1 <= clients <= n:
        raise ValueError(f"cannot split {n} training examples over {clients} clients")
    perm = np.random.default_rng([int(seed), _SALT]).permutation(n)
    return [np.sort(s) for s in np.array_split(perm, clients)]


def _pad_batch(batch: dict, n: int, pad_id: int) -> dict:
    """Right-pads a collated batch's sequence axis to `n` (pad tokens, attention 0, labels ignored)."""
    extra = n - batch["input_ids"].shape[1]
    if extra == 0:
        return batch
    out = dict(batch)
    out["input_ids"] = np.pad(batch["input_ids"], ((0, 0), (0, extra)), constant_values=pad_id)
    out["attention_mask"] = np.pad(batch["attention_mask"], ((0, 0), (0, extra)))
    if batch["labels"].ndim == 2:
        out["labels"] = np.pad(batch["labels"], ((0, 0), (0, extra)), constant_values=IGNORE_INDEX)
    return out


def _empty_batch(rows: int, n: int, encoded: EncodedDataset, task_id: int = 0) -> dict:
    """A sub-batch of padding rows only (one visible pad token each, like `collate`'s padding rows)."""
    attention = np.zeros((rows, n), np.int32)
    attention[:, 0] = 1
    ner = encoded.task_type == "ner"
    return {"input_ids": np.full((rows, n), encoded.pad_id, np.int32), "attention_mask": attention,
            "labels": np.full((rows, n) if ner else (rows,), IGNORE_INDEX, np.int32),
            "example_mask": np.zeros((rows,), np.int32), "task_id": np.full((rows,), task_id, np.int32),
            "example_index": np.full((rows,), -1, np.int32)}


def client_rows(batch_size: int, clients: int, schedule: str) -> int:
    """Rows of one client's sub-batch: ceil(B / N) when all N clients send in every step (`parallel`),
    else a whole batch of B."""
    return -(-int(batch_size) // int(clients)) if schedule == "parallel" else int(batch_size)


class ClientBatches:
    """`TrainBatches`' interface (`steps_per_epoch`, `epoch_batches`, `batch_at`, `iterate`) for N clients."""

    def __init__(self, encoded: EncodedDataset, batch_size: int, seed: int, clients: int, schedule: str, *,
                 pad_multiple: int = 16, local_epochs: int = 1):
        if schedule not in SCHEDULES:
            raise ValueError(f"client schedule {schedule!r}: must be one of {', '.join(SCHEDULES)}")
        if int(local_epochs) < 1 or (int(local_epochs) > 1 and schedule != "blocked"):
            raise ValueError(f"local_epochs={local_epochs}: must be >= 1, and > 1 only with the blocked schedule")
        self.encoded, self.clients, self.schedule = encoded, int(clients), schedule
        self.local_epochs = int(local_epochs)   # blocked: passes over its shard a client makes in its turn
        self.shards = partition(len(encoded), self.clients, seed)
        self.rows = client_rows(batch_size, self.clients, schedule)
        self.local = [TrainBatches(encoded.subset(s), self.rows, _client_seed(seed, k), pad_multiple=pad_multiple)
                      for k, s in enumerate(self.shards)]
        self.pad_multiple = pad_multiple
        per_client = [t.steps_per_epoch * self.local_epochs for t in self.local]
        # blocked: client k trains on steps [starts[k], starts[k+1]) of every epoch (local_epochs passes)
        self.starts = np.concatenate([[0], np.cumsum(per_client)]).astype(int)
        # interleaved: step t of every epoch is batch plan[t][1] of client plan[t][0]
        self.plan = [(k, j) for j in range(max(per_client)) for k in range(self.clients) if j < per_client[k]]
        self.steps_per_epoch = max(per_client) if schedule == "parallel" else int(self.starts[-1])

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def shard_sizes(self) -> list[int]:
        return [len(s) for s in self.shards]

    def client_at(self, step: int) -> int:
        """The client that step `step` of an epoch belongs to (-1: every client, `parallel`)."""
        if self.schedule == "parallel":
            return -1
        if self.schedule == "interleaved":
            return self.plan[step][0]
        return int(np.searchsorted(self.starts, step, side="right") - 1)

    def _client_indices(self, epoch: int, step: int) -> list:
        """[(client, its shard-local example indices or None for padding)] of one step."""
        def local(k, j):
            passes, j = divmod(j, self.local[k].steps_per_epoch) if self.local_epochs > 1 else (0, j)
            order = self.local[k].epoch_order(epoch * self.local_epochs + passes)
            return order[j] if j < len(order) else None
        if self.schedule == "parallel":
            return [(k, local(k, step)) for k in range(self.clients)]
        if self.schedule == "interleaved":
            return [(self.plan[step][0], local(*self.plan[step]))]
        k = self.client_at(step)
        return [(k, local(k, step - int(self.starts[k])))]

    def cut_elements(self, epoch: int, step: int) -> tuple[int, int]:
        """(real rows, padded length) of a step without collating it: what crosses a split model's cut."""
        parts = [(k, idx) for k, idx in self._client_indices(epoch, step) if idx is not None]
        rows = sum(len(idx) for _, idx in parts)
        lengths = self.encoded.lengths
        n = max((padded_length(int(lengths[self.shards[k][idx]].max()), self.pad_multiple, self.encoded.max_len)
                 for k, idx in parts), default=0)
        return rows, n

    def batch_at(self, epoch: int, step: int) -> dict:
        from umema_jax.data.pipeline import collate
        parts = []
        for k, idx in self._client_indices(epoch, step):
            if idx is None:
                parts.append(None)
            else:
                parts.append(collate(self.local[k].encoded, idx, self.rows, pad_multiple=self.pad_multiple))
        n = max((p["input_ids"].shape[1] for p in parts if p is not None),
                default=padded_length(1, self.pad_multiple, self.encoded.max_len))
        parts = [_empty_batch(self.rows, n, self.encoded) if p is None else _pad_batch(p, n, self.encoded.pad_id)
                 for p in parts]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        for step in range(start_step, self.steps_per_epoch):
            yield self.batch_at(epoch, step)

    def iterate(self, start_epoch: int = 0, start_step: int = 0,
                num_epochs: int | None = None) -> Iterator[tuple[int, int, dict]]:
        """`(epoch, step, batch)` from a saved position on, as `TrainBatches.iterate`."""
        return iterate_from(self, start_epoch, start_step, num_epochs)


def _client_seed(seed: int, client: int) -> int:
    return int(np.random.default_rng([int(seed), int(client), _SALT]).integers(2 ** 31 - 1))
