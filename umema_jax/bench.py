"""Benchmark the project's own jitted train and eval steps.

    python -m umema_jax.bench                       # GPT-2 small, LoRA, seq 128, batch 8, fp32
    python -m umema_jax.bench --method=lora,full --seq_len=512
    python -m umema_jax.bench --compare             # every registered method (umema_jax/methods), alternated
    python -m umema_jax.bench --backbone=smollm2-135m --compare
    python -m umema_jax.bench --compare --methods_to_compare=lora/xla,lora/onednn   # matmul paths

What is timed is exactly what `train/loop.py` runs: the method's
(umema_jax/methods) host hook `before_step` and `train/step.py`'s
`make_train_step` jitted by `jit_train_step` (forward, masked cross-entropy,
gradients w.r.t. the trainable sub-tree, global-norm clipping, AdamW, the EMA
bank update carried in the state, donation of the state) and the eval step,
on the model, partition, optimizer and carried state of the method's hooks
(`umema_jax/methods`, as `train/build.py` and the loop use them; no host-side
controller runs), after compilation and warm-up, on a fixed
random batch (no padding). Weights are random for a named config
(`--weights=random`, default) or loaded with `--weights=load`.

One JSON line per configuration: `method`, shapes, `tokens_per_s`, `step_s`
(median; `step_s_min` / `step_s_max` over `--steps` >= 10 timed steps),
`eval_*`, `compile_s`, `peak_rss_mb` (process peak: run one configuration per
process for a clean number), `device_peak_mb` (where the device reports it),
`trainable_params` (what one step can change: LISA counts γ blocks), `total_params`,
`step_memory_mb` (XLA's buffers of the compiled train step: arguments + outputs
− aliased + temporaries; per method, unlike the process peaks), `flops_per_step` (analytic model FLOPs,
see `step_flops`) and `mfu` when the device's peak is known (`--peak_tflops`).

`--compare` builds every method of `--methods_to_compare` in one process,
then times them round-robin (`--rounds` rounds of `--steps_per_round` steps
each), so machine noise hits all alike, and prints each method's step time
relative to plain `lora` (ratio of medians and median of per-round ratios).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

from umema_jax.flops import peak_flops, step_flops      # pure Python: jax is not imported before XLA_FLAGS

_BACKBONE = flags.DEFINE_string("backbone", "gpt2", "Named config (random weights) or, with --weights=load, "
                                "a checkpoint name/path for umema_jax.weights.load.")
_WEIGHTS = flags.DEFINE_enum("weights", "random", ["random", "load"], "Random weights or a real checkpoint.")
_TASK = flags.DEFINE_enum("task", "cls", ["cls", "ner"], "Task type (head on the pooled token / every token).")
_METHOD = flags.DEFINE_string("method", "lora", "Comma-separated registered methods (docs/METHODS.md), e.g. lora,full.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Sequence length.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_FROZEN_DTYPE = flags.DEFINE_enum("frozen_dtype", "", ["", "float32", "bfloat16"],
                                  "Storage dtype of the frozen backbone ('' = same as --dtype).")
_DEVICES = flags.DEFINE_integer("devices", 1, "Devices to use (data parallel); on CPU more are faked with "
                                "--xla_force_host_platform_device_count.")
_MESH_MODEL = flags.DEFINE_integer("mesh_model", 1, "FSDP shards of the frozen backbone (mesh.model).")
_NUM_LABELS = flags.DEFINE_integer("num_labels", 2, "Classes / tags.")
_POOLING = flags.DEFINE_enum("pooling", "last", ["last", "mean"], "Sequence summary for cls.")
_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank.")
_ALPHA = flags.DEFINE_float("lora_alpha", 16.0, "LoRA alpha.")
_LORA_DROPOUT = flags.DEFINE_float("lora_dropout", 0.0, "LoRA dropout (the reference runs at 0 too).")
_TARGET = flags.DEFINE_string("lora_target", "", "LoRA target regex ('' = arch default: c_attn / q_proj|v_proj).")
_TRAINABLE = flags.DEFINE_string("trainable_regex", r"^(head|um|ema)/",
                                 "Params trained besides LoRA ('.*' = full fine-tuning).")
_CPU_MATMUL = flags.DEFINE_enum("cpu_matmul", "auto", ["auto", "xla", "onednn"],
                                "model.cpu_matmul: backbone matmuls via oneDNN on CPU (auto: on AMX/AVX512-BF16 CPUs) or XLA.")
_REMAT = flags.DEFINE_bool("remat", False, "model.remat: recompute each backbone layer in the backward pass.")
_GRAD_ACCUM = flags.DEFINE_integer("grad_accum_steps", 1, "Micro-batches per step.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per configuration.")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 10, "Timed eval steps (0 = skip the eval step).")
_COMPARE = flags.DEFINE_bool("compare", False, "Alternate --methods_to_compare in one process; print ratios.")
_COMPARE_METHODS = flags.DEFINE_string("methods_to_compare", "",
                                       "Methods for --compare (the first is the baseline); '' = every registered "
                                       "method, lora first; `method/xla`, `method/onednn` set model.cpu_matmul per "
                                       "entry (matmul paths alternated); `lisa:form=simple+gamma=4` sets "
                                       "methods.lisa.* per entry.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "--compare: round-robin rounds.")
_STEPS_PER_ROUND = flags.DEFINE_integer("steps_per_round", 2, "--compare: timed train steps per method per round.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Peak device TFLOP/s for the MFU (0 = known GPUs only).")
_XLA_COST = flags.DEFINE_bool("xla_cost", False, "Also report XLA's own cost analysis (flops) of the step.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for weights and the random batch.")
_OUTPUT = flags.DEFINE_string("output", "", "Also append the JSON lines to this file.")
_TAG = flags.DEFINE_string("tag", "", "Free-form label copied into every record.")

BENCH_OPTIM = dict(learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                   grad_clip_norm=1.0)

# ----------------------------------------------------------------------------- setup
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mb(devices) -> float | None:
    peaks = []
    for dev in devices:
        try:
            stats = dev.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory stats
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"] / 2**20)
    return max(peaks) if peaks else None


def _stats(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def method_config(method: str, hp: str = ""):
    """The root config a method is instantiated with: the defaults of `umema_jax/defaults.py` (its
    `methods.<name>` section) plus this benchmark's flags and optimizer settings; `hp` ('key=value,...')
    overrides the method's hyper-parameters (`--methods_to_compare=lisa,lisa:form=simple+gamma=4`)."""
    from umema_jax.defaults import base_config
    c = base_config()
    for item in filter(None, hp.split("+")):
        key, sep, value = item.partition("=")
        if not sep or key not in c.methods.get(method, {}):
            raise app.UsageError(f"{method}:{hp}: {item!r} is not KEY=VALUE with a key of methods.{method}")
        c.methods[method][key] = type(c.methods[method][key])(value)
    c.model.name, c.model.method, c.model.pooling = _BACKBONE.value, method, _POOLING.value
    c.model.dtype, c.model.remat, c.model.cpu_matmul = _DTYPE.value, _REMAT.value, _CPU_MATMUL.value
    c.model.lora.rank, c.model.lora.alpha = _RANK.value, _ALPHA.value
    c.model.lora.dropout, c.model.lora.target_regex = _LORA_DROPOUT.value, _TARGET.value
    c.train.trainable_regex, c.train.grad_accum_steps = _TRAINABLE.value, _GRAD_ACCUM.value
    c.optim.update(BENCH_OPTIM)
    c.seed = _SEED.value
    return c


def methods_from_config(config):
    """The method object (umema_jax/methods) for `config` (imported late: jax must not start before
    XLA_FLAGS are set)."""
    from umema_jax import methods
    return methods.from_config(config)


def rows_of(batch: dict, rows: int) -> dict:
    """The shared random batch cut or cycled to `rows` rows (same tokens for every method)."""
    import numpy as np
    return {k: np.resize(v, (rows,) + v.shape[1:]) for k, v in batch.items()}


def random_batch(rng, vocab: int):
    import numpy as np
    b, n = _BATCH.value, _SEQ.value
    r = np.random.default_rng(rng)
    batch = {"input_ids": r.integers(0, vocab, (b, n), dtype=np.int32),
             "attention_mask": np.ones((b, n), np.int32),
             "example_mask": np.ones((b,), np.int32), "task_id": np.zeros((b,), np.int32)}
    if _TASK.value == "cls":
        batch["labels"] = r.integers(0, _NUM_LABELS.value, (b,), dtype=np.int32)
    else:
        batch["labels"] = r.integers(0, _NUM_LABELS.value, (b, n), dtype=np.int32)
    return batch


class Runner:
    """One method's compiled train/eval steps, state and inputs."""

    def __init__(self, method: str, mesh, shared: dict):
        import jax
        from umema_jax.train.assemble import assemble_steps, build_setup
        from umema_jax.train.state import count_params

        self.label = method                 # "lora", "lora/xla" (a matmul path), "lisa:form=simple" (hyper-params)
        named, _, matmul = method.partition("/")
        self.method, _, hp = named.partition(":")
        backbone_cfg, weights = shared["backbone"]
        config = method_config(self.method, hp)
        config.model.cpu_matmul = matmul or _CPU_MATMUL.value
        impl = methods_from_config(config)
        # Exactly the assembly training uses (train/assemble.py): the timed step is the trained step.
        setup = build_setup(config, impl, _TASK.value, _NUM_LABELS.value, backbone_cfg, weights,
                            frozen_dtype=_FROZEN_DTYPE.value or _DTYPE.value)
        self.cpu_matmul = setup.model.cpu_matmul
        self.lora_cfg = setup.model.lora_cfg
        self.full_weight = impl.family == "full_weight"
        self.total_params = count_params(setup.params) + count_params(setup.lora)   # the model's own
        # Every method has the same frozen backbone (same seed): share one placed copy across runners.
        key = jax.tree.structure(setup.frozen), tuple((x.shape, x.dtype) for x in jax.tree.leaves(setup.frozen))
        shared_frozen = shared.get("frozen") if shared.get("frozen_key") == key else None
        steps = assemble_steps(setup, impl, task_type=_TASK.value, total_steps=1_000_000,
                               grad_accum_steps=_GRAD_ACCUM.value, seed=_SEED.value, mesh=mesh,
                               placed_frozen=shared_frozen)
        shared.update(frozen_key=key, frozen=steps.frozen)
        self.frozen, self.state, self.state_sh = steps.frozen, steps.state, steps.state_sharding
        trainable = setup.trainable
        del setup
        self.rows = impl.step_rows(_BATCH.value)   # SplitLoRA (parallel): N clients x ceil(B / N), as it trains
        batch = shared["batch"] if self.rows == _BATCH.value else rows_of(shared["batch"], self.rows)
        from umema_jax.train import sharding as shd
        self.batch = shd.put_batch(batch, mesh)
        train_fn, eval_fn = steps.train_step, steps.eval_step
        self.train_step = train_fn          # the jitted step training runs (tests compare their jaxprs)
        # Host hooks run as in training (LISA's resample), except those that follow a data plan (the
        # federated schedules override `train_batches`): the benchmark has no data, only the step is timed.
        from umema_jax.train.method import Controller, Method
        plan = type(impl).train_batches is not Method.train_batches
        self.controller = Controller(impl, 1_000_000, 1_000_000) if plan else impl.controller(1_000_000, 1_000_000)
        self.steps_taken = 0
        self.trainable_params = impl.count_trainable(trainable)

        t0 = time.perf_counter()
        lowered = train_fn.lower(self.state, self.frozen, self.batch)
        self.train_c = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        try:
            mem = self.train_c.memory_analysis()
            self.step_memory_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                                   + mem.temp_size_in_bytes) / 2**20
        except Exception:  # noqa: BLE001 - backends without a memory analysis
            self.step_memory_mb = None
        self.xla_flops = None
        if _XLA_COST.value:
            try:
                cost = self.train_c.cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                self.xla_flops = float(cost.get("flops", 0.0)) or None
            except Exception:  # noqa: BLE001
                pass
        self.eval_c, self.eval_compile_s = None, None
        if _EVAL_STEPS.value > 0:
            t0 = time.perf_counter()
            self.eval_c = eval_fn.lower(self.state, self.frozen, self.batch).compile()
            self.eval_compile_s = time.perf_counter() - t0
        self.times: list[float] = []
        self.eval_times: list[float] = []
        for _ in range(_WARMUP.value):
            self.train(record=False)
        if self.eval_c is not None:
            self.evaluate(record=False)

    def train(self, record: bool = True) -> None:
        import jax
        t0 = time.perf_counter()
        state, frozen = self.controller.before_step(self.steps_taken, self.state, self.frozen)
        if state is not self.state:              # e.g. LISA's resample every K steps, as the loop does it
            state = jax.device_put(state, self.state_sh)
        self.state, metrics = self.train_c(state, frozen, self.batch)
        self.steps_taken += 1
        jax.block_until_ready((self.state, metrics))
        dt = time.perf_counter() - t0
        if record:
            self.times.append(dt)
        if int(metrics["finite"]) != 1:
            raise FloatingPointError(f"{self.label}: non-finite loss or gradient in the benchmark step")

    def evaluate(self, record: bool = True) -> None:
        import jax
        t0 = time.perf_counter()
        jax.block_until_ready(self.eval_c(self.state, self.frozen, self.batch))
        if record:
            self.eval_times.append(time.perf_counter() - t0)

    def record(self, shared: dict, devices) -> dict:
        cfg = shared["backbone"][0]
        tokens = self.rows * _SEQ.value
        st = _stats(self.times)
        lcfg = self.lora_cfg
        # The model's own LoRA (a method may set rank and targets: ALoRA's r_cap slots, MiLoRA's experts on
        # every module, computed densely); step_flops names modules without their block scope.
        lora_regex = "" if lcfg is None else (".*" if lcfg.route_top_k else lcfg.regex(cfg.arch))
        fl = step_flops(cfg, seq_len=_SEQ.value, batch=self.rows, lora_rank=lcfg.rank if lcfg else 0,
                        lora_regex=lora_regex or "$^", task=_TASK.value, num_labels=_NUM_LABELS.value,
                        full_finetune=self.full_weight or _TRAINABLE.value in (".*", "^.*$", ""))
        peak = peak_flops(devices[0], _DTYPE.value, _PEAK_TFLOPS.value)
        rec = dict(
            impl="umema_jax", method=self.method, variant=self.label, backbone=_BACKBONE.value, weights=_WEIGHTS.value,
            task=_TASK.value, seq_len=_SEQ.value, batch=_BATCH.value, batch_rows=self.rows, dtype=_DTYPE.value,
            frozen_dtype=_FROZEN_DTYPE.value or _DTYPE.value, devices=len(devices), mesh_model=_MESH_MODEL.value,
            num_labels=_NUM_LABELS.value, lora_rank=_RANK.value, dropout=_LORA_DROPOUT.value,
            trainable_regex=_TRAINABLE.value, remat=_REMAT.value, cpu_matmul=self.cpu_matmul, steps=len(self.times),
            tokens_per_s=tokens / st["median"], step_s=st["median"], step_s_min=st["min"], step_s_max=st["max"],
            compile_s=self.compile_s,
            peak_rss_mb=peak_rss_mb(), device_peak_mb=device_peak_mb(devices), step_memory_mb=self.step_memory_mb,
            trainable_params=self.trainable_params, total_params=self.total_params,
            flops_per_step=fl["train"], tflops_per_s=fl["train"] / st["median"] / 1e12,
            mfu=(fl["train"] / st["median"] / peak) if peak else None,
        )
        if self.xla_flops is not None:
            rec["xla_flops_per_step"] = self.xla_flops
        if self.eval_times:
            se = _stats(self.eval_times)
            rec.update(eval_tokens_per_s=tokens / se["median"], eval_step_s=se["median"],
                       eval_step_s_min=se["min"], eval_step_s_max=se["max"], eval_compile_s=self.eval_compile_s,
                       eval_flops=fl["forward"])
        import jax
        from umema_jax import runtime
        rec.update(platform=devices[0].platform, device_kind=getattr(devices[0], "device_kind", ""),
                   host_cpus=runtime.host_cores(), cpu=runtime.cpu_model(),
                   versions=dict(jax=jax.__version__, python=platform.python_version()),
                   xla_flags=os.environ.get("XLA_FLAGS", ""),
                   compiler_options=runtime.compiler_options(devices[0].platform),
                   tag=_TAG.value)
        return rec


def emit(rec: dict) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "a") as f:
            f.write(line + "\n")


def _parse_methods(spec: str) -> list[str]:
    """Comma-separated `method[:key=value+...][/cpu_matmul]` (e.g. `lora/xla,lora/onednn`: matmul paths
    alternated; `lisa,lisa:form=simple`: two settings of one method); '' = every registered method, lora first."""
    from umema_jax import methods as registry
    from umema_jax.kernels.cpu_gemm import CHOICES
    known = registry.names()
    methods = [m.strip() for m in spec.split(",") if m.strip()] or list(known)
    bad = [m for m in methods if m.partition("/")[0].partition(":")[0] not in known or
           (m.partition("/")[1] and m.partition("/")[2] not in CHOICES)]
    if bad:
        raise app.UsageError(f"unknown method(s) {bad}; choose from {known}, optionally /{'|'.join(CHOICES)}")
    return methods


def progress(message: str, t0: float) -> None:
    """One line on stderr (stdout carries only the JSON records) so a long --compare shows where it is."""
    print(f"[bench] {message}; elapsed {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _STEPS.value < 1 or (_COMPARE.value and _ROUNDS.value * _STEPS_PER_ROUND.value < 1):
        raise app.UsageError("need at least one timed step")
    if _DEVICES.value > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # Only takes effect on CPU, and only before jax initialises its backends (it has not yet).
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={_DEVICES.value}").strip()
    import jax
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.train import sharding as shd

    devices = jax.devices()[:_DEVICES.value]
    if len(devices) < _DEVICES.value:
        raise app.UsageError(f"--devices={_DEVICES.value} but only {len(jax.devices())} available")
    mesh = shd.make_mesh(data=len(devices) // _MESH_MODEL.value, model=_MESH_MODEL.value, devices=devices)
    if _WEIGHTS.value == "load":
        from umema_jax.weights.load import load_backbone_weights
        backbone = load_backbone_weights(_BACKBONE.value)
    else:
        backbone = (get_backbone_config(_BACKBONE.value), None)
    shared = {"backbone": backbone, "batch": random_batch(_SEED.value, backbone[0].vocab_size)}

    if not _COMPARE.value:
        for method in _parse_methods(_METHOD.value):
            runner = Runner(method, mesh, shared)
            for _ in range(_STEPS.value):
                runner.train()
            for _ in range(_EVAL_STEPS.value):
                runner.evaluate()
            emit(runner.record(shared, devices))
            del runner
        return

    methods = _parse_methods(_COMPARE_METHODS.value)
    t0, runners = time.perf_counter(), []
    for i, m in enumerate(methods):
        runners.append(Runner(m, mesh, shared))
        progress(f"{m}: compiled in {runners[-1].compile_s:.1f} s ({i + 1}/{len(methods)} methods)", t0)
    per_round: dict[str, list[float]] = {m: [] for m in methods}
    eval_per_round = max(1, _EVAL_STEPS.value // _ROUNDS.value) if _EVAL_STEPS.value else 0
    for r in range(_ROUNDS.value):
        if r:
            progress(f"round {r}/{_ROUNDS.value} timed", t0)
        order = runners if r % 2 == 0 else runners[::-1]   # alternate the order, too
        for runner in order:
            start = len(runner.times)
            for _ in range(_STEPS_PER_ROUND.value):
                runner.train()
            per_round[runner.label].append(statistics.median(runner.times[start:]))
            for _ in range(eval_per_round):
                runner.evaluate()
    base = runners[0]
    base_med = statistics.median(base.times)
    summary = {"impl": "umema_jax", "compare": True, "baseline": base.label, "backbone": _BACKBONE.value,
               "task": _TASK.value, "seq_len": _SEQ.value, "batch": _BATCH.value, "dtype": _DTYPE.value,
               "rounds": _ROUNDS.value, "steps_per_round": _STEPS_PER_ROUND.value, "relative_step_time": {},
               "relative_step_time_per_round": {}, "relative_eval_time": {}, "tag": _TAG.value}
    for runner in runners:
        rec = runner.record(shared, devices)
        rec["relative_step_time"] = statistics.median(runner.times) / base_med
        ratios = [a / b for a, b in zip(per_round[runner.label], per_round[base.label])]
        rec["relative_step_time_per_round"] = statistics.median(ratios)
        rec["step_s_per_round"] = per_round[runner.label]      # paired rounds: the C15 cost test uses them
        summary["relative_step_time"][runner.label] = rec["relative_step_time"]
        summary["relative_step_time_per_round"][runner.label] = rec["relative_step_time_per_round"]
        if runner.eval_times and base.eval_times:
            rec["relative_eval_time"] = statistics.median(runner.eval_times) / statistics.median(base.eval_times)
            summary["relative_eval_time"][runner.label] = rec["relative_eval_time"]
        emit(rec)
    summary["peak_rss_mb"] = peak_rss_mb()
    emit(summary)
    for m in methods:
        print(f"# {m:9s} step x{summary['relative_step_time'][m]:.3f} of {base.label} "
              f"(per-round median x{summary['relative_step_time_per_round'][m]:.3f})", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
