"""Batching: contract shapes, padding, determinism, bit-identical resumption."""
import numpy as np
import pytest

from umema_jax.data.encode import IGNORE_INDEX, EncodedDataset
from umema_jax.data.pipeline import TrainBatches, eval_batches, padded_length

KEYS = {"input_ids", "attention_mask", "labels", "example_mask", "task_id", "example_index"}


def fake(n=53, task="cls", max_len=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    ids = [rng.integers(5, 100, size=L).astype(np.int32) for L in lengths]
    if task == "cls":
        labels = rng.integers(0, 3, size=n).astype(np.int32)
        extra = {}
    else:
        labels = [np.where(rng.random(L) < 0.6, rng.integers(0, 3, size=L), IGNORE_INDEX).astype(np.int32)
                  for L in lengths]
        extra = {"word_index": [np.zeros(L, np.int32) for L in lengths], "num_words": list(lengths)}
    return EncodedDataset(input_ids=ids, labels=labels, ids=[str(i) for i in range(n)], task_type=task,
                          pad_id=0, max_len=max_len, label_names=["a", "b", "c"],
                          truncated=np.zeros(n, bool), **extra)


def _same(b1, b2):
    return b1.keys() == b2.keys() and all(np.array_equal(b1[k], b2[k]) and b1[k].dtype == b2[k].dtype
                                          for k in b1)


@pytest.mark.parametrize("task", ["cls", "ner"])
def test_batches_follow_the_contract(task):
    enc = fake(task=task)
    tb = TrainBatches(enc, batch_size=8, seed=3)
    batches = list(tb.epoch_batches(0))
    assert len(batches) == tb.steps_per_epoch == 7
    seen = []
    for b in batches:
        assert set(b) == KEYS
        assert all(b[k].dtype == np.int32 for k in b)
        B, n = b["input_ids"].shape
        assert B == 8 and b["attention_mask"].shape == (B, n)
        assert b["labels"].shape == ((B,) if task == "cls" else (B, n))
        assert n % 16 == 0 or n == enc.max_len
        for row in range(B):
            i = b["example_index"][row]
            if b["example_mask"][row] == 0:
                assert i == -1 and np.all(b["labels"][row] == IGNORE_INDEX)
                assert b["attention_mask"][row].tolist() == [1] + [0] * (n - 1)
                continue
            seen.append(i)
            L = len(enc.input_ids[i])
            assert b["attention_mask"][row].tolist() == [1] * L + [0] * (n - L)   # right padding
            assert np.array_equal(b["input_ids"][row, :L], enc.input_ids[i])
            assert np.all(b["input_ids"][row, L:] == enc.pad_id)
            if task == "ner":
                assert np.array_equal(b["labels"][row, :L], enc.labels[i])
                assert np.all(b["labels"][row, L:] == IGNORE_INDEX)
            else:
                assert b["labels"][row] == enc.labels[i]
    assert sorted(seen) == list(range(len(enc)))          # every example exactly once
    assert sum(int(b["example_mask"].sum()) for b in batches) == 53


def test_deterministic_and_resumable():
    enc = fake(n=101, task="ner")
    a, b = TrainBatches(enc, 8, seed=7), TrainBatches(enc, 8, seed=7)
    ep1 = list(a.epoch_batches(1))
    assert all(_same(x, y) for x, y in zip(ep1, b.epoch_batches(1)))
    assert all(_same(x, y) for x, y in zip(ep1[5:], b.epoch_batches(1, start_step=5)))
    assert _same(ep1[9], b.batch_at(1, 9))
    order0 = [x.tolist() for x in a.epoch_order(0)]
    assert order0 != [x.tolist() for x in a.epoch_order(1)]
    assert order0 != [x.tolist() for x in TrainBatches(enc, 8, seed=8).epoch_order(0)]
    # resume mid-run across an epoch boundary gives the identical stream
    full = list(a.iterate(num_epochs=3))
    k = a.steps_per_epoch + 4
    resumed = list(b.iterate(start_epoch=1, start_step=4, num_epochs=3))
    assert [(e, s) for e, s, _ in full[k:]] == [(e, s) for e, s, _ in resumed]
    assert all(_same(x[2], y[2]) for x, y in zip(full[k:], resumed))


def test_bucketing_reduces_padding_and_bounds_shapes():
    enc = fake(n=800, max_len=256)
    def pad_cost(tb):
        return sum(b["input_ids"].size for b in tb.epoch_batches(0))
    bucketed, plain = TrainBatches(enc, 16, seed=0), TrainBatches(enc, 16, seed=0, bucket=False)
    assert pad_cost(bucketed) < 0.8 * pad_cost(plain)
    shapes = {b["input_ids"].shape[1] for b in bucketed.epoch_batches(0)}
    assert shapes <= set(range(16, 257, 16))


def test_drop_remainder_and_eval_batches():
    enc = fake(n=53)
    tb = TrainBatches(enc, 8, seed=0, drop_remainder=True)
    assert tb.steps_per_epoch == 6 and all(b["example_mask"].all() for b in tb.epoch_batches(0))
    evb = list(eval_batches(enc, 8))
    assert len(evb) == 7 and evb[-1]["example_mask"].tolist() == [1] * 5 + [0] * 3
    idx = np.concatenate([b["example_index"][b["example_mask"] == 1] for b in evb])
    assert sorted(idx.tolist()) == list(range(53))
    unsorted = list(eval_batches(enc, 8, sort_by_length=False))
    assert np.concatenate([b["example_index"] for b in unsorted])[:53].tolist() == list(range(53))


def test_padded_length():
    assert [padded_length(n, 16, 100) for n in (1, 16, 17, 99, 100)] == [16, 16, 32, 100, 100]
    assert padded_length(5, 1, 100) == 5
