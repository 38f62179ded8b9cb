"""Claims judged by the project's rule (`stats.RULE`): paired per-seed differences between two cells with
their t intervals, a paired bootstrap over test examples beside them (from the per-example records),
and Holm's correction across the comparisons of one claim."""
from __future__ import annotations

from umema_jax.experiments import stats
from umema_jax.experiments.aggregate import UNRECORDED, CellResult, calibrated, fmt, load_record

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


LISTED = 6                 # a claim with at most this many computed comparisons prints each one
_STAT_KEYS = {"verdict", "detail", "effect", "ci", "p", "p_holm", "n_seeds", "bootstrap"}


def _label(comp: dict) -> str:
    """'SemEval n=1000, Ours vs LoRA: ' from a comparison's labels (those `compare` did not add)."""
    names = {k: v for k, v in comp.items() if k not in _STAT_KEYS and not isinstance(v, (list, dict))}
    pair = (f"{names.pop('better')} vs {names.pop('worse')}" if {"better", "worse"} <= names.keys()
            else f"vs {names.pop('vs')}" if "vs" in names else "")
    parts = [str(v) for v in names.values()] + ([pair] if pair else [])
    return ", ".join(parts) + ": " if parts else ""


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
    if 0 < len(testable) <= LISTED:                       # few enough to show each effect and interval
        detail += ": " + "; ".join(f"{_label(c)}{c['detail']}" for c in testable)
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
    ra, rb = load_record(pa), load_record(pb)
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
