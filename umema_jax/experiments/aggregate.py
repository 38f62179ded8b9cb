"""From run results to published cells: per-seed values, mean ± std, missing-cell marks, hosts.

Every cell of a table is a `Cell` (labels + one RunSpec per seed + the metric it
reads). `summarise` turns it into a `CellResult` whose text never hides a hole:
`not implemented`, `– (LR not chosen)`, `– (0/3 runs)`, `n/a (no key …)`,
`failed`, or `mean ± std (2/3 seeds)` for a partial cell. A metric a run predates
is recomputed from its per-example record. Claims over cells are judged in
`verdicts`; a target's tables are written by `tables`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from umema_jax.experiments import specs as S

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


# --------------------------------------------------------------------------- per-example records

@functools.lru_cache(maxsize=256)
def load_record(path: str):
    from umema_jax.metrics import records
    return records.load(path)


@functools.lru_cache(maxsize=256)
def record_metrics(path: str, section: str) -> dict | None:
    """results.json's `section` (`dev`/`test`, `test_posthoc_ts`, `test_<calibrator>`) recomputed from a
    run's per-example record by today's metric code; None when the record lacks it."""
    from umema_jax.metrics.records import metrics_from_record
    record = load_record(path)
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
