#!/usr/bin/env bash
# Every number in benchmarks/README.md, in one go (CPU; ~40 min on 2 quiet cores).
# Results (JSON lines) go to $OUT (default benchmarks/results/); the last line of each file is its summary.
# Run on a quiet machine: ratios are alternated, but torch degrades far more than XLA when cores are shared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
# 1. ours vs PyTorch+PEFT, alternating fresh processes, GPT-2 small LoRA, 2 threads, seq 128
$PY benchmarks/compare_peft.py --seq_len 128 --batch 8 --alternations 3 --steps 10 --eval_steps 3 \
    --output "$OUT/peft_seq128.jsonl"
# 2. the same on one core, one thread each (fairer when the machine is shared)
$PY benchmarks/compare_peft.py --seq_len 128 --batch 8 --alternations 2 --steps 10 --eval_steps 2 --pin 1 \
    --output "$OUT/peft_seq128_pin1.jsonl"
# 3. full (LoRA+UM+EMA) vs plain LoRA, one process, alternating (GPT-2 small, SmolLM2-135M shapes)
$PY -m umema_jax.bench --compare --output "$OUT/compare_gpt2.jsonl"
$PY -m umema_jax.bench --compare --backbone=smollm2-135m --output "$OUT/compare_smollm2.jsonl"
# 4. seq 512
$PY benchmarks/compare_peft.py --seq_len 512 --batch 8 --alternations 2 --steps 10 --eval_steps 2 \
    --output "$OUT/peft_seq512.jsonl"
# 5. the step's matmuls alone, XLA:CPU vs torch/MKL (the ceiling for the ratio in 1.)
$PY benchmarks/gemm_ceiling.py --alternations 3 --steps 6 --output "$OUT/gemm_ceiling.jsonl"
