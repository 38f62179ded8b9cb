"""One way to get a tokenizer for any backbone source.

* HF checkpoint directory or hub id -> its `tokenizer.json` / vocab files.
* GGUF file (or a built-in name resolving to one) -> rebuilt from the file's
  own metadata with transformers' GGUF tokenizer mapping (needs no torch).
* `gpt2` family names -> the GPT-2 BPE files: `$UMEMA_GPT2_TOKENIZER_DIR` if set, else the copy
  bundled with the package (`umema_jax/assets/gpt2`), so no download is ever needed.

Every returned tokenizer has a pad token: models without one (GPT-2,
SmolLM2's GGUF) pad with their end-of-text token; padded positions are
masked everywhere, so the choice never changes results.
"""
from __future__ import annotations

import functools
import os

from transformers import PreTrainedTokenizerFast

from umema_jax.weights.builtin import resolve_builtin

_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Random-weight test backbones (backbones/config.py) use these real tokenizers.
_TINY_TOKENIZERS = {"gpt2-tiny": "gpt2", "llama-tiny": "smollm2-135m"}
_BUNDLED_GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt2")


def local_gpt2_tokenizer_dir() -> str | None:
    """The folder holding GPT-2's vocab.json + merges.txt ($UMEMA_GPT2_TOKENIZER_DIR, else the bundled copy)."""
    candidates = [os.environ.get("UMEMA_GPT2_TOKENIZER_DIR", ""), _BUNDLED_GPT2]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "vocab.json")) \
                and os.path.isfile(os.path.join(folder, "merges.txt")):
            return os.path.abspath(folder)
    return None


def _ensure_pad(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ValueError("tokenizer has neither a pad, eos nor unk token to pad with")
        tok.pad_token = fallback
    return tok


def _gguf_tokenizer_metadata(path: str) -> tuple[str, dict, dict]:
    """What transformers' `get_gguf_tokenizer` returns, read with the `gguf` package.

    transformers' own GGUF metadata reader imports torch, which this project never loads.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (GGUF_TOKENIZER_MAPPING,
                                                                        _SPECIAL_TOKENS)
    from umema_jax.weights.gguf_io import gguf_reader
    reader = gguf_reader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith(("tokenizer.", "general.architecture")):
            metadata[key] = field.contents()
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return metadata["general.architecture"], tokenizer, tokenizer_config


def tokenizer_from_gguf(path: str) -> PreTrainedTokenizerFast:
    """Rebuilds the HF fast tokenizer described by a GGUF file's metadata."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    architecture, tokenizer_dict, special = _gguf_tokenizer_metadata(path)
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    kwargs = {k: v for k, v in {**special, **extra}.items()
              if k in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template")}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def gpt2_tokenizer_from_files(folder: str) -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt` (what OpenAI shipped)."""
    from tokenizers import ByteLevelBPETokenizer
    bpe = ByteLevelBPETokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=eot, eos_token=eot,
                                   unk_token=eot)


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """Tokenizer for a built-in name, GGUF file, HF directory or hub id (pad token always set)."""
    name_or_path = _TINY_TOKENIZERS.get(name_or_path, name_or_path)
    builtin = resolve_builtin(name_or_path)
    if builtin is not None:
        name_or_path = builtin
    if name_or_path.endswith(".gguf"):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"{name_or_path}: GGUF file not found")
        return _ensure_pad(tokenizer_from_gguf(name_or_path))
    if name_or_path in _GPT2_NAMES:
        local = local_gpt2_tokenizer_dir()
        if local is not None:
            return _ensure_pad(gpt2_tokenizer_from_files(local))
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(f"cannot load a tokenizer for {name_or_path!r} (no local files, and the hub "
                      f"is unreachable or has no such repo): {err}") from None
    return _ensure_pad(tok)
