"""What every target shares: the context, the cell builders, and the claim and table helpers."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments import specs as S
from umema_jax.experiments.aggregate import Cell


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
        return doc_of(self.cells)


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


def size_label(n) -> str:
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
                                                  "dataset": DATASET_LABEL[d], "size": size_label(n)},
                                            b, d, m, n, metric=metric))
    return cells


def by(results, **labels):
    return [r for r in results if all(r.cell.labels.get(k) == v for k, v in labels.items())]


def one(results, **labels):
    found = by(results, **labels)
    return found[0] if found else None



# --------------------------------------------------------------------------- shared claim and table helpers

def best_claim(results, cid, text, ours_label, datasets, mode="every", higher=True):
    """Ours vs every other row with numbers, per (backbone, dataset, size) cell."""
    comps = []
    for r in results:
        if r.cell.labels["method"] != ours_label or r.cell.labels["dataset"] not in datasets:
            continue
        key = {k: r.cell.labels[k] for k in ("backbone", "dataset", "size")}
        for other in by(results, **key):
            if other is r or other.cell.status in (A.NOT_IMPLEMENTED, A.NOT_IN_PROFILE):
                continue
            comps.append({**key, "vs": other.cell.labels["method"], **V.compare(r, other, higher)})
    verdict, detail = V.combine(comps, mode)
    return V.claim(cid, text, verdict, detail + one_seed_note(comps), comps)


def one_seed_note(comps) -> str:
    single = sum(1 for c in comps if c["detail"].startswith("1 seed"))
    computed = sum(1 for c in comps if c.get("p") is not None)
    return f"; {single} of {computed} computed comparisons have 1 seed (no noise estimate)" if single else ""


def pair_claim(results, cid, text, better, worse, mode="every", higher=True, metric=None):
    comps = []
    for r in results:
        if r.cell.labels["method"] != better or (metric and r.cell.labels.get("metric") != metric):
            continue
        key = {k: v for k, v in r.cell.labels.items() if k != "method"}
        other = one(results, method=worse, **key)
        if other is None:
            continue
        comps.append({**key, "better": better, "worse": worse, **V.compare(r, other, higher)})
    verdict, detail = V.combine(comps, mode)
    return V.claim(cid, text, verdict, detail + one_seed_note(comps), comps)


def write_table(ctx, results, name, title, body_note, claims, doc, extra_body=(), all_cells=None):
    body = [body_note, ""] + T.pivot(results, ("backbone", "method"), ("dataset", "size"))
    absent = [DATASET_LABEL[d] for d in (CLS + NER) if d not in ctx.profile.datasets]
    body += ["", "mean ± std over seeds (test, %); `– (k/N runs)` = not computed yet, `not implemented` = the "
             "method is not in the code yet."]
    if absent:
        body += [f"Datasets not in profile `{ctx.profile.name}`: {', '.join(absent)}."]
    body += list(extra_body)
    T.write(ctx.out, name, title, ctx, body, claims, results if all_cells is None else all_cells, doc=doc)


# Table 3's second part : every method at the LR-selection cell with its calibration and cost
# beside its accuracy; (column, results.json path). Same runs as the first part: no extra training.


def doc_of(cells_fn) -> str:
    """A target's description: the docstring of its `cells` function."""
    return (cells_fn.__doc__ or "").strip()
