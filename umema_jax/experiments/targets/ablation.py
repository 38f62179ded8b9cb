"""Tables 5 and 6: the ablation, LoRA, +UM, +EMA and Ours (classification, NER)."""
from __future__ import annotations

from umema_jax.experiments import profiles as P
from umema_jax.experiments.targets.core import CLS, NER, doc_of, grid_cells, pair_claim, write_table


def table5_cells(ctx):
    """Table 5: classification ablation — LoRA, +UM, +EMA, +UM+EMA (Ours) on 20News and SemEval at every
    size, accuracy mean ± std over seeds. The most important cell of the cpu profile is SemEval n = 1000."""
    return grid_cells(ctx, P.ABLATION, CLS)


def _ablation_claims(results, cid, text_each, mode_um, mode_ema):
    return [
        pair_claim(results, cid + "a", f"+UM > LoRA ({text_each})", P.UM.label, P.LORA.label, mode_um),
        pair_claim(results, cid + "b", f"+EMA > LoRA ({text_each})", P.EMA.label, P.LORA.label, mode_ema),
        pair_claim(results, cid + "c", "both together best: Ours > +UM", P.OURS.label, P.UM.label),
        pair_claim(results, cid + "d", "both together best: Ours > +EMA", P.OURS.label, P.EMA.label),
    ]


def table5_render(ctx, results):
    claims = _ablation_claims(results, "C8", "each module helps, paper §4.4.1", "every", "every")
    write_table(ctx, results, "table5", "Table 5: classification ablation (accuracy)", "Test accuracy.", claims,
           doc_of(table5_cells))


def table6_cells(ctx):
    """Table 6: NER ablation — LoRA, +UM, +EMA, Ours on WNUT17 and PLONER at every size, span F1."""
    return grid_cells(ctx, P.ABLATION, NER)


def table6_render(ctx, results):
    claims = [pair_claim(results, "C9a", "+UM > LoRA in every cell (paper §4.4.2)", P.UM.label, P.LORA.label, "every"),
              pair_claim(results, "C9b", "+EMA > LoRA \"in most\" cells (paper §4.4.2)", P.EMA.label, P.LORA.label, "most")]
    write_table(ctx, results, "table6", "Table 6: NER ablation (span F1)", "Test span F1 (seqeval strict IOB2).", claims,
           doc_of(table6_cells))
