"""From a validated config and its method to an `Experiment`: data, tokenizer, weights, the method's
model and trees (`train.assemble.build_setup`), evaluator.

This is the only place in `train/` that knows the concrete layers below it;
the loop sees the `Experiment` interface only (tests swap in stand-ins).
"""
from __future__ import annotations

import os

import numpy as np

from umema_jax.train.assemble import build_setup
from umema_jax.train.loop import Experiment
from umema_jax.train.state import count_params

DEV_SUBSAMPLE_SEED = 0   # the same dev subsample for every run seed, so early stopping compares alike


def tokenizer_name(model_name: str) -> str:
    """Random-weight tiny configs borrow the tokenizer of the real model they imitate."""
    from umema_jax.backbones.config import TOKENIZER_FOR
    return TOKENIZER_FOR.get(model_name, model_name)


def load_splits(config):
    """DatasetSplits with the seeded few-shot train subset, the (optional) dev subsample and the (optional)
    missing-data corruption of train and test applied (`data.missing_rate`: each eligible word deleted
    with that probability, per run seed; SemEval's entity words protected, NER tags deleted with their
    words; dev stays clean, so early stopping and post-hoc calibration see clean data)."""
    from umema_jax.data import load_dataset_splits
    from umema_jax.data.fewshot import fewshot_subset
    d = config.data
    from umema_jax.data.registry import DATA_DIR_ENV
    # No local copy anywhere -> the data layer's hub loader (needs internet).
    hub = not d.data_dir and not os.environ.get(DATA_DIR_ENV)
    splits = load_dataset_splits(d.name, d.data_dir or None, **({"source": "hub"} if hub else {}))
    full_train = len(splits.train)
    splits.train = fewshot_subset(splits.train, d.train_size, config.seed)
    if d.dev_size:
        splits.dev = fewshot_subset(splits.dev, d.dev_size, DEV_SUBSAMPLE_SEED)
    if d.test_size:
        splits.test = fewshot_subset(splits.test, d.test_size, DEV_SUBSAMPLE_SEED)
    if float(d.missing_rate):
        from umema_jax.data.corrupt import corrupt_examples
        splits.train = corrupt_examples(splits.train, float(d.missing_rate), config.seed, split="train")
        splits.test = corrupt_examples(splits.test, float(d.missing_rate), config.seed, split="test")
    splits.notes = dict(splits.notes or {}, full_train_size=full_train)
    return splits


def make_evaluator(task_type: str, label_names: list, encoded: dict, examples: dict, scores: tuple = ()):
    """(split, predictions) -> metrics with `primary` (accuracy | span F1) and the mean NLL `loss`;
    `scores`: the uncertainty scores the model exports (`UmemaModel.exported_scores`), each rated as an
    error detector next to max-probability."""
    from umema_jax.metrics.evaluate import evaluate_classification, evaluate_ner, uncertainty_quality

    def evaluate(split: str, preds: dict) -> dict:
        enc = encoded[split]
        aux = preds.get("aux") or {}
        if task_type == "cls":
            labels = np.asarray(enc.labels)
            m = evaluate_classification(preds["probs"], labels, label_names)
            m["primary"], m["primary_name"] = m["accuracy"], "accuracy"
            m.update(uncertainty_quality(preds["probs"], labels, {k: aux[k] for k in scores}))
        else:
            token_labels = [np.asarray(lab)[w >= 0] for lab, w in zip(enc.labels, enc.word_index)]
            gold = [list(ex.tags) for ex in examples[split]]
            m = evaluate_ner(preds["probs"], token_labels, label_names, full_gold_tags=gold)
            m["primary"], m["primary_name"] = m["span_f1"], "span_f1"
            # per scored token (first sub-token of each kept word), flattened in sentence order
            flat = lambda seqs: np.concatenate([np.asarray(x).reshape(-1) for x in seqs]) if len(seqs) else \
                np.zeros(0)
            probs = [np.asarray(p) for p in preds["probs"]]
            if probs and sum(p.shape[0] for p in probs):
                m.update(uncertainty_quality(np.concatenate([p for p in probs if p.size]), flat(token_labels),
                                             {k: flat(aux[k]) for k in scores}))
        m["loss"] = preds["nll_sum"] / max(preds["targets"], 1.0)
        return m

    return evaluate


def build_experiment(config, method) -> Experiment:
    """`method`: the run's `train.method.Method` (`umema_jax.methods.from_config(config)`)."""
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.data.encode import encode_splits
    from umema_jax.tokenization import load_tokenizer

    splits = load_splits(config)
    tokenizer = load_tokenizer(tokenizer_name(config.model.name))
    encoded = encode_splits(splits, tokenizer, config.data.max_len)

    if config.model.init_from_scratch:
        backbone_cfg, weights = get_backbone_config(config.model.name), None
    else:
        from umema_jax.weights.load import load_backbone_weights
        backbone_cfg, weights = load_backbone_weights(config.model.name)
    if len(tokenizer) > backbone_cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but {config.model.name} embeds only "
                         f"{backbone_cfg.vocab_size}")
    setup = build_setup(config, method, splits.task_type, len(splits.labels), backbone_cfg, weights)
    frozen, trainable, params = setup.frozen, setup.trainable, setup.params
    info = {
        "task_type": splits.task_type, "labels": list(splits.labels), "backbone": backbone_cfg,
        "method": method.describe(),
        "sizes": {s: len(encoded[s]) for s in ("train", "dev", "test")},
        "full_train_size": splits.notes.get("full_train_size"),
        "encoding": {s: encoded[s].stats() for s in ("train", "dev", "test")},
        "token_lengths": {s: _percentiles(encoded[s].lengths) for s in ("train", "dev", "test")},
        "params": {"trainable": method.count_trainable(trainable), "frozen": count_params(frozen),
                   "trainable_tree": count_params(trainable),
                   "lora": count_params(trainable["lora"]),
                   **{f"params/{k}": count_params(v) for k, v in params.items()},
                   "memory_buffer": count_params(setup.memory)},
        "ids": {s: list(encoded[s].ids) for s in ("dev", "test")},
        "examples": {s: splits.split(s) for s in ("dev", "test")},
    }
    # The model's own parameters (not the trained tree: SplitLoRA holds client copies of its LoRA there,
    # LISA's efficient form γ slots of blocks carried in the state besides)
    info["params"]["total"] = count_params(params) + count_params(setup.lora)
    info["scores"] = list(setup.model.exported_scores())
    evaluate = make_evaluator(splits.task_type, list(splits.labels), encoded,
                              {s: splits.split(s) for s in ("dev", "test")}, tuple(info["scores"]))
    return Experiment(model=setup.model, frozen=frozen, trainable=trainable,
                      memory=setup.memory, task_type=splits.task_type,
                      encoded=encoded, evaluate=evaluate, info=info, method=method)


def _percentiles(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {}
    return {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 95, 99, 100)}
