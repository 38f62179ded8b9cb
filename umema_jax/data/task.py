"""One call from a dataset name to encoded, ready-to-batch splits, in the paper's order.

load splits -> few-shot subset of train (run seed) -> missing-data
corruption (run seed; train and/or eval splits) -> encode. The few-shot draw
happens before corruption and both are independent of the method, so every
method under the same seed sees the same examples and the same corruption.
"""
from __future__ import annotations

import dataclasses

from umema_jax.data.corrupt import corrupt_examples
from umema_jax.data.encode import encode_classification, encode_token_classification
from umema_jax.data.fewshot import fewshot_subset
from umema_jax.data.registry import load_dataset_splits
from umema_jax.data.types import DatasetSplits


@dataclasses.dataclass
class PreparedTask:
    splits: DatasetSplits          # after few-shot selection and corruption
    encoded: dict                  # 'train' | 'dev' | 'test' -> EncodedDataset
    label_names: list
    task_type: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def stats(self) -> dict:
        return {k: v.stats() for k, v in self.encoded.items()}


def prepare_task(name: str, data_dir: str | None = None, *, tokenizer, max_len: int,
                 train_size: int | None = None, seed: int = 0, missing_rate: float = 0.0,
                 missing_mode: str = "delete", missing_splits=("train", "test"),
                 mask_token: str = "[MASK]", add_bos: bool | None = None,
                 **dataset_options) -> PreparedTask:
    """Encoded train/dev/test for `name` (see module doc for the order of steps)."""
    splits = load_dataset_splits(name, data_dir, **dataset_options)
    parts = {"train": fewshot_subset(splits.train, train_size, seed), "dev": splits.dev,
             "test": splits.test}
    bad = set(missing_splits) - set(parts)
    if bad:
        raise ValueError(f"missing_splits {sorted(bad)} not in train/dev/test")
    if missing_rate:
        for split in missing_splits:
            parts[split] = corrupt_examples(parts[split], missing_rate, seed, split=split,
                                            mode=missing_mode, mask_token=mask_token)
    splits = dataclasses.replace(splits, **parts)
    fn = encode_classification if splits.task_type == "cls" else encode_token_classification
    encoded = {k: fn(v, tokenizer, splits.labels, max_len, add_bos=add_bos) for k, v in parts.items()}
    return PreparedTask(splits=splits, encoded=encoded, label_names=list(splits.labels),
                        task_type=splits.task_type)
