"""Span F1 (seqeval strict IOB2), span ECE and evaluate_ner, by hand."""
import json

import numpy as np
import pytest

from umema_jax.metrics import evaluate_ner, span_ece, span_f1
from umema_jax.metrics.spans import decode_spans, span_prf

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_strict_iob2_drops_orphan_inside_tags():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"]]            # conlleval would accept the I-LOC span
    assert span_prf(gold, pred) == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert decode_spans(pred) == [[("PER", 0, 2)]]
    assert span_f1(gold, gold) == 1.0
    with pytest.raises(ValueError, match="sentence 0"):
        span_f1(gold, [["O"]])


def _onehot(tags, top):
    p = np.full((len(tags), len(NAMES)), 0.0)
    for i, (t, c) in enumerate(zip(tags, top)):
        p[i] = (1 - c) / (len(NAMES) - 1)
        p[i, NAMES.index(t)] = c
    return p


def test_span_ece_hand_computed():
    # sentence 1: PER span predicted right, token top-probs .9 and .7 -> conf .8, correct
    #             orphan I-LOC is no span under strict IOB2
    # sentence 2: LOC predicted where gold is PER -> conf .5, wrong
    p1 = _onehot(["B-PER", "I-PER", "O", "I-LOC"], [0.9, 0.7, 0.9, 0.6])
    p2 = _onehot(["B-LOC", "O"], [0.5, 0.9])
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O"]]
    assert span_ece([p1, p2], gold, NAMES) == pytest.approx((0.2 + 0.5) / 2)


def test_evaluate_ner_padded_arrays_and_truncation():
    p1 = _onehot(["B-PER", "I-PER", "O", "I-LOC"], [0.9, 0.7, 0.9, 0.6])
    # batch layout [N, n, C] with -100 on non-first sub-tokens / padding, plus one padding row
    n = 6
    probs = np.zeros((2, n, len(NAMES)))
    labels = np.full((2, n), -100)
    pos = [0, 2, 3, 5]                                    # first sub-tokens of the 4 words
    probs[0, pos] = p1
    labels[0, pos] = [1, 2, 0, 3]
    out = evaluate_ner(probs, labels, NAMES)
    assert out["n_sentences"] == 1 and out["n_tokens"] == 4
    assert out["span_f1"] == pytest.approx(2 / 3) and out["span_precision"] == 1.0
    assert out["token_accuracy"] == pytest.approx(0.75)
    assert out["span_ece"] == pytest.approx(0.2)
    # token ECE, 15 bins: {.9 ok, .9 ok} -> 2 * .1; {.7 ok} -> .3; {.6 wrong} -> .6; over 4 tokens
    assert out["ece"] == pytest.approx((0.2 + 0.3 + 0.6) / 4)
    json.dumps(out)                                        # flat and JSON-able
    assert out["span_PER_f1"] == 1.0 and out["span_LOC_recall"] == 0.0
    # a fifth word (B-PER) was cut off by max_len: with full_gold_tags it costs recall
    full = [["B-PER", "I-PER", "O", "B-LOC", "B-PER"]]
    out2 = evaluate_ner(probs[:1], labels[:1], NAMES, full_gold_tags=full)
    assert out2["truncated_words"] == 1 and out2["span_recall"] == pytest.approx(1 / 3)
    listed = evaluate_ner([p1], [np.array([1, 2, 0, 3])], NAMES)
    assert listed["span_f1"] == out["span_f1"] and listed["nll"] == pytest.approx(out["nll"])
