"""`BackboneConfig`: the one description of a backbone's shape, shared by the
modules, the weight loaders and the LoRA/PEFT converters."""
from __future__ import annotations

import dataclasses
from typing import Any

_ARCHS = ("gpt2", "llama")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Shape of a decoder-only LM. `num_kv_heads < num_heads` means grouped-query attention."""
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: Any = None          # dict | None (HF `rope_scaling`, or {"rope_type": "freq_factors", ...})
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.arch not in _ARCHS:
            raise ValueError(f"BackboneConfig.arch must be one of {_ARCHS}, got {self.arch!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if isinstance(self.rope_scaling, dict):  # keep the dataclass hashable (jit static args)
            object.__setattr__(self, "rope_scaling", _FrozenDict(self.rope_scaling))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **kw) -> "BackboneConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(self.rope_scaling)
        return d

    @classmethod
    def from_hf_config(cls, hf: dict) -> "BackboneConfig":
        """Reads an HF `config.json` dict (model_type gpt2 or llama)."""
        model_type = hf.get("model_type")
        if model_type == "gpt2":
            d = hf["n_embd"]
            act = hf.get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise ValueError(f"config.json: GPT-2 activation_function {act!r} is not supported (gelu_new only)")
            return cls(arch="gpt2", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"],
                       num_heads=hf["n_head"], num_kv_heads=hf["n_head"],
                       intermediate_size=hf.get("n_inner") or 4 * d,
                       max_position_embeddings=hf["n_positions"],
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=True,
                       bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")))
        if model_type in ("llama", "mistral"):
            act = hf.get("hidden_act", "silu")
            if act != "silu":
                raise ValueError(f"config.json: LLaMA hidden_act {act!r} is not supported (silu only)")
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise ValueError("config.json: LLaMA attention_bias/mlp_bias=True is not supported")
            heads = hf["num_attention_heads"]
            hd = hf.get("head_dim")
            if hd is not None and hd * heads != hf["hidden_size"]:
                raise ValueError(f"config.json: head_dim {hd} * heads {heads} != hidden_size (not supported)")
            scaling = hf.get("rope_scaling")
            theta = hf.get("rope_theta")
            rp = hf.get("rope_parameters")  # transformers >= 5 folds theta + scaling into this
            if isinstance(rp, dict):
                theta = rp.get("rope_theta", theta)
                if rp.get("rope_type", "default") != "default":
                    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
            if isinstance(scaling, dict):
                kind = scaling.get("rope_type", scaling.get("type", "default"))
                if kind == "default":
                    scaling = None
                elif kind != "llama3":
                    raise ValueError(f"config.json: rope_scaling type {kind!r} is not supported (llama3 only)")
            return cls(arch="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                       num_layers=hf["num_hidden_layers"], num_heads=heads,
                       num_kv_heads=hf.get("num_key_value_heads") or heads,
                       intermediate_size=hf["intermediate_size"],
                       max_position_embeddings=hf.get("max_position_embeddings", 2048),
                       norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta or 10000.0),
                       rope_scaling=scaling, tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                       bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")))
        raise ValueError(f"config.json: model_type {model_type!r} is not supported (gpt2, llama)")


class _FrozenDict(dict):
    """A hashable read-only dict, so configs can be static jit arguments."""
    def __hash__(self):
        return hash(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.items())))

    def _ro(self, *a, **k):
        raise TypeError("rope_scaling is read-only")
    __setitem__ = __delitem__ = update = pop = clear = setdefault = _ro


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _gpt2(d, layers, heads, vocab=50257):
    return BackboneConfig(arch="gpt2", vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads,
                          num_kv_heads=heads, intermediate_size=4 * d, max_position_embeddings=1024,
                          norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256)


_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}

NAMED_CONFIGS = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    # Random-weight configs for tests and smoke runs; vocabularies match the real
    # tokenizers they are used with (GPT-2's BPE, SmolLM2's BPE).
    "gpt2-tiny": _gpt2(64, 2, 4),
    "llama-tiny": BackboneConfig(arch="llama", vocab_size=49152, hidden_size=64, num_layers=2, num_heads=4,
                                 num_kv_heads=2, intermediate_size=128, max_position_embeddings=2048,
                                 norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                                 bos_token_id=1, eos_token_id=2),
    # LLaMA-3-8B (3.1 checkpoints carry the llama3 rope scaling; from_hf_config reads it from config.json).
    "llama3-8b": BackboneConfig(arch="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                                num_kv_heads=8, intermediate_size=14336, max_position_embeddings=8192,
                                norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None,
                                tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001),
    "llama3.1-8b": BackboneConfig(arch="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                                  num_kv_heads=8, intermediate_size=14336, max_position_embeddings=131072,
                                  norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
                                  tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001),
    "smollm2-135m": BackboneConfig(arch="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                                   num_kv_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                                   norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2),
}

# Which real tokenizer a tiny (random-weight) config is meant to be used with.
TOKENIZER_FOR = {"gpt2-tiny": "gpt2", "llama-tiny": "smollm2-135m"}


def get_backbone_config(name: str) -> BackboneConfig:
    """Named config (`gpt2`, `gpt2-medium`, ..., `llama3-8b`, `smollm2-135m`, `gpt2-tiny`, `llama-tiny`)."""
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown backbone name {name!r}; known: {sorted(NAMED_CONFIGS)}") from None
