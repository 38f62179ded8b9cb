"""Tables 3 and 4: the paper's method against the six baselines (classification, NER), and each
method's profile at the selection cell."""
from __future__ import annotations

from umema_jax.experiments import tables as T
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import profiles as P
from umema_jax.experiments.targets.core import (CLS, DATASET_LABEL, NER, best_claim, by, doc_of, grid_cells, one,
                                                train_cell, write_table)


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
        + T.pivot(profile, ("backbone", "method", "lr"), ("metric",))


def table3_render(ctx, results):
    accuracy = [r for r in results if r.cell.labels.get("part") != "method profile"]
    claims = [best_claim(accuracy, "C5", "Ours best in every table3 cell (paper abstract, §4.3.1)", P.OURS.label,
                          [DATASET_LABEL[d] for d in CLS])]
    write_table(ctx, accuracy, "table3", "Table 3: classification vs baselines (accuracy)", "Test accuracy.", claims,
           doc_of(table3_cells), extra_body=_method_profile_table(results), all_cells=results)


def table4_cells(ctx):
    """Table 4: NER (WNUT17, PLONER; span F1, mean ± std) of the baselines, LoRA and Ours at every train size.
    LoRA and Ours are table6's runs."""
    return grid_cells(ctx, P.COMPARISON, NER)


def table4_render(ctx, results):
    claims = [best_claim(results, "C7", "Ours best span F1 in every table4 cell (paper §4.3.2)", P.OURS.label,
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
    verdict = V.NOT_COMPUTED if not margins else (V.CANNOT_TELL if ctx.profile.seeds[1:] == () else
                                                  (V.SUPPORTS if all(margins) else V.CONTRADICTS))
    claims.append(V.claim("C7b", "larger margin on PLONER than WNUT17 at 500/1000 (paper §4.3.2)", verdict,
                          f"PLONER margin larger in {sum(margins)}/{len(margins)} backbone × size cells"))
    write_table(ctx, results, "table4", "Table 4: NER vs baselines (span F1)", "Test span F1 (seqeval strict IOB2).",
           claims, doc_of(table4_cells))
