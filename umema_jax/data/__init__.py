"""Data layer: readers -> typed examples -> encoding -> padded numpy batches.

See docs/CONTRACTS.md (Data) for the interface and docs/DATA.md for datasets,
splits, encoding conventions and metric definitions.
"""
from umema_jax.data.corrupt import corrupt_examples
from umema_jax.data.encode import (IGNORE_INDEX, EncodedDataset, encode_classification,
                                   encode_splits, encode_token_classification, encode_words)
from umema_jax.data.fewshot import fewshot_subset
from umema_jax.data.pipeline import TrainBatches, collate, eval_batches, num_eval_batches
from umema_jax.data.registry import DATASETS, load_dataset_splits
from umema_jax.data.task import PreparedTask, prepare_task
from umema_jax.data.types import (ClassificationExample, DataFormatError, DatasetSplits,
                                  TokenExample)

__all__ = ["ClassificationExample", "TokenExample", "DatasetSplits", "DataFormatError",
           "load_dataset_splits", "DATASETS", "EncodedDataset", "encode_classification",
           "encode_token_classification", "encode_splits", "encode_words", "IGNORE_INDEX",
           "TrainBatches", "eval_batches", "num_eval_batches", "collate", "fewshot_subset",
           "corrupt_examples", "prepare_task", "PreparedTask"]
