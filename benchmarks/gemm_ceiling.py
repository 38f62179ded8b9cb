"""The GEMM ceiling: the LoRA step's matmuls alone, XLA:CPU vs PyTorch (MKL), alternated.

    .venv/bin/python benchmarks/gemm_ceiling.py --alternations 4
    .venv/bin/python benchmarks/gemm_ceiling.py --alternations 3 --sides jax,onednn,torch

Why: the ours / PEFT step ratio (compare_peft.py) mixes two things, the matrix
library and everything else (norms, softmax, GELU, copies, scan bookkeeping).
This probe runs only the step's matrix products, with the GPT-2-small LoRA step's
shapes, in both frameworks: for each of the 12 layers the forward products
(qkv, attention scores and values, out-projection, MLP up and down) and the
backward input-gradient products (the same weights transposed, plus the four
attention-backward products). No elementwise work, no LoRA, no optimizer. If the
XLA chain alone is slower than the whole PyTorch step, no change outside the
matmuls can bring the step to parity.

Layers are a Python loop over per-layer weight arrays on purpose: this measures
the matrix library, not `lax.scan` (the model scans; its bookkeeping cost is
measured separately in NOTES.md). Each side runs in a fresh process (`--impl`
jax or torch, one JSON line each); the driver (`--impl both`, default) alternates
them and reports per-alternation ratios, with and without the attention products.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
B, T, D, H, HD, F, L = 8, 128, 768, 12, 64, 3072, 12


def chain_flops(attention: bool, batch: int = B, seq: int = T, d: int = D, f: int = F, layers: int = L) -> float:
    """Multiply-adds x 2 of `make_chain` (the attention products do not depend on the head count)."""
    linear = 2 * batch * seq * (d * 3 * d + d * d + 2 * d * f) * 2 * layers   # forward + input-gradient
    attn = 2 * (2 * batch * seq * seq * d) * 3 * layers if attention else 0    # 2 fwd + 4 bwd products
    return float(linear + attn)


def make_chain(ops, attention: bool, batch: int, seq: int, heads: int = H):
    """The step's matmul sequence written once over a tiny ops table (jnp, torch or numpy).

    `weights` is a list (one per layer) of {qkv [d,3d], o [d,d], fc [d,f], pr [f,d]}."""
    mm, einsum, cat, tr = ops["mm"], ops["einsum"], ops["cat"], ops["t"]

    def chain(x, weights):
        D = weights[0]["o"].shape[0]            # noqa: N806  (model width, as in the module constants)
        H, HD = heads, D // heads               # noqa: N806
        h = x
        for w in weights:
            qkv = mm(h, w["qkv"])
            if attention:
                q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(batch, H, seq, HD) for i in range(3))
                s = einsum("bhqd,bhkd->bhqk", q, k)
                h = einsum("bhqk,bhkd->bhqd", s, v).reshape(batch * seq, D)
            else:
                h = qkv[:, 2 * D:]
            h = mm(mm(mm(h, w["o"]), w["fc"]), w["pr"])
        g = h
        for w in weights[::-1]:
            g = mm(mm(mm(g, tr(w["pr"])), tr(w["fc"])), tr(w["o"]))
            if attention:
                go = g.reshape(batch, H, seq, HD)
                s = einsum("bhqd,bhkd->bhqk", go, go)
                dv = einsum("bhqk,bhqd->bhkd", s, go)
                dq = einsum("bhqk,bhkd->bhqd", s, go)
                dk = einsum("bhqk,bhqd->bhkd", s, dq)
                parts = [t.reshape(batch * seq, D) for t in (dq, dk, dv)]
            else:
                parts = [g, g, g]
            g = mm(cat(parts), tr(w["qkv"]))
        return g
    return chain


def time_jax(attention: bool, steps: int, batch: int, seq: int, onednn: bool = False) -> list[float]:
    """XLA's dot, or with `onednn` the model's oneDNN custom call (umema_jax/kernels/cpu_gemm.py) for the
    linear products (the transposed weights are then materialised by XLA: the model passes them as strides)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, ROOT)
    from umema_jax.kernels import cpu_gemm
    from umema_jax.runtime import compiler_options
    rng = np.random.default_rng(0)
    shapes = dict(qkv=(D, 3 * D), o=(D, D), fc=(D, F), pr=(F, D))
    weights = [{k: jnp.asarray(rng.normal(0, 0.02, s), jnp.float32) for k, s in shapes.items()} for _ in range(L)]
    x = jnp.asarray(rng.normal(0, 1, (batch * seq, D)), jnp.float32)
    ops = dict(mm=cpu_gemm.matmul if onednn else jnp.matmul, einsum=jnp.einsum,
               cat=lambda p: jnp.concatenate(p, -1), t=jnp.transpose)
    # Same compiler options as the project's jitted train step.
    compiled = jax.jit(make_chain(ops, attention, batch, seq)).lower(x, weights).compile(
        compiler_options=compiler_options("cpu"))
    jax.block_until_ready(compiled(x, weights))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(x, weights))
        times.append(time.perf_counter() - t0)
    return times


def time_torch(attention: bool, steps: int, batch: int, seq: int, threads: int) -> list[float]:
    import torch
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    shapes = dict(qkv=(D, 3 * D), o=(D, D), fc=(D, F), pr=(F, D))
    weights = [{k: torch.randn(*s) * 0.02 for k, s in shapes.items()} for _ in range(L)]
    x = torch.randn(batch * seq, D)
    ops = dict(mm=torch.matmul, einsum=torch.einsum, cat=lambda p: torch.cat(p, -1), t=lambda w: w.T)
    chain = make_chain(ops, attention, batch, seq)
    with torch.no_grad():
        chain(x, weights)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            chain(x, weights)
            times.append(time.perf_counter() - t0)
    return times


def one_side(args) -> None:
    if args.impl in ("jax", "onednn"):
        times = time_jax(args.attention, args.steps, args.batch, args.seq_len, onednn=args.impl == "onednn")
    else:
        times = time_torch(args.attention, args.steps, args.batch, args.seq_len, args.threads)
    med = statistics.median(times)
    fl = chain_flops(args.attention, args.batch, args.seq_len)
    print(json.dumps(dict(impl=args.impl, attention=args.attention, batch=args.batch, seq_len=args.seq_len,
                          steps=len(times), chain_s=med, chain_s_min=min(times), chain_s_max=max(times),
                          gflop=fl / 1e9, gflop_per_s=fl / med / 1e9)))


def drive(args) -> None:
    from compare_peft import run     # same fresh-process runner (last JSON line, stderr on failure); this dir is on sys.path
    py = {"jax": args.ours_python, "onednn": args.ours_python, "torch": args.ref_python}
    py = {k: py[k] for k in args.sides.split(",")}
    for impl, exe in py.items():
        if not os.path.exists(exe):
            raise SystemExit(f"{exe}: python for --impl {impl} not found (see benchmarks/README.md for the two venvs)")
    records = []
    for attention in (False, True):
        ratios = []
        for alt in range(args.alternations):
            recs = {}
            for impl in py:
                cmd = [py[impl], os.path.abspath(__file__), "--impl", impl, "--steps", str(args.steps),
                       "--batch", str(args.batch), "--seq_len", str(args.seq_len), "--threads", str(args.threads)]
                cmd.append("--attention" if attention else "--no-attention")
                recs[impl] = run(cmd, dict(os.environ), ROOT)
                recs[impl]["alternation"] = alt
                records.append(recs[impl])
            ref = list(py)[-1]
            ratios.append({k: recs[k]["chain_s"] / recs[ref]["chain_s"] for k in py if k != ref})
            print(f"attention={attention} alternation {alt}: " + ", ".join(f"{k} {r['chain_s']:.3f} s" for k, r in recs.items())
                  + ", time / " + ref + ": " + ", ".join(f"{k} {v:.3f}" for k, v in ratios[-1].items()), flush=True)
        summary = dict(summary=True, attention=attention, alternations=len(ratios), reference=ref)
        for k in ratios[0]:
            rs = [r[k] for r in ratios]
            summary[f"{k}_over_{ref}_time_median"] = statistics.median(rs)
            summary[f"{k}_over_{ref}_time_min"], summary[f"{k}_over_{ref}_time_max"] = min(rs), max(rs)
        records.append(summary)
        print(json.dumps(summary), flush=True)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("both", "jax", "onednn", "torch"), default="both")
    p.add_argument("--sides", default="jax,torch", help="driver: sides to alternate, the last is the reference "
                   "(jax = XLA's dot, onednn = the model's oneDNN custom call, torch = PyTorch/MKL)")
    p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=True,
                   help="(one side only) include the attention score/value products")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=B)
    p.add_argument("--seq_len", type=int, default=T)
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default, sized from the affinity mask like XLA's pool; "
                        "as in peft_reference.py)")
    p.add_argument("--alternations", type=int, default=4)
    p.add_argument("--ours_python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    p.add_argument("--ref_python", default=os.path.join(ROOT, ".venv-ref", "bin", "python"))
    p.add_argument("--output", default="", help="JSON lines: every record, then one summary per setting")
    args = p.parse_args()
    if args.impl == "both":
        drive(args)
    else:
        one_side(args)


if __name__ == "__main__":
    main()
