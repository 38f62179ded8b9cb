"""Functional checks of `python -m umema_jax.bench` (tiny config, 2 steps; nothing is timed here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from umema_jax.backbones.config import get_backbone_config
from umema_jax.flops import step_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("method", "backbone", "task", "seq_len", "batch", "dtype", "devices", "tokens_per_s", "step_s",
          "step_s_min", "step_s_max", "compile_s", "peak_rss_mb", "device_peak_mb", "trainable_params",
          "total_params", "flops_per_step", "eval_step_s", "eval_tokens_per_s")


def run_bench(*args: str) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "umema_jax.bench", "--seq_len=16", "--batch=2", "--warmup=1",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_bench_cli_emits_one_json_line_per_method(tmp_path):
    out = tmp_path / "bench.jsonl"
    recs = run_bench("--backbone=gpt2-tiny", "--method=lora,full", "--steps=2", "--eval_steps=2",
                     f"--output={out}")
    assert [r["method"] for r in recs] == ["lora", "full"]
    for r in recs:
        for field in FIELDS:
            assert field in r, field
        assert r["steps"] == 2 and r["seq_len"] == 16 and r["batch"] == 2
        assert r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
        assert r["tokens_per_s"] == pytest.approx(32 / r["step_s"])
        assert 0 < r["trainable_params"] < r["total_params"]
        assert r["peak_rss_mb"] > 0 and r["compile_s"] > 0
    assert recs[1]["trainable_params"] > recs[0]["trainable_params"]   # UM + EMA parameters
    assert len(out.read_text().splitlines()) == 2


def test_bench_compare_reports_ratios_to_lora_and_runs_baselines_through_their_hooks():
    # One subprocess for every --compare check (each start-up + compile costs ~15 s of the suite).
    # `method/cpu_matmul` entries pick the matmul path per variant (here XLA for the baseline, auto for full).
    recs = run_bench("--backbone=llama-tiny", "--task=ner", "--compare",
                     "--methods_to_compare=lora/xla,full,milora,alora,splitlora", "--rounds=1", "--steps_per_round=1",
                     "--eval_steps=0")
    summary, by = recs[-1], {r["method"]: r for r in recs[:-1]}
    assert summary["compare"] and summary["baseline"] == "lora/xla"
    assert list(summary["relative_step_time"]) == ["lora/xla", "full", "milora", "alora", "splitlora"]
    assert summary["relative_step_time"]["lora/xla"] == 1.0
    assert all(v > 0 for v in summary["relative_step_time"].values())
    assert [r["method"] for r in recs[:-1]] == ["lora", "full", "milora", "alora", "splitlora"]
    # SplitLoRA's 3 clients each send ceil(2 / 3) = 1 row, as data.federated.ClientBatches trains it
    assert by["splitlora"]["batch"] == 2 and by["splitlora"]["batch_rows"] == 3 and by["lora"]["batch_rows"] == 2
    assert by["splitlora"]["tokens_per_s"] == pytest.approx(3 * 16 / by["splitlora"]["step_s"])
    assert [r["variant"] for r in recs[:-1]][:2] == ["lora/xla", "full"] and recs[0]["cpu_matmul"] == "xla"
    assert recs[1]["cpu_matmul"] in ("xla", "onednn")
    # ALoRA reports LoRA at r_init (its active budget); MiLoRA an expert on each linear module + routers
    assert by["alora"]["trainable_params"] == by["lora"]["trainable_params"]
    assert by["milora"]["trainable_params"] > 3 * by["lora"]["trainable_params"]
    assert by["milora"]["flops_per_step"] > by["lora"]["flops_per_step"]


def test_step_flops_by_hand():
    cfg = get_backbone_config("gpt2-tiny")   # d 64, 2 layers, 4 heads, ffn 256
    b, n, r = 8, 128, 8
    got = step_flops(cfg, seq_len=n, batch=b, lora_rank=r, lora_regex="c_attn", task="cls", num_labels=2)
    t, d, f = b * n, 64, 256
    mm = 2 * (d * 3 * d + d * d + d * f + f * d)
    attn = 4 * n * d
    lora = 2 * r * (d + 3 * d)
    head = 2 * d * 2 * b
    fwd = t * 2 * (mm + attn + lora) + head
    assert got["forward"] == fwd
    assert got["train"] == fwd + (t * (2 * (mm + 2 * attn + lora) - 2 * d * 3 * d) + head) + (t * 2 * lora + head)
    full = step_flops(cfg, seq_len=n, batch=b, lora_rank=r, lora_regex="c_attn", task="cls", num_labels=2,
                      full_finetune=True)
    assert full["train"] - got["train"] == t * 2 * mm


def test_step_flops_llama_gqa_counts_kv_width():
    cfg = get_backbone_config("smollm2-135m")
    a = step_flops(cfg, seq_len=64, batch=1, lora_rank=0, lora_regex="q_proj", task="cls", num_labels=2)
    b = step_flops(cfg.replace(num_kv_heads=cfg.num_heads), seq_len=64, batch=1, lora_rank=0,
                   lora_regex="q_proj", task="cls", num_labels=2)
    assert a["forward"] < b["forward"]
