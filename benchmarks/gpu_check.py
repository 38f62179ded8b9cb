"""The GPU path in one script : < 8 minutes on one H100/H200-class GPU.

    pip install -U "jax[cuda12]>=0.10.2,<0.11"        # after requirements.txt: the GPU build (README)
    python benchmarks/gpu_check.py --out=results/gpu   # on the GPU machine
    python benchmarks/gpu_check.py --tiny --out=/tmp/g # CPU, tiny shapes: what the test suite runs

What it runs, each in its own process (clean peak-memory numbers), in this order:
1. `umema_jax.bench` on LLaMA-3-8B shapes with random weights, bf16 compute and bf16 frozen weights,
   seq 512, batch 8, remat: LoRA and the full method (LoRA + UM + EMA), step time, tokens/s, model
   FLOPs utilisation and peak device memory (one process per method).
2. The main job on real SmolLM2-135M weights and the real SemEval data (`configs/semeval.py`), end to
   end (train, dev, test, calibration outputs), in bf16.
Then it writes `gpu_check.json` (environment, the records, the run's results) and `gpu_check.md`.
A step that fails is reported with its log's last lines and the script exits non-zero.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_LINE = 'pip install -U "jax[cuda12]>=0.10.2,<0.11"'

_OUT = flags.DEFINE_string("out", "results/gpu", "Output folder (records, logs, the SemEval run directory).")
_TINY = flags.DEFINE_bool("tiny", False, "CPU check of the script itself: tiny shapes, the smoke config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per benchmarked method.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Datasets root for the main job (default: $UMEMA_DATA_DIR or "
                                "../shared/data, as launch.py).")


def bench_args(tiny: bool, method: str, output: str) -> list:
    if tiny:
        shape = ["--backbone=llama-tiny", "--seq_len=32", "--batch=2", "--steps=2", "--eval_steps=0", "--warmup=1"]
    else:
        shape = ["--backbone=llama3-8b", "--seq_len=512", "--batch=8", f"--steps={_STEPS.value}", "--eval_steps=3",
                 "--remat"]
    return [sys.executable, "-m", "umema_jax.bench", *shape, f"--method={method}", "--dtype=bfloat16",
            "--frozen_dtype=bfloat16", "--num_labels=19", f"--output={output}"]


def launch_args(tiny: bool, workdir: str) -> list:
    if tiny:
        cfg = ["--config=configs/smoke.py", "--config.train.epochs=1", "--config.output.posthoc="]
    else:
        cfg = ["--config=configs/semeval.py"]
    return [sys.executable, "launch.py", *cfg, "--config.model.dtype=bfloat16", f"--workdir={workdir}"]


def run(cmd: list, log_path: str) -> tuple[int, float, str]:
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    with open(log_path, encoding="utf-8") as f:
        tail = "".join(f.readlines()[-15:])
    return rc, time.time() - t0, tail


def environment() -> dict:
    import jax
    dev = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(getattr(dev, "device_kind", dev)),
            "device_count": jax.device_count(), "install_line": INSTALL_LINE}


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [f"# GPU check ({'tiny, CPU' if summary['tiny'] else 'LLaMA-3-8B shapes + SmolLM2 SemEval'})", "",
             f"jax {env['jax']} on {env['backend']} ({env['device']} x {env['device_count']}); "
             f"install: `{env['install_line']}`; total {summary['wall_s']:.0f} s", "",
             "| method | step s | tokens/s | MFU | peak device MB | peak RSS MB | compile s |", "|---|---|---|---|---|---|---|"]
    for r in summary["bench"]:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "–"
        dev = f"{r['device_peak_mb']:.0f}" if r.get("device_peak_mb") else "–"
        lines.append(f"| {r['method']} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {mfu} | {dev} | "
                     f"{r['peak_rss_mb']:.0f} | {r['compile_s']:.1f} |")
    res = summary.get("run_results") or {}
    if res:
        prim = res.get("primary_metric", "accuracy")
        t = res.get("test", {})
        lines += ["", f"Main job ({summary['run_dir']}): test {prim} {100 * t.get(prim, float('nan')):.2f} %, "
                      f"ECE {100 * t.get('ece', float('nan')):.2f} %, NLL {t.get('nll', float('nan')):.4f}, "
                      f"wall {res.get('wall_time_s', float('nan')):.0f} s"]
    for step in summary["steps"]:
        if step["rc"]:
            lines += ["", f"**{step['name']} failed** (rc {step['rc']}, log {step['log']})"]
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    del argv
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    tiny = _TINY.value
    t0 = time.time()
    steps, records = [], []
    if _DATA_DIR.value:
        os.environ["UMEMA_DATA_DIR"] = os.path.abspath(_DATA_DIR.value)
    # one process per method on the GPU (clean peaks); one for both in the tiny check (suite time)
    for method in (("lora,full",) if tiny else ("lora", "full")):
        tag = method.replace(",", "_")
        output = os.path.join(out, f"bench_{tag}.jsonl")
        if os.path.exists(output):
            os.remove(output)
        rc, dt, tail = run(bench_args(tiny, method, output), os.path.join(out, f"bench_{tag}.log"))
        steps.append({"name": f"bench {method}", "rc": rc, "wall_s": dt, "log": f"bench_{tag}.log"})
        print(f"[gpu_check] bench {method}: rc {rc} in {dt:.0f} s", flush=True)
        if rc:
            print(tail, file=sys.stderr)
        elif os.path.exists(output):
            with open(output, encoding="utf-8") as f:
                records += [json.loads(line) for line in f if line.strip()]
    run_dir = os.path.join(out, "semeval_smollm2-135m_bf16" if not tiny else "smoke_bf16")
    rc, dt, tail = run(launch_args(tiny, run_dir), os.path.join(out, "launch.log"))
    steps.append({"name": "main job", "rc": rc, "wall_s": dt, "log": "launch.log"})
    print(f"[gpu_check] main job: rc {rc} in {dt:.0f} s", flush=True)
    if rc:
        print(tail, file=sys.stderr)
    results_path = os.path.join(run_dir, "results.json")
    run_results = json.load(open(results_path, encoding="utf-8")) if os.path.exists(results_path) else None
    summary = {"tiny": tiny, "environment": environment(), "steps": steps, "bench": records,
               "run_dir": run_dir, "run_results": run_results, "wall_s": time.time() - t0}
    with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write(markdown(summary))
    print(markdown(summary), flush=True)
    if any(s["rc"] for s in steps):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
