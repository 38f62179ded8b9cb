"""Client partitions and schedules (umema_jax/data/federated.py), checked by brute-force bookkeeping."""
import numpy as np
import pytest

from umema_jax.data.encode import EncodedDataset
from umema_jax.data.federated import ClientBatches, partition


def _encoded(n=50, seed=0):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 100, rng.integers(3, 40)).astype(np.int32) for _ in range(n)]
    # each example's first token = its own index + 1000, so a batch row names its example
    for i, x in enumerate(ids):
        x[0] = 1000 + i
    return EncodedDataset(input_ids=ids, labels=rng.integers(0, 3, n).astype(np.int32), ids=list(range(n)),
                          task_type="cls", pad_id=0, max_len=64, label_names=["a", "b", "c"])


def test_partition_is_an_equal_seeded_split():
    shards = partition(50, 3, seed=7)
    assert sorted(np.concatenate(shards).tolist()) == list(range(50))
    assert sorted(len(s) for s in shards) == [16, 17, 17]
    assert all(np.array_equal(a, b) for a, b in zip(shards, partition(50, 3, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, partition(50, 3, seed=8)))
    with pytest.raises(ValueError, match="4 training examples over 5 clients"):
        partition(4, 5, 0)


def _examples(batch, rows=None):
    """(row, example) of the real rows."""
    ex = batch["input_ids"][:, 0] - 1000
    return [(r, int(e)) for r, e in enumerate(ex) if batch["example_mask"][r]]


@pytest.mark.parametrize("schedule", ["parallel", "interleaved", "blocked"])
def test_an_epoch_visits_every_example_once_each_from_its_own_client(schedule):
    enc = _encoded()
    cb = ClientBatches(enc, 8, seed=1, clients=3, schedule=schedule, pad_multiple=16)
    owner = {int(i): k for k, s in enumerate(cb.shards) for i in s}
    seen = []
    for epoch, step, batch in cb.iterate(0, 0, 1):
        rows, n = cb.cut_elements(epoch, step)
        assert rows == int(batch["example_mask"].sum()) and n == batch["input_ids"].shape[1]
        for r, e in _examples(batch):
            if schedule == "parallel":
                assert owner[e] == r // cb.rows                      # client k in rows [k·b, (k+1)·b)
            else:
                assert owner[e] == cb.client_at(step)
            seen.append(e)
        # rows of the padded sequence axis never carry attention
        assert np.all(batch["attention_mask"][batch["example_mask"] == 0, 1:] == 0)
    assert sorted(seen) == list(range(50))
    if schedule == "parallel":
        assert cb.rows == 3 and cb.steps_per_epoch == 6              # ceil(8/3) rows of each client; ceil(17/3)
    # a pure function of (seed, epoch, step): resuming mid-epoch repeats the batches
    again = ClientBatches(enc, 8, seed=1, clients=3, schedule=schedule, pad_multiple=16)
    for step in (0, cb.steps_per_epoch - 1):
        for key, value in cb.batch_at(1, step).items():
            np.testing.assert_array_equal(value, again.batch_at(1, step)[key])


def test_blocked_local_epochs_give_each_client_several_fresh_passes_in_its_turn():
    enc = _encoded()
    one = ClientBatches(enc, 8, seed=1, clients=3, schedule="blocked", pad_multiple=16)
    cb = ClientBatches(enc, 8, seed=1, clients=3, schedule="blocked", pad_multiple=16, local_epochs=3)
    assert cb.steps_per_epoch == 3 * one.steps_per_epoch and list(cb.starts) == [3 * s for s in one.starts]
    for round_ in (0, 1):
        seen = {k: [] for k in range(3)}
        for step in range(cb.steps_per_epoch):
            k = cb.client_at(step)
            seen[k].append([e for _, e in _examples(cb.batch_at(round_, step))])
        for k, batches in seen.items():
            per_pass = len(batches) // 3
            passes = [sum(batches[i * per_pass:(i + 1) * per_pass], []) for i in range(3)]
            for p in passes:                                   # every pass: the client's whole shard, once
                assert sorted(p) == sorted(int(i) for i in cb.shards[k])
            assert passes[0] != passes[1] != passes[2]          # reshuffled between passes
    with pytest.raises(ValueError, match="only with the blocked schedule"):
        ClientBatches(enc, 8, seed=1, clients=3, schedule="parallel", local_epochs=2)
