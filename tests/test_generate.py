"""Greedy generation: equals a step-by-step argmax loop, never recompiles per token; the CLI runs."""
import os
import subprocess
import sys

import numpy as np

import umema_jax
from umema_jax.generate import _greedy, greedy_generate

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "parity")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_greedy_matches_naive_argmax_loop_and_compiles_once():
    pt = umema_jax.load_pretrained(os.path.join(FIX, "gpt2"))
    prompt = "The capital of France"
    ids = pt.tokenizer(prompt)["input_ids"]
    expected = list(ids)
    buf, mask = np.zeros((1, 16), np.int32), np.zeros((1, 16), np.int32)   # fixed shape: one compile
    for _ in range(5):
        buf[0, :len(expected)], mask[0, :len(expected)] = expected, 1
        expected.append(int(np.argmax(pt.logits(buf, mask)[0, len(expected) - 1])))
    text = greedy_generate(pt, prompt, max_new_tokens=5, stop_at_eos=False)
    assert text == pt.tokenizer.decode(expected[len(ids):])
    before = _greedy._cache_size()
    greedy_generate(pt, "Low-rank", max_new_tokens=5, stop_at_eos=False)   # other length, same bucket
    assert _greedy._cache_size() == before


def test_cli_prints_prompt_and_continuation():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "umema_jax.generate", f"--model={os.path.join(FIX, 'llama')}",
                          "--prompt=A memory bank", "--max_new_tokens=4"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("A memory bank") and len(out.stdout.strip()) > len("A memory bank")
