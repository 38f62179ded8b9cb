"""Figures 4-6: learning-rate sensitivity, missing data, reliability diagrams."""
from __future__ import annotations

import os

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments import stats
from umema_jax.experiments.targets.core import (DATASET_LABEL, by, doc_of, one, one_seed_note, pair_claim, size_label,
                                                train_cell)


def _figure_seeds(ctx):
    return ctx.profile.seeds if ctx.profile.name == "paper" else ctx.profile.seeds[:1]


def _sweep_cells(ctx, xs, cell) -> list:
    """The figures' panels {SemEval, PLONER} × backbone, lines {LoRA, Ours} × size, points x in `xs`:
    `cell(labels, backbone, dataset, method, size, x)` makes each point's cell."""
    return [cell({"backbone": b.label, "dataset": DATASET_LABEL[d], "method": m.label, "size": size_label(n),
                  "x": x}, b, d, m, n, x)
            for b in ctx.profile.backbones for d in ("semeval", "ploner") for m in (P.LORA, P.OURS)
            for n in ctx.profile.figure_sizes for x in xs]


def fig4_cells(ctx):
    """Figure 4: LR sensitivity — panels {SemEval, PLONER} × backbone, x = learning rate (log) over the
    profile's grid, y = test primary metric, one line per train size × {LoRA, Ours}. The LoRA SemEval
    points at the selection size are lr_select's runs; this figure reads test, but no LR is chosen from it."""
    return _sweep_cells(ctx, ctx.profile.lr_grid, lambda labels, b, d, m, n, lr: train_cell(
        ctx, labels, b, d, m, n, seeds=_figure_seeds(ctx), lr=lr))


def fig5_cells(ctx):
    """Figure 5: missing data — panels {SemEval, PLONER} × backbone, x = fraction of input words deleted in
    train and test (dev clean; `data.missing_rate`, SemEval's entity words and NER tags kept aligned),
    y = test primary metric at the chosen LR, lines per size × {LoRA, Ours}."""

    def cell(labels, b, d, m, n, rate):
        extra = (("data.missing_rate", float(rate)),) if rate else ()
        return train_cell(ctx, labels, b, d, m, n, seeds=_figure_seeds(ctx), extra=extra)

    return _sweep_cells(ctx, ctx.profile.missing_rates, cell)


def _curves_png(ctx, results, name, xlabel, logx):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    panels = []
    for r in results:
        key = (r.cell.labels["dataset"], r.cell.labels["backbone"])
        if key not in panels:
            panels.append(key)
    fig = Figure(figsize=(5 * len(panels), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    missing = 0
    for ax, (d, b) in zip(axes, panels):
        lines = {}
        for r in by(results, dataset=d, backbone=b):
            lines.setdefault((r.cell.labels["method"], r.cell.labels["size"]), []).append(r)
        plotted = False
        for (m, n), rs in lines.items():
            pts = [(r.cell.labels["x"], r.mean, r.std or 0.0) for r in rs if r.mean is not None]
            missing += len(rs) - len(pts)
            plotted = plotted or bool(pts)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3,
                            label=f"{m} {n}")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test metric (%)")
        ax.set_title(f"{d} · {b}")
        if plotted:
            ax.legend(fontsize=7)
    fig.suptitle(f"{name} ({ctx.profile.name} profile; {missing} points not computed)")
    fig.tight_layout()
    fig.savefig(os.path.join(ctx.out, f"{name}.png"), dpi=110)


def _gapped_verdict(comps, partial, none_computed: str, partial_label: str) -> tuple[str, str]:
    """`verdicts.combine` for a curve claim whose lines may still miss points: such a line can refute the
    claim but never support it; the lines with gaps are named after `partial_label`."""
    verdict, detail = V.combine(comps)
    if partial and verdict == V.SUPPORTS:
        verdict = V.CANNOT_TELL
    if not comps:
        verdict, detail = V.NOT_COMPUTED, none_computed
    if partial:
        detail += f"; {partial_label}: {', '.join(partial)}"
    return verdict, detail


def _ordered_claim(results, cid, text, pairs):
    """A curve-shape claim by the project's rule: on each line (dataset, backbone, method, size), the
    computed points `pairs(xs)` names as (better x, worse x) are compared paired over seeds
    (`verdicts.compare`, with the bootstrap over test examples beside it), and Holm runs across every
    line's comparisons (`verdicts.combine`: all must support). `pairs` returns None when the line's grid
    cannot judge the claim. A line with points still missing can refute the claim but never support it."""
    lines, comps, unjudged, partial = {}, [], [], []
    for r in results:
        labels = r.cell.labels
        lines.setdefault((labels["dataset"], labels["backbone"], labels["method"], labels["size"]), {})[labels["x"]] = r
    for (dataset, backbone, method, size), points in lines.items():
        xs = sorted(x for x, r in points.items() if r.n)
        if len(xs) < len(points):
            partial.append(f"{dataset} {method} {len(xs)}/{len(points)}")
        chosen = pairs(xs, backbone) if len(xs) > 1 else None
        if chosen is None:
            if len(xs) == len(points):
                unjudged.append(f"{dataset} {method}")
            continue
        for hi, lo in chosen:
            comps.append({"dataset": dataset, "backbone": backbone, "method": method, "size": size,
                          "better": hi, "worse": lo, **V.compare(points[hi], points[lo])})
    verdict, detail = _gapped_verdict(comps, partial, "no line has two computed points", "points computed per line")
    if unjudged:
        detail += f"; not judged on this grid: {', '.join(unjudged)}"
    return V.claim(cid, text, verdict, detail + one_seed_note(comps), comps)


def _steeper_claim(results, steep: str, flat: str, cid: str = "C13b"):
    """C13b by the project's rule: on each (backbone, method, size) line computed on both datasets, the
    per-seed slope (clean score − score at the highest rate both share, per unit of rate) on `steep`
    minus that on `flat`, paired over seeds; Holm across the lines (`verdicts.combine`). A line with
    points still missing on either dataset can refute the claim but never support it."""
    lines = {}
    for r in results:
        labels = r.cell.labels
        key = (labels["backbone"], labels["method"], labels["size"])
        lines.setdefault(key, {}).setdefault(labels["dataset"], {})[labels["x"]] = r
    comps, partial = [], []
    for (backbone, method, size), per in lines.items():
        if steep not in per or flat not in per:
            continue
        done = {d: sorted(x for x, r in pts.items() if r.n) for d, pts in per.items()}
        if any(len(done[d]) < len(per[d]) for d in (steep, flat)):
            partial.append(f"{method} {size}")
        xs = sorted(set(done[steep]) & set(done[flat]))
        if len(xs) < 2:
            continue
        lo, hi = xs[0], xs[-1]

        def slopes(d):
            a, b = per[d][lo].values, per[d][hi].values
            return {s: (a[s] - b[s]) / (hi - lo) for s in a if a[s] is not None and b.get(s) is not None}
        ss, sf = slopes(steep), slopes(flat)
        res = stats.paired_t([ss[s] - sf[s] for s in sorted(set(ss) & set(sf))])
        if not res.n:
            continue
        detail = (f"{res.mean:+.3f} [{res.lo:+.3f}, {res.hi:+.3f}] per unit rate, {res.n} paired seeds"
                  if res.interval else f"1 seed: {res.mean:+.3f} per unit rate (no interval)")
        comps.append({"backbone": backbone, "method": method, "size": size, "rates": [lo, hi],
                      **V.comparison(res, f"{detail} ({method} {size}, rates {lo}–{hi})")})
    verdict, detail = _gapped_verdict(comps, partial, f"no line has two rates computed on both {steep} and {flat}",
                                      "lines with points still missing")
    return V.claim(cid, f"{steep} drops faster than {flat} (paper §4.6)", verdict, detail + one_seed_note(comps), comps)


def _size_claim(results, ctx, cid="C11"):
    comps = []
    for r in results:
        n = r.cell.labels.get("size")
        for smaller in ("n=200", "n=500"):
            if (n, smaller) not in (("n=500", "n=200"), ("n=1000", "n=500")):
                continue
            key = {k: v for k, v in r.cell.labels.items() if k != "size"}
            other = one(results, size=smaller, **key)
            if other is not None:
                comps.append({**key, "better": n, "worse": smaller, **V.compare(r, other)})
    v, d = V.combine(comps)
    if not comps:
        v, d = V.NOT_COMPUTED, f"profile `{ctx.profile.name}` draws sizes {list(ctx.profile.figure_sizes)} only"
    return V.claim(cid, "1000 > 500 > 200 at every point (paper §4.5, §4.6)", v, d, comps)


def _backbone_claim(results, ctx, cid="C12"):
    if len(ctx.profile.backbones) < 2:
        return V.claim(cid, "LLaMA3-8B > GPT-2 M > GPT-2 S", V.NOT_COMPUTED,
                       f"profile `{ctx.profile.name}` has one backbone")
    order = [b.label for b in ctx.profile.backbones]
    comps = []
    for r in results:
        if r.cell.labels.get("backbone") not in order[1:]:
            continue
        prev = order[order.index(r.cell.labels["backbone"]) - 1]
        key = {k: v for k, v in r.cell.labels.items() if k != "backbone"}
        other = one(results, backbone=prev, **key)
        if other is not None:
            comps.append({**key, "better": r.cell.labels["backbone"], "worse": prev, **V.compare(r, other)})
    v, d = V.combine(comps)
    return V.claim(cid, "LLaMA3-8B > GPT-2 M > GPT-2 S (paper §4.5–4.7, §4.9)", v, d, comps)


def _figure_body(ctx, results, name, xname):
    body = [f"![{name}]({name}.png)", "", "Values (test primary metric, %):", ""]
    body += T.pivot(results, ("backbone", "dataset", "method", "size"), ("x",), col_name=lambda ck: f"{xname} {ck[0]}")
    stand_in = [f"{DATASET_LABEL[k]} → {DATASET_LABEL[v]}" for k, v in ctx.profile.alias.items()]
    if stand_in:
        body += ["", f"Stand-ins in this profile: {', '.join(stand_in)} (labels keep the paper's panel names)."]
    return body


def fig4_render(ctx, results):
    chosen = {b.label: (ctx.lr_selection.get(b.name, {}).get("adapter") or {}).get("chosen")
              for b in ctx.profile.backbones}

    def peak_pairs(xs, backbone):
        """The peak beats its neighbours and the curve falls after it; the peak is the paper's 2e-4, or on a
        grid without it (a profile's shifted grid) the LR the profile chose on LoRA's dev score."""
        peak = 2e-4 if 2e-4 in xs else chosen.get(backbone)
        if peak not in xs or xs.index(peak) in (0, len(xs) - 1):
            return None
        i = xs.index(peak)
        return [(peak, xs[i - 1])] + [(xs[j], xs[j + 1]) for j in range(i, len(xs) - 1)]
    os.makedirs(ctx.out, exist_ok=True)
    _curves_png(ctx, results, "fig4", "learning rate", True)
    claims = [_ordered_claim(results, "C10", "rises to a peak near 2e-4, falls at 5e-4 and 1e-3 (paper §4.5; on a "
                             "shifted grid the peak is the profile's chosen LR)", peak_pairs),
              _size_claim(results, ctx), _backbone_claim(results, ctx)]
    T.write(ctx.out, "fig4", "Figure 4: learning-rate sensitivity", ctx, _figure_body(ctx, results, "fig4", "lr"),
            claims, results, doc=doc_of(fig4_cells))


def fig5_render(ctx, results):
    def each_rate_worse(xs, backbone):
        return list(zip(xs, xs[1:]))
    os.makedirs(ctx.out, exist_ok=True)
    _curves_png(ctx, results, "fig5", "missing rate", False)
    claims = [_ordered_claim(results, "C13", "monotone decrease with missing rate (paper §4.6)", each_rate_worse),
              _size_claim(results, ctx), _backbone_claim(results, ctx)]
    claims.append(_steeper_claim(results, "PLONER", "SemEval"))
    T.write(ctx.out, "fig5", "Figure 5: robustness to missing words", ctx, _figure_body(ctx, results, "fig5", "rate"),
            claims, results, doc=doc_of(fig5_cells))


def fig6_cells(ctx):
    """Figure 6: reliability diagrams — panels {20News, WNUT17} × backbone (and SemEval, the comparison's
    dataset, as an extra panel), LoRA vs +UM vs Ours at the largest size, seed 0, drawn from the runs'
    per-example records (test); each curve's legend carries the run's ECE. No new runs (table5/table6's)."""
    n = ctx.profile.sizes[-1]
    cells = []
    for b in ctx.profile.backbones:
        for d in ("20news", "wnut17", "semeval"):
            for m in (P.LORA, P.UM, P.OURS):
                cells.append(train_cell(ctx, {"backbone": b.label, "dataset": DATASET_LABEL[d], "method": m.label},
                                        b, d, m, n, seeds=ctx.profile.seeds[:1], metric="test.ece"))
    return cells


def _confidences(path: str):
    """(confidence, correct) over every scored test target (examples; NER: scored words) of a run's
    per-example record."""
    test = A.load_record(path)["test"]
    return test.probs.max(-1), test.probs.argmax(-1) == test.labels


def fig6_render(ctx, results):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    os.makedirs(ctx.out, exist_ok=True)
    panels = []
    for r in results:
        key = (r.cell.labels["dataset"], r.cell.labels["backbone"])
        if key not in panels:
            panels.append(key)
    fig = Figure(figsize=(5 * max(1, len(panels)), 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    bins, curves, drawn = 15, {}, set()
    for ax, (d, b) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        for r in by(results, dataset=d, backbone=b):
            path = r.records.get(r.cell.specs[0].get("seed", 0)) if r.cell.specs else None
            if path is None or r.mean is None:
                continue
            conf, correct = map(np.asarray, _confidences(path))
            idx = np.minimum((conf * bins).astype(int), bins - 1)
            xs, ys = [], []
            for k in range(bins):
                sel = idx == k
                if sel.any():
                    xs.append(float(conf[sel].mean()))
                    ys.append(float(correct[sel].mean()))
            curves[f"{d}|{b}|{r.cell.labels['method']}"] = {"confidence": xs, "accuracy": ys}
            drawn.add((d, b))
            ax.plot(xs, ys, marker="o", label=f"{r.cell.labels['method']} (ECE {100 * r.mean:.2f}%)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{d} · {b} (test)")
        if (d, b) in drawn:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(ctx.out, "fig6.png"), dpi=110)
    body = ["![fig6](fig6.png)", "", "Test ECE (%, 15 bins, top-label) of each curve:", ""]
    body += T.pivot(results, ("backbone", "method"), ("dataset",))
    stand_in = [f"{DATASET_LABEL[k]} → {DATASET_LABEL[v]}" for k, v in ctx.profile.alias.items()]
    if stand_in:
        body += ["", f"Stand-ins in this profile: {', '.join(stand_in)}."]
    c14 = pair_claim(results, "C14", "+UM closer to the diagonal than LoRA (lower ECE) (paper §4.7)", P.UM.label,
                      P.LORA.label, higher=False)
    gaps = {}
    for r in by(results, method=P.UM.label):
        if r.cell.labels["dataset"] not in ("20News", "WNUT17"):       # the paper's two panels
            continue
        lora = one(results, method=P.LORA.label, dataset=r.cell.labels["dataset"], backbone=r.cell.labels["backbone"])
        if lora is not None and lora.mean is not None and r.mean is not None:
            gaps.setdefault(r.cell.labels["backbone"], {})[r.cell.labels["dataset"]] = lora.mean - r.mean
    largest = [max(g, key=g.get) == "WNUT17" for g in gaps.values() if len(g) >= 2]
    c14b = V.claim("C14b", "largest LoRA→+UM ECE gap on WNUT17 (paper §4.7)",
                   V.NOT_COMPUTED if not largest else V.CANNOT_TELL,
                   f"largest on WNUT17 for {sum(largest)}/{len(largest)} backbones (one seed per panel: no noise "
                   f"estimate)" if largest else "needs both panels")
    T.write(ctx.out, "fig6", "Figure 6: reliability diagrams", ctx, body, [c14, c14b, _backbone_claim(results, ctx)],
            results, {"curves": curves}, doc=doc_of(fig6_cells))
