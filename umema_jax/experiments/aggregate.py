"""From run results to published cells: per-seed values, mean ± std, missing-cell marks, claims, outputs.

Every cell of a table is a `Cell` (labels + one RunSpec per seed + the metric it
reads). `summarise` turns it into a `CellResult` whose text never hides a hole:
`not implemented`, `– (LR not chosen)`, `– (0/3 runs)`, `n/a (no key …)`,
`failed`, or `mean ± std (2/3 seeds)` for a partial cell. Claims (the paper's
claims, `docs/EXPERIMENTS.md`) are judged by `stats.RULE`: paired differences
over seeds with t intervals, Holm-corrected across the cells of a claim, with a
paired bootstrap over test examples beside them from the per-example records.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import inspect
import math
import os
from typing import NamedTuple

import numpy as np

from umema_jax.experiments import specs as S
from umema_jax.experiments import stats
from umema_jax.train.outputs import write_json, write_text

COUNTS = ("trainable", "frozen", "total", "steps")      # shown as integers with thousands separators
PERCENT = ("accuracy", "span_f1", "ece", "primary", "macro_f1", "semeval_f1", "aurc", "f1")

NOT_IMPLEMENTED = "not implemented"
PENDING_LR = "LR not chosen"
NOT_IN_PROFILE = "not in profile"
UNSUPPORTED = "not supported"


@dataclasses.dataclass
class Cell:
    labels: dict                              # e.g. {'backbone': .., 'method': .., 'dataset': .., 'size': ..}
    specs: list = dataclasses.field(default_factory=list)   # one per seed (empty for a status cell)
    metric: str = "test.{primary}"            # path into results.json ('{primary}' = the task's metric)
    status: str = ""                          # '' (runnable) or one of the constants above
    note: str = ""                            # why (shown in the sidecar)
    placeholder: list = dataclasses.field(default_factory=list)  # specs a pending cell will need (dry run)


@dataclasses.dataclass
class CellResult:
    cell: Cell
    values: dict                 # seed -> float | None (None: results.json lacks the key)
    expected: int
    failed: int = 0
    runs: list = dataclasses.field(default_factory=list)
    records: dict = dataclasses.field(default_factory=dict)   # seed -> per-example record path
    uncommitted: int = 0         # runs trained from a checkout with uncommitted changes
    hosts: dict = dataclasses.field(default_factory=dict)   # seed -> Host (CPU, matmul path) the run recorded

    @property
    def numbers(self) -> list:
        return [v for v in self.values.values() if v is not None]

    @property
    def n(self) -> int:
        return len(self.numbers)

    @property
    def mean(self) -> float | None:
        return sum(self.numbers) / self.n if self.n else None

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self.numbers) / (self.n - 1))

    @property
    def complete(self) -> bool:
        return self.n == self.expected and self.expected > 0

    def text(self) -> str:
        c = self.cell
        if c.status == NOT_IMPLEMENTED:
            return "not implemented"
        if c.status == PENDING_LR:
            return "– (LR not chosen)"
        if c.status == NOT_IN_PROFILE:
            return "– (not in profile)"
        if c.status == UNSUPPORTED:
            return "not supported"
        done = len(self.values)
        if done and self.n == 0:
            return f"n/a (no {metric_key(c.metric)})"
        if self.n == 0:
            return f"failed ({self.failed}/{self.expected})" if self.failed else f"– (0/{self.expected} runs)"
        text = fmt(self.mean, c.metric)
        if self.std is not None:
            text += f" ± {fmt(self.std, c.metric)}"
        if self.n < self.expected:
            text += f" ({self.n}/{self.expected} seeds)"
        if self.uncommitted:
            text += f" [{self.uncommitted} run(s) from uncommitted code]"
        return text

    def to_json(self) -> dict:
        return {"labels": self.cell.labels, "metric": self.cell.metric, "status": self.cell.status or
                ("complete" if self.complete else "partial" if self.n else "missing"),
                "note": self.cell.note, "text": self.text(), "per_seed": {str(k): v for k, v in self.values.items()},
                "mean": self.mean, "std": self.std, "n": self.n, "expected": self.expected,
                "failed": self.failed, "runs": self.runs,
                "records": {str(k): S.repo_relative(v) for k, v in self.records.items()},
                "hosts": {str(k): {"cpu": h.cpu, "matmul_path": h.matmul_path} for k, h in self.hosts.items()}}


def metric_key(path: str) -> str:
    return path.split(".")[-1]


def fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    key = metric_key(metric)
    if key in COUNTS:
        return f"{x:,.0f}"
    if key.endswith("_s"):
        return f"{x:.0f}"                      # seconds
    return f"{100 * x:.2f}" if key in PERCENT + ("{primary}",) or key.startswith("auroc_") else f"{x:.4f}"


def get_metric(results: dict, path: str):
    node = results
    for part in path.replace("{primary}", str(results.get("primary_metric", "primary"))).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def summarise(cell: Cell, root: str, ledger: str = "", mark_uncommitted: bool = True) -> CellResult:
    """The cell's runs read from their directories or the ledger; `mark_uncommitted`: count the runs trained
    from uncommitted code (shown in the cell's text; off for profiles that publish nothing)."""
    values, failed, runs, records, uncommitted, hosts = {}, 0, [], {}, 0, {}
    for spec in cell.specs:
        runs.append(S.repo_relative(S.workdir(root, spec)))
        results = S.load_results(root, spec, ledger)
        if results is None:
            failed += S.failure(root, spec) is not None
            continue
        seed = spec.get("seed", 0)
        path = S.record_path(root, spec, ledger)
        values[seed] = get_metric(results, cell.metric)
        if values[seed] is None and path:      # a metric added after the run: recomputed from its record
            values[seed] = record_metric(path, cell.metric, results.get("primary_metric", "primary"))
        uncommitted += mark_uncommitted and str(results.get("git_commit", "")).endswith("-dirty")
        hosts[seed] = run_host(results, runs[-1])
        if path:
            records[seed] = path
    return CellResult(cell, values, expected=len(cell.specs), failed=failed, runs=runs, records=records,
                      uncommitted=uncommitted, hosts=hosts)


UNRECORDED = "not recorded"


class Host(NamedTuple):
    """Where a run's numerics came from besides its config: the host CPU and the matmul path it recorded."""
    cpu: str
    matmul_path: str
    run: str


def run_host(results: dict, run: str) -> Host:
    numerics = results.get("numerics") or {}
    return Host(str(numerics.get("cpu") or UNRECORDED), str(numerics.get("matmul_path") or UNRECORDED), run)


def hosts_line(cells: list) -> str:
    """'7 on <cpu> (xla matmul path); 2 on ...': each run counted once over a target's cells."""
    runs = {h.run: h for c in cells for h in c.hosts.values()}
    counts = collections.Counter((h.cpu, h.matmul_path) for h in runs.values())
    return "; ".join(f"{n} on {cpu} ({path} matmul path)" for (cpu, path), n in sorted(counts.items()))


# --------------------------------------------------------------------------- claims

SUPPORTS, CONTRADICTS, CANNOT_TELL, NOT_COMPUTED = "supports", "contradicts", "cannot tell", "not computed"


def _signed(x: float, metric: str) -> str:
    return ("+" if x >= 0 else "-") + fmt(abs(x), metric)


def compare(a: CellResult, b: CellResult, higher_is_better: bool = True) -> dict:
    """Is a better than b? The paired per-seed difference (oriented: > 0 favours a) with its 95 % t
    interval and p-value, plus a paired bootstrap over test examples for each seed pair with records.
    The verdict is left to `combine`, which corrects across the cells of a claim (`stats.RULE`)."""
    if not a.n or not b.n:
        return {"verdict": NOT_COMPUTED, "detail": "missing", "p": None}
    sign = 1 if higher_is_better else -1
    m = a.cell.metric
    common = sorted(s for s in a.values if a.values[s] is not None and b.values.get(s) is not None)
    # A pair trained on different matmul paths differs by numerics as well as by method: never paired.
    seeds = [s for s in common if _same_path(a, b, s)]
    res = stats.paired_t([sign * (a.values[s] - b.values[s]) for s in seeds])
    if res.n == 0:
        why = "no seed in common" if not common else "no seed pair on one matmul path"
        return {"verdict": NOT_COMPUTED, "detail": why, "p": None}
    if res.interval:
        detail = (f"{_signed(res.mean, m)} [{_signed(res.lo, m)}, {_signed(res.hi, m)}], p {res.p:.3f}, "
                  f"{res.n} paired seeds")
    else:
        detail = f"1 seed: {_signed(res.mean, m)} (no interval)"
    boot = []
    for s in seeds:
        ci = bootstrap_cell_difference(a, b, s, sign)
        if ci is not None:
            boot.append({"seed": s, "diff": ci[0], "lo": ci[1], "hi": ci[2]})
    if len(seeds) < len(common):
        detail += f"; {len(common) - len(seeds)} seed(s) left unpaired (different matmul paths)"
    if boot:
        detail += "; boot " + ", ".join(f"s{x['seed']} [{_signed(x['lo'], m)}, {_signed(x['hi'], m)}]" for x in boot)
    return dict(comparison(res, detail), bootstrap=boot)


def _same_path(a: CellResult, b: CellResult, seed) -> bool:
    """False only when both runs recorded their matmul path and the paths differ (a cell derived from
    several runs, e.g. an ensemble, has none)."""
    paths = {c.hosts[seed].matmul_path for c in (a, b) if seed in c.hosts}
    return len(paths - {UNRECORDED}) <= 1


def comparison(res: "stats.PairedResult", detail: str) -> dict:
    """A comparison as `combine` judges it: the paired effect, its interval and p (verdict still open)."""
    return {"verdict": CANNOT_TELL, "detail": detail, "effect": res.mean, "ci": [res.lo, res.hi], "p": res.p,
            "n_seeds": res.n}


def combine(comps: list, mode: str = "every") -> tuple[str, str]:
    """Comparisons (`compare`'s dicts, possibly with labels added) -> one claim verdict.

    Holm's correction runs across the computed comparisons; each gets its own `verdict` and `p_holm`
    (`stats.RULE`). 'every': all must support; 'most': more than half must."""
    testable = [c for c in comps if c.get("p") is not None]
    judged = stats.cell_verdicts([c["effect"] for c in testable], [c["p"] for c in testable],
                                 SUPPORTS, CONTRADICTS, CANNOT_TELL)
    for c, (v, p) in zip(testable, judged):
        c["verdict"], c["p_holm"] = v, p
    verdicts = [c["verdict"] for c in comps]
    total = len(verdicts)
    counts = {v: sum(1 for x in verdicts if x == v) for v in (SUPPORTS, CONTRADICTS, CANNOT_TELL, NOT_COMPUTED)}
    computed = total - counts[NOT_COMPUTED]
    detail = (f"{counts[SUPPORTS]} support, {counts[CONTRADICTS]} contradict, {counts[CANNOT_TELL]} cannot tell, "
              f"{counts[NOT_COMPUTED]} not computed, of {total} comparisons")
    if len(testable) == 1 and math.isfinite(testable[0]["ci"][0]):
        detail += f" ({testable[0]['detail']})"
    if not computed:
        return NOT_COMPUTED, detail
    if mode == "every":
        if counts[CONTRADICTS]:
            return CONTRADICTS, detail
        if counts[SUPPORTS] == total:
            return SUPPORTS, detail
        return CANNOT_TELL, detail
    if counts[SUPPORTS] * 2 > total:
        return SUPPORTS, detail
    if counts[CONTRADICTS] * 2 >= total:
        return CONTRADICTS, detail
    return CANNOT_TELL, detail


# --------------------------------------------------------------------------- per-example records

@functools.lru_cache(maxsize=256)
def _load_record(path: str):
    from umema_jax.metrics import records
    return records.load(path)


@functools.lru_cache(maxsize=256)
def record_metrics(path: str, section: str) -> dict | None:
    """results.json's `section` (`dev`/`test`, `test_posthoc_ts`, `test_<calibrator>`) recomputed from a
    run's per-example record by today's metric code; None when the record lacks it."""
    from umema_jax.metrics.records import metrics_from_record
    record = _load_record(path)
    split = section.split("_")[0]
    if split not in record.splits:
        return None
    rest = section[len(split) + 1:]
    if not rest:
        return metrics_from_record(record, split)
    if rest == "posthoc_ts":
        return metrics_from_record(record, split, probs=_scaled(record[split], record.posthoc_temperature).probs)
    if rest not in record[split].posthoc:
        return None
    return metrics_from_record(record, split, posthoc=rest)


def record_metric(path: str, metric_path: str, primary_metric: str = "primary") -> float | None:
    """One metric (`section.key`, as a cell names it) recomputed from a run's record, or None."""
    section = metric_path.split(".")[0]
    metrics = record_metrics(path, section)
    return None if metrics is None else get_metric({section: metrics, "primary_metric": primary_metric},
                                                   metric_path)


def _bootstrap_metric(metric_path: str, task_type: str):
    """record -> value for the metrics a paired bootstrap can recompute cheaply (cls accuracy; ECE, NLL,
    Brier for any task), or None. `test_posthoc_ts.*` scales the record's probabilities by its T first;
    `test_<calibrator>.*` uses that post-hoc calibrator's probabilities (`calibrated`)."""
    from umema_jax.metrics import calibration as cal
    split, _, key = metric_path.partition(".")
    if not split.startswith("test"):
        return None
    if key in ("{primary}", "accuracy", "primary"):
        return stats.correct_fraction if task_type == "cls" else None
    fn = {"ece": cal.ece, "nll": cal.nll, "brier": cal.brier}.get(key)
    return None if fn is None else (lambda r: float(fn(r.probs, r.labels)))


def bootstrap_cell_difference(a: CellResult, b: CellResult, seed, sign: int):
    """Paired bootstrap of a - b (times `sign`) over the test examples of seed `seed`; None without records."""
    pa, pb = a.records.get(seed), b.records.get(seed)
    if not pa or not pb:
        return None
    ra, rb = _load_record(pa), _load_record(pb)
    metric = _bootstrap_metric(a.cell.metric, ra.task_type)
    if metric is None or "test" not in ra.splits or "test" not in rb.splits:
        return None
    ta, tb = ra["test"], rb["test"]
    section_a, section_b = a.cell.metric.split(".")[0], b.cell.metric.split(".")[0]
    ta, tb = calibrated(ta, ra, section_a), calibrated(tb, rb, section_b)
    if ta is None or tb is None:
        return None
    point, lo, hi = stats.paired_bootstrap(metric, ta, tb, seed=int(seed))
    return (sign * point,) + tuple(sorted((sign * lo, sign * hi)))


def calibrated(split_record, record, section: str):
    """The test split as results.json's `section` saw it: `test` as is, `test_posthoc_ts` scaled by the
    record's T, `test_<calibrator>` with that calibrator's probabilities; None when the record lacks it."""
    if section == "test":
        return split_record
    if section == "test_posthoc_ts":
        return _scaled(split_record, record.posthoc_temperature)
    name = section[len("test_"):]
    if name not in split_record.posthoc:
        return None
    probs = split_record.posthoc[name][0]
    return split_record if probs is None else dataclasses.replace(split_record, probs=probs)


def _scaled(split_record, t: float):
    from umema_jax.uncertainty.temperature import rescale_probs
    return dataclasses.replace(split_record, probs=np.asarray(rescale_probs(split_record.probs, t), np.float32))


def claim(cid: str, text: str, verdict: str, detail: str, comparisons: list | None = None) -> dict:
    return {"id": cid, "claim": text, "verdict": verdict, "detail": detail, "comparisons": comparisons or []}


def claims_markdown(claims: list) -> list:
    if not claims:
        return ["No claim of docs/EXPERIMENTS.md is about this output."]
    lines = ["| claim | paper says | verdict | evidence |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['id']} | {c['claim']} | **{c['verdict']}** | {c['detail']} |")
    lines += ["", f"Verdicts: {stats.RULE} *not computed* = no run yet."]
    return lines


# --------------------------------------------------------------------------- tables

def pivot(results: list, row_keys: tuple, col_keys: tuple, col_name=None) -> list:
    """Markdown table: one row per distinct row-label tuple, one column per column-label tuple (in order)."""
    rows, cols, table = [], [], {}
    for r in results:
        rk = tuple(r.cell.labels.get(k) for k in row_keys)
        ck = tuple(r.cell.labels.get(k) for k in col_keys)
        if rk not in rows:
            rows.append(rk)
        if ck not in cols:
            cols.append(ck)
        table[rk, ck] = r.text()
    col_name = col_name or (lambda ck: " ".join(str(x) for x in ck))
    head = [str(k) for k in row_keys] + [col_name(ck) for ck in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rk in rows:
        lines.append("| " + " | ".join([str(x) for x in rk] + [table.get((rk, ck), "") for ck in cols]) + " |")
    return lines


def _empty(cell: str) -> bool:
    cell = cell.strip()
    return not cell or (cell.startswith("– (") and ("runs)" in cell or "LR not chosen" in cell))


def compact_tables(lines: list) -> list:
    """The markdown tables of `lines` without the columns and rows that hold no computed value (the
    README's view of a mostly empty grid); other lines as they are, plus a note when anything was left out."""
    out, dropped, i = [], False, 0
    while i < len(lines):
        if not (lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            out.append(lines[i])
            i += 1
            continue
        j = i + 2
        while j < len(lines) and lines[j].startswith("| "):
            j += 1
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in [lines[i]] + lines[i + 2:j]]
        head, body = rows[0], rows[1:]
        labels = max((k for k, h in enumerate(head) if h in ("method", "metric", "lr")), default=0) + 1   # row labels
        keep_rows = [r for r in body if not all(_empty(c) for c in r[labels:])]
        keep_cols = [k for k in range(len(head)) if k < labels or any(not _empty(r[k]) for r in keep_rows)]
        dropped |= len(keep_rows) < len(body) or len(keep_cols) < len(head)
        if not keep_rows:                 # nothing computed in this table: leave it out (and its blank line)
            if out and not out[-1].strip():
                out.pop()
            i = j
            continue
        for n, r in enumerate([head] + keep_rows):
            out.append("| " + " | ".join(r[k] for k in keep_cols) + " |")
            if n == 0:
                out.append("|" + "---|" * len(keep_cols))
        i = j
    if dropped:
        out += ["", "(Rows and columns with no computed value yet are left out here.)"]
    return out


# --------------------------------------------------------------------------- outputs

def commit() -> str:
    from umema_jax.train.outputs import git_commit
    return git_commit()


def write(out_dir: str, target: str, title: str, ctx, body: list, claims: list, cells: list, extra: dict | None = None,
          doc: str = "") -> dict:
    """<out>/<target>.md and <target>.json (the sidecar)."""
    os.makedirs(out_dir, exist_ok=True)
    command = f"python -m umema_jax.experiments {target} --profile={ctx.profile.name}"
    sha = commit()
    md = [f"# {title}", ""]
    if doc:
        md += [inspect.cleandoc(doc), ""]
    md += body + ["", "## Claims (docs/EXPERIMENTS.md)", ""] + claims_markdown(claims)
    md += ["", "## Deviations from the paper (profile `%s`)" % ctx.profile.name, ""]
    md += [f"- {d}" for d in ctx.profile.deviations] or ["- none"]
    lr = ctx.lr_note()
    if lr:
        md += [f"- learning rates: {lr}"]
    hosts = hosts_line(cells)
    if hosts:
        md += [f"- runs by host CPU: {hosts}; seeds are paired only on one matmul path"]
    # No commit or date in the table itself (the sidecar has both): a fresh clone re-renders it byte-identical.
    md += ["", f"Command: `{command}` · runs under `{S.repo_relative(ctx.root)}`", ""]
    write_text(os.path.join(out_dir, f"{target}.md"), "\n".join(md))
    sidecar = {"target": target, "title": title, "profile": ctx.profile.name, "command": command, "commit": sha,
               "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "deviations": list(ctx.profile.deviations), "learning_rates": ctx.lr_selection,
               "root": S.repo_relative(ctx.root), "cells": [c.to_json() for c in cells], "claims": claims,
               # what the README shows of this output (pipeline.sync_readme): the table(s) and the verdicts
               "summary_markdown": "\n".join(compact_tables(body) + ["", "Claims (docs/EXPERIMENTS.md):", ""]
                                             + claims_markdown(claims))}
    sidecar.update(extra or {})
    write_json(os.path.join(out_dir, f"{target}.json"), sidecar)
    return sidecar
