"""Time and memory of a planned run on this machine, before running it.

Time: an analytic FLOP count of the steps and evaluations the run will do
(epochs × ceil(n / batch) train steps, a dev evaluation per epoch, the final
dev + test scoring), divided by this machine's effective FLOP/s, plus a fixed
per-run overhead (start-up, loading, compiling). On CPU the FLOP/s come from
the measurement in docs/EXPERIMENTS.md (SmolLM2-135M, ~5 s per step of 16
SemEval sentences and ~2.5 min for the 2,717 test sentences on 2 cores),
scaled by the core count; on a GPU, 30 % of the device's dense peak. Once runs
of a backbone have finished (under `--root`, or in the run ledger), their
measured wall times rescale the estimates of the rest (median measured /
estimated, over the runs recorded on this host's CPU model when there are any).

Memory: from shapes (`umema_jax.memory_estimate`: frozen backbone,
trainable parameters, gradients, AdamW moments, bank — per device with the
run's FSDP mesh) plus an activation term (Korthikanti et al. 2022: per layer
b·s·(34·d + 5·a·s) half-precision bytes, one layer's worth with remat), plus
~1 GiB of process overhead on CPU. A finished run's measured peak RSS replaces
the estimate for runs of the same backbone, dataset and method.
"""
from __future__ import annotations

import functools
import math
import os
import statistics

from umema_jax.experiments import specs as S

GIB = 2.0 ** 30
CPU_REF = {"step_s": 5.0, "batch": 16, "tokens": 48, "eval_s_per_example": 150.0 / 2717, "cores": 2}


@functools.lru_cache(maxsize=None)
def _backbone(name: str):
    from umema_jax.backbones.config import get_backbone_config
    return get_backbone_config(name)


def _layer_params(cfg) -> int:
    d, f = cfg.hidden_size, cfg.intermediate_size
    if cfg.arch == "gpt2":
        return 4 * d * d + 2 * d * f
    hd = cfg.head_dim
    return d * (2 * cfg.num_heads * hd + 2 * cfg.num_kv_heads * hd) + 3 * d * f


def flops(name: str, tokens: int, seq: int, train: bool, full_weight: bool = False) -> float:
    cfg = _backbone(name)
    fwd = tokens * cfg.num_layers * (2 * _layer_params(cfg) + 4 * seq * cfg.hidden_size)
    if not train:
        return fwd
    return fwd * (3 if full_weight else 2)          # + activation gradients (+ weight gradients)


@functools.lru_cache(maxsize=None)
def machine() -> dict:
    """Effective train / eval FLOP/s of this machine's first device."""
    import jax
    dev = jax.devices()[0]
    ref_train = flops("smollm2-135m", CPU_REF["batch"] * CPU_REF["tokens"], CPU_REF["tokens"], True)
    ref_eval = flops("smollm2-135m", CPU_REF["tokens"], CPU_REF["tokens"], False)
    if dev.platform == "cpu":
        scale = max(1, os.cpu_count() or 1) / CPU_REF["cores"]
        return {"platform": f"cpu ({os.cpu_count()} cores)", "train": scale * ref_train / CPU_REF["step_s"],
                "eval": scale * ref_eval / CPU_REF["eval_s_per_example"]}
    from umema_jax.flops import peak_flops
    peak = peak_flops(dev, "bfloat16", 0.0) or 100e12
    return {"platform": f"{dev.platform} {getattr(dev, 'device_kind', '')}", "train": 0.3 * peak, "eval": 0.3 * peak}


def run_time_s(spec: S.RunSpec, setup, overhead_s: float) -> float:
    """Estimated wall seconds of one run (no early stopping assumed)."""
    if spec.kind == "bench":
        return overhead_s * 4 + 30.0
    g = spec.get
    name = str(g("model.name"))
    try:
        _backbone(name)
    except Exception:  # noqa: BLE001 - an HF path or hub id: no named shape
        return overhead_s
    n, batch, epochs = int(g("data.train_size")), int(g("train.batch_size", 16)), int(g("train.epochs", 3))
    seq = min(int(g("data.max_len", 128)), setup.tokens if setup else 48)
    from umema_jax import methods
    method = methods.REGISTRY.get(str(g("model.method")))
    hints = method.cost_hints(g, _backbone(name)) if method is not None else \
        {"full_gradients": False, "passes": 1, "extra_forward_examples": 0.0}
    full = hints["full_gradients"]
    m = machine()
    steps = epochs * int(hints["passes"]) * math.ceil(n / batch)
    t_train = steps * flops(name, batch * seq, seq, True, full) / m["train"]
    dev_n = int(g("data.dev_size", 0)) or (setup.dev_n if setup else 500)
    test_n = int(g("data.test_size", 0)) or (setup.test_n if setup else 1000)
    per_example = flops(name, seq, seq, False) / m["eval"]
    samples = eval_samples(spec)
    t_eval = (epochs * dev_n + dev_n + test_n) * per_example * samples
    if samples > 1:                       # the post-hoc calibrators' own deterministic dev and test pass
        t_eval += (dev_n + test_n) * per_example
    return overhead_s + t_train + t_eval + hints["extra_forward_examples"] * per_example


def eval_samples(spec: S.RunSpec) -> int:
    """Forward passes per evaluated example: the uncertainty head's `eval_samples()` (MC dropout's
    `samples`), built from the spec's `model.<head>.*` keys over the head's defaults; 1 without one."""
    import umema_jax.uncertainty  # noqa: F401  (registers the built-in heads)
    from umema_jax.uncertainty.heads import HEADS
    head = HEADS.get(str(spec.get("model.uncertainty", "um")))
    if head is None:
        return 1
    prefix = f"model.{head.name}."
    section = {k[len(prefix):]: v for k, v in spec.overrides if k.startswith(prefix) and "." not in k[len(prefix):]}
    try:
        return max(1, int(head.from_section(section).eval_samples()))
    except (TypeError, ValueError):
        return 1


@functools.lru_cache(maxsize=None)
def _shape_memory(name: str, method: str, devices: int) -> dict | None:
    """From shapes, for `method`; a method whose setup cannot be built without its data (a federated
    schedule) is estimated as plain LoRA, then rescaled by the runs already measured."""
    from umema_jax.memory_estimate import estimate
    for candidate in (method, "lora"):
        try:
            return estimate(name, candidate, devices=1)
        except Exception:  # noqa: BLE001
            continue
    return None


def run_memory_gib(spec: S.RunSpec, setup) -> float | None:
    """Estimated peak memory per device (GiB) of one run."""
    if spec.kind == "bench":
        return None
    g = spec.get
    name = str(g("model.name"))
    shapes = _shape_memory(name, str(g("model.method")), 1)
    if shapes is None:
        return None
    cfg = _backbone(name)
    shards = int(g("mesh.model", 1))
    frozen_bytes = shapes["params_frozen"] * (2 if str(g("model.frozen_param_dtype", "float32")) == "bfloat16" else 4)
    rest = shapes["per_device_total_gib"] * GIB - shapes["params_frozen"] * 2      # estimate() counts bf16 frozen
    batch = int(g("train.batch_size", 16))     # mesh.model shards weights, not the batch
    seq = min(int(g("data.max_len", 128)), setup.tokens if setup else 128)
    act_bytes = 2 if str(g("model.dtype", "float32")) == "bfloat16" else 4
    per_layer = batch * seq * (34 * cfg.hidden_size + 5 * cfg.num_heads * seq) * act_bytes / 2
    layers = 1 if g("model.remat", False) else cfg.num_layers
    activations = per_layer * layers          # cls/ner heads read hidden states: no vocabulary logits
    overhead = GIB if machine()["platform"].startswith("cpu") else 0.5 * GIB
    return (frozen_bytes / shards + rest + activations + overhead) / GIB


class Estimator:
    """Per-run estimates, rescaled by what finished runs measured: those under `root`, and the run ledger's
    (a fresh machine has no run directories). Runs recorded on this host's CPU model are preferred: runs
    may come from different machines, and a wall time also says how many runs shared the cores."""

    _KEYS = ("model.name", "model.method", "data.name", "data.train_size", "data.max_len", "data.dev_size",
             "data.test_size", "train.batch_size", "train.epochs", "model.frozen_param_dtype", "model.dtype",
             "model.remat", "mesh.model", "train.trainable_regex", "model.uncertainty")

    def __init__(self, profile, root: str, ledger: str = ""):
        from umema_jax.runtime import cpu_model
        self.profile, self.root, self.ledger = profile, root, ledger
        factors: dict = {}
        self._rss: dict = {}
        here = cpu_model()
        for spec, res in self._finished():
            model = str(spec.get("model.name"))
            est = run_time_s(spec, profile.datasets.get(str(spec.get("data.name"))), profile.run_overhead_s)
            if res.get("wall_time_s") and est:
                same_host = bool(here) and (res.get("numerics") or {}).get("cpu") == here
                factors.setdefault(model, {}).setdefault(same_host, []).append(res["wall_time_s"] / est)
            rss = (res.get("memory") or {}).get("peak_rss_mb")
            if rss:
                key = (model, spec.get("data.name"), spec.get("model.method"))
                self._rss[key] = max(self._rss.get(key, 0.0), rss / 1024.0)
        self._factor = {m: by_host.get(True) or by_host[False] for m, by_host in factors.items()}

    def _finished(self):
        """(spec of the cost-deciding keys, results) of every finished run: run directories first, then
        the ledger entries of runs without one."""
        from umema_jax.train.checkpoint import flatten_config
        found = []
        if os.path.isdir(self.root):
            for d in sorted(os.listdir(self.root)):
                cfg, res = os.path.join(self.root, d, "config.json"), os.path.join(self.root, d, S.RESULT_FILE)
                if os.path.isfile(cfg) and os.path.isfile(res):
                    found.append((d, cfg, res))
        seen = {d for d, _, _ in found}
        if self.ledger and os.path.isdir(self.ledger):
            for f in sorted(os.listdir(self.ledger)):
                if f.endswith(".json") and f[:-5] not in seen:
                    found.append((f[:-5], os.path.join(self.ledger, f), None))
        for _, cfg, res in found:
            try:
                config = S.read_json(cfg)
                if res is None:                       # a ledger entry holds both
                    config, results = config.get("config"), config.get("results")
                else:
                    results = S.read_json(res)
            except (OSError, ValueError, AttributeError):
                continue                              # unreadable: the estimate simply does without it
            if not isinstance(config, dict) or not isinstance(results, dict):
                continue                              # a benchmark's entry, or not a run
            flat = flatten_config(config)
            head = f"model.{flat.get('model.uncertainty')}."          # the head's keys (`eval_samples`)
            yield S.RunSpec("", tuple(sorted((k, v) for k, v in flat.items()
                                             if k in self._KEYS or k.startswith(head)))), results

    def time_s(self, spec: S.RunSpec) -> float:
        setup = self.profile.datasets.get(str(spec.get("data.name")))
        est = run_time_s(spec, setup, self.profile.run_overhead_s)
        factors = self._factor.get(str(spec.get("model.name")))
        return est * statistics.median(factors) if factors else est

    def memory_gib(self, spec: S.RunSpec) -> tuple[float | None, str]:
        key = (str(spec.get("model.name")), spec.get("data.name"), spec.get("model.method"))
        if key in self._rss:
            return self._rss[key], "measured"
        return run_memory_gib(spec, self.profile.datasets.get(str(spec.get("data.name")))), "from shapes"

    @property
    def calibrated(self) -> dict:
        return {k: statistics.median(v) for k, v in self._factor.items()}


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
