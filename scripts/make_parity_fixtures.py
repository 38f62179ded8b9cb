"""Builds the tiny reference fixtures in tests/fixtures/parity/ with HF transformers + PEFT (PyTorch).

Run by hand with the reference environment (never at test time):
    .venv-ref/bin/python scripts/make_parity_fixtures.py

For each of GPT-2 and LLaMA (GQA, rope_theta != 10000, llama3 rope scaling, untied head) it writes
  {arch}/config.json, model.safetensors, tokenizer files   -- a random-weight checkpoint
  {arch}/reference.npz   -- input_ids / attention_mask (right padded) and the logits HF computes for
                            each sequence alone (no padding), so both padding sides can be checked
  {arch}/peft/           -- a PEFT LoRA adapter with non-zero B, and peft_reference.npz with the
                            adapted model's logits (checks our PEFT reader, fan_in_fan_out included)
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Low-rank adapters fine-tune large language models with few parameters.",
    "Uncertainty estimates tell us when a model's prediction should not be trusted.",
    "A memory bank stores summaries of past batches for later retrieval.",
]
TEXTS = ["The capital of France is Paris.", "Low-rank adapters", "A memory bank stores summaries of batches."]


def make_tokenizer(vocab_size=320) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (keeps fixtures small; the real GPT-2 vocab is 1.5 MB)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot,
                                   pad_token=eot)


def reference(model, tok, folder, name="reference.npz"):
    enc = [tok(t)["input_ids"] for t in TEXTS]
    n = max(map(len, enc))
    ids = np.full((len(enc), n), tok.pad_token_id, np.int32)
    mask = np.zeros((len(enc), n), np.int32)
    logits = np.zeros((len(enc), n, model.config.vocab_size), np.float32)
    with torch.no_grad():
        for b, e in enumerate(enc):  # each sequence alone: no padding in the reference
            ids[b, :len(e)] = e
            mask[b, :len(e)] = 1
            logits[b, :len(e)] = model(torch.tensor([e])).logits[0].float().numpy()
    np.savez_compressed(os.path.join(folder, name), input_ids=ids, attention_mask=mask, logits=logits)
    return ids, mask, logits


def add_peft(model, tok, folder, targets, fan_in_fan_out):
    torch.manual_seed(1)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                          fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
    pm.eval()
    out = os.path.join(folder, "peft")
    pm.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT boilerplate model card
    reference(pm, tok, out, "peft_reference.npz")


def save(model, tok, folder):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    with open(os.path.join(folder, "config.json")) as f:
        print(folder, json.load(f))


def main():
    torch.manual_seed(0)
    tok = make_tokenizer()
    V = len(tok)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.2, bos_token_id=0, eos_token_id=0)).eval()
    folder = os.path.join(ROOT, "gpt2")
    save(gpt2, tok, folder)
    reference(gpt2, tok, folder)
    add_peft(gpt2, tok, folder, ["c_attn"], True)

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        tie_word_embeddings=False, initializer_range=0.1, bos_token_id=0, eos_token_id=0,
        pad_token_id=0)).eval()
    folder = os.path.join(ROOT, "llama")
    save(llama, tok, folder)
    reference(llama, tok, folder)
    add_peft(llama, tok, folder, ["q_proj", "v_proj"], False)


if __name__ == "__main__":
    main()
