"""Dataset summary as JSON: examples per split, labels (+ counts), token-length percentiles.

    python -m umema_jax.data --dataset=semeval --data_dir=/path [--tokenizer=gpt2|smollm2-135m]
        [--max_len=N] [--domains=connl03,onbc] [--remove=headers,footers,quotes]

A missing or malformed file prints one line (`path:line: what is wrong`) and exits 2.
"""
from __future__ import annotations

import collections
import json
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "20news | semeval | wnut17 | ploner | conll")
flags.DEFINE_string("data_dir", None, "dataset folder or shared data root (default $UMEMA_DATA_DIR)")
flags.DEFINE_string("tokenizer", "gpt2", "tokenizer for the length statistics (gpt2 | smollm2-135m | "
                    "path); 'none' skips them")
flags.DEFINE_integer("max_len", None, "if set, also count the examples/words truncated at this length")
flags.DEFINE_string("domains", None, "PLONER: comma-separated domains (default all seven)")
flags.DEFINE_string("remove", None, "20news: comma-separated subset of headers,footers,quotes")
flags.DEFINE_string("source", "local", "local | hub")
EXIT_BAD_INPUT = 2   # bad data or option (launch.py's code for the same)


def _percentiles(lengths) -> dict:
    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size == 0:
        return {}
    out = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 90, 95, 99)}
    out.update(max=int(arr.max()), mean=round(float(arr.mean()), 1))
    return out


def summarize(splits, tokenizer=None, max_len: int | None = None) -> dict:
    """The JSON-able summary the CLI prints (also used by tests)."""
    from umema_jax.data.encode import encode_classification, encode_token_classification
    from umema_jax.metrics.spans import decode_spans

    out = {"dataset": splits.name, "task_type": splits.task_type, "num_labels": len(splits.labels),
           "labels": list(splits.labels),
           "examples": {s: len(splits.split(s)) for s in ("train", "dev", "test")}}
    notes = dict(splits.notes)
    if "source_files" in notes:
        out["source_files"] = notes.pop("source_files")
    if notes:
        out["notes"] = notes
    counts = {}
    for s in ("train", "dev", "test"):
        exs = splits.split(s)
        if splits.task_type == "cls":
            c = collections.Counter(ex.label for ex in exs)
            counts[s] = {lab: c.get(lab, 0) for lab in splits.labels}
        else:
            ents = collections.Counter(t for sent in decode_spans([ex.tags for ex in exs]) for t, _, _ in sent)
            counts[s] = {"words": sum(len(ex.tokens) for ex in exs), "entities": sum(ents.values()),
                         "entities_per_type": dict(sorted(ents.items())),
                         "tags": dict(sorted(collections.Counter(t for ex in exs for t in ex.tags).items()))}
    if splits.task_type == "cls" and "source_files" in out:   # dev carved from train: show the sum
        counts["train+dev"] = {lab: counts["train"][lab] + counts["dev"][lab] for lab in splits.labels}
    out["label_counts"] = counts
    if tokenizer is not None:
        big = 10 ** 9
        enc_fn = encode_classification if splits.task_type == "cls" else encode_token_classification
        lengths, trunc = {}, {}
        for s in ("train", "dev", "test"):
            enc = enc_fn(splits.split(s), tokenizer, splits.labels, big)
            lengths[s] = _percentiles(enc.lengths)
            if max_len:
                cut = enc.lengths > max_len
                trunc[s] = {"examples": int(cut.sum())}
                if splits.task_type == "ner":
                    enc_cut = enc_fn(splits.split(s), tokenizer, splits.labels, max_len)
                    trunc[s]["words"] = enc_cut.num_truncated_words
        out["token_lengths"] = lengths
        if max_len:
            out["truncated_at_max_len"] = {"max_len": max_len, **trunc}
    return out


def main(argv):
    del argv
    from umema_jax.data.registry import load_dataset_splits
    if not FLAGS.dataset:
        raise app.UsageError("--dataset is required")
    opts = {}
    if FLAGS.domains:
        opts["domains"] = FLAGS.domains
    if FLAGS.remove:
        opts["remove"] = FLAGS.remove
    if FLAGS.source != "local":
        opts["source"] = FLAGS.source
    try:
        splits = load_dataset_splits(FLAGS.dataset, FLAGS.data_dir, **opts)
        tokenizer = None
        if FLAGS.tokenizer and FLAGS.tokenizer.lower() != "none":
            from umema_jax.tokenization import load_tokenizer
            tokenizer = load_tokenizer(FLAGS.tokenizer)
    except (OSError, ValueError, TypeError) as err:   # bad data/option: one line, as launch.py
        print(f"python -m umema_jax.data: error: {err}".splitlines()[0], file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    summary = summarize(splits, tokenizer, FLAGS.max_len)
    summary["tokenizer"] = FLAGS.tokenizer
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    app.run(main)
