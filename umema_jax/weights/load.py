"""`load_backbone_weights(name_or_path) -> (BackboneConfig, params)` for HF dirs, hub ids, GGUF files and
built-in names. Names are mapped through the tables in `names.py`; every missing, unexpected or
mis-shaped tensor is collected and reported in one error."""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Callable

import numpy as np

from umema_jax.backbones.config import BackboneConfig
from umema_jax.weights import names as N
from umema_jax.weights.builtin import resolve_builtin

_HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "flax_model.msgpack",
                 "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json", "generation_config.json"]


class WeightLoadError(ValueError):
    """A checkpoint does not fit the backbone (lists every offending tensor)."""


def load_backbone_weights(name_or_path: str) -> tuple[BackboneConfig, dict]:
    """(config, nested dict of np.float32 params) from a built-in name, `.gguf`, HF directory or hub id."""
    builtin = resolve_builtin(name_or_path)
    if builtin is not None:
        name_or_path = builtin
    if name_or_path.endswith(".gguf"):
        return load_gguf(name_or_path)
    return load_hf_dir(resolve_hf_dir(name_or_path))


def resolve_hf_dir(name_or_path: str) -> str:
    """A local checkpoint directory, or the hub snapshot of `name_or_path` (cache first, then download)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/")):
        raise FileNotFoundError(f"{name_or_path}: not a checkpoint directory or .gguf file")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name_or_path, allow_patterns=_HUB_PATTERNS, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(name_or_path, allow_patterns=_HUB_PATTERNS)
    except Exception as err:  # offline, unknown repo, gated, ...
        raise OSError(f"{name_or_path}: not a local directory and the hub download failed "
                      f"({type(err).__name__}; offline? set HF_HOME to a cache that has it)") from None


def hub_id_problem(repo_id: str, timeout: float = 10.0) -> str | None:
    """Why `repo_id` cannot be a hub checkpoint, without downloading: None when its snapshot is in
    the local cache or the hub knows it; else one line. Offline (`HF_HUB_OFFLINE`) the hub is not
    asked; online, one metadata request (no retries), not the minute of retries a download makes."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    try:
        snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True)
        return None
    except HFValidationError:
        return "not a valid hub id (owner/name)"
    except Exception:  # noqa: BLE001 - not cached: ask the hub below
        pass
    if constants.HF_HUB_OFFLINE:
        return "not in the local hub cache, and HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except RepositoryNotFoundError:
        return "no such model on the hub (or it is private: log in with `hf auth login`)"
    except Exception as err:  # noqa: BLE001 - DNS, connection, timeout, ...
        return f"not in the local hub cache, and the hub is unreachable ({type(err).__name__})"
    return None


def load_hf_dir(folder: str) -> tuple[BackboneConfig, dict]:
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: missing (an HF checkpoint needs config.json)")
    with open(cfg_path) as f:
        cfg = BackboneConfig.from_hf_config(json.load(f))
    table, ignored, prefix = N.HF_TABLES[cfg.arch]
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    flax_file = os.path.join(folder, "flax_model.msgpack")
    if os.path.isfile(single) or os.path.isfile(index):
        getters = _safetensors_getters(folder, single, index)
        source = folder
    elif os.path.isfile(flax_file) and cfg.arch == "gpt2":
        getters = _msgpack_getters(flax_file)
        table, source = N.GPT2_FLAX, flax_file
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json "
                                f"or (GPT-2) flax_model.msgpack")
    getters = {(k if k.startswith(prefix) or k == "lm_head.weight" else prefix + k): g for k, g in getters.items()}
    if cfg.tie_word_embeddings:
        ignored = ignored + [r"^lm_head\.weight$"]
    return cfg, map_tensors(getters, table, ignored, cfg, source)


def _safetensors_getters(folder, single, index) -> dict[str, Callable]:
    from safetensors import safe_open
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [os.path.basename(single)]
    getters = {}
    for fname in files:
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: shard listed in model.safetensors.index.json is missing")
        with safe_open(path, framework="numpy") as h:
            keys = list(h.keys())
        for k in keys:
            getters[k] = (lambda p=path, k=k: _st_get(p, k))
    return getters


def _st_get(path, key):
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as h:
            return h.get_tensor(key)
    except TypeError:  # bf16 has no numpy dtype: read the raw bits
        return _st_get_bf16(path, key)


def _st_get_bf16(path, key):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        info = header[key]
        if info["dtype"] != "BF16":
            raise WeightLoadError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(end - start), np.uint16)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _msgpack_getters(path) -> dict[str, Callable]:
    from flax.serialization import msgpack_restore
    with open(path, "rb") as f:
        tree = msgpack_restore(f.read())
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + (str(k),))
            else:
                flat[".".join(prefix + (str(k),))] = v
    walk(tree, ())
    return {k: (lambda v=v: np.asarray(v)) for k, v in flat.items()}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `w.reshape(n_head, 2, d//n_head//2, *rest).swapaxes(1, 2).reshape(w.shape)`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _transform(w: np.ndarray, tag: str, cfg: BackboneConfig) -> np.ndarray:
    for t in filter(None, tag.split(",")):
        if t == "T":
            w = w.T
        elif t == "unpermute_q":
            w = _unpermute(w, cfg.num_heads)
        elif t == "unpermute_k":
            w = _unpermute(w, cfg.num_kv_heads)
        else:
            raise ValueError(f"unknown transform tag {t!r}")
    return np.ascontiguousarray(w, dtype=np.float32)


def expected_shapes(cfg: BackboneConfig) -> dict[str, tuple]:
    """`/`-joined param path -> shape, from the module itself (abstract init, no compute)."""
    import jax
    import jax.numpy as jnp
    from umema_jax.backbones import build_backbone
    init = functools.partial(build_backbone(cfg).init, compute_logits=True)  # creates lm_head too
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items"):
                walk(v, prefix + (k,))
            else:
                out["/".join(prefix + (k,))] = tuple(v.shape)
    walk(shapes["params"], ())
    return out


def map_tensors(getters: dict[str, Callable], table, ignored, cfg: BackboneConfig, source: str) -> dict:
    """Applies a name table: stacks `{i}` rows over layers, checks names and shapes, raises one error."""
    want = expected_shapes(cfg)
    flat, used, missing, bad_shape = {}, set(), [], []
    for pattern, path, tag in table:
        if path not in want:
            continue  # e.g. lm_head for tied configs
        if "{i}" in pattern:
            layers = []
            for i in range(cfg.num_layers):
                name = pattern.format(i=i)
                if name not in getters:
                    missing.append(name)
                    continue
                used.add(name)
                layers.append(_transform(np.asarray(getters[name]()), tag, cfg))
            if len(layers) != cfg.num_layers:
                continue
            shapes = {w.shape for w in layers}
            if len(shapes) != 1:
                bad_shape.append(f"{pattern}: per-layer shapes differ {sorted(shapes)}")
                continue
            arr = np.stack(layers)
        else:
            if pattern not in getters:
                missing.append(pattern)
                continue
            used.add(pattern)
            arr = _transform(np.asarray(getters[pattern]()), tag, cfg)
        if tuple(arr.shape) != want[path]:
            bad_shape.append(f"{pattern} -> {path}: got {tuple(arr.shape)}, expected {want[path]}")
            continue
        flat[path] = arr
    ign = [re.compile(p) for p in ignored]
    unexpected = sorted(k for k in getters if k not in used and not any(r.search(k) for r in ign))
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        if bad_shape:
            parts.append(f"wrong shape {bad_shape}")
        raise WeightLoadError(f"{source}: checkpoint does not match the {cfg.arch} backbone: " + "; ".join(parts))
    params: dict = {}
    for path, arr in flat.items():
        node = params
        keys = path.split("/")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = arr
    return params


def gguf_config(reader, path: str) -> BackboneConfig:
    """BackboneConfig from a llama-architecture GGUF file's metadata."""
    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v
    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
    names = {t.name for t in reader.tensors}
    heads = int(field("llama.attention.head_count"))
    d = int(field("llama.embedding_length"))
    rope_dim = field("llama.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != d // heads:
        raise ValueError(f"{path}: partial RoPE (rope.dimension_count {rope_dim}) is not supported")
    scaling = None
    if "rope_freqs.weight" in names:
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        scaling = {"rope_type": "freq_factors", "factors": [float(x) for x in np.asarray(t.data).ravel()]}
    vocab = field("llama.vocab_size")
    if vocab is None:
        vocab = len(field("tokenizer.ggml.tokens"))
    return BackboneConfig(
        arch="llama", vocab_size=int(vocab), hidden_size=d, num_layers=int(field("llama.block_count")),
        num_heads=heads, num_kv_heads=int(field("llama.attention.head_count_kv", heads)),
        intermediate_size=int(field("llama.feed_forward_length")),
        max_position_embeddings=int(field("llama.context_length", 2048)),
        norm_eps=float(f"{float(field('llama.attention.layer_norm_rms_epsilon', 1e-5)):.6g}"),  # undo f32 rounding
        rope_theta=float(field("llama.rope.freq_base", 10000.0)), rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_opt_int(field("tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(field("tokenizer.ggml.eos_token_id")))


def _opt_int(x):
    return None if x is None else int(x)


def load_gguf(path: str) -> tuple[BackboneConfig, dict]:
    """Dequantises every tensor to fp32, undoes llama.cpp's q/k permutation and maps names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: GGUF file not found")
    import gguf
    from umema_jax.weights.gguf_io import gguf_reader
    reader = gguf_reader(path)
    cfg = gguf_config(reader, path)

    def getter(t):
        def get():
            shape = tuple(int(s) for s in reversed(t.shape))   # ggml lists dims fastest-first
            w = gguf.quants.dequantize(t.data, t.tensor_type)
            return np.asarray(w, np.float32).reshape(shape)
        return get
    getters = {t.name: getter(t) for t in reader.tensors}
    return cfg, map_tensors(getters, N.LLAMA_GGUF, N.LLAMA_GGUF_IGNORED, cfg, path)
