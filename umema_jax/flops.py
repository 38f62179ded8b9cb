"""Model FLOPs of a train or eval step, and the peak FLOP/s of known devices (for the MFU).

Analytic counts, the MFU convention: `step_flops` documents what is counted. The benchmark
(`umema_jax.bench`) reports them next to its step times; the experiment runner's time estimate uses
the device peaks.
"""
from __future__ import annotations

# Dense peak TFLOP/s by device kind substring and compute dtype (fp32 on GPUs = TF32 tensor cores,
# JAX's default matmul precision there).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "H100": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
}


def linear_shapes(cfg) -> list[tuple[str, int, int]]:
    """(name, in, out) of every per-layer matmul of one block."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    if cfg.arch == "gpt2":
        return [("c_attn", d, 3 * d), ("attn/c_proj", d, d), ("c_fc", d, f), ("mlp/c_proj", f, d)]
    hd = cfg.head_dim
    return [("q_proj", d, cfg.num_heads * hd), ("k_proj", d, cfg.num_kv_heads * hd),
            ("v_proj", d, cfg.num_kv_heads * hd), ("o_proj", cfg.num_heads * hd, d),
            ("gate_proj", d, f), ("up_proj", d, f), ("down_proj", f, d)]


def step_flops(cfg, *, seq_len: int, batch: int, lora_rank: int, lora_regex: str, task: str,
               num_labels: int, full_finetune: bool = False) -> dict:
    """Analytic model FLOPs of one train step and one eval step (a multiply-add = 2 FLOPs).

    Counted: every per-layer matmul (forward), attention scores and values over the full
    n x n square (as the kernels compute it; no causal halving), LoRA branches, the task head.
    Backward = activation gradients through every matmul except the first layer's input
    projections (nothing below them needs a gradient), 2x the attention forward, plus weight
    gradients only for what is trained (LoRA + head; every matmul with `full_finetune`).
    Remat recomputation, norms, softmax and elementwise ops are not counted (model FLOPs,
    the MFU convention). No LM head (cls/ner heads read hidden states). UM/EMA are omitted
    (< 0.1% at these shapes).
    """
    import re
    tokens = batch * seq_len
    L, d = cfg.num_layers, cfg.hidden_size
    shapes = linear_shapes(cfg)
    mm = sum(2 * i * o for _, i, o in shapes)                              # per token per layer
    first_in = sum(2 * i * o for n, i, o in shapes if n in ("c_attn", "q_proj", "k_proj", "v_proj"))
    attn = 2 * 2 * seq_len * cfg.num_heads * cfg.head_dim                  # QK^T + PV per token per layer
    pat = re.compile(lora_regex)
    lora = sum(2 * lora_rank * (i + o) for n, i, o in shapes if pat.search(n)) if lora_rank else 0
    head_tokens = tokens if task == "ner" else batch
    head = 2 * d * num_labels * head_tokens
    fwd = tokens * L * (mm + attn + lora) + head
    bwd_act = tokens * (L * (mm + 2 * attn + lora) - first_in) + head
    bwd_w = tokens * L * (lora + (mm if full_finetune else 0)) + head
    return {"train": fwd + bwd_act + bwd_w, "forward": fwd}


def peak_flops(device, dtype: str, override_tflops: float) -> float | None:
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "")
    for key, table in PEAK_TFLOPS.items():
        if key in kind:
            return table[dtype] * 1e12
    return None
