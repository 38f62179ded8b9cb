"""The uncertainty table (not one of the paper's): every uncertainty head and calibrator against LoRA,
LoRA + post-hoc TS and Ours, on the LR-selection dataset and size."""
from __future__ import annotations

import dataclasses

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments import stats
from umema_jax.experiments.targets.core import DATASET_LABEL, by, doc_of, one, one_seed_note, train_cell

MC_DROPOUT = P.row("lora+um", (("model.uncertainty", "mc_dropout"), ("model.lora.dropout", 0.1),
                               ("model.mc_dropout.samples", 8)), "LoRA + MC dropout (8 samples)")
ENSEMBLE_SIZE = 3
ENSEMBLE = f"LoRA ensemble ({ENSEMBLE_SIZE} seeds)"
# (label, profile row, results.json section, the row's own uncertainty score, forward passes per test example)
ROWS = (("LoRA", P.LORA, "test", "maxprob", 1),
        ("LoRA + post-hoc TS", P.LORA, "test_posthoc_ts", "maxprob", 1),
        ("LoRA + last-layer Laplace", P.LORA, "test_laplace", "laplace_variance", 1),
        ("LoRA + last-layer Laplace, prior on dev", P.LORA, "test_laplace-dev", "laplace_variance", 1),
        ("LoRA + correctness head", P.LORA, "test_correctness", "correctness", 1),
        (MC_DROPOUT.label, MC_DROPOUT, "test", "mutual_information", 8),
        (P.OURS.label, P.OURS, "test", "u_bar", 1),
        (f"{P.OURS.label} + post-hoc TS", P.OURS, "test_posthoc_ts", "u_bar", 1),
        (f"{P.OURS.label} + last-layer Laplace", P.OURS, "test_laplace", "laplace_variance", 1),
        (P.OURS_ERROR_U.label, P.OURS_ERROR_U, "test", "u_bar", 1),
        (P.OURS_ERROR_U_LIGHT.label, P.OURS_ERROR_U_LIGHT, "test", "u_bar", 1))
METRICS = (("Acc / F1", "{primary}"), ("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"),
           ("AUROC max-p", "auroc_error_maxprob"), ("AUROC own", "auroc_error_{score}"),
           ("AURC own", "aurc_{score}"), ("PRR own", "prr_{score}"))
LOWER_IS_BETTER = ("ECE", "NLL", "Brier", "AURC own")
DATASETS = ("semeval", "wnut17")


def uncertainty_cells(ctx):
    """The uncertainty table: on SemEval (then WNUT17) at the LR-selection size, every uncertainty head and
    post-hoc calibrator against LoRA, LoRA + post-hoc TS and Ours — accuracy (span F1), ECE, NLL, Brier,
    and for max-probability and for each row's own score (ū for Ours, the mutual information for MC dropout
    and the ensemble, the logit variance for Laplace, 1 − predicted TCP for the correctness head) the
    error-detection AUROC, AURC and PRR. The calibrators read the LoRA and Ours runs (they run after
    training); the ensemble averages the records of the LoRA runs of seeds s, s+1, s+2 (no training); only
    MC dropout and Ours with ū tied to errors (`model.um.error_weight`) train runs of their own."""
    n = ctx.profile.selection_size
    cells = []
    for b in ctx.profile.backbones:
        for d in DATASETS:
            if d not in ctx.profile.datasets:
                continue
            for label, method, section, score, _ in ROWS:
                for mlabel, key in METRICS:
                    cells.append(train_cell(ctx, {"backbone": b.label, "dataset": DATASET_LABEL[d], "method": label,
                                                  "metric": mlabel},
                                            b, d, method, n,
                                            metric=f"{section}.{key.format(score=score, primary='{primary}')}"))
    return cells


def ensemble_results(results) -> list:
    """The ensemble row's cells, computed from the LoRA cells' per-example records (seed window s..s+2)."""
    from umema_jax.metrics.records import metrics_from_record
    from umema_jax.uncertainty import ensemble
    out = []
    for r in by(results, method="LoRA", metric="Acc / F1"):
        key = {k: r.cell.labels[k] for k in ("backbone", "dataset")}
        seeds = [spec.get("seed", 0) for spec in r.cell.specs]        # the cell's seeds, in order
        values = {}
        for i, s in enumerate(seeds):
            window = [seeds[(i + j) % len(seeds)] for j in range(ENSEMBLE_SIZE)]
            if len(seeds) >= ENSEMBLE_SIZE and all(w in r.records for w in window):
                values[s] = metrics_from_record(ensemble.combine([A.load_record(r.records[w]) for w in window]),
                                                "test")
        for mlabel, key_t in METRICS:
            metric = "test." + key_t.format(score="mutual_information", primary="{primary}")
            name = metric.split(".")[-1].replace("{primary}", "primary")
            cell = A.Cell({**key, "method": ENSEMBLE, "metric": mlabel}, metric=metric,
                          note=f"from the LoRA records: for seed s, the members are s and the next "
                               f"{ENSEMBLE_SIZE - 1} seeds of the cell (cyclic); overlapping windows share members")
            out.append(A.CellResult(cell, {s: float(m[name]) for s, m in values.items() if name in m},
                                    expected=len(r.cell.specs)))
    return out


def _vs(results, better: str, worse: str, metric: str, worse_metric: str | None = None) -> list:
    comps = []
    for a in by(results, method=better, metric=metric):
        key = {k: a.cell.labels[k] for k in ("backbone", "dataset")}
        b = one(results, method=worse, metric=worse_metric or metric, **key)
        if b is None:
            continue
        comps.append({**key, "better": better, "worse": worse, "metric": metric,
                      **V.compare(a, b, higher_is_better=metric not in LOWER_IS_BETTER)})
    return comps


def uncertainty_render(ctx, results):
    results = list(results) + ensemble_results(results)
    body = [f"Test, n = {ctx.profile.selection_size}, mean ± std over seeds (%, NLL and Brier raw). \"own\" = the "
            "row's own uncertainty score (see above); AURC: lower is better; PRR: 0 random, 100 oracle.", ""]
    for d in DATASETS:
        part = by(results, dataset=DATASET_LABEL[d])
        if part:
            body += [f"**{DATASET_LABEL[d]}**", ""] + T.pivot(part, ("backbone", "method"), ("metric",)) + [""]
    body += ["Forward passes per test example: " + ", ".join(f"{label} {k}" for label, _, _, _, k in ROWS)
             + f", {ENSEMBLE} {ENSEMBLE_SIZE}. The calibrators read the final evaluation's dev and test pass "
             "(runs before the one-pass evaluation made a second one); Laplace adds one over train; MC dropout "
             "evaluates dev with its samples at every epoch."]
    labels = [label for label, *_ in ROWS if label != "LoRA"] + [ENSEMBLE]
    detect = [c for label in labels for c in _vs(results, label, "LoRA", "AUROC own", "AUROC max-p")]
    calib = [c for label in labels if label != "LoRA + post-hoc TS"
             for metric in ("ECE", "NLL") for c in _vs(results, label, "LoRA + post-hoc TS", metric)]
    accuracy = [c for label in labels for c in _vs(results, label, "LoRA", "Acc / F1")]
    chance = []
    for r in by(results, method=P.OURS.label, metric="AUROC own"):
        res = stats.paired_t([v - 0.5 for v in r.values.values() if v is not None])
        if res.n:
            detail = (f"ū AUROC − 50: {100 * res.mean:+.2f} [{100 * res.lo:+.2f}, {100 * res.hi:+.2f}], "
                      f"{res.n} seeds" if res.interval else f"1 seed: {100 * res.mean:+.2f}")
            chance.append({**dataclasses.asdict(r.cell)["labels"], **V.comparison(res, detail)})
    claims = []
    for cid, text, comps, some in (
            ("U1", "some score detects errors better than LoRA's max-probability (own-score AUROC vs LoRA "
                   "max-p AUROC, paired by seed)", detect, True),
            ("U2", "some method is better calibrated than LoRA + post-hoc TS (both ECE and NLL)", calib, True),
            ("U3", "no row loses accuracy against LoRA", accuracy, False),
            ("U4", "UM's own ū detects errors above chance (AUROC > 50 %)", chance, False)):
        verdict, detail = V.combine(comps, mode="every")
        if some:     # "some row": a (row, dataset) whose comparisons are all computed and all supported
            groups = {}
            for c in comps:
                groups.setdefault(f"{c['better']} ({c['dataset']})", []).append(c["verdict"])
            won = sorted(g for g, vs in groups.items() if all(v == V.SUPPORTS for v in vs))
            computed = [v for vs in groups.values() for v in vs if v != V.NOT_COMPUTED]
            lost = computed and all(v == V.CONTRADICTS for v in computed)
            verdict = V.SUPPORTS if won else V.CONTRADICTS if lost else \
                V.NOT_COMPUTED if not computed else V.CANNOT_TELL
            detail += f"; supported for: {', '.join(won) or 'none'}"
        claims.append(V.claim(cid, text, verdict, detail + one_seed_note(comps), comps))
    T.write(ctx.out, "uncertainty", "Uncertainty heads and calibrators", ctx, body, claims, results,
            doc=doc_of(uncertainty_cells))
