"""Reliability diagrams (matplotlib, Agg canvas: no display, no global pyplot state)."""
from __future__ import annotations

import os

import numpy as np

from umema_jax.metrics.calibration import ece, reliability_table


def reliability_diagram(methods: dict, path: str, n_bins: int = 15, title: str | None = None,
                        strategy: str = "uniform") -> str:
    """Writes a PNG with one accuracy-vs-confidence curve per method and a count histogram.

    `methods`: name -> (probs [N, C], labels [N]). Returns `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not methods:
        raise ValueError("reliability_diagram needs at least one method")
    fig = Figure(figsize=(6, 7))
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    width = 1.0 / n_bins / (len(methods) + 1)
    for k, (name, (probs, labels)) in enumerate(methods.items()):
        rows = reliability_table(probs, labels, n_bins=n_bins, strategy=strategy)
        filled = [r for r in rows if r["count"]]
        score = ece(probs, labels, n_bins=n_bins, strategy=strategy)
        ax.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled], marker="o",
                label=f"{name} (ECE {100 * score:.2f}%)")
        centers = np.array([(r["bin"] + 0.5) / n_bins for r in rows]) + (k - len(methods) / 2) * width
        hist.bar(centers, [r["count"] for r in rows], width=width, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"Reliability diagram ({n_bins} bins, top-label)")
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("confidence")
    hist.set_ylabel("count")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


TELEMETRY_PANELS = (
    ("loss", "train loss"),
    ("branch/temperature_mean", "UM temperature T (batch mean)"),
    ("branch/temperature_std", "T spread across the batch (std)"),
    ("branch/memory_embedding_cosine", "M_U: mean pairwise cosine"),
    ("branch/memory_max_weight", "largest retrieval weight"),
    ("branch/memory_distinct_slots", "distinct top-1 slots in the batch"),
    ("branch/memory_update_ratio", "‖g ⊙ W_r r‖ / ‖c‖"),
    ("branch/features_cosine", "head input: mean pairwise cosine"),
)


def telemetry_curves(runs: dict, path: str, title: str | None = None) -> str:
    """One panel per branch statistic (train records of `metrics.jsonl`), one line per run.

    `runs`: name -> list of metric records (dicts with `step`, `split`, ...). A
    collapse shows as T rising with no spread, cosines → 1, max weight → 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("telemetry_curves needs at least one run")
    fig = Figure(figsize=(12, 10))
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 2).reshape(-1)
    for ax, (key, label) in zip(axes, TELEMETRY_PANELS):
        for name, records in runs.items():
            pts = [(r["step"], r[key]) for r in records if r.get("split") == "train" and key in r]
            if pts:
                ax.plot(*zip(*pts), label=name, linewidth=1.2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "UM / EMA branch telemetry")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
