"""Checkpoint-name -> parameter-path maps, as data (one table per format and architecture).

Each row: (source name pattern with `{i}` for the layer index, our `/`-joined
param path, transform tag). Per-layer rows are stacked on a leading layer axis.
Transform tags: "" (as is), "T" (transpose [out,in] -> [in,out]),
"unpermute_q,T" / "unpermute_k,T" (undo llama.cpp's per-head q/k row permutation,
then transpose). Names use the CausalLM prefixes (`transformer.`, `model.`);
loaders add the prefix to checkpoints saved from the bare base model.
"""
from __future__ import annotations

GPT2_HF = [
    ("transformer.wte.weight", "wte/embedding", ""),
    ("transformer.wpe.weight", "wpe/embedding", ""),
    ("transformer.h.{i}.ln_1.weight", "h/ln_1/scale", ""),
    ("transformer.h.{i}.ln_1.bias", "h/ln_1/bias", ""),
    # HF GPT-2 uses Conv1D: weights are already [in, out].
    ("transformer.h.{i}.attn.c_attn.weight", "h/attn/c_attn/kernel", ""),
    ("transformer.h.{i}.attn.c_attn.bias", "h/attn/c_attn/bias", ""),
    ("transformer.h.{i}.attn.c_proj.weight", "h/attn/c_proj/kernel", ""),
    ("transformer.h.{i}.attn.c_proj.bias", "h/attn/c_proj/bias", ""),
    ("transformer.h.{i}.ln_2.weight", "h/ln_2/scale", ""),
    ("transformer.h.{i}.ln_2.bias", "h/ln_2/bias", ""),
    ("transformer.h.{i}.mlp.c_fc.weight", "h/mlp/c_fc/kernel", ""),
    ("transformer.h.{i}.mlp.c_fc.bias", "h/mlp/c_fc/bias", ""),
    ("transformer.h.{i}.mlp.c_proj.weight", "h/mlp/c_proj/kernel", ""),
    ("transformer.h.{i}.mlp.c_proj.bias", "h/mlp/c_proj/bias", ""),
    ("transformer.ln_f.weight", "ln_f/scale", ""),
    ("transformer.ln_f.bias", "ln_f/bias", ""),
]
# Tied head and old attention-mask buffers: present in some checkpoints, never needed.
GPT2_HF_IGNORED = [r"^lm_head\.weight$", r"\.attn\.(bias|masked_bias)$"]

# HF Flax `flax_model.msgpack` (FlaxConv1D stores kernels [out, in]).
GPT2_FLAX = [
    ("transformer.wte.embedding", "wte/embedding", ""),
    ("transformer.wpe.embedding", "wpe/embedding", ""),
    ("transformer.h.{i}.ln_1.scale", "h/ln_1/scale", ""),
    ("transformer.h.{i}.ln_1.bias", "h/ln_1/bias", ""),
    ("transformer.h.{i}.attn.c_attn.kernel", "h/attn/c_attn/kernel", "T"),
    ("transformer.h.{i}.attn.c_attn.bias", "h/attn/c_attn/bias", ""),
    ("transformer.h.{i}.attn.c_proj.kernel", "h/attn/c_proj/kernel", "T"),
    ("transformer.h.{i}.attn.c_proj.bias", "h/attn/c_proj/bias", ""),
    ("transformer.h.{i}.ln_2.scale", "h/ln_2/scale", ""),
    ("transformer.h.{i}.ln_2.bias", "h/ln_2/bias", ""),
    ("transformer.h.{i}.mlp.c_fc.kernel", "h/mlp/c_fc/kernel", "T"),
    ("transformer.h.{i}.mlp.c_fc.bias", "h/mlp/c_fc/bias", ""),
    ("transformer.h.{i}.mlp.c_proj.kernel", "h/mlp/c_proj/kernel", "T"),
    ("transformer.h.{i}.mlp.c_proj.bias", "h/mlp/c_proj/bias", ""),
    ("transformer.ln_f.scale", "ln_f/scale", ""),
    ("transformer.ln_f.bias", "ln_f/bias", ""),
]

LLAMA_HF = [
    ("model.embed_tokens.weight", "embed_tokens/embedding", ""),
    ("model.layers.{i}.input_layernorm.weight", "layers/input_layernorm/weight", ""),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers/self_attn/q_proj/kernel", "T"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers/self_attn/k_proj/kernel", "T"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers/self_attn/v_proj/kernel", "T"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers/self_attn/o_proj/kernel", "T"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers/post_attention_layernorm/weight", ""),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers/mlp/gate_proj/kernel", "T"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers/mlp/up_proj/kernel", "T"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers/mlp/down_proj/kernel", "T"),
    ("model.norm.weight", "norm/weight", ""),
    ("lm_head.weight", "lm_head/kernel", "T"),       # untied checkpoints only
]
LLAMA_HF_IGNORED = [r"rotary_emb\.inv_freq$"]

# llama.cpp GGUF names (arrays come out of the file as [out, in], like HF).
LLAMA_GGUF = [
    ("token_embd.weight", "embed_tokens/embedding", ""),
    ("blk.{i}.attn_norm.weight", "layers/input_layernorm/weight", ""),
    ("blk.{i}.attn_q.weight", "layers/self_attn/q_proj/kernel", "unpermute_q,T"),
    ("blk.{i}.attn_k.weight", "layers/self_attn/k_proj/kernel", "unpermute_k,T"),
    ("blk.{i}.attn_v.weight", "layers/self_attn/v_proj/kernel", "T"),
    ("blk.{i}.attn_output.weight", "layers/self_attn/o_proj/kernel", "T"),
    ("blk.{i}.ffn_norm.weight", "layers/post_attention_layernorm/weight", ""),
    ("blk.{i}.ffn_gate.weight", "layers/mlp/gate_proj/kernel", "T"),
    ("blk.{i}.ffn_up.weight", "layers/mlp/up_proj/kernel", "T"),
    ("blk.{i}.ffn_down.weight", "layers/mlp/down_proj/kernel", "T"),
    ("output_norm.weight", "norm/weight", ""),
    ("output.weight", "lm_head/kernel", "T"),         # untied files only
]
LLAMA_GGUF_IGNORED = [r"^rope_freqs\.weight$"]       # read into the config's rope_scaling instead

HF_TABLES = {"gpt2": (GPT2_HF, GPT2_HF_IGNORED, "transformer."), "llama": (LLAMA_HF, LLAMA_HF_IGNORED, "model.")}


def hf_module_name(arch: str, param_path: str, layer: int | None) -> str:
    """HF module name (e.g. `transformer.h.3.attn.c_attn`) of one of our kernel paths, via the HF table."""
    table = HF_TABLES[arch][0]
    for pattern, path, _ in table:
        if path == param_path:
            name = pattern.rsplit(".", 1)[0]
            return name.format(i=layer) if "{i}" in name else name
    raise KeyError(f"{arch}: parameter path {param_path!r} has no HF name in the name table")
