"""PyTorch + Hugging Face PEFT reference for `python -m umema_jax.bench`.

NOT part of umema-jax (never imported by it); its own requirements are in
`benchmarks/requirements.txt`. It times the same thing as our bench, on the
same shapes, and prints the same JSON fields, so the two can be run
alternately and compared as ratios (`benchmarks/compare_peft.py`).

What is timed (after warm-up): one training step = forward + backward +
AdamW step + zero_grad on a fixed random batch, and one eval step (forward
under `torch.inference_mode`). Weights are random (a named config, nothing is
downloaded). Dropout is 0 everywhere by default (HF GPT-2 defaults to 0.1,
which moves torch off its fused SDPA attention path; compare at equal dropout).

    .venv-ref/bin/python benchmarks/peft_reference.py --backbone gpt2 --seq_len 128 --batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

# --- named configs (random weights), mirroring umema_jax/backbones/config.py -------------
CONFIGS = {
    "gpt2": dict(arch="gpt2", vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, max_position_embeddings=1024),
    "gpt2-medium": dict(arch="gpt2", vocab_size=50257, hidden_size=1024, num_layers=24,
                        num_heads=16, intermediate_size=4096, max_position_embeddings=1024),
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, num_layers=30,
                         num_heads=9, num_kv_heads=3, intermediate_size=1536,
                         max_position_embeddings=8192, rope_theta=100000.0, norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama3-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, num_layers=32,
                      num_heads=32, num_kv_heads=8, intermediate_size=14336,
                      max_position_embeddings=8192, rope_theta=500000.0, norm_eps=1e-5,
                      tie_word_embeddings=False),
    "tiny-gpt2": dict(arch="gpt2", vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=256, max_position_embeddings=512),
}
DEFAULT_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def hf_config(name: str, num_labels: int, dropout: float):
    from transformers import GPT2Config, LlamaConfig
    c = CONFIGS[name]
    if c["arch"] == "gpt2":
        return GPT2Config(vocab_size=c["vocab_size"], n_embd=c["hidden_size"],
                          n_layer=c["num_layers"], n_head=c["num_heads"],
                          n_inner=c["intermediate_size"], n_positions=c["max_position_embeddings"],
                          resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                          num_labels=num_labels, pad_token_id=50256 % c["vocab_size"])
    return LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                       num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"],
                       num_key_value_heads=c["num_kv_heads"],
                       intermediate_size=c["intermediate_size"],
                       max_position_embeddings=c["max_position_embeddings"],
                       rope_theta=c["rope_theta"], rms_norm_eps=c["norm_eps"],
                       tie_word_embeddings=c["tie_word_embeddings"], attention_dropout=dropout,
                       num_labels=num_labels, pad_token_id=0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stats(times):
    return dict(median=statistics.median(times), min=min(times), max=max(times))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="gpt2", choices=sorted(CONFIGS))
    p.add_argument("--task", default="cls", choices=["cls", "ner"])
    p.add_argument("--method", default="lora", choices=["lora", "full_ft"],
                   help="lora: PEFT LoRA; full_ft: plain full fine-tuning (no PEFT)")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--num_labels", type=int, default=2)
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--lora_alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="hidden/attention/LoRA dropout (HF GPT-2 default is 0.1)")
    p.add_argument("--attn_impl", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eval_steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import (AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    arch = CONFIGS[args.backbone]["arch"]
    cfg = hf_config(args.backbone, args.num_labels, args.dropout)
    cls = (AutoModelForSequenceClassification if args.task == "cls"
           else AutoModelForTokenClassification)
    dtype = getattr(torch, args.dtype)
    model = cls.from_config(cfg, attn_implementation=args.attn_impl, dtype=dtype)
    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model
        lcfg = LoraConfig(task_type=TaskType.SEQ_CLS if args.task == "cls" else TaskType.TOKEN_CLS,
                          r=args.lora_rank, lora_alpha=args.lora_alpha,
                          lora_dropout=args.dropout, target_modules=DEFAULT_TARGETS[arch])
        model = get_peft_model(model, lcfg)
    model.train()
    if args.compile:
        model = torch.compile(model)

    trainable = [q for q in model.parameters() if q.requires_grad]
    n_trainable = sum(q.numel() for q in trainable)
    n_total = sum(q.numel() for q in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)

    g = torch.Generator().manual_seed(args.seed)
    vocab = CONFIGS[args.backbone]["vocab_size"]
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=g)
    mask = torch.ones_like(ids)
    if args.task == "cls":
        labels = torch.randint(0, args.num_labels, (args.batch,), generator=g)
    else:
        labels = torch.randint(0, args.num_labels, (args.batch, args.seq_len), generator=g)

    def train_step():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    def eval_step():
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask).logits

    t0 = time.perf_counter()
    train_step()
    compile_s = time.perf_counter() - t0  # first step (no compilation unless --compile)
    for _ in range(max(args.warmup - 1, 0)):
        train_step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = train_step()
        loss.item()
        times.append(time.perf_counter() - t0)
    train_rss = peak_rss_mb()

    t0 = time.perf_counter()
    eval_step()
    eval_compile_s = time.perf_counter() - t0
    eval_step()
    etimes = []
    for _ in range(args.eval_steps):
        t0 = time.perf_counter()
        eval_step()
        etimes.append(time.perf_counter() - t0)

    st, se = stats(times), stats(etimes)
    tokens = args.batch * args.seq_len
    rec = dict(
        impl="torch-peft" if args.method == "lora" else "torch",
        method=args.method, backbone=args.backbone, task=args.task,
        seq_len=args.seq_len, batch=args.batch, dtype=args.dtype, devices=1,
        num_labels=args.num_labels, lora_rank=args.lora_rank, dropout=args.dropout,
        attn_impl=args.attn_impl, steps=args.steps,
        tokens_per_s=tokens / st["median"],
        step_s=st["median"], step_s_min=st["min"], step_s_max=st["max"],
        eval_tokens_per_s=tokens / se["median"],
        eval_step_s=se["median"], eval_step_s_min=se["min"], eval_step_s_max=se["max"],
        compile_s=compile_s, eval_compile_s=eval_compile_s,
        peak_rss_mb=train_rss, peak_rss_mb_after_eval=peak_rss_mb(),
        device_peak_mb=None,
        trainable_params=n_trainable, total_params=n_total,
        threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, python=platform.python_version()),
    )
    print(json.dumps(rec), flush=True)
    return rec


if __name__ == "__main__":
    main()
