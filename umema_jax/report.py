"""Compare finished runs: one markdown row per run directory, from its `results.json`.

    python -m umema_jax.report runs/semeval_*            # prints the table
    python -m umema_jax.report runs/semeval_* --out=docs/results_semeval.md --json=summary.json
    python -m umema_jax.report runs/a runs/b --telemetry=docs/telemetry.png   # branch curves (metrics.jsonl)

Rows are relative to the first run of the `--baseline` method (LoRA by default: step time ratio and
extra parameters), so an ablation sweep reads as "what each branch costs and buys".
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", "", "Also write the markdown table to this file.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows as JSON to this file.")
_TELEMETRY = flags.DEFINE_string("telemetry", "", "Write the UM/EMA telemetry curves of the runs "
                                 "(their metrics.jsonl; finished or not) to this PNG instead of a table.")
_BASELINE = flags.DEFINE_string("baseline", "lora", "The method (model.method) the rows are relative to.")
_LABELS = flags.DEFINE_list("labels", [], "Names of the runs in the telemetry legend, one per RUN_DIR "
                            "(default: the directory names).")


def load_run(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no results.json (run unfinished or not a run directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summarise(results: list[dict], baseline: str = "lora") -> list[dict]:
    """Flat rows: test metrics raw and after post-hoc TS, time per epoch, params; ratios vs LoRA."""
    rows = []
    for r in results:
        primary = r["primary_metric"]
        test, ts = r["test"], r.get("test_posthoc_ts", {})
        rows.append({
            "dataset": r["dataset"], "model": r["model"], "method": r["method"], "seed": r["seed"],
            "primary_metric": primary, "test_primary": test[primary], "test_ece": test["ece"],
            "test_nll": test["nll"], "test_brier": test["brier"],
            "ts_temperature": r.get("posthoc_temperature"), "ts_ece": ts.get("ece"),
            "ts_nll": ts.get("nll"), "ts_brier": ts.get("brier"),
            "dev_primary": r["dev"][primary], "best_step": r["best_step"], "steps": r["steps"],
            "trainable_params": r["params"]["trainable"], "total_params": r["params"]["total"],
            **{k: test[k] for k in test if k.startswith("auroc_error_")},
            "train_time_per_epoch_s": r.get("mean_train_time_per_epoch_s"),
        })
    base = next((row for row in rows if row["method"] == baseline), None)
    for row in rows:
        if base is not None:
            row["extra_params_vs_lora"] = row["trainable_params"] - base["trainable_params"]
            if row["train_time_per_epoch_s"] and base["train_time_per_epoch_s"]:
                row["epoch_time_vs_lora"] = row["train_time_per_epoch_s"] / base["train_time_per_epoch_s"]
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    primary = rows[0]["primary_metric"]
    head = (f"| method | test {primary} | ECE | NLL | Brier | + post-hoc TS: T | ECE | NLL | Brier "
            f"| trainable params | extra vs LoRA | s/epoch | epoch time vs LoRA |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    pct = lambda x: "–" if x is None else f"{100 * x:.2f}"
    num = lambda x, d=4: "–" if x is None else f"{x:.{d}f}"
    for r in rows:
        lines.append(
            f"| {r['method']} | {pct(r['test_primary'])} | {pct(r['test_ece'])} | {num(r['test_nll'])} "
            f"| {num(r['test_brier'])} | {num(r['ts_temperature'], 3)} | {pct(r['ts_ece'])} | {num(r['ts_nll'])} "
            f"| {num(r['ts_brier'])} | {r['trainable_params']:,} | {r.get('extra_params_vs_lora', 0):+,} "
            f"| {num(r['train_time_per_epoch_s'], 1)} | {num(r.get('epoch_time_vs_lora'), 2)} |")
    table = "\n".join(lines) + f"\n\n{primary} and ECE (15 equal-width bins, top-label) in %.\n"
    scores = sorted({k for r in rows for k in r if k.startswith("auroc_error_")},
                    key=lambda k: (k != "auroc_error_maxprob", k))
    if scores:
        head = "| method | " + " | ".join(k.removeprefix("auroc_error_") for k in scores) + " |"
        lines = ["", "Error-detection AUROC on test (0.5 = uninformative):", "", head,
                 "|" + "---|" * (len(scores) + 1)]
        for r in rows:
            lines.append(f"| {r['method']} | " + " | ".join(num(r.get(k), 3) for k in scores) + " |")
        table += "\n".join(lines) + "\n"
    return table


def load_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics.jsonl (not a run directory)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    dirs = argv[1:]
    if not dirs:
        print("usage: python -m umema_jax.report RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        sys.exit(2)
    if _TELEMETRY.value:
        from umema_jax.metrics.plots import telemetry_curves
        labels = _LABELS.value or [os.path.basename(os.path.normpath(d)) for d in dirs]
        if len(labels) != len(dirs):
            print(f"report: error: --labels has {len(labels)} names for {len(dirs)} run directories", file=sys.stderr)
            sys.exit(2)
        try:
            runs = {label: load_metrics(d) for label, d in zip(labels, dirs)}
        except FileNotFoundError as err:
            print(f"report: error: {err}", file=sys.stderr)
            sys.exit(2)
        print(telemetry_curves(runs, _TELEMETRY.value))
        return
    try:
        rows = summarise([load_run(d) for d in dirs], _BASELINE.value)
    except FileNotFoundError as err:
        print(f"report: error: {err}", file=sys.stderr)
        sys.exit(2)
    table = markdown(rows)
    print(table)
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            f.write(table)
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
