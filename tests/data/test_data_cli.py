"""The dataset summary CLI on the tiny fixtures."""
import json
import os
import subprocess
import sys

from umema_jax.data import load_dataset_splits
from umema_jax.data.__main__ import summarize
from umema_jax.tokenization import load_tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "data")


def test_summary_counts_and_lengths():
    s = load_dataset_splits("wnut17", os.path.join(FIX, "wnut17_tiny"))
    out = summarize(s, load_tokenizer("gpt2"), max_len=8)
    assert out["examples"] == {"train": 40, "dev": 15, "test": 15}
    assert out["num_labels"] == 13
    train_ents = out["label_counts"]["train"]["entities_per_type"]
    assert sum(train_ents.values()) == out["label_counts"]["train"]["entities"] > 0
    assert out["label_counts"]["train"]["words"] == sum(len(e.tokens) for e in s.train)
    lens = out["token_lengths"]["train"]
    assert lens["p50"] <= lens["p90"] <= lens["p95"] <= lens["p99"] <= lens["max"]
    assert out["truncated_at_max_len"]["train"]["words"] > 0


def test_cli_prints_json():
    proc = subprocess.run([sys.executable, "-m", "umema_jax.data", "--dataset=semeval",
                           f"--data_dir={os.path.join(FIX, 'semeval_tiny')}", "--tokenizer=none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["examples"] == {"train": 54, "dev": 6, "test": 30}
    assert out["source_files"] == {"TRAIN_FILE.TXT": 60, "TEST_FILE_FULL.TXT": 30}
    assert sum(out["label_counts"]["test"].values()) == 30
