"""Table 7: calibration (ECE, NLL, Brier) and error detection (AUROC) at the largest size."""
from __future__ import annotations

from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments.targets.core import (CLS, DATASET_LABEL, NER, doc_of, one_seed_note, pair_claim,
                                                train_cell)


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
    body += T.pivot(cal, ("backbone", "method"), ("dataset", "metric"))
    body += ["", "Error detection on test: AUROC (%) of telling misclassified from correct targets by each score "
             "(max-prob: 1 − max p; ū, u_ale, u_epi: the UM branch's uncertainties; 50 = chance).", ""]
    body += T.pivot(auroc, ("backbone", "method"), ("dataset", "score"))
    claims = []
    for cid, text, worse in (("C16", "Ours lower ECE, NLL and Brier than LoRA in every cell (paper §4.9)", "LoRA"),
                             ("extra", "(not a paper claim) Ours vs LoRA + post-hoc TS, same metrics",
                              "LoRA + post-hoc TS")):
        comps = [x for mlabel, _ in CAL_METRICS
                 for x in pair_claim(cal, "", "", P.OURS.label, worse, higher=False,
                                      metric=mlabel)["comparisons"]]
        v, d = V.combine(comps)
        claims.append(V.claim(cid, text, v, d + one_seed_note(comps), comps))
    T.write(ctx.out, "table7", "Table 7: calibration (ECE / NLL / Brier)", ctx, body, claims, results,
            doc=doc_of(table7_cells))
