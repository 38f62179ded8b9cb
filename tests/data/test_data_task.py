"""End to end on the tiny fixtures: prepare -> batch -> fake model -> EvalAccumulator."""
import os

import numpy as np

from umema_jax.data import TrainBatches, eval_batches, prepare_task
from umema_jax.metrics import EvalAccumulator
from umema_jax.tokenization import load_tokenizer

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")


def test_prepare_semeval_fewshot_corrupted_and_evaluate():
    tok = load_tokenizer("gpt2")
    a = prepare_task("semeval", os.path.join(FIX, "semeval_tiny"), tokenizer=tok, max_len=48,
                     train_size=20, seed=3, missing_rate=0.5, missing_mode="mask")
    b = prepare_task("semeval", os.path.join(FIX, "semeval_tiny"), tokenizer=tok, max_len=48,
                     train_size=20, seed=3, missing_rate=0.5, missing_mode="mask")
    assert len(a.encoded["train"]) == 20 and len(a.encoded["test"]) == 30 and a.num_labels == 19
    assert [e.text for e in a.splits.train] == [e.text for e in b.splits.train]
    assert any("[MASK]" in e.text for e in a.splits.test)
    assert not any("[MASK]" in e.text for e in a.splits.dev)
    tb = TrainBatches(a.encoded["train"], 8, seed=3)
    assert sum(int(x["example_mask"].sum()) for x in tb.epoch_batches(0)) == 20
    # a "model" that is right on every example with confidence .8
    acc = EvalAccumulator("cls")
    for batch in eval_batches(a.encoded["test"], 8):
        probs = np.full((8, 19), 0.2 / 18)
        rows = np.arange(8)
        probs[rows, np.maximum(batch["labels"], 0)] = 0.8
        acc.add(batch, probs)
    out = acc.result(a.label_names)
    assert out["n"] == 30 and out["accuracy"] == 1.0
    assert abs(out["ece"] - 0.2) < 1e-6 and "semeval_f1" in out


def test_prepare_wnut17_and_ner_accumulator_in_dataset_order():
    tok = load_tokenizer("gpt2")
    t = prepare_task("wnut17", os.path.join(FIX, "wnut17_tiny"), tokenizer=tok, max_len=8)
    enc = t.encoded["test"]
    assert enc.num_truncated_words > 0                    # max_len 8 cuts some sentences
    acc = EvalAccumulator("ner")
    for batch in eval_batches(enc, 4):
        B, n = batch["labels"].shape
        probs = np.full((B, n, 13), 0.1 / 12)
        probs[np.arange(B)[:, None], np.arange(n)[None, :], np.maximum(batch["labels"], 0)] = 0.9
        acc.add(batch, probs)
    full = [ex.tags for ex in t.splits.test]
    out = acc.result(t.label_names, full_gold_tags=full)
    assert out["n_sentences"] == 15 and out["token_accuracy"] == 1.0
    assert out["truncated_words"] == enc.num_truncated_words
    assert out["span_recall"] < 1.0          # cut-off words count as predicted O
    assert acc.result(t.label_names)["span_f1"] == 1.0   # scored words only
