"""Every table and figure of the paper as data: profile -> cells (-> runs) and an aggregator.

A target is a `Target(name, title, doc, cells, render)`: `cells(ctx)` lists the
cells (each with one RunSpec per seed, or a status such as "not implemented"),
the runner trains what they need, and `render(ctx, results)` writes
`<out>/<name>.md` (+ `.png` for figures) and the JSON sidecar. The list of
targets and what each holds follows `docs/EXPERIMENTS.md`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import profiles as P
from umema_jax.experiments import specs as S
from umema_jax.experiments import stats
from umema_jax.experiments.aggregate import Cell
from umema_jax.train.outputs import write_json

LR_FILE = "lr_selection.json"
CLS, NER = ("20news", "semeval"), ("wnut17", "ploner")
DATASET_LABEL = {"20news": "20News", "semeval": "SemEval", "wnut17": "WNUT17", "ploner": "PLONER"}


class Context:
    """What a target needs to expand: the profile, where runs and outputs live, the chosen LRs."""

    def __init__(self, profile: P.Profile, root: str, out: str, implemented=None):
        self.profile, self.root, self.out = profile, os.path.abspath(root), os.path.abspath(out)
        self.implemented = P.implemented_methods() if implemented is None else frozenset(implemented)
        self.ledger = os.path.join(self.out, S.LEDGER_DIR)      # finished runs' config + results (committed)
        self.lr_selection = {}
        path = os.path.join(self.out, LR_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.lr_selection = json.load(f)

    def lr(self, backbone: P.Backbone, family: str) -> float | None:
        """The LR chosen on dev by `lr_select` for this backbone and method family, or None (not yet)."""
        entry = self.lr_selection.get(backbone.name, {}).get(family) or {}
        grid = list(self.profile.lr_grid if family == "adapter" else self.profile.full_weight_lr_grid)
        if entry.get("chosen") is None or entry.get("grid") != grid:
            return None                    # not chosen, or chosen on another grid (stale)
        return float(entry["chosen"])

    def lr_note(self) -> str:
        parts = []
        for b in self.profile.backbones:
            for fam in ("adapter", "full_weight"):
                lr = self.lr(b, fam)
                if lr is not None:
                    parts.append(f"{b.label} {fam.replace('_', '-')} methods {lr:g}")
        chosen = "; ".join(parts) or "not chosen yet (run `lr_select`)"
        return (f"{chosen} — chosen on the dev score of the LoRA baseline (full-weight methods: their own grid), "
                f"SemEval n={self.profile.selection_size}, seed 0; never on test, never on the proposed method")


@dataclasses.dataclass
class Target:
    name: str
    title: str
    cells: Callable                      # ctx -> list[Cell]
    render: Callable                     # (ctx, list[CellResult]) -> None (writes outputs)
    uses_lr: bool = True
    extra_specs: Callable = None         # ctx -> list[RunSpec] not tied to a cell (benchmarks)

    @property
    def doc(self) -> str:
        return (self.cells.__doc__ or "").strip()


# --------------------------------------------------------------------------- cell builders

def train_spec(ctx: Context, backbone: P.Backbone, setup: P.DatasetSetup, method: str, size: int, seed: int,
               lr: float, extra: tuple = (), method_overrides: tuple = ()) -> S.RunSpec:
    p = ctx.profile
    return S.make_spec(setup.config_file, p.common, backbone.overrides, setup.overrides,
                       p.method_overrides.get(method, ()), method_overrides,
                       {"model.name": backbone.name, "model.method": method, "data.name": setup.name,
                        "data.train_size": int(size), "seed": int(seed), "optim.learning_rate": float(lr)}, extra)


def train_cell(ctx: Context, labels: dict, backbone: P.Backbone, dataset: str, method: P.Row, size: int,
               seeds=None, lr: float | None = None, metric: str = "test.{primary}", extra: tuple = ()) -> Cell:
    """A cell of `method` on `dataset`: one run per seed at the chosen (or given) LR, or a status."""
    p = ctx.profile
    seeds = p.seeds_for(method, dataset, size) if seeds is None else seeds
    setup = p.dataset(dataset)
    if setup is None:
        return Cell(labels, metric=metric, status=A.NOT_IN_PROFILE)
    name = P.method_name(method, ctx.implemented)
    if name is None:
        return Cell(labels, metric=metric, status=A.NOT_IMPLEMENTED,
                    note=f"no model.method {method.method!r} yet")
    specs = lambda rate: [train_spec(ctx, backbone, setup, name, size, s, rate, extra,   # noqa: E731
                                     method.overrides) for s in seeds]
    chosen = lr if lr is not None else ctx.lr(backbone, method.family)
    if chosen is None:
        grid = p.lr_grid if method.family == "adapter" else p.full_weight_lr_grid
        return Cell(labels, metric=metric, status=A.PENDING_LR, note="run lr_select first",
                    placeholder=specs(grid[0]))
    return Cell(labels, specs=specs(chosen), metric=metric)


def _size_label(n) -> str:
    return f"n={n}"


def grid_cells(ctx: Context, methods, datasets, metric="test.{primary}", sizes=None) -> list:
    cells = []
    for b in ctx.profile.backbones:
        for m in methods:
            for d in datasets:
                if ctx.profile.dataset(d) is None or (d not in ctx.profile.datasets):
                    continue                  # stated in the deviations (datasets the profile runs)
                for n in (sizes or ctx.profile.sizes):
                    cells.append(train_cell(ctx, {"backbone": b.label, "method": m.label,
                                                  "dataset": DATASET_LABEL[d], "size": _size_label(n)},
                                            b, d, m, n, metric=metric))
    return cells


def by(results, **labels):
    return [r for r in results if all(r.cell.labels.get(k) == v for k, v in labels.items())]


def one(results, **labels):
    found = by(results, **labels)
    return found[0] if found else None


# --------------------------------------------------------------------------- lr_select

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
            body += A.pivot(rs, ("backbone", "family", "method"), ("lr",), col_name=lambda ck: f"lr {ck[0]:g}"
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
    A.write(ctx.out, "lr_select", "Learning-rate selection (docs/EXPERIMENTS.md)", ctx, body, [], results,
            {"selection": selection}, doc=TARGETS["lr_select"].doc)


# --------------------------------------------------------------------------- table1 / table2

def table1_cells(ctx: Context) -> list:
    """Table 1: backbones and methods — parameters, layers, hidden size, and trainable parameters per method
    per backbone, from shapes alone (`jax.eval_shape`: no weights, no runs). Head sized for SemEval (19
    classes). The `paper` profile lists its three backbones whatever machine runs it."""
    return []


def _shape_counts(backbone: str, method: str) -> dict | None:
    from umema_jax.memory_estimate import estimate
    try:
        r = estimate(backbone, method, devices=1)
    except Exception as err:  # noqa: BLE001 - a method the estimator does not know
        return {"error": f"{type(err).__name__}: {err}"}
    return {"frozen": r["params_frozen"], "trainable": r["params_trainable"],
            "memory_gib_bf16": r["per_device_total_gib"]}


def table1_render(ctx: Context, results: list) -> None:
    from umema_jax.backbones.config import get_backbone_config
    rows, cells = [], []
    methods = P.ABLATION + P.BASELINES
    head = ["backbone", "layers", "hidden", "params (backbone)"] + [m.label for m in methods]
    rows.append("| " + " | ".join(head) + " |")
    rows.append("|" + "---|" * len(head))
    lora_counts = {}
    for b in ctx.profile.backbones:
        cfg = get_backbone_config(b.name)
        line, base = [b.label, str(cfg.num_layers), str(cfg.hidden_size)], None
        entries = []
        for m in methods:
            name = P.method_name(m, ctx.implemented)
            counts = _shape_counts(b.name, name) if name else None
            if counts and "trainable" in counts:
                base = base or counts["frozen"]
                entries.append(f"{counts['trainable']:,}")
                if m is P.LORA:
                    lora_counts[b.label] = counts
            else:
                entries.append("not implemented" if name is None else "n/a")
            cells.append({"labels": {"backbone": b.label, "method": m.label}, "model.method": name,
                          "counts": counts, "status": "not implemented" if name is None else "computed"})
        line.append(f"{base:,}" if base else "n/a")
        rows.append("| " + " | ".join(line + entries) + " |")
    body = ["Trainable parameters per method (LoRA r = 8 on the default targets, task head for 19 classes, UM "
            "and EMA branches); parameters of the backbone without its LM head. From shapes only.", ""] + rows
    claims = []
    ours = [c for c in cells if c["labels"]["method"] == P.OURS.label and c["counts"] and "trainable" in c["counts"]]
    if ours:
        details = []
        for c in ours:
            lora = lora_counts.get(c["labels"]["backbone"])
            extra = c["counts"]["trainable"] - lora["trainable"] if lora else None
            details.append(f"{c['labels']['backbone']}: +{extra:,} trainable over LoRA = "
                           f"{100 * extra / c['counts']['frozen']:.3f} % of the backbone" if extra is not None else "")
        small = all(lora_counts.get(c["labels"]["backbone"]) and (c["counts"]["trainable"] - lora_counts[
            c["labels"]["backbone"]]["trainable"]) < 0.01 * c["counts"]["frozen"] for c in ours)
        claims.append(A.claim("C17", "\"minimal\" parameter overhead (paper §5)", A.SUPPORTS if small else A.CONTRADICTS,
                              "; ".join(details) + " (threshold: < 1 % of the backbone's parameters)"))
    A.write(ctx.out, "table1", "Table 1: backbones and methods (parameters from shapes)", ctx, body, claims, [],
            {"rows": cells}, doc=TARGETS["table1"].doc)


def table2_cells(ctx: Context) -> list:
    """Table 2: the resolved setup of each profile and backbone — data, lengths, optimiser, schedule,
    epochs and early stopping, and the learning rates with how they were chosen (the grid, every dev score,
    the choice, whether the best dev epoch was the last). Needs only the `lr_select` runs."""
    return lr_select_cells(ctx)


def table2_render(ctx: Context, results: list) -> None:
    p = ctx.profile
    keys = ("data.max_len", "data.dev_size", "data.test_size", "train.epochs", "train.batch_size",
            "train.early_stopping_patience", "optim.warmup_ratio", "optim.weight_decay", "optim.grad_clip_norm",
            "model.lora.rank", "model.lora.alpha", "model.pooling", "model.dtype")
    body = ["Resolved configuration of one run per backbone × dataset (config file + the profile's overrides; "
            "every run of the profile differs from it only in method, size, seed and LR).", ""]
    head = ["backbone", "dataset", "config"] + list(keys)
    body += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    setups = []
    for b in p.backbones:
        for d, setup in p.datasets.items():
            spec = train_spec(ctx, b, setup, "lora", p.sizes[-1], 0, p.lr_grid[0])
            try:
                c = S.load_config(spec)
                vals = [str(c[k.split(".")[0]][k.split(".")[1]] if k.count(".") == 1 else
                            c.model.lora[k.split(".")[-1]]) for k in keys]
            except Exception as err:  # noqa: BLE001
                vals = [f"error: {err}"] + [""] * (len(keys) - 1)
            setups.append({"backbone": b.label, "dataset": d, "config_file": setup.config_file,
                           "values": dict(zip(keys, vals))})
            body.append("| " + " | ".join([b.label, DATASET_LABEL[d], setup.config_file] + vals) + " |")
    body += ["", f"Sizes {list(p.sizes)}, seeds {list(p.seeds)}; missing rates {list(p.missing_rates)}.", "",
             "### Learning rates", "",
             f"Grid (adapter family): {list(p.lr_grid)}; full-weight family: {list(p.full_weight_lr_grid)}. "
             f"Selection cell: SemEval, n = {p.selection_size}, seed 0, dev primary metric of the LoRA baseline "
             "(docs/EXPERIMENTS.md).", ""]
    body += lr_tables(results)
    for b in p.backbones:
        for fam in ("adapter", "full_weight"):
            sel = ctx.lr_selection.get(b.name, {}).get(fam, {})
            lr = ctx.lr(b, fam)
            if lr is not None:
                last = sel.get("best_is_last")
                epochs = ("best dev step = last step: more epochs may help" if last else
                          f"best dev step {sel.get('best_step')} of {sel.get('steps')}")
                body.append(f"- {b.label}, {fam.replace('_', '-')} methods: **{lr:g}** ({epochs})")
            else:
                body.append(f"- {b.label}, {fam.replace('_', '-')} methods: "
                            f"{sel.get('status') or 'not chosen yet (run lr_select)'}")
    A.write(ctx.out, "table2", "Table 2: resolved setup and learning-rate selection", ctx, body, [], results,
            {"setups": setups}, doc=TARGETS["table2"].doc)


# --------------------------------------------------------------------------- tables 3-6

def _best_claim(results, cid, text, ours_label, datasets, mode="every", higher=True):
    """Ours vs every other row with numbers, per (backbone, dataset, size) cell."""
    comps = []
    for r in results:
        if r.cell.labels["method"] != ours_label or r.cell.labels["dataset"] not in datasets:
            continue
        key = {k: r.cell.labels[k] for k in ("backbone", "dataset", "size")}
        for other in by(results, **key):
            if other is r or other.cell.status in (A.NOT_IMPLEMENTED, A.NOT_IN_PROFILE):
                continue
            comps.append({**key, "vs": other.cell.labels["method"], **A.compare(r, other, higher)})
    verdict, detail = A.combine(comps, mode)
    return A.claim(cid, text, verdict, detail + _one_seed_note(comps), comps)


def _one_seed_note(comps) -> str:
    return "; 1 seed per cell: no noise estimate" if any(c["detail"].startswith("1 seed") for c in comps) else ""


def _pair_claim(results, cid, text, better, worse, mode="every", higher=True, metric=None):
    comps = []
    for r in results:
        if r.cell.labels["method"] != better or (metric and r.cell.labels.get("metric") != metric):
            continue
        key = {k: v for k, v in r.cell.labels.items() if k != "method"}
        other = one(results, method=worse, **key)
        if other is None:
            continue
        comps.append({**key, "better": better, "worse": worse, **A.compare(r, other, higher)})
    verdict, detail = A.combine(comps, mode)
    return A.claim(cid, text, verdict, detail + _one_seed_note(comps), comps)


def _table(ctx, results, name, title, body_note, claims, doc, extra_body=(), all_cells=None):
    body = [body_note, ""] + A.pivot(results, ("backbone", "method"), ("dataset", "size"))
    absent = [DATASET_LABEL[d] for d in (CLS + NER) if d not in ctx.profile.datasets]
    body += ["", "mean ± std over seeds (test, %); `– (k/N runs)` = not computed yet, `not implemented` = the "
             "method is not in the code yet."]
    if absent:
        body += [f"Datasets not in profile `{ctx.profile.name}`: {', '.join(absent)}."]
    body += list(extra_body)
    A.write(ctx.out, name, title, ctx, body, claims, results if all_cells is None else all_cells, doc=doc)


# Table 3's second part : every method at the LR-selection cell with its calibration and cost
# beside its accuracy; (column, results.json path). Same runs as the first part: no extra training.
METHOD_PROFILE_METRICS = (("Acc", "test.{primary}"), ("ECE", "test.ece"), ("NLL", "test.nll"),
                          ("ECE after TS", "test_posthoc_ts.ece"), ("NLL after TS", "test_posthoc_ts.nll"),
                          ("trainable params", "params.trainable"), ("s / epoch", "mean_train_time_per_epoch_s"))


def method_profile_cells(ctx, methods, seeds=None) -> list:
    """Each method on SemEval at the selection size, every seed (or `seeds`), one cell per
    METHOD_PROFILE_METRICS column; the row says the LR it ran at (adapter methods share LoRA's, full-weight
    methods have their own)."""
    if "semeval" not in ctx.profile.datasets:
        return []
    cells = []
    for b in ctx.profile.backbones:
        for m in methods:
            lr = ctx.lr(b, m.family)
            for label, path in METHOD_PROFILE_METRICS:
                cells.append(train_cell(ctx, {"part": "method profile", "backbone": b.label, "method": m.label,
                                              "lr": "–" if lr is None else f"{lr:g}", "metric": label},
                                        b, "semeval", m, ctx.profile.selection_size, seeds=seeds, metric=path))
    return cells


def table3_cells(ctx):
    """Table 3: classification (20News, SemEval; accuracy, mean ± std) of the baselines (SplitLoRA, LISA,
    MiLoRA, FLoRA, ALoRA, full FT), LoRA and Ours at every train size. LoRA and Ours are table5's runs.
    A second table puts each method's test ECE and NLL (raw and after post-hoc temperature scaling),
    trainable parameters and training time per epoch beside its accuracy, on SemEval at the selection size,
    with one seed of LISA, FLoRA and SplitLoRA at twice the epochs (budget check)."""
    return grid_cells(ctx, P.COMPARISON, CLS) + method_profile_cells(ctx, P.COMPARISON) + \
        method_profile_cells(ctx, P.budget_rows(ctx.profile), seeds=(0,))


def _method_profile_table(results) -> list:
    profile = [r for r in results if r.cell.labels.get("part") == "method profile"]
    if not profile:
        return []
    return ["", "Each method on SemEval at the LR-selection size: test accuracy and calibration (%, NLL in nats; "
            "after TS = temperature fitted on dev NLL), trainable parameters and the training run's own mean "
            "time per epoch (s; wall time of whatever machine ran it, not a benchmark). `n/a (no …)`: a run "
            "recovered from published outputs, which kept only the metrics the tables showed.", ""] \
        + A.pivot(profile, ("backbone", "method", "lr"), ("metric",))


def table3_render(ctx, results):
    accuracy = [r for r in results if r.cell.labels.get("part") != "method profile"]
    claims = [_best_claim(accuracy, "C5", "Ours best in every table3 cell (paper abstract, §4.3.1)", P.OURS.label,
                          [DATASET_LABEL[d] for d in CLS])]
    _table(ctx, accuracy, "table3", "Table 3: classification vs baselines (accuracy)", "Test accuracy.", claims,
           TARGETS["table3"].doc, extra_body=_method_profile_table(results), all_cells=results)


def table4_cells(ctx):
    """Table 4: NER (WNUT17, PLONER; span F1, mean ± std) of the baselines, LoRA and Ours at every train size.
    LoRA and Ours are table6's runs."""
    return grid_cells(ctx, P.COMPARISON, NER)


def table4_render(ctx, results):
    claims = [_best_claim(results, "C7", "Ours best span F1 in every table4 cell (paper §4.3.2)", P.OURS.label,
                          [DATASET_LABEL[d] for d in NER])]
    # larger margin on PLONER at 500/1000
    margins = []
    for size in ("n=500", "n=1000"):
        for b in ctx.profile.backbones:
            m = {}
            for d in ("WNUT17", "PLONER"):
                ours = one(results, backbone=b.label, dataset=d, size=size, method=P.OURS.label)
                others = [r.mean for r in by(results, backbone=b.label, dataset=d, size=size)
                          if r.cell.labels["method"] != P.OURS.label and r.mean is not None]
                if ours is not None and ours.mean is not None and others:
                    m[d] = ours.mean - max(others)
            if len(m) == 2:
                margins.append(m["PLONER"] > m["WNUT17"])
    verdict = A.NOT_COMPUTED if not margins else (A.CANNOT_TELL if ctx.profile.seeds[1:] == () else
                                                  (A.SUPPORTS if all(margins) else A.CONTRADICTS))
    claims.append(A.claim("C7b", "larger margin on PLONER than WNUT17 at 500/1000 (paper §4.3.2)", verdict,
                          f"PLONER margin larger in {sum(margins)}/{len(margins)} backbone × size cells"))
    _table(ctx, results, "table4", "Table 4: NER vs baselines (span F1)", "Test span F1 (seqeval strict IOB2).",
           claims, TARGETS["table4"].doc)


def table5_cells(ctx):
    """Table 5: classification ablation — LoRA, +UM, +EMA, +UM+EMA (Ours) on 20News and SemEval at every
    size, accuracy mean ± std over seeds. The most important cell of the cpu profile is SemEval n = 1000."""
    return grid_cells(ctx, P.ABLATION, CLS)


def _ablation_claims(results, cid, text_each, mode_um, mode_ema):
    return [
        _pair_claim(results, cid + "a", f"+UM > LoRA ({text_each})", P.UM.label, P.LORA.label, mode_um),
        _pair_claim(results, cid + "b", f"+EMA > LoRA ({text_each})", P.EMA.label, P.LORA.label, mode_ema),
        _pair_claim(results, cid + "c", "both together best: Ours > +UM", P.OURS.label, P.UM.label),
        _pair_claim(results, cid + "d", "both together best: Ours > +EMA", P.OURS.label, P.EMA.label),
    ]


def table5_render(ctx, results):
    claims = _ablation_claims(results, "C8", "each module helps, L88", "every", "every")
    _table(ctx, results, "table5", "Table 5: classification ablation (accuracy)", "Test accuracy.", claims,
           TARGETS["table5"].doc)


def table6_cells(ctx):
    """Table 6: NER ablation — LoRA, +UM, +EMA, Ours on WNUT17 and PLONER at every size, span F1."""
    return grid_cells(ctx, P.ABLATION, NER)


def table6_render(ctx, results):
    claims = [_pair_claim(results, "C9a", "+UM > LoRA in every cell (paper §4.4.2)", P.UM.label, P.LORA.label, "every"),
              _pair_claim(results, "C9b", "+EMA > LoRA \"in most\" cells (paper §4.4.2)", P.EMA.label, P.LORA.label, "most")]
    _table(ctx, results, "table6", "Table 6: NER ablation (span F1)", "Test span F1 (seqeval strict IOB2).", claims,
           TARGETS["table6"].doc)


# --------------------------------------------------------------------------- table7

CAL_METRICS = (("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"))
# Table 7's rows: the paper's three, then the ablation's other two as extras (every variant's
# raw calibration next to LoRA + post-hoc TS); (label, method, results.json section)
CAL_ROWS = (("LoRA", P.LORA, "test"), ("LoRA + post-hoc TS", P.LORA, "test_posthoc_ts"), (P.OURS.label, P.OURS, "test"),
            ("+UM (extra)", P.UM, "test"), ("+EMA (extra)", P.EMA, "test"))
# Stability ablation rows (the stability study), SemEval only: the method as it was before a fix became the default.
STABILITY_ROWS = ((P.OURS_RAW_T.label, P.OURS_RAW_T, "test"), (P.OURS_SLOW_BRANCH.label, P.OURS_SLOW_BRANCH, "test"))
STABILITY_DATASETS = ("semeval",)
# Error detection: AUROC of telling misclassified from correct test targets by each score
AUROC_SCORES = (("max-prob", "auroc_error_maxprob"), ("ū", "auroc_error_u_bar"), ("u_ale", "auroc_error_u_ale"),
                ("u_epi", "auroc_error_u_epi"))


def table7_cells(ctx):
    """Table 7: calibration at the largest size — LoRA, LoRA + post-hoc temperature scaling (T fitted on dev
    NLL; read from the LoRA run's `test_posthoc_ts`), and Ours, on the four datasets, ECE / NLL / Brier
    (test), with the primary metric beside them; +UM and +EMA as extra rows. A second table: how well each
    uncertainty detects errors (AUROC; max-probability for every method, the UM scores where the model has
    them). No new runs: they are table5/table6's."""
    n = ctx.profile.sizes[-1]
    cells = []
    for b in ctx.profile.backbones:
        for d in CLS + NER:
            if d not in ctx.profile.datasets:
                continue
            for label, method, prefix in CAL_ROWS + (STABILITY_ROWS if d in STABILITY_DATASETS else ()):
                for mlabel, key in CAL_METRICS + (("Acc / F1", "{primary}"),):
                    cells.append(train_cell(ctx, {"part": "calibration", "backbone": b.label, "method": label,
                                                  "dataset": DATASET_LABEL[d], "metric": mlabel},
                                            b, d, method, n, metric=f"{prefix}.{key}"))
            for method in (P.LORA, P.UM, P.OURS) + (tuple(m for _, m, _ in STABILITY_ROWS)
                                                     if d in STABILITY_DATASETS else ()):
                for slabel, key in AUROC_SCORES[:1] if method is P.LORA else AUROC_SCORES:
                    cells.append(train_cell(ctx, {"part": "auroc", "backbone": b.label, "method": method.label,
                                                  "dataset": DATASET_LABEL[d], "score": slabel},
                                            b, d, method, n, metric=f"test.{key}"))
    return cells


def table7_render(ctx, results):
    cal = [r for r in results if r.cell.labels["part"] == "calibration"]
    auroc = [r for r in results if r.cell.labels["part"] == "auroc"]
    body = [f"Test calibration at n = {ctx.profile.sizes[-1]} (ECE in %, 15 equal-width bins, top-label; NER over "
            "the first sub-token of each word), mean ± std over seeds; the task's primary metric (accuracy or "
            "span F1, %) beside them.", ""]
    body += A.pivot(cal, ("backbone", "method"), ("dataset", "metric"))
    body += ["", "Error detection on test: AUROC (%) of telling misclassified from correct targets by each score "
             "(max-prob: 1 − max p; ū, u_ale, u_epi: the UM branch's uncertainties; 50 = chance).", ""]
    body += A.pivot(auroc, ("backbone", "method"), ("dataset", "score"))
    claims = []
    for cid, text, worse in (("C16", "Ours lower ECE, NLL and Brier than LoRA in every cell (paper §4.9)", "LoRA"),
                             ("extra", "(not a paper claim) Ours vs LoRA + post-hoc TS, same metrics",
                              "LoRA + post-hoc TS")):
        comps = [x for mlabel, _ in CAL_METRICS
                 for x in _pair_claim(cal, "", "", P.OURS.label, worse, higher=False,
                                      metric=mlabel)["comparisons"]]
        v, d = A.combine(comps)
        claims.append(A.claim(cid, text, v, d + _one_seed_note(comps), comps))
    A.write(ctx.out, "table7", "Table 7: calibration (ECE / NLL / Brier)", ctx, body, claims, results,
            doc=TARGETS["table7"].doc)


# --------------------------------------------------------------------------- figures

def _figure_seeds(ctx):
    return ctx.profile.seeds if ctx.profile.name == "paper" else ctx.profile.seeds[:1]


def _sweep_cells(ctx, xs, cell) -> list:
    """The figures' panels {SemEval, PLONER} × backbone, lines {LoRA, Ours} × size, points x in `xs`:
    `cell(labels, backbone, dataset, method, size, x)` makes each point's cell."""
    return [cell({"backbone": b.label, "dataset": DATASET_LABEL[d], "method": m.label, "size": _size_label(n),
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
    train and test (dev clean), y = test primary metric at the chosen LR, lines per size × {LoRA, Ours}.
    Needs a `data.missing_rate` config key; until it exists the non-zero rates read "not implemented"."""
    supported = P.missing_data_supported()

    def cell(labels, b, d, m, n, rate):
        if rate and not supported:
            return Cell(labels, status=A.NOT_IMPLEMENTED, note="no data.missing_rate key")
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


def _series_claims(results, cid_shape, shape_text, shape_fn, ctx):
    """Curve-shape claims judged on means per line; with one seed they can only be 'cannot tell'."""
    lines = {}
    for r in results:
        lines.setdefault((r.cell.labels["dataset"], r.cell.labels["backbone"], r.cell.labels["method"],
                          r.cell.labels["size"]), []).append(r)
    ok, total, computed = [], 0, 0
    for key, rs in lines.items():
        total += 1
        pts = [(r.cell.labels["x"], r.mean) for r in rs if r.mean is not None]
        if len(pts) == len(rs) and pts:
            computed += 1
            ok.append(shape_fn(pts))
    if not computed:
        verdict = A.NOT_COMPUTED
    elif not all(ok):
        verdict = A.CONTRADICTS if len(_figure_seeds(ctx)) > 1 else A.CANNOT_TELL
    else:
        verdict = A.SUPPORTS if computed == total and len(_figure_seeds(ctx)) > 1 else A.CANNOT_TELL
    return A.claim(cid_shape, shape_text, verdict, f"shape holds on {sum(ok)} of {computed} complete lines "
                   f"({total} lines; {len(_figure_seeds(ctx))} seed(s) per point)")


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
                comps.append({**key, "better": n, "worse": smaller, **A.compare(r, other)})
    v, d = A.combine(comps)
    if not comps:
        v, d = A.NOT_COMPUTED, f"profile `{ctx.profile.name}` draws sizes {list(ctx.profile.figure_sizes)} only"
    return A.claim(cid, "1000 > 500 > 200 at every point (paper §4.5, §4.6)", v, d, comps)


def _backbone_claim(results, ctx, cid="C12"):
    if len(ctx.profile.backbones) < 2:
        return A.claim(cid, "LLaMA3-8B > GPT-2 M > GPT-2 S", A.NOT_COMPUTED,
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
            comps.append({**key, "better": r.cell.labels["backbone"], "worse": prev, **A.compare(r, other)})
    v, d = A.combine(comps)
    return A.claim(cid, "LLaMA3-8B > GPT-2 M > GPT-2 S (paper §4.5–4.7, §4.9)", v, d, comps)


def _figure_body(ctx, results, name, xname):
    body = [f"![{name}]({name}.png)", "", "Values (test primary metric, %):", ""]
    body += A.pivot(results, ("backbone", "dataset", "method", "size"), ("x",), col_name=lambda ck: f"{xname} {ck[0]}")
    stand_in = [f"{DATASET_LABEL[k]} → {DATASET_LABEL[v]}" for k, v in ctx.profile.alias.items()]
    if stand_in:
        body += ["", f"Stand-ins in this profile: {', '.join(stand_in)} (labels keep the paper's panel names)."]
    return body


def fig4_render(ctx, results):
    def peak_shape(pts):
        pts = sorted(pts)
        xs, ys = zip(*pts)
        best = xs[ys.index(max(ys))]
        falls = [y for x, y in pts if x >= 5e-4]
        return 1e-4 <= best <= 5e-4 and all(a >= b for a, b in zip(falls, falls[1:]))
    os.makedirs(ctx.out, exist_ok=True)
    _curves_png(ctx, results, "fig4", "learning rate", True)
    claims = [_series_claims(results, "C10", "rises to a peak near 2e-4, falls at 5e-4 and 1e-3 (paper §4.5)", peak_shape,
                             ctx),
              _size_claim(results, ctx), _backbone_claim(results, ctx)]
    A.write(ctx.out, "fig4", "Figure 4: learning-rate sensitivity", ctx, _figure_body(ctx, results, "fig4", "lr"),
            claims, results, doc=TARGETS["fig4"].doc)


def fig5_render(ctx, results):
    def monotone(pts):
        ys = [y for _, y in sorted(pts)]
        return all(a >= b for a, b in zip(ys, ys[1:]))
    os.makedirs(ctx.out, exist_ok=True)
    _curves_png(ctx, results, "fig5", "missing rate", False)
    claims = [_series_claims(results, "C13", "monotone decrease with missing rate (paper §4.6)", monotone, ctx),
              _size_claim(results, ctx), _backbone_claim(results, ctx)]
    slopes = {}
    for r in results:
        if r.mean is None:
            continue
        key = (r.cell.labels["backbone"], r.cell.labels["method"], r.cell.labels["size"])
        slopes.setdefault(key, {}).setdefault(r.cell.labels["dataset"], []).append((r.cell.labels["x"], r.mean))
    faster = []
    for key, per in slopes.items():
        if len(per) == 2 and all(len(v) >= 2 for v in per.values()):
            drop = {d: (max(v)[1] - min(v)[1]) / (max(v)[0] - min(v)[0]) for d, v in per.items()}
            faster.append(drop.get("PLONER", 0) < drop.get("SemEval", 0))
    claims.append(A.claim("C13b", "PLONER drops faster than SemEval (paper §4.6)",
                          A.NOT_COMPUTED if not faster else A.CANNOT_TELL if len(_figure_seeds(ctx)) < 2 else
                          A.SUPPORTS if all(faster) else A.CONTRADICTS,
                          f"PLONER slope steeper in {sum(faster)}/{len(faster)} lines"))
    A.write(ctx.out, "fig5", "Figure 5: robustness to missing words", ctx, _figure_body(ctx, results, "fig5", "rate"),
            claims, results, doc=TARGETS["fig5"].doc)


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
    test = A._load_record(path)["test"]
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
    body += A.pivot(results, ("backbone", "method"), ("dataset",))
    stand_in = [f"{DATASET_LABEL[k]} → {DATASET_LABEL[v]}" for k, v in ctx.profile.alias.items()]
    if stand_in:
        body += ["", f"Stand-ins in this profile: {', '.join(stand_in)}."]
    c14 = _pair_claim(results, "C14", "+UM closer to the diagonal than LoRA (lower ECE) (paper §4.7)", P.UM.label,
                      P.LORA.label, higher=False)
    gaps = {}
    for r in by(results, method=P.UM.label):
        if r.cell.labels["dataset"] not in ("20News", "WNUT17"):       # the paper's two panels
            continue
        lora = one(results, method=P.LORA.label, dataset=r.cell.labels["dataset"], backbone=r.cell.labels["backbone"])
        if lora is not None and lora.mean is not None and r.mean is not None:
            gaps.setdefault(r.cell.labels["backbone"], {})[r.cell.labels["dataset"]] = lora.mean - r.mean
    largest = [max(g, key=g.get) == "WNUT17" for g in gaps.values() if len(g) >= 2]
    c14b = A.claim("C14b", "largest LoRA→+UM ECE gap on WNUT17 (paper §4.7)",
                   A.NOT_COMPUTED if not largest else A.CANNOT_TELL,
                   f"largest on WNUT17 for {sum(largest)}/{len(largest)} backbones (one seed per panel: no noise "
                   f"estimate)" if largest else "needs both panels")
    A.write(ctx.out, "fig6", "Figure 6: reliability diagrams", ctx, body, [c14, c14b, _backbone_claim(results, ctx)],
            results, {"curves": curves}, doc=TARGETS["fig6"].doc)


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
    A.write(ctx.out, "fig7", "Figure 7: overhead", ctx, body, [c15], results, {"points": rows},
            doc=TARGETS["fig7"].doc)


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
                comps.append({"backbone": b.label, "cheaper": cheap, "dearer": dear, "verdict": A.CANNOT_TELL,
                              "detail": "no per-round step times in the benchmark record", "p": None})
                continue
            res = stats.paired_t([math.log(y / x) for x, y in zip(ta, tb)])
            comps.append({"backbone": b.label, "cheaper": cheap, "dearer": dear, **A.comparison(
                res, f"{dear} / {cheap} step time x{math.exp(res.mean):.3f} "
                     f"[{math.exp(res.lo):.3f}, {math.exp(res.hi):.3f}] over {res.n} rounds")})
    if not comps:
        return A.claim("C15", "cost LoRA < +UM < +EMA < Ours (paper §4.8)", A.NOT_COMPUTED,
                       "no benchmark of all four variants" if specs else "no benchmark in this profile")
    verdict, detail = A.combine(comps)
    return A.claim("C15", "cost LoRA < +UM < +EMA < Ours (paper §4.8)", verdict,
                   detail + "; " + "; ".join(c["detail"] for c in comps), comps)


# --------------------------------------------------------------------------- registry

TARGETS = {t.name: t for t in (
    Target("lr_select", "Learning-rate selection", lr_select_cells, lr_select_render, uses_lr=False),
    Target("table1", "Table 1", table1_cells, table1_render, uses_lr=False),
    Target("table2", "Table 2", table2_cells, table2_render, uses_lr=False),
    Target("table5", "Table 5", table5_cells, table5_render),
    Target("table7", "Table 7", table7_cells, table7_render),
    Target("table6", "Table 6", table6_cells, table6_render),
    Target("table3", "Table 3", table3_cells, table3_render),
    Target("table4", "Table 4", table4_cells, table4_render),
    Target("fig4", "Figure 4", fig4_cells, fig4_render),
    Target("fig5", "Figure 5", fig5_cells, fig5_render),
    Target("fig6", "Figure 6", fig6_cells, fig6_render),
    Target("fig7", "Figure 7", fig7_cells, fig7_render, extra_specs=bench_specs),
)}
ORDER = list(TARGETS)          # `all` runs them in this order (most informative first, docs/EXPERIMENTS.md)
