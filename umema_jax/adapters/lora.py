"""LoRA as a tree transform over a frozen backbone (Levanter style).

The factors live in their own `lora` variable collection, mirroring the
targeted kernels' paths (`h/attn/c_attn/lora_a [L,in,r]`, `.../lora_b [L,r,out]`).
The backbone's Dense adds `scale * (dropout(x) @ A) @ B` when they are present,
so the pretrained weights are never touched nor differentiated. Adapters save
and load in HF PEFT's on-disk format.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from umema_jax.weights.names import HF_TABLES, hf_module_name

DEFAULT_TARGETS = {"gpt2": "c_attn", "llama": "q_proj|v_proj"}
PEFT_PREFIX = "base_model.model."


def resolve_alpha(rank: int, alpha: float | None) -> float:
    """LoRA alpha as given, or 2 * rank when unset (None; -1 in a config): scale alpha / r = 2 at every rank."""
    return 2.0 * int(rank) if alpha is None or float(alpha) == -1 else float(alpha)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r (paper: 4/8/16/32, default 8); alpha defaults to 2r (scale = alpha / r; `resolve_alpha`)."""
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    target_regex: str | None = None     # searched in kernel module paths; None -> arch default
    route_top_k: int = 0                # > 0: MiLoRA, every block's LoRA modules are experts, K run per example

    def __post_init__(self):
        if int(self.rank) <= 0:
            raise ValueError(f"LoraConfig.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "alpha", resolve_alpha(self.rank, self.alpha))

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    def regex(self, arch: str) -> str:
        return self.target_regex if self.target_regex is not None else DEFAULT_TARGETS[arch]


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat):
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def target_modules(backbone_params, cfg: LoraConfig, arch: str) -> list[tuple]:
    """Module paths (tuples) of the kernels LoRA targets; raises if the regex selects none."""
    pattern = re.compile(cfg.regex(arch))
    paths = [p[:-1] for p in _flatten(backbone_params) if p[-1] == "kernel" and pattern.search("/".join(p[:-1]))]
    if not paths:
        raise ValueError(f"LoRA target regex {cfg.regex(arch)!r} matches no kernel of the {arch} backbone")
    return sorted(paths)


def init_lora(rng, backbone_params, cfg: LoraConfig, arch: str) -> dict:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform a=sqrt(5)), B = 0: step 0 = pretrained model."""
    flat = _flatten(backbone_params)
    out = {}
    for i, mod in enumerate(target_modules(backbone_params, cfg, arch)):
        kshape = tuple(flat[mod + ("kernel",)].shape)
        lead, (fan_in, fan_out) = kshape[:-2], kshape[-2:]
        bound = 1.0 / np.sqrt(fan_in)
        key = jax.random.fold_in(rng, i)
        out[mod + ("lora_a",)] = jax.random.uniform(key, lead + (fan_in, cfg.rank), jnp.float32, -bound, bound)
        out[mod + ("lora_b",)] = jnp.zeros(lead + (cfg.rank, fan_out), jnp.float32)
    if cfg.route_top_k:
        out.update(init_routers(jax.random.fold_in(rng, len(out)), backbone_params, cfg, arch))
    return _unflatten(out)


def experts(arch: str) -> tuple:
    """A block's linear modules (paths inside the block), in the order of a router's expert axis."""
    from umema_jax.backbones import gpt2, llama
    return {"gpt2": gpt2.EXPERTS, "llama": llama.EXPERTS}[arch]


def init_routers(rng, backbone_params, cfg: LoraConfig, arch: str) -> dict:
    """MiLoRA routers `<blocks>/router/kernel [L, d, M]` ~ N(0, 0.02), one per block; every linear module of
    the block must carry a LoRA expert (the target regex must select them all)."""
    targets = {"/".join(m) for m in target_modules(backbone_params, cfg, arch)}
    scopes = sorted({t.split("/")[0] for t in targets})
    out = {}
    for scope in scopes:
        missing = [e for e in experts(arch) if f"{scope}/{e}" not in targets]
        if missing:
            raise ValueError(f"LoRA routing needs an expert on every linear module of a block; "
                             f"target regex {cfg.regex(arch)!r} leaves out {', '.join(missing)}")
        if cfg.route_top_k > len(experts(arch)):
            raise ValueError(f"route_top_k={cfg.route_top_k}: more than the {len(experts(arch))} experts of a "
                             f"{arch} block")
        kernel = _flatten(backbone_params)[(scope,) + tuple(experts(arch)[0].split("/")) + ("kernel",)]
        shape = (kernel.shape[0], kernel.shape[-2], len(experts(arch)))
        out[(scope, "router", "kernel")] = 0.02 * jax.random.normal(rng, shape, jnp.float32)
    return out


def merge_lora(params, lora, cfg: LoraConfig) -> dict:
    """Backbone params with `W + scale * A @ B` folded in (for export / inference; never used in training)."""
    flat = dict(_flatten(params))
    for path, a in _flatten(lora).items():
        if path[-1] != "lora_a":
            continue
        mod = path[:-1]
        b = _flatten(lora)[mod + ("lora_b",)]
        if mod + ("kernel",) not in flat:
            raise KeyError(f"merge_lora: lora factor {'/'.join(mod)} has no kernel in params")
        k = flat[mod + ("kernel",)]
        flat[mod + ("kernel",)] = k + cfg.scale * jnp.matmul(jnp.asarray(a), jnp.asarray(b)).astype(k.dtype)
    return _unflatten(flat)


def count_lora_params(lora) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(lora)))


def save_peft(directory: str, lora, cfg: LoraConfig, arch: str, base_model_name_or_path: str | None = None):
    """Writes `adapter_model.safetensors` (PEFT names, A `[r,in]`, B `[out,r]`) and `adapter_config.json`."""
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    tensors, modules = {}, set()
    for path, a in _flatten(lora).items():
        if path[-1] != "lora_a":
            continue
        mod = path[:-1]
        a = np.asarray(a, np.float32)
        b = np.asarray(_flatten(lora)[mod + ("lora_b",)], np.float32)
        kernel_path = "/".join(mod + ("kernel",))
        layers = range(a.shape[0]) if a.ndim == 3 else [None]
        for layer in layers:
            name = PEFT_PREFIX + hf_module_name(arch, kernel_path, layer)
            a_l = a[layer] if layer is not None else a
            b_l = b[layer] if layer is not None else b
            tensors[name + ".lora_A.weight"] = np.ascontiguousarray(a_l.T)
            tensors[name + ".lora_B.weight"] = np.ascontiguousarray(b_l.T)
        modules.add(mod[-1])
    save_file(tensors, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(cfg.rank), "lora_alpha": float(cfg.alpha),
        "lora_dropout": float(cfg.dropout), "target_modules": sorted(modules), "bias": "none",
        "fan_in_fan_out": arch == "gpt2", "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "base_model_name_or_path": base_model_name_or_path,
    }
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def load_peft(directory: str):
    """Reads a PEFT LoRA adapter -> (lora tree with stacked layers, LoraConfig)."""
    from safetensors.numpy import load_file
    cfg_path = os.path.join(directory, "adapter_config.json")
    st_path = os.path.join(directory, "adapter_model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: missing (a PEFT adapter needs adapter_config.json + adapter_model.safetensors)")
    with open(cfg_path) as f:
        pc = json.load(f)
    if pc.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {pc.get('peft_type')!r} is not LORA")
    if pc.get("rank_pattern") or pc.get("alpha_pattern"):
        raise ValueError(f"{cfg_path}: rank_pattern/alpha_pattern are not supported")
    tensors = load_file(st_path)
    names = [k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k for k in tensors]
    arch = "gpt2" if any(n.startswith("transformer.") for n in names) else "llama"
    # reverse map: HF module regex -> our kernel path
    rev = []
    for pattern, path, _ in HF_TABLES[arch][0]:
        if path.endswith("/kernel"):
            mod = re.escape(pattern.rsplit(".", 1)[0]).replace(r"\{i\}", r"(\d+)")
            rev.append((re.compile("^" + mod + r"\.lora_([AB])\.weight$"), path[: -len("/kernel")]))
    per: dict = {}
    unknown = []
    for key, n in zip(tensors, names):
        for rx, mod in rev:
            m = rx.match(n)
            if m:
                layer = int(m.group(1)) if m.lastindex == 2 else None
                ab = m.group(m.lastindex)
                per.setdefault((mod, ab), {})[layer] = tensors[key].T
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{st_path}: tensors with no {arch} LoRA mapping: {unknown}")
    flat, modules = {}, set()
    for (mod, ab), by_layer in per.items():
        leaf = "lora_a" if ab == "A" else "lora_b"
        if None in by_layer:
            arr = by_layer[None]
        else:
            n_layers = max(by_layer) + 1
            missing = [i for i in range(n_layers) if i not in by_layer]
            if missing:
                raise ValueError(f"{st_path}: {mod} lora_{ab} is missing for layers {missing}")
            arr = np.stack([by_layer[i] for i in range(n_layers)])
        flat[tuple(mod.split("/")) + (leaf,)] = jnp.asarray(arr, jnp.float32)
        modules.add(mod.split("/")[-1])
    regex = "(?:^|/)(?:" + "|".join(sorted(modules)) + ")$"
    cfg = LoraConfig(rank=int(pc["r"]), alpha=float(pc.get("lora_alpha", 2 * pc["r"])),
                     dropout=float(pc.get("lora_dropout", 0.0)), target_regex=regex)
    return _unflatten(flat), cfg
