"""Every table and figure of the paper as data: profile -> cells (-> runs) and an aggregator.

A target is a `Target(name, title, doc, cells, render)`: `cells(ctx)` lists the
cells (each with one RunSpec per seed, or a status such as "not implemented"),
the runner trains what they need, and `render(ctx, results)` writes
`<out>/<name>.md` (+ `.png` for figures) and the JSON sidecar. The list of
targets and what each holds follows `docs/EXPERIMENTS.md`.
"""
from __future__ import annotations

from umema_jax.experiments.targets.ablation import table5_cells, table5_render, table6_cells, table6_render
from umema_jax.experiments.targets.calibration import table7_cells, table7_render
from umema_jax.experiments.targets.comparison import table3_cells, table3_render, table4_cells, table4_render
from umema_jax.experiments.targets.core import CLS, DATASET_LABEL, LR_FILE, NER, Context, Target, train_spec
from umema_jax.experiments.targets.cost import bench_specs, fig7_cells, fig7_render
from umema_jax.experiments.targets.figures import (fig4_cells, fig4_render, fig5_cells, fig5_render, fig6_cells,
                                                   fig6_render)
from umema_jax.experiments.targets.lr_select import converged, lr_select_cells, lr_select_render
from umema_jax.experiments.targets.uncertainty import uncertainty_cells, uncertainty_render
from umema_jax.experiments.targets.setup import table1_cells, table1_render, table2_cells, table2_render

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
    Target("uncertainty", "Uncertainty heads and calibrators", uncertainty_cells, uncertainty_render),
)}
ORDER = list(TARGETS)          # `all` runs them in this order (most informative first, docs/EXPERIMENTS.md)

__all__ = ["CLS", "DATASET_LABEL", "LR_FILE", "NER", "ORDER", "TARGETS", "Context", "Target", "converged",
           "train_spec"]
