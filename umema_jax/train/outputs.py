"""Run artefacts in the workdir: config.json, results.json, records.npz, predictions.jsonl, results.md,
reliability.png."""
from __future__ import annotations

import json
import os
import resource
import subprocess
from typing import Any

import jax
import numpy as np

from umema_jax import runtime
from umema_jax.uncertainty.temperature import fit_temperature, rescale_probs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP_K = 3


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else str(x)
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomic write (tmp + rename): a killed run never leaves half a JSON file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# What the experiment runner itself rewrites in its checkout (tables, figures, the run ledger, the README's
# and docs/RESULTS.md's generated blocks): changes there are outputs, not code, and mark no run `-dirty`.
RUNNER_OUTPUTS = ("results", "README.md", "docs/RESULTS.md")


def git_commit(repo: str = REPO_ROOT) -> str:
    """HEAD commit of the checkout, suffixed `-dirty` when tracked files other than the runner's outputs
    (`RUNNER_OUTPUTS`) changed; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                               + [f":(exclude){p}" for p in RUNNER_OUTPUTS], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_memory() -> dict:
    """Peak host RSS (this process) and, where the backend reports it, peak device memory."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    device_peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - backends without stats
            stats = {}
        if "peak_bytes_in_use" in stats:
            device_peaks.append(stats["peak_bytes_in_use"] / 2**20)
    out["peak_device_memory_mb"] = max(device_peaks) if device_peaks else None
    return out


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if np.isscalar(v) or isinstance(v, str)}


def prediction_records(task_type: str, label_names: list, preds: dict, encoded, examples: list) -> list:
    """One JSON-able record per example: gold, predicted, top-k probabilities, confidence, the gold
    label's probability (so per-example NLL and error analyses need not re-run the model), aux outputs."""
    names = np.asarray(label_names)
    index = {str(n): j for j, n in enumerate(label_names)}
    records = []
    for i, ex in enumerate(examples):
        p = np.asarray(preds["probs"][i], dtype=np.float64)
        aux = {k: v[i] for k, v in preds["aux"].items()}
        if task_type == "cls":
            top = np.argsort(-p)[:TOP_K]
            rec = {"id": encoded.ids[i], "gold": ex.label, "pred": str(names[top[0]]),
                   "confidence": float(p[top[0]]), "gold_prob": float(p[index[str(ex.label)]]),
                   "top_probs": {str(names[j]): float(p[j]) for j in top}}
        else:
            pred = names[p.argmax(-1)].tolist() if p.size else []
            rec = {"id": encoded.ids[i], "tokens": list(ex.tokens), "gold": list(ex.tags),
                   "pred": pred + ["O"] * (len(ex.tags) - len(pred)),
                   "confidence": p.max(-1).tolist() if p.size else [],
                   "scored_words": int(len(pred))}
        if aux:
            rec["aux"] = _jsonable(aux)
        records.append(rec)
    return records


def write_text(path: str, text: str) -> None:
    """Atomic write (tmp + rename) of a text file: a killed process never leaves half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_predictions(path: str, records: list) -> None:
    write_text(path, "".join(json.dumps(_jsonable(rec)) + "\n" for rec in records))


def results_table(results: dict) -> str:
    """Markdown: one row per split with the headline metrics, then run facts."""
    primary = results["primary_metric"]
    cols = [primary, "ece", "nll", "brier", "loss"]
    lines = [f"# {results['dataset']} · {results['model']} · {results['method']} · seed {results['seed']}", "",
             "| split | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows = [("dev", "dev"), ("test", "test")]
    if "test_posthoc_ts" in results:
        rows.append(("test_posthoc_ts", f"test + post-hoc TS (T={results['posthoc_temperature']:.3f})"))
    for key, name in rows:
        m = results[key]
        n = m.get("n", m.get("n_sentences", ""))
        vals = [f"{100 * m[c]:.2f}" if c in (primary, "ece") else f"{m[c]:.4f}" if c in m else "–"
                for c in cols]
        lines.append(f"| {name} | {n} | " + " | ".join(vals) + " |")
    lines += ["", f"{primary} and ECE (15 equal-width bins, top-label) in %.", "",
              "| fact | value |", "|---|---|"]
    facts = {"train examples": results["sizes"]["train"], "max_len": results["max_len"],
             "truncated (train/dev/test)": "/".join(str(results["encoding"][s]["truncated_examples"])
                                                   for s in ("train", "dev", "test")),
             "trainable params": f"{results['params']['trainable']:,}",
             "total params": f"{results['params']['total']:,}",
             "best step / steps": f"{results['best_step']} / {results['steps']}",
             "train time per epoch (s)": ", ".join(f"{t:.1f}" for t in results["train_time_per_epoch_s"]),
             "peak RSS (MB)": f"{results['memory']['peak_rss_mb']:.0f}",
             "git commit": results["git_commit"]}
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    return "\n".join(lines) + "\n"


def reliability_inputs(task_type: str, preds: dict, encoded) -> tuple[np.ndarray, np.ndarray]:
    """(probs [N,C], labels [N]) over scored targets (tokens for NER)."""
    if task_type == "cls":
        return np.asarray(preds["probs"]), np.asarray(encoded.labels)
    probs = [np.asarray(p) for p in preds["probs"] if np.size(p)]
    labels = [np.asarray(lab)[w >= 0] for lab, w in zip(encoded.labels, encoded.word_index) if (w >= 0).any()]
    return np.concatenate(probs), np.concatenate(labels)


def posthoc_temperature_scaling(exp, run) -> dict:
    """The standard calibration baseline next to every variant: one scalar T fitted on dev NLL.

    Returns `posthoc_temperature` and `{dev,test}_posthoc_ts` metric dicts (the
    dev numbers are in-sample for T, the test numbers are the ones to compare).
    """
    dev_probs, dev_labels = reliability_inputs(exp.task_type, run.predictions["dev"], exp.encoded["dev"])
    t = fit_temperature(np.log(np.clip(dev_probs, 1e-30, None)), dev_labels)
    out = {"posthoc_temperature": t}
    for split in ("dev", "test"):
        preds = run.predictions[split]
        if exp.task_type == "cls":
            scaled_probs = rescale_probs(preds["probs"], t)
        else:
            scaled_probs = [rescale_probs(p, t) if np.size(p) else p for p in preds["probs"]]
        metrics = _scalars(exp.evaluate(split, dict(preds, probs=scaled_probs)))
        metrics.pop("loss", None)        # `loss` is the model's own NLL, unchanged by post-hoc T
        out[f"{split}_posthoc_ts"] = metrics
    return out


def numerics_record(model) -> dict:
    """What decides a run's rounding besides its config: the matmul path the model ran on (`auto` resolved,
    by measurement on CPU) and the host. Runs are paired (same seed, same data order) only when these
    agree: rounding alone moves a result."""
    import platform
    return {"matmul_path": str(getattr(model, "cpu_matmul", "xla")), "backend": jax.default_backend(),
            "cpu": runtime.cpu_model(), "machine": platform.machine()}


def run_record(exp, run, posthoc_temperature: float):
    """The run's per-example record (`metrics.records`): every dev / test example's probabilities, gold
    label and uncertainty scores."""
    from umema_jax.metrics import records
    info = exp.info
    scores = tuple(info.get("scores") or exp.model.exported_scores())
    splits = {split: records.split_record(exp.task_type, info["labels"], run.predictions[split],
                                          exp.encoded[split], info["examples"][split], scores)
              for split in records.SPLITS}
    return records.RunRecord(exp.task_type, list(info["labels"]), float(posthoc_temperature), splits)


def posthoc_results(record, calibrated: dict) -> dict:
    """Puts each post-hoc calibrator's outputs (`uncertainty.posthoc.calibrate`) into `record` and returns
    results.json's entries for them: `<split>_<name>` metric dicts, recomputed from the record (so the two
    cannot disagree), and `posthoc`: what each calibrator chose."""
    from umema_jax.metrics.records import metrics_from_record
    out: dict = {"posthoc": {}}
    for name, fitted in calibrated.items():
        out["posthoc"][name] = fitted["summary"]
        if "failed" in fitted["summary"]:
            continue
        for split in ("dev", "test"):
            probs, scores = fitted[split]
            record[split].posthoc[name] = (None if probs is None else np.asarray(probs, np.float32),
                                           {k: np.asarray(v, np.float32) for k, v in scores.items()})
            out[f"{split}_{name}"] = _scalars(metrics_from_record(record, split, posthoc=name))
    return out


def lora_record(cfg, arch: str | None) -> dict | None:
    """The LoRA settings the model was built with, defaults resolved (alpha -1 = 2 * rank, '' = arch targets)."""
    if cfg is None:
        return None
    return {"rank": int(cfg.rank), "alpha": float(cfg.alpha), "scale": float(cfg.scale),
            "dropout": float(cfg.dropout), "target_regex": cfg.regex(arch) if arch else cfg.target_regex}


def write_all(workdir: str, config, exp, run, wall_time_s: float, mesh, commit: str | None = None) -> dict:
    """results.json, records.npz, predictions.jsonl, results.md and reliability.png; returns the results."""
    from umema_jax.metrics import reliability_diagram
    info = exp.info
    results = {
        "dataset": config.data.name, "model": config.model.name, "method": config.model.method,
        "seed": config.seed, "task_type": exp.task_type,
        "primary_metric": "accuracy" if exp.task_type == "cls" else "span_f1",
        "dev": _scalars(run.dev), "test": _scalars(run.test),
        "best_step": run.best_step, "steps": run.steps, "stopped_early": run.stopped_early,
        "dev_history": run.history,
        "sizes": info["sizes"], "full_train_size": info.get("full_train_size"),
        "max_len": config.data.max_len, "encoding": info["encoding"], "token_lengths": info["token_lengths"],
        "method_info": info.get("method"),      # family and hyper-parameters (methods.<name>.*)
        "method_state": run.method_state,   # end of training: e.g. SplitLoRA's traffic
        "params": info["params"], "lora": lora_record(getattr(exp.model, "lora_cfg", None),
                                                     getattr(info.get("backbone"), "arch", None)),
        "train_time_per_epoch_s": run.epoch_times,     # complete epochs only; includes compilation in epoch 1
        "train_time_s": run.train_time_s,
        "mean_train_time_per_epoch_s": float(np.mean(run.epoch_times)) if run.epoch_times else None,
        "wall_time_s": wall_time_s, "memory": peak_memory(),
        "git_commit": git_commit() if commit is None else commit,    # the caller's: taken when training began
        "devices": [str(d) for d in jax.devices()], "mesh": dict(mesh.shape),
        "jax_version": jax.__version__, "numerics": numerics_record(exp.model),
    }
    results.update(posthoc_temperature_scaling(exp, run))
    from umema_jax.metrics import records
    record = run_record(exp, run, results["posthoc_temperature"])
    if run.posthoc:
        results.update(posthoc_results(record, run.posthoc))
    records.save(os.path.join(workdir, records.FILE), record)
    write_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(results_table(results))
    if config.output.predictions:
        records = prediction_records(exp.task_type, info["labels"], run.predictions["test"],
                                     exp.encoded["test"], info["examples"]["test"])
        write_predictions(os.path.join(workdir, "predictions.jsonl"), records)
    probs, labels = reliability_inputs(exp.task_type, run.predictions["test"], exp.encoded["test"])
    t = results["posthoc_temperature"]
    curves = {config.model.method: (probs, labels),
              f"{config.model.method} + post-hoc TS (T={t:.2f})": (rescale_probs(probs, t), labels)}
    reliability_diagram(curves, os.path.join(workdir, "reliability.png"),
                        title=f"{config.data.name} test · {config.model.name}")
    return results
