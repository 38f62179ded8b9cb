"""Batching: dynamic right padding with length bucketing, deterministic and resumable.

Batches are dicts of numpy arrays (docs/CONTRACTS.md, Data):
`input_ids [B,n] int32`, `attention_mask [B,n] int32`, `labels [B]` (cls) or
`[B,n]` (ner, -100 on ignored positions) int32, `example_mask [B] int32`
(0 = padding row), `task_id [B] int32`, plus `example_index [B] int32` (row
in the encoded dataset, -1 for padding rows) for tracing predictions back.

* Lengths are padded up to a multiple of `pad_multiple` (16), capped at the
  encoder's `max_len`, so at most max_len/16 distinct shapes get compiled.
* Training order for epoch `e` is a pure function of (seed, e): shuffle,
  cut into pools of `pool_batches` batches, sort each pool by length, cut
  into batches, shuffle the batch order. Position = (epoch, step); resuming
  with `epoch_batches(epoch, start_step)` gives bit-identical batches.
* A final partial batch is padded with rows whose `example_mask` is 0 and
  labels are -100 (never dropped for eval; `drop_remainder` for training).
  Padding rows hold one pad token with attention 1 at position 0, so no row
  is fully masked (no NaN from an all-masked softmax or pooling).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from umema_jax.data.encode import IGNORE_INDEX, EncodedDataset

_SALT_ORDER = 0x0BA7C4


def padded_length(n: int, pad_multiple: int, max_len: int) -> int:
    """`n` rounded up to a multiple of `pad_multiple`, never above `max_len`."""
    if pad_multiple <= 1:
        return min(n, max_len)
    return min(-(-n // pad_multiple) * pad_multiple, max_len)


def collate(encoded: EncodedDataset, indices: Sequence[int], batch_size: int,
            *, pad_multiple: int = 16, task_id: int = 0) -> dict:
    """One batch from example `indices` (len <= batch_size), right-padded; see module doc."""
    indices = [int(i) for i in indices]
    if not 0 < len(indices) <= batch_size:
        raise ValueError(f"a batch needs 1..{batch_size} examples, got {len(indices)}")
    longest = max(len(encoded.input_ids[i]) for i in indices)
    n = max(padded_length(longest, pad_multiple, encoded.max_len), longest)
    ner = encoded.task_type == "ner"
    input_ids = np.full((batch_size, n), encoded.pad_id, dtype=np.int32)
    attention = np.zeros((batch_size, n), dtype=np.int32)
    labels = np.full((batch_size, n) if ner else (batch_size,), IGNORE_INDEX, dtype=np.int32)
    example_mask = np.zeros((batch_size,), dtype=np.int32)
    example_index = np.full((batch_size,), -1, dtype=np.int32)
    for row, i in enumerate(indices):
        ids = encoded.input_ids[i]
        input_ids[row, :len(ids)] = ids
        attention[row, :len(ids)] = 1
        if ner:
            labels[row, :len(ids)] = encoded.labels[i]
        else:
            labels[row] = encoded.labels[i]
        example_mask[row] = 1
        example_index[row] = i
    attention[len(indices):, 0] = 1          # padding rows: one visible pad token
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "example_mask": example_mask, "task_id": np.full((batch_size,), task_id, np.int32),
            "example_index": example_index}


class TrainBatches:
    """Deterministic, resumable training batches: `epoch_batches(epoch, start_step)`."""

    def __init__(self, encoded: EncodedDataset, batch_size: int, seed: int, *,
                 pad_multiple: int = 16, pool_batches: int = 50, bucket: bool = True,
                 drop_remainder: bool = False, task_id: int = 0):
        if len(encoded) == 0:
            raise ValueError("cannot batch an empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.encoded, self.batch_size, self.seed = encoded, int(batch_size), int(seed)
        self.pad_multiple, self.pool_batches, self.bucket = pad_multiple, pool_batches, bucket
        self.drop_remainder, self.task_id = drop_remainder, task_id
        self._lengths = encoded.lengths
        if drop_remainder and len(encoded) < batch_size:
            raise ValueError(f"drop_remainder with {len(encoded)} examples < batch_size {batch_size} "
                             "leaves no batch")

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.encoded), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        """Example indices of every batch of `epoch` (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, int(epoch), _SALT_ORDER])
        perm = rng.permutation(len(self.encoded))
        b = self.batch_size
        if self.bucket:
            pool = b * max(1, self.pool_batches)
            chunks = [perm[s:s + pool] for s in range(0, len(perm), pool)]
            perm = np.concatenate([c[np.argsort(self._lengths[c], kind="stable")] for c in chunks])
        batches = [perm[s:s + b] for s in range(0, len(perm), b)]
        if self.drop_remainder and len(batches[-1]) < b:
            batches = batches[:-1]
        order = rng.permutation(len(batches))
        return [batches[j] for j in order]

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Batches of `epoch` from `start_step` on (resume = same epoch, saved step)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        for idx in self.epoch_order(epoch)[start_step:]:
            yield collate(self.encoded, idx, self.batch_size, pad_multiple=self.pad_multiple,
                          task_id=self.task_id)

    def batch_at(self, epoch: int, step: int) -> dict:
        return collate(self.encoded, self.epoch_order(epoch)[step], self.batch_size,
                       pad_multiple=self.pad_multiple, task_id=self.task_id)

    def iterate(self, start_epoch: int = 0, start_step: int = 0,
                num_epochs: int | None = None) -> Iterator[tuple[int, int, dict]]:
        """`(epoch, step, batch)` from a saved position on; endless when `num_epochs` is None."""
        return iterate_from(self, start_epoch, start_step, num_epochs)


def iterate_from(batches, start_epoch: int = 0, start_step: int = 0,
                 num_epochs: int | None = None) -> Iterator[tuple[int, int, dict]]:
    """`(epoch, step, batch)` of any batch plan with `steps_per_epoch` and `epoch_batches(epoch,
    start_step)`, from a saved position on (a step at the epoch's end resumes at the next epoch)."""
    epoch, step = int(start_epoch), int(start_step)
    if step >= batches.steps_per_epoch:
        epoch, step = epoch + 1, 0
    while num_epochs is None or epoch < num_epochs:
        for k, batch in enumerate(batches.epoch_batches(epoch, step)):
            yield epoch, step + k, batch
        epoch, step = epoch + 1, 0


def eval_batches(encoded: EncodedDataset, batch_size: int, *, pad_multiple: int = 16,
                 sort_by_length: bool = True, task_id: int = 0) -> Iterator[dict]:
    """Every example exactly once; the last batch padded with `example_mask` 0 rows.

    Sorted by length (stable) by default to save padding; metrics do not
    depend on order because labels travel with their batch.
    """
    n = len(encoded)
    order = np.argsort(encoded.lengths, kind="stable") if sort_by_length else np.arange(n)
    for s in range(0, n, batch_size):
        yield collate(encoded, order[s:s + batch_size], batch_size, pad_multiple=pad_multiple,
                      task_id=task_id)


def num_eval_batches(encoded: EncodedDataset, batch_size: int) -> int:
    return -(-len(encoded) // batch_size)
