"""Run our bench and the PyTorch/PEFT reference ALTERNATELY, one fresh process each, and
report ratios (ours / reference) of tokens/s, step time and peak RSS.

    .venv/bin/python benchmarks/compare_peft.py --seq_len 128 --batch 8 --alternations 3
    .venv/bin/python benchmarks/compare_peft.py --seq_len 512 --batch 8 --alternations 3

Each side runs in its own process (so peak RSS is per side). The machine is
shared and noisy: alternation makes drift hit both sides alike, and the
ratio is taken per alternation, then the median over alternations is
reported (plus min/max). Extra `--variant NAME=ENV...` entries add more
sides of our bench (e.g. an XLA flag), each compared to the reference too.
All raw records go to `--output` (JSON lines).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd: list[str], env: dict, cwd: str) -> dict:
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    rec = lines[-1]
    rec["wall_process_s"] = time.time() - t0
    try:
        rec["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="gpt2")
    p.add_argument("--task", default="cls")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eval_steps", type=int, default=5)
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--ours_python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    p.add_argument("--ref_python", default=os.path.join(ROOT, ".venv-ref", "bin", "python"))
    p.add_argument("--ours_root", default=ROOT, help="tree whose umema_jax is benchmarked")
    p.add_argument("--ours_args", default="", help="extra flags for umema_jax.bench")
    p.add_argument("--ref_args", default="", help="extra flags for peft_reference.py")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:ENV=VAL[,ENV=VAL] (or NAME:ROOT=/path/to/tree): another side of ours")
    p.add_argument("--no_ref", action="store_true", help="only our variants (ratios to the first one)")
    p.add_argument("--pin", default="", help="run both sides under `taskset -c PIN` (e.g. 0: one core, "
                   "one thread each; XLA and torch size their thread pools from the affinity mask)")
    p.add_argument("--output", default="")
    a = p.parse_args()
    pin = ["taskset", "-c", a.pin] if a.pin else []

    shapes = ["--backbone", a.backbone, "--task", a.task, "--seq_len", str(a.seq_len), "--batch", str(a.batch),
              "--dtype", a.dtype, "--steps", str(a.steps), "--eval_steps", str(a.eval_steps)]
    base_env = dict(os.environ)
    sides = [("ours", a.ours_root, {}, [*pin, a.ours_python, "-m", "umema_jax.bench", *shapes,
                                        *shlex.split(a.ours_args)])]
    for v in a.variant:
        name, _, spec = v.partition(":")
        env, root = {}, a.ours_root
        for kv in filter(None, spec.split(",")):
            k, _, val = kv.partition("=")
            if k == "ROOT":
                root = val
            else:
                env[k] = val
        sides.append((name, root, env, sides[0][3]))
    if not a.no_ref:
        sides.append(("peft", ROOT, {}, [*pin, a.ref_python, os.path.join(HERE, "peft_reference.py"), *shapes,
                                         *shlex.split(a.ref_args)]))
    recs: dict[str, list[dict]] = {s[0]: [] for s in sides}
    for i in range(a.alternations):
        order = sides if i % 2 == 0 else sides[::-1]
        for name, root, env, cmd in order:
            e = dict(base_env, **env)
            e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
            rec = run(cmd, e, root)
            rec.update(side=name, alternation=i, side_env=env, side_root=root)
            recs[name].append(rec)
            print(f"# alt {i} {name:10s} step {rec['step_s']:.3f}s (min {rec['step_s_min']:.3f}) "
                  f"tok/s {rec['tokens_per_s']:.0f} rss {rec['peak_rss_mb']:.0f}MB "
                  f"compile {rec['compile_s']:.1f}s load {rec.get('load_avg_1m', 0):.1f}", file=sys.stderr, flush=True)
            if a.output:
                with open(a.output, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    ref = "peft" if not a.no_ref else sides[0][0]
    summary = {"summary": True, "reference": ref, "pin": a.pin, "backbone": a.backbone, "task": a.task, "seq_len": a.seq_len,
               "batch": a.batch, "dtype": a.dtype, "alternations": a.alternations, "sides": {}}
    for name, *_ in sides:
        if name == ref:
            continue
        tps = [o["tokens_per_s"] / r["tokens_per_s"] for o, r in zip(recs[name], recs[ref])]
        tps_min = [r["step_s_min"] / o["step_s_min"] for o, r in zip(recs[name], recs[ref])]
        ev = [o["eval_tokens_per_s"] / r["eval_tokens_per_s"] for o, r in zip(recs[name], recs[ref])
              if "eval_tokens_per_s" in o and "eval_tokens_per_s" in r]
        rss = [o["peak_rss_mb"] / r["peak_rss_mb"] for o, r in zip(recs[name], recs[ref])]
        summary["sides"][name] = {
            "tokens_per_s_ratio": statistics.median(tps), "tokens_per_s_ratio_min": min(tps),
            "tokens_per_s_ratio_max": max(tps), "tokens_per_s_ratio_of_min_step": statistics.median(tps_min),
            "eval_tokens_per_s_ratio": statistics.median(ev) if ev else None,
            "peak_rss_ratio": statistics.median(rss),
            "ours_step_s": statistics.median(o["step_s"] for o in recs[name]),
            "ref_step_s": statistics.median(r["step_s"] for r in recs[ref]),
            "ours_peak_rss_mb": statistics.median(o["peak_rss_mb"] for o in recs[name]),
            "ref_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in recs[ref]),
            "ours_compile_s": statistics.median(o["compile_s"] for o in recs[name]),
        }
    print(json.dumps(summary), flush=True)
    if a.output:
        with open(a.output, "a") as f:
            f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
