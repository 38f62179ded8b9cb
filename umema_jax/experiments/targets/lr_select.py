"""Learning-rate selection: the LoRA baseline over the grid, chosen on dev (the fairness rule)."""
from __future__ import annotations

import os

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import tables as T
from umema_jax.experiments import profiles as P
from umema_jax.experiments import specs as S
from umema_jax.experiments.aggregate import Cell
from umema_jax.train.outputs import write_json
from umema_jax.experiments.targets.core import LR_FILE, Context, by, doc_of, train_cell


def lr_select_cells(ctx: Context) -> list:
    """Learning-rate selection (docs/EXPERIMENTS.md): the LoRA baseline on SemEval, n = 1000 (profile's
    selection size), seed 0, over the profile's grid; the LR with the best *dev* primary metric is fixed
    for every adapter-family method (LoRA, +UM, +EMA, Ours, SplitLoRA, MiLoRA, FLoRA, ALoRA). Full-weight
    methods (full FT, LISA) get their own grid, scored the same way on the first implemented of them.
    The choice reads dev scores only, of LoRA (or the full-weight baseline), never test, never Ours."""
    p, cells = ctx.profile, []
    full_weight = next((m for m in P.BASELINES if m.family == "full_weight" and P.method_name(m, ctx.implemented)),
                       None)
    for b in p.backbones:
        for lr in p.lr_grid:
            cells.append(train_cell(ctx, {"backbone": b.label, "family": "adapter", "method": "LoRA", "lr": lr},
                                    b, "semeval", P.LORA, p.selection_size, seeds=(0,), lr=lr, metric="dev.{primary}"))
        if full_weight is None:
            cells.append(Cell({"backbone": b.label, "family": "full_weight", "method": "full FT / LISA",
                               "lr": "-"}, metric="dev.{primary}", status=A.NOT_IMPLEMENTED))
            continue
        for lr in p.full_weight_lr_grid:
            cells.append(train_cell(ctx, {"backbone": b.label, "family": "full_weight", "method": full_weight.label,
                                          "lr": lr}, b, "semeval", full_weight, p.selection_size, seeds=(0,), lr=lr,
                                    metric="dev.{primary}"))
    return cells


def choose_lr(results: list) -> dict:
    """{'grid', 'dev_scores', 'chosen', 'complete', 'edge'}: best dev score, ties to the lower LR."""
    scores = {r.cell.labels["lr"]: r.mean for r in results}
    grid = list(scores)
    done = {lr: s for lr, s in scores.items() if s is not None}
    out = {"grid": grid, "dev_scores": {repr(k): v for k, v in scores.items()}, "chosen": None,
           "complete": len(done) == len(grid) and bool(grid), "method": results[0].cell.labels["method"] if results
           else None, "selected_on": "dev primary metric (test never read)"}
    if out["complete"]:
        best = max(done.values())
        out["chosen"] = min(lr for lr, s in done.items() if s == best)
        out["edge"] = out["chosen"] in (min(grid), max(grid))
    return out


CONVERGED_RULE = ("A run has converged when its best dev evaluation is not its last one, or when the two "
                  "evaluations before its last are within 0.5 points of its best (dev has flattened).")


def converged(curve: list) -> bool | None:
    """CONVERGED_RULE on one dev curve (fractions); None without a curve."""
    if not curve:
        return None
    best = max(curve)
    return curve.index(best) < len(curve) - 1 or (len(curve) >= 3 and best - min(curve[-3:-1]) <= 0.005)


def lr_tables(results: list) -> list:
    """Dev score by LR, one markdown table per method family (each over its own grid, LRs ascending)."""
    body = []
    for fam in ("adapter", "full_weight"):
        lr = lambda r: r.cell.labels["lr"] if isinstance(r.cell.labels["lr"], float) else float("inf")  # noqa: E731
        rs = sorted(by(results, family=fam), key=lr)      # '-' (not implemented) last
        if rs:
            body += T.pivot(rs, ("backbone", "family", "method"), ("lr",), col_name=lambda ck: f"lr {ck[0]:g}"
                            if isinstance(ck[0], float) else f"lr {ck[0]}") + [""]
    return body


def lr_select_render(ctx: Context, results: list) -> None:
    selection, body = {}, []
    for b in ctx.profile.backbones:
        selection[b.name] = {}
        for fam in ("adapter", "full_weight"):
            rs = [r for r in by(results, backbone=b.label, family=fam) if not r.cell.status]
            if not rs:
                selection[b.name][fam] = {"chosen": None, "status": "not implemented"}
                continue
            sel = choose_lr(rs)
            curves = {r.cell.labels["lr"]: S.load_results(ctx.root, r.cell.specs[0], ctx.ledger)
                      for r in rs if r.cell.specs}
            sel["dev_curves"] = {repr(lr): [h["dev_primary"] for h in (res or {}).get("dev_history") or []]
                                 for lr, res in curves.items()}
            # table2's fact: did the chosen run converge (CONVERGED), or does it need more epochs?
            res = curves.get(sel["chosen"]) or {}
            if res:
                sel["best_step"], sel["steps"] = res.get("best_step"), res.get("steps")
                sel["best_is_last"] = res.get("best_step") == res.get("steps")
                sel["converged"] = converged(sel["dev_curves"][repr(sel["chosen"])])
            selection[b.name][fam] = sel
    os.makedirs(ctx.out, exist_ok=True)
    merged = dict(ctx.lr_selection)
    merged.update(selection)
    write_json(os.path.join(ctx.out, LR_FILE), merged)      # read by every other target of the profile
    ctx.lr_selection = merged
    body += ["Dev score (primary metric, %) of the baseline at each learning rate; the best is chosen "
             "(ties to the lower LR) and used by every table of the profile.", ""]
    body += lr_tables(results)
    for b, fams in selection.items():
        for fam, sel in fams.items():
            if sel.get("chosen") is not None:
                edge = " (at the edge of the grid: extend it)" if sel.get("edge") else ""
                conv = {True: "converged", False: "NOT converged: more epochs", None: "convergence unknown"}[
                    sel.get("converged")]
                body.append(f"- {b} {fam}: **chosen {sel['chosen']:g}**{edge}; best step {sel.get('best_step')} of "
                            f"{sel.get('steps')}; {conv}")
            else:
                body.append(f"- {b} {fam}: not chosen ({sel.get('status') or 'grid incomplete'})")
    label = {b.name: b.label for b in ctx.profile.backbones}
    curves = [(label[b], fam, lr, c) for b, fams in selection.items() for fam, sel in fams.items()
              for lr, c in (sel.get("dev_curves") or {}).items() if c]
    if curves:
        body += ["", f"Dev curves (primary metric %, one value per evaluation). {CONVERGED_RULE}", "",
                 "| backbone | family | lr | dev by evaluation | best at | converged |", "|---|---|---|---|---|---|"]
        for b, fam, lr, c in curves:
            body.append(f"| {b} | {fam} | {float(lr):g} | {' '.join(f'{100 * x:.1f}' for x in c)} | "
                        f"{1 + c.index(max(c))} of {len(c)} | {'yes' if converged(c) else 'no'} |")
    T.write(ctx.out, "lr_select", "Learning-rate selection (docs/EXPERIMENTS.md)", ctx, body, [], results,
            {"selection": selection}, doc=doc_of(lr_select_cells))
