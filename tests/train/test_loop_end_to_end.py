"""The real model through the real loop, checked against independent recomputations.

Both runs use the tiny random GPT-2 + LoRA + UM + EMA (`full`) with the real GPT-2 tokenizer on
the bundled fixtures, through `build_experiment` -> `train_and_evaluate` -> `outputs.write_all`
(what `launch.py` runs), with the UM temperature started far from 1 (and varying per example /
token) so that "logits = raw / T" is observable:

* the train step's loss (metrics.jsonl, step 1) is the CE of raw / T of the model's own
  `raw_logits` and `temperature`, not the CE of raw;
* NER (wnut17): `predict`'s word alignment, the evaluator (truncated words count as missed),
  post-hoc temperature scaling, `results.json` and `predictions.jsonl`, all re-derived from the
  fixture file, the tokenizer's character offsets, a forward pass of the best checkpoint read
  back from disk (eval probabilities = softmax(raw / T)), and span F1 / ECE / NLL in numpy;
* classification (semeval): `results.json`'s test metrics equal accuracy / ECE / NLL / Brier
  recomputed from the per-example records of `predictions.jsonl`, whose probabilities are
  softmax(raw / T) of the best checkpoint.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from configs.smoke import get_config as smoke_config
from umema_jax import methods
from umema_jax.data.pipeline import TrainBatches
from umema_jax.tokenization import load_tokenizer
from umema_jax.train import outputs
from umema_jax.train.build import build_experiment
from umema_jax.train.checkpoint import Checkpoints
from umema_jax.train.loop import HOST_ONLY_KEYS, train_and_evaluate
from umema_jax.train.sharding import make_mesh
from umema_jax.train.state import create_train_state, make_optimizer, merge_params
from umema_jax.methods import validate_config

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "data")
NER_MAX_LEN = 8          # truncates 3 of the 5 test sentences (up to 11 GPT-2 tokens): truncation is exercised


# ----------------------------------------------------------------------------- independent references

def _softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _nll(p_gold):
    """Mean -log p(gold), probabilities clipped at 1e-12 (the documented convention: docs/DATA.md)."""
    return float(-np.mean(np.log(np.clip(np.asarray(p_gold, np.float64), 1e-12, 1.0))))


def _ece(conf, correct, n_bins=15):
    """Top-label ECE, equal-width bins (lo, hi], confidence 0 in the first bin."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        sel = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return total / len(conf)


def _spans(tags):
    """Strict IOB2 entities {(type, start, end)}: B-X opens, I-X continues only the same type."""
    out, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        if start is not None and not (tag.startswith("I-") and tag[2:] == kind):
            out.add((kind, start, i))
            start = kind = None
        if tag.startswith("B-"):
            start, kind = i, tag[2:]
    return out


def _span_prf(gold_seqs, pred_seqs):
    gold = {(s,) + e for s, tags in enumerate(gold_seqs) for e in _spans(tags)}
    pred = {(s,) + e for s, tags in enumerate(pred_seqs) for e in _spans(tags)}
    hit = len(gold & pred)
    p = hit / len(pred) if pred else 0.0
    r = hit / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _read_conll(path):
    sents, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tok, tag = line.rstrip("\n").split("\t")
                cur.append((tok, tag))
            elif cur:
                sents.append(cur)
                cur = []
    return sents + ([cur] if cur else [])


def _fit_temperature(log_probs, labels):
    """argmin_T mean NLL of softmax(log p / T) (scipy, bounded on log T)."""
    def nll(log_t):
        return -_log_softmax(log_probs / math.exp(log_t))[np.arange(len(labels)), labels].mean()
    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                          options={"xatol": 1e-7})
    return math.exp(res.x), nll


# ----------------------------------------------------------------------------- helpers

UM_FAR_FROM_ONE = {"temperature_bias_init": 1.0, "kappa_init": 1.0}   # T ~ 2-3 at step 0, per-row ū term
HEAD_SCALE = 30.0        # raw logits of O(1) at step 0, so that CE(raw / T) and CE(raw) differ clearly


def _run(config, workdir):
    """launch.py's path in-process; returns (exp, run, results.json, predictions.jsonl, step-0 variables)."""
    config.model.um.update(UM_FAR_FROM_ONE)
    config.train.log_every_steps = 1
    config.output.tensorboard = False
    validate_config(config)
    exp = build_experiment(config, methods.from_config(config))
    params = dict(exp.trainable["params"])
    params["head"] = dict(params["head"], kernel=params["head"]["kernel"] * HEAD_SCALE)
    exp.trainable = dict(exp.trainable, params=params)
    # A host copy: the loop donates the state's buffers.
    step0 = jax.tree.map(np.array, {"params": merge_params(exp.frozen, exp.trainable["params"]),
                                    "lora": exp.trainable["lora"], "memory": exp.memory})
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    run = train_and_evaluate(config, str(workdir), exp, mesh)
    outputs.write_all(str(workdir), config, exp, run, 0.0, mesh)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "predictions.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return exp, run, results, records, step0


def _forward(model, variables, batch, train):
    """The model's own (raw_logits, temperature); eager: one call costs less than compiling it."""
    out = model.apply(variables, {k: jnp.asarray(v) for k, v in batch.items()}, train=train,
                      rngs={"dropout": jax.random.PRNGKey(0)})
    return np.asarray(out.raw_logits, np.float64), np.asarray(out.temperature, np.float64)


def _ce(logits, labels, mask):
    safe = np.where(labels == -100, 0, labels)
    picked = np.take_along_axis(_log_softmax(logits), safe[..., None], -1)[..., 0]
    return -(picked * mask).sum() / mask.sum()


def check_first_train_loss_is_ce_of_raw_over_t(config, exp, step0, workdir):
    """metrics.jsonl's step-1 loss = mean CE of raw / T on the first training batch, at the step-0 state."""
    _, _, batch = next(iter(TrainBatches(exp.encoded["train"], config.train.batch_size, config.seed,
                                         pad_multiple=config.data.pad_to_multiple).iterate(0, 0, 1)))
    batch = {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}
    if not step0["memory"]:
        step0 = {k: v for k, v in step0.items() if k != "memory"}
    raw, temp = _forward(exp.model, step0, batch, train=True)
    labels = np.asarray(batch["labels"])
    rows = np.asarray(batch["example_mask"], bool)
    mask = (labels != -100) & rows[:, None] if labels.ndim == 2 else rows
    assert temp.shape == raw.shape[:-1]
    assert np.abs(temp[mask] - 1.0).min() > 0.3 and temp[mask].std() > 1e-4    # T far from 1, per row
    calibrated, uncalibrated = _ce(raw / temp[..., None], labels, mask), _ce(raw, labels, mask)
    assert abs(calibrated - uncalibrated) > 0.05                                 # the check can tell them apart
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first = next(r for r in map(json.loads, f) if r["split"] == "train")
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(calibrated, rel=1e-5)


def _best_state(config, workdir, exp):
    """The best checkpoint, read back from disk through orbax (no frozen weights in it)."""
    tx, _ = make_optimizer(config.optim, 1)
    template = create_train_state(exp.trainable, exp.memory, tx, config.seed)
    ckpt = Checkpoints(str(workdir))
    try:
        state, _ = ckpt.restore_best(template)
    finally:
        ckpt.close()
    return state


def _variables(exp, state):
    variables = {"params": merge_params(exp.frozen, state.trainable["params"]), "lora": state.trainable["lora"]}
    if state.memory:
        variables["memory"] = state.memory
    return variables


def _ner_config():
    c = smoke_config()
    c.model.method = "full"
    c.data.name = "wnut17"
    c.data.data_dir = os.path.join(FIX, "wnut17_tiny")
    c.data.train_size = 40
    c.data.max_len = NER_MAX_LEN
    c.data.pad_to_multiple = NER_MAX_LEN          # one padded shape: one compile per step function
    c.train.epochs = 8                          # enough for entities to be found (test span F1 > 0)
    c.train.eval_batch_size = 16
    c.train.early_stopping_patience = 0
    c.optim.learning_rate = 3e-2
    return c


# ----------------------------------------------------------------------------- NER end to end

def test_ner_run_end_to_end_matches_independent_recomputation(tmp_path):
    config = _ner_config()
    exp, run, results, records, step0 = _run(config, tmp_path)
    check_first_train_loss_is_ce_of_raw_over_t(config, exp, step0, tmp_path)
    names = exp.info["labels"]
    gold_sents = _read_conll(os.path.join(FIX, "wnut17_tiny", "emerging.test.annotated"))
    assert len(records) == len(gold_sents) == results["sizes"]["test"] == 15

    # 1. Word alignment, re-derived from the tokenizer's character offsets (no BOS for GPT-2).
    tok = load_tokenizer("gpt2")
    first_pos = []                     # per sentence: position of each kept word's first sub-token
    batch_ids = np.full((len(gold_sents), NER_MAX_LEN), tok.pad_token_id, np.int32)
    batch_mask = np.zeros_like(batch_ids)
    for i, sent in enumerate(gold_sents):
        words = [w for w, _ in sent]
        text = " ".join(words)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"][:NER_MAX_LEN], enc["offset_mapping"][:NER_MAX_LEN]
        np.testing.assert_array_equal(exp.encoded["test"].input_ids[i], ids)
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
        pos = [next((t for t, (_, end) in enumerate(offsets) if end > s), None) for s in starts]
        first_pos.append([p for p in pos if p is not None])
        batch_ids[i, :len(ids)], batch_mask[i, :len(ids)] = ids, 1
    kept = [len(p) for p in first_pos]
    assert sum(kept) < sum(len(s) for s in gold_sents)          # some words really were cut off

    # 2. The best checkpoint's own forward pass on an unbatched-by-the-pipeline input.
    state = _best_state(config, tmp_path, exp)
    raw, temperature = _forward(exp.model, _variables(exp, state),
                                {"input_ids": batch_ids, "attention_mask": batch_mask}, train=False)
    probs = _softmax(raw / temperature[..., None])
    expected = [probs[i, p] for i, p in enumerate(first_pos)]
    scored = np.zeros(batch_ids.shape, bool)
    for i, p in enumerate(first_pos):
        scored[i, p] = True
    assert np.abs(temperature[scored] - 1).max() > 0.1                # UM's per-token T is in play
    assert max(np.abs(run.predictions["test"]["probs"][i] - _softmax(raw[i, p])).max()
               for i, p in enumerate(first_pos)) > 1e-2               # ... and visible in the probabilities

    # 3. predict()'s per-word probabilities (what the evaluator and post-hoc TS consume).
    for i, e in enumerate(expected):
        np.testing.assert_allclose(run.predictions["test"]["probs"][i], e, rtol=2e-4, atol=2e-6)

    # 4. predictions.jsonl, record by record.
    gold_seqs, pred_seqs, conf, correct, gold_p = [], [], [], [], []
    for i, (rec, sent, e) in enumerate(zip(records, gold_sents, expected)):
        words, tags = [w for w, _ in sent], [t for _, t in sent]
        assert rec["id"] == exp.encoded["test"].ids[i]
        assert rec["tokens"] == words and rec["gold"] == tags
        assert rec["scored_words"] == kept[i] and len(rec["pred"]) == len(tags)
        assert rec["pred"][:kept[i]] == [names[j] for j in e.argmax(-1)]
        assert rec["pred"][kept[i]:] == ["O"] * (len(tags) - kept[i])     # cut-off words: predicted O
        np.testing.assert_allclose(rec["confidence"], e.max(-1), rtol=2e-4, atol=2e-6)
        assert len(rec["aux"]["temperature"]) == kept[i]                 # per-word aux, same alignment
        gold_seqs.append(tags)
        pred_seqs.append(rec["pred"])
        conf += rec["confidence"]
        correct += [p == g for p, g in zip(rec["pred"][:kept[i]], tags)]
        gold_p += [e[k, names.index(t)] for k, t in enumerate(tags[:kept[i]])]

    # 5. results.json's test metrics = the same numbers recomputed from the records (+ the forward pass).
    test = results["test"]
    p, r, f1 = _span_prf(gold_seqs, pred_seqs)
    assert any(_spans(t) for t in pred_seqs), "no entity predicted: the span comparison would be vacuous"
    assert test["span_precision"] == pytest.approx(p, abs=1e-12)
    assert test["span_recall"] == pytest.approx(r, abs=1e-12)
    assert test["span_f1"] == pytest.approx(f1, abs=1e-12) == results["test"]["primary"]
    assert test["n_sentences"] == 15 and test["n_tokens"] == sum(kept)
    assert test["truncated_words"] == sum(len(t) for t in gold_seqs) - sum(kept)
    assert test["token_accuracy"] == pytest.approx(np.mean(correct), abs=1e-12)
    assert test["ece"] == pytest.approx(_ece(conf, correct), abs=1e-9)
    assert test["nll"] == pytest.approx(_nll(gold_p), rel=1e-4)

    # 6. Post-hoc temperature scaling: T minimises dev NLL; test numbers are the rescaled ones.
    dev_sents = _read_conll(os.path.join(FIX, "wnut17_tiny", "emerging.dev.conll"))
    dev_probs = run.predictions["dev"]["probs"]
    dev_lp = np.log(np.clip(np.concatenate([np.asarray(q, np.float64) for q in dev_probs if len(q)]), 1e-30, None))
    dev_y = np.concatenate([[names.index(t) for _, t in s[:len(q)]] for s, q in zip(dev_sents, dev_probs)])
    t_ref, dev_nll = _fit_temperature(dev_lp, dev_y.astype(int))
    t = results["posthoc_temperature"]
    assert abs(t - 1.0) > 1e-3
    assert dev_nll(math.log(t)) <= dev_nll(math.log(t_ref)) + 1e-7          # T minimises dev NLL
    scaled = [_softmax(np.log(np.clip(e, 1e-300, None)) / t) for e in expected]
    s_conf = np.concatenate([s.max(-1) for s in scaled])
    s_correct = np.concatenate([s.argmax(-1) == [names.index(g) for g in tags[:len(s)]]
                                for s, tags in zip(scaled, gold_seqs)])
    s_gold = np.concatenate([s[np.arange(len(s)), [names.index(g) for g in tags[:len(s)]]]
                             for s, tags in zip(scaled, gold_seqs)])
    ts = results["test_posthoc_ts"]
    assert ts["nll"] == pytest.approx(_nll(s_gold), rel=1e-4)
    assert ts["ece"] == pytest.approx(_ece(s_conf, s_correct), abs=1e-4)
    assert ts["span_f1"] == pytest.approx(f1, abs=1e-12)       # T > 0 never changes the argmax


# ----------------------------------------------------------------------------- classification

def test_cls_results_json_equals_recomputation_from_predictions_jsonl(tmp_path, monkeypatch):
    # Records keep the top-3 classes by default; with all 19 kept, every metric is recomputable.
    monkeypatch.setattr(outputs, "TOP_K", 19)
    config = smoke_config()
    config.data.pad_to_multiple = config.data.max_len      # one padded shape: one compile per step function
    config.train.early_stopping_patience = 0
    passes = []                              # every evaluation pass, by its progress label
    import umema_jax.train.loop as loop_module
    import umema_jax.train.posthoc as posthoc_module

    def counted(real):
        return lambda *a, **k: passes.append(a[8]) or real(*a, **k)
    for module in (loop_module, posthoc_module):
        monkeypatch.setattr(module, "predict", counted(module.predict))
    exp, run, results, records, step0 = _run(config, tmp_path)
    # The final evaluation's dev and test passes also feed the calibrators; only Laplace's train pass is extra.
    assert config.output.posthoc and results["posthoc"] and passes[-3:] == ["dev", "test", "train features"]
    assert "dev features" not in passes and "test features" not in passes
    check_first_train_loss_is_ce_of_raw_over_t(config, exp, step0, tmp_path)
    names = exp.info["labels"]
    assert len(names) == 19 and len(records) == results["sizes"]["test"] == 30

    # Gold labels straight from the fixture file (line after each sentence).
    with open(os.path.join(FIX, "semeval_tiny", "TEST_FILE_FULL.TXT")) as f:
        lines = [line.strip() for line in f]
    gold = [lines[i + 1] for i, line in enumerate(lines) if "\t" in line and line.split("\t")[0].isdigit()]
    assert [r["gold"] for r in records] == gold

    probs = np.array([[r["top_probs"][n] for n in names] for r in records], np.float64)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    y = np.array([names.index(g) for g in gold])
    pred = probs.argmax(1)
    assert [r["pred"] for r in records] == [names[j] for j in pred]
    np.testing.assert_allclose([r["confidence"] for r in records], probs.max(1), rtol=1e-12)
    np.testing.assert_allclose([r["gold_prob"] for r in records], probs[np.arange(len(y)), y], rtol=1e-12)
    onehot = np.eye(len(names))[y]
    test = results["test"]
    assert test["n"] == 30
    assert test["accuracy"] == pytest.approx((pred == y).mean(), abs=1e-12) == results["test"]["primary"]
    assert test["ece"] == pytest.approx(_ece(probs.max(1), pred == y), abs=1e-9)
    assert test["nll"] == pytest.approx(_nll(probs[np.arange(30), y]), rel=1e-9)
    assert test["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean(), rel=1e-9)
    # The mean NLL of the eval step (the model's own loss) agrees with the probabilities written out.
    assert test["loss"] == pytest.approx(test["nll"], rel=1e-4)
    # Post-hoc TS on the test records, with the T written to results.json.
    t = results["posthoc_temperature"]
    scaled = _softmax(np.log(np.clip(probs, 1e-300, None)) / t)
    ts = results["test_posthoc_ts"]
    assert ts["nll"] == pytest.approx(_nll(scaled[np.arange(30), y]), rel=1e-6)
    assert ts["ece"] == pytest.approx(_ece(scaled.max(1), scaled.argmax(1) == y), abs=1e-6)
    assert ts["brier"] == pytest.approx(((scaled - onehot) ** 2).sum(1).mean(), rel=1e-6)

    # The written probabilities are softmax(raw / T) of the best checkpoint read back from disk.
    enc = exp.encoded["test"]
    width = max(len(x) for x in enc.input_ids)
    ids = np.full((len(enc.input_ids), width), enc.pad_id, np.int32)
    att = np.zeros_like(ids)
    for i, x in enumerate(enc.input_ids):
        ids[i, :len(x)], att[i, :len(x)] = x, 1
    raw, temp = _forward(exp.model, _variables(exp, _best_state(config, tmp_path, exp)),
                         {"input_ids": ids, "attention_mask": att}, train=False)
    assert np.abs(temp - 1.0).max() > 0.1
    np.testing.assert_allclose(probs, _softmax(raw / temp[:, None]), rtol=2e-4, atol=1e-6)
    assert np.abs(probs - _softmax(raw)).max() > 1e-2
    np.testing.assert_allclose([r["aux"]["temperature"] for r in records], temp, rtol=1e-5)
