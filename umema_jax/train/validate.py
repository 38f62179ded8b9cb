"""Config checks that run before anything is loaded or compiled: bad values fail in a second, in one line.

The entry point is `umema_jax.methods.validate_config`: it resolves `model.method` to its class (the
registry lives with the methods) and calls `validate_config` here with it, so this module checks every
key without knowing any method by name."""
from __future__ import annotations

import math
import os
import re

POOLINGS = ("last", "mean")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


def known_datasets() -> tuple:
    from umema_jax import data
    names = getattr(data, "DATASETS", None)
    return tuple(sorted(names)) if names else ("20news", "ploner", "semeval", "wnut17")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate_config(c, method_cls) -> None:
    """Raises ConfigError for the first invalid value (config keys as written on the command line).
    `method_cls`: the class `model.method` selects (its `defaults` and `validate`)."""
    m, d, t, o = c.model, c.data, c.train, c.optim
    from umema_jax.kernels.cpu_gemm import CHOICES
    _check(m.cpu_matmul in CHOICES, f"model.cpu_matmul={m.cpu_matmul!r}: must be one of {', '.join(CHOICES)}")
    _check(m.pooling in POOLINGS, f"model.pooling={m.pooling!r}: must be one of {', '.join(POOLINGS)}")
    for key in ("dtype", "frozen_param_dtype"):
        _check(m[key] in DTYPES, f"model.{key}={m[key]!r}: must be one of {', '.join(DTYPES)}")
    if m.init_from_scratch:
        from umema_jax.backbones.config import NAMED_CONFIGS
        _check(m.name in NAMED_CONFIGS, f"model.name={m.name!r}: init_from_scratch needs a named config "
                                        f"({', '.join(sorted(NAMED_CONFIGS))})")
    elif m.name.startswith((".", "/", "~")) or m.name.endswith(".gguf"):
        _check(os.path.exists(os.path.expanduser(m.name)), f"model.name={m.name!r}: no such file or directory")
    _check(int(m.lora.rank) > 0, f"model.lora.rank={m.lora.rank}: must be > 0")
    _check(float(m.lora.alpha) == -1 or _finite_positive(m.lora.alpha),
           f"model.lora.alpha={m.lora.alpha}: must be > 0, or -1 for 2 * rank")
    _check(0.0 <= float(m.lora.dropout) < 1.0, f"model.lora.dropout={m.lora.dropout}: must be in [0, 1)")
    _regex_ok(m.lora.target_regex, "model.lora.target_regex")
    _validate_branches(m)
    _validate_uncertainty_head(m)
    _validate_method(c, method_cls)

    datasets = known_datasets()
    _check(d.name in datasets, f"data.name={d.name!r}: must be one of {', '.join(datasets)}")
    _check(not d.data_dir or os.path.isdir(d.data_dir),
           f"data.data_dir={d.data_dir!r}: no such directory (set $UMEMA_DATA_DIR or --config.data.data_dir)")
    _check(int(d.train_size) > 0, f"data.train_size={d.train_size}: must be > 0 (paper: 200, 500, 1000)")
    _check(int(d.dev_size) >= 0, f"data.dev_size={d.dev_size}: must be >= 0 (0 = full dev set)")
    _check(0.0 <= float(d.missing_rate) < 1.0,
           f"data.missing_rate={d.missing_rate}: must be in [0, 1) (fraction of words deleted from train and test)")
    _check(int(d.test_size) >= 0, f"data.test_size={d.test_size}: must be >= 0 (0 = full test set)")
    _check(int(d.max_len) >= 8, f"data.max_len={d.max_len}: must be >= 8")
    _check(int(d.pad_to_multiple) >= 1, f"data.pad_to_multiple={d.pad_to_multiple}: must be >= 1")
    from umema_jax.uncertainty import posthoc
    try:
        posthoc.parse(c.output.get("posthoc", ""))
    except ValueError as err:
        raise ConfigError(str(err)) from None

    _check(int(t.epochs) > 0, f"train.epochs={t.epochs}: must be > 0")
    _check(int(t.max_steps) == -1 or int(t.max_steps) > 0, f"train.max_steps={t.max_steps}: must be -1 or > 0")
    _check(int(t.batch_size) > 0, f"train.batch_size={t.batch_size}: must be > 0")
    _check(int(t.eval_batch_size) > 0, f"train.eval_batch_size={t.eval_batch_size}: must be > 0")
    _check(int(t.grad_accum_steps) > 0 and int(t.batch_size) % int(t.grad_accum_steps) == 0,
           f"train.grad_accum_steps={t.grad_accum_steps}: must be > 0 and divide train.batch_size={t.batch_size}")
    _regex_ok(t.trainable_regex, "train.trainable_regex")
    for key in ("eval_every_steps", "early_stopping_patience"):
        _check(int(t[key]) >= 0, f"train.{key}={t[key]}: must be >= 0")
    for key in ("checkpoint_every_steps", "max_to_keep", "log_every_steps"):
        _check(int(t[key]) > 0, f"train.{key}={t[key]}: must be > 0")

    _check(_finite_positive(o.learning_rate), f"optim.learning_rate={o.learning_rate}: must be finite and > 0")
    _check(0.0 <= float(o.warmup_ratio) < 1.0, f"optim.warmup_ratio={o.warmup_ratio}: must be in [0, 1)")
    _check(_finite_positive(o.weight_decay, zero_ok=True),
           f"optim.weight_decay={o.weight_decay}: must be finite and >= 0")
    _check(float(o.grad_clip_norm) > 0, f"optim.grad_clip_norm={o.grad_clip_norm}: must be > 0")
    _check(_finite_positive(o.eps, zero_ok=True), f"optim.eps={o.eps}: must be finite and >= 0")
    _check(0 <= float(o.b1) < 1 and 0 <= float(o.b2) < 1, f"optim.b1/b2={o.b1}/{o.b2}: must be in [0, 1)")
    _check(_finite_positive(o.lr_scale), f"optim.lr_scale={o.lr_scale}: must be finite and > 0")
    try:
        re.compile(o.lr_scale_regex)
    except re.error as err:
        _check(False, f"optim.lr_scale_regex={o.lr_scale_regex!r}: not a regular expression ({err})")

    from umema_jax.train.sharding import FSDP_RULE_SETS
    _check(c.mesh.fsdp_rules in FSDP_RULE_SETS,
           f"mesh.fsdp_rules={c.mesh.fsdp_rules!r}: must be one of {', '.join(FSDP_RULE_SETS)}")
    _check(int(c.mesh.model) >= 1, f"mesh.model={c.mesh.model}: must be >= 1")
    _check(int(c.mesh.data) == -1 or int(c.mesh.data) >= 1, f"mesh.data={c.mesh.data}: must be -1 or >= 1")
    import jax   # device count only: no computation
    devices = jax.device_count()
    model_axis = int(c.mesh.model)
    data_axis = devices // model_axis if int(c.mesh.data) == -1 else int(c.mesh.data)
    _check(devices % model_axis == 0 and data_axis * model_axis == devices,
           f"mesh {c.mesh.data}x{c.mesh.model} does not fit the {devices} available devices")
    micro = int(t.batch_size) // int(t.grad_accum_steps)
    _check(micro % devices == 0, f"train.batch_size/grad_accum_steps={micro}: must be a multiple of the "
                                 f"{devices} devices the batch is split over")
    _check(int(t.eval_batch_size) % devices == 0,
           f"train.eval_batch_size={t.eval_batch_size}: must be a multiple of the {devices} devices")
    if not m.init_from_scratch:     # last: may ask the hub (one request online; nothing offline)
        _check_weights_source(m.name)


def _check_weights_source(name: str) -> None:
    """model.name must be a built-in, an existing local path or a hub id that is cached or on the hub
    (else the weight download fails after a minute of retries, with a traceback)."""
    from umema_jax.weights.builtin import BUILTIN_GGUF
    if name in BUILTIN_GGUF or os.path.exists(os.path.expanduser(name)):
        return
    from umema_jax.weights.load import hub_id_problem
    problem = hub_id_problem(name)
    _check(problem is None, f"model.name={name!r}: not a built-in ({', '.join(sorted(BUILTIN_GGUF))}), "
                            f"an existing local path, or a usable hub id: {problem}")


def _finite_positive(value, zero_ok: bool = False) -> bool:
    """`value` > 0 (>= 0 with `zero_ok`) and finite: `inf` passes a bare `> 0` test."""
    x = float(value)
    return math.isfinite(x) and (x >= 0 if zero_ok else x > 0)


def _validate_branches(m) -> None:
    """model.um.* / model.ema.*: the keys of UMConfig / EMAConfig, checked by value."""
    from umema_jax.memory.bank import RETRIEVALS
    um, ema = m.um, m.ema
    for key in ("d_u", "quant_levels", "num_tasks"):
        _check(int(um[key]) > 0, f"model.um.{key}={um[key]}: must be > 0")
    _check(float(um.temperature_max) == 0 or float(um.temperature_max) > 1,
           f"model.um.temperature_max={um.temperature_max}: must be > 1, or 0 for the unbounded form")
    for key in ("temperature_bias_init", "kappa_init", "temperature_max"):
        _check(math.isfinite(float(um[key])), f"model.um.{key}={um[key]}: must be finite")
    from umema_jax.uncertainty.um import TEMPERATURE_INPUTS
    _check(um.temperature_input in TEMPERATURE_INPUTS,
           f"model.um.temperature_input={um.temperature_input!r}: must be one of {', '.join(TEMPERATURE_INPUTS)}")
    _check(all(isinstance(i, int) for i in um.layers), f"model.um.layers={um.layers!r}: must be a tuple of ints")
    _check(math.isfinite(float(um.get("error_weight", 0.0))) and float(um.get("error_weight", 0.0)) >= 0,
           f"model.um.error_weight={um.get('error_weight')}: must be finite and >= 0 (0 = the paper's objective)")
    for key in ("slots", "d_u", "top_k"):
        _check(int(ema[key]) > 0, f"model.ema.{key}={ema[key]}: must be > 0")
    _check(int(ema.top_k) <= int(ema.slots), f"model.ema.top_k={ema.top_k}: must be <= model.ema.slots={ema.slots}")
    for key in ("tau0", "retrieval_scale"):
        _check(_finite_positive(ema[key]), f"model.ema.{key}={ema[key]}: must be finite and > 0")
    _check(ema.retrieval in RETRIEVALS, f"model.ema.retrieval={ema.retrieval!r}: must be one of {', '.join(RETRIEVALS)}")


def _validate_uncertainty_head(m) -> None:
    """model.uncertainty names a registered head whose section `model.<name>.*` has its keys and passes its
    own `validate` (the paper's UM is checked key by key above)."""
    import umema_jax.uncertainty  # noqa: F401  (registers the built-in heads)
    from umema_jax.uncertainty.heads import HEADS
    name = m.get("uncertainty", "um")
    _check(name in HEADS, f"model.uncertainty={name!r}: must be one of {', '.join(HEADS)}")
    head = HEADS[name]
    section = m.get(head.name)
    _check(section is not None, f"model.{head.name}: missing (umema_jax/defaults.py builds it from the head's fields)")
    unknown = sorted(set(section) - set(head.defaults()))
    _check(not unknown, f"model.{head.name}.{unknown[0] if unknown else ''}: unknown key "
                        f"(known: {', '.join(sorted(head.defaults()))})")
    try:
        head.validate(section)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def _validate_method(c, cls) -> None:
    """methods.<name>.*: present for the selected method (with its keys) and checked by its own `validate`."""
    if not cls.defaults:
        return
    section = c.get("methods", {}).get(cls.name) if hasattr(c, "get") else None
    _check(section is not None, f"methods.{cls.name}: missing (umema_jax/defaults.py builds it from the method's defaults)")
    unknown = sorted(set(section) - set(cls.defaults))
    _check(not unknown, f"methods.{cls.name}.{unknown[0] if unknown else ''}: unknown key "
                        f"(known: {', '.join(sorted(cls.defaults))})")
    try:
        cls.validate(section)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def _regex_ok(pattern: str, key: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{key}={pattern!r}: not a valid regex ({err})") from None
