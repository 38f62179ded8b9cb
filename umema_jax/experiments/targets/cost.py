"""Figure 7: the overhead of each module (trainable parameters, time per epoch, peak memory)."""
from __future__ import annotations

import os

from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments import specs as S
from umema_jax.experiments import stats
from umema_jax.experiments.targets.core import doc_of, one, train_cell


def fig7_cells(ctx):
    """Figure 7: overhead — bubble chart per backbone, x = trainable parameters, y = time per epoch (the
    benchmark's alternated median step time of `python -m umema_jax.bench --compare` × steps per epoch of
    SemEval at the largest size; the smoke profile has no benchmark and reads the training runs' own
    time per epoch), area = peak memory of the SemEval training run at the largest size, seed 0 (table5's
    runs). LoRA, +UM, +EMA, Ours; baselines as they land."""
    n = ctx.profile.sizes[-1]
    return [train_cell(ctx, {"backbone": b.label, "method": m.label}, b, "semeval", m, n,
                       seeds=ctx.profile.seeds[:1], metric="memory.peak_rss_mb")
            for b in ctx.profile.backbones for m in P.ABLATION + P.BASELINES]


def bench_specs(ctx) -> list:
    """One `umema_jax.bench --compare` per backbone (none when the profile has no benchmark settings)."""
    if not ctx.profile.bench:
        return []
    from umema_jax.methods import names
    BENCH_METHODS = names()                 # bench --compare runs any registered method
    methods = [P.method_name(m, ctx.implemented) for m in P.ABLATION + P.BASELINES]
    methods = [m for m in methods if m and m in BENCH_METHODS]
    return [S.RunSpec("", (), kind="bench", args=tuple([f"--backbone={b.name}", "--compare",
                                                        f"--methods_to_compare={','.join(methods)}"]
                                                       + list(ctx.profile.bench) + list(b.bench_args)))
            for b in ctx.profile.backbones]


def fig7_render(ctx, results):
    import math
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    os.makedirs(ctx.out, exist_ok=True)
    n = ctx.profile.sizes[-1]
    steps_per_epoch = math.ceil(n / dict(ctx.profile.common).get("train.batch_size", 16))
    points, rows = [], []
    specs = bench_specs(ctx)
    for i, b in enumerate(ctx.profile.backbones):
        bench = S.load_results(ctx.root, specs[i], ctx.ledger) if specs else None
        records = {r["method"]: r for r in (bench or {}).get("records", []) if r.get("method")}
        for m in P.ABLATION + P.BASELINES:
            name = P.method_name(m, ctx.implemented)
            res = one(results, backbone=b.label, method=m.label)
            run = (S.load_results(ctx.root, res.cell.specs[0], ctx.ledger)
                   if res is not None and res.cell.specs else None)
            rec = records.get(name) if name else None
            if name is None:
                rows.append({"backbone": b.label, "method": m.label, "status": "not implemented"})
                continue
            if specs and rec is None:
                rows.append({"backbone": b.label, "method": m.label,
                             "status": "– (benchmark not run)" if bench is None else "not in the benchmark"})
                continue
            if not specs and run is None:
                rows.append({"backbone": b.label, "method": m.label, "status": "– (training run not done)"})
                continue
            if rec is not None:
                step_s, rel, params = rec["step_s"], rec.get("relative_step_time"), rec["trainable_params"]
                epoch_s, time_src = step_s * steps_per_epoch, "benchmark step time × steps per epoch"
            else:
                step_s, rel, params = None, None, run["params"]["trainable"]
                epoch_s, time_src = run.get("mean_train_time_per_epoch_s"), "training run's time per epoch"
            mem = (run or {}).get("memory", {}).get("peak_rss_mb") if run else None
            mem_src = "training run peak RSS" if mem is not None else "benchmark process peak RSS (all methods)"
            if mem is None and rec is not None:
                mem = rec.get("device_peak_mb") or rec.get("peak_rss_mb")
            row = {"backbone": b.label, "method": m.label, "trainable_params": params, "step_s": step_s,
                   "step_s_per_round": (rec or {}).get("step_s_per_round"),
                   "relative_step_time": rel, "epoch_s": epoch_s, "time_source": time_src,
                   "peak_memory_mb": mem, "memory_source": mem_src, "status": "computed"}
            rows.append(row)
            if epoch_s is not None and mem is not None:
                points.append(row)
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for p in points:
        ax.scatter(p["trainable_params"], p["epoch_s"], s=max(20.0, p["peak_memory_mb"] / 10), alpha=0.5,
                   label=f"{p['method']} ({p['backbone']})")
    # Trainable counts span ~3 decades (LoRA ~5e5, full FT ~1e8): a linear axis piles the adapters up.
    if points and min(p["trainable_params"] for p in points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"time per epoch (s, {steps_per_epoch} steps)")
    ax.set_title(f"fig7 overhead ({ctx.profile.name}; area = peak memory)")
    if points:
        ax.legend(fontsize=7, markerscale=0.3, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(os.path.join(ctx.out, "fig7.png"), dpi=110)
    body = ["![fig7](fig7.png)", "", "| backbone | method | trainable params | step s (bench) | × LoRA | s/epoch | "
            "peak memory MB | time from | memory from |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda x, spec: "n/a" if x is None else format(x, spec)   # noqa: E731
    for r in rows:
        if r["status"] != "computed":
            body.append(f"| {r['backbone']} | {r['method']} | {r['status']} | | | | | | |")
        else:
            body.append(f"| {r['backbone']} | {r['method']} | {r['trainable_params']:,} | {f(r['step_s'], '.4f')} | "
                        f"{f(r['relative_step_time'], '.3f')} | {f(r['epoch_s'], '.1f')} | "
                        f"{f(r['peak_memory_mb'], '.0f')} | {r['time_source']} | {r['memory_source']} |")
    if specs:
        body += ["", f"Step times: `{specs[0].command('')}` (methods alternated round-robin in one process)."]
    else:
        body += ["", "No benchmark in this profile: time per epoch is each training run's own (epoch 1 includes "
                 "compilation), so the ordering is not a controlled comparison."]
    c15 = _cost_claim(ctx, points, rows, specs)
    T.write(ctx.out, "fig7", "Figure 7: overhead", ctx, body, [c15], results, {"points": rows},
            doc=doc_of(fig7_cells))


def _cost_claim(ctx, points, rows, specs):
    """C15 by the project's rule: rounds of one round-robin benchmark are the pairs (each round times every
    method back to back), the effect is the log step-time ratio of each neighbour in LoRA < +UM < +EMA <
    Ours, Holm across the three; without per-round times (or without a benchmark) it cannot tell."""
    import math
    order = [P.LORA.label, P.UM.label, P.EMA.label, P.OURS.label]
    comps = []
    for b in ctx.profile.backbones:
        per_round = {r["method"]: r.get("step_s_per_round") for r in rows
                     if r["backbone"] == b.label and r.get("status") == "computed"}
        if not all(m in per_round for m in order):
            continue
        for cheap, dear in zip(order, order[1:]):
            ta, tb = per_round[cheap], per_round[dear]
            if not ta or not tb:
                comps.append({"backbone": b.label, "cheaper": cheap, "dearer": dear, "verdict": V.CANNOT_TELL,
                              "detail": "no per-round step times in the benchmark record", "p": None})
                continue
            res = stats.paired_t([math.log(y / x) for x, y in zip(ta, tb)])
            comps.append({"backbone": b.label, "cheaper": cheap, "dearer": dear, **V.comparison(
                res, f"{dear} / {cheap} step time x{math.exp(res.mean):.3f} "
                     f"[{math.exp(res.lo):.3f}, {math.exp(res.hi):.3f}] over {res.n} rounds")})
    if not comps:
        return V.claim("C15", "cost LoRA < +UM < +EMA < Ours (paper §4.8)", V.NOT_COMPUTED,
                       "no benchmark of all four variants" if specs else "no benchmark in this profile")
    verdict, detail = V.combine(comps)
    return V.claim("C15", "cost LoRA < +UM < +EMA < Ours (paper §4.8)", verdict,
                   detail + "; " + "; ".join(c["detail"] for c in comps), comps)
