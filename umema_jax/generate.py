"""Greedy generation CLI: `python -m umema_jax.generate --model=smollm2-135m --prompt="..." --max_new_tokens=N`.

One jitted `lax.fori_loop` over a fixed-size token buffer (right padding, no KV
cache): every step re-runs the causal forward on the buffer and reads the
hidden state at the current position, so nothing recompiles per token.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "tied"))
def _greedy(module, params, buf, length, max_new_tokens, tied, eos_id):
    """buf `[1,T]` holds the prompt in `[:length]`; fills `max_new_tokens` greedy tokens after it."""
    T = buf.shape[1]
    positions = jnp.arange(T)[None]

    def body(_, state):
        buf, cur, done = state
        mask = (positions < cur).astype(jnp.int32)
        out = module.apply({"params": params}, buf, mask)
        h = jax.lax.dynamic_index_in_dim(out.last_hidden_state[0], cur - 1, keepdims=False)
        if tied:
            table = params["wte"]["embedding"] if "wte" in params else params["embed_tokens"]["embedding"]
            logits = table @ h
        else:
            logits = h @ params["lm_head"]["kernel"]
        nxt = jnp.argmax(logits).astype(buf.dtype)
        nxt = jnp.where(done, eos_id, nxt)
        buf = jax.lax.dynamic_update_slice(buf, nxt[None, None], (0, cur))
        return buf, cur + 1, done | (nxt == eos_id)

    buf, cur, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buf, length, jnp.array(False)))
    return buf


def greedy_generate(pretrained, prompt: str, max_new_tokens: int = 20, stop_at_eos: bool = True) -> str:
    """Greedy continuation of `prompt` (the continuation only, decoded)."""
    tok = pretrained.tokenizer
    ids = tok(prompt)["input_ids"]
    total = len(ids) + max_new_tokens
    T = max(16, 1 << (total - 1).bit_length())          # buckets: few compiles across prompts
    buf = np.full((1, T), tok.pad_token_id or 0, np.int32)
    buf[0, :len(ids)] = ids
    cfg = pretrained.config
    eos = cfg.eos_token_id if (stop_at_eos and cfg.eos_token_id is not None) else -1
    out = _greedy(pretrained.module, pretrained.params, jnp.asarray(buf), jnp.int32(len(ids)),
                  max_new_tokens, cfg.tie_word_embeddings, jnp.int32(eos))
    new = [int(t) for t in np.asarray(out)[0, len(ids):total]]
    if eos >= 0 and eos in new:
        new = new[:new.index(eos)]
    return tok.decode(new)


def main(argv):
    del argv
    from absl import flags
    from umema_jax.api import load_pretrained
    F = flags.FLAGS
    pretrained = load_pretrained(F.model)
    print(F.prompt + greedy_generate(pretrained, F.prompt, F.max_new_tokens))


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("model", "smollm2-135m", "built-in name, HF dir / hub id, or .gguf file")
    flags.DEFINE_string("prompt", "The capital of France is", "text to continue")
    flags.DEFINE_integer("max_new_tokens", 20, "number of greedy tokens to generate")
    app.run(main)
