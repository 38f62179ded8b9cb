import json

import pytest

from umema_jax.report import load_run, markdown, summarise


def fake_results(method, acc, trainable, epoch_s):
    metrics = {"accuracy": acc, "ece": 0.05, "nll": 1.5, "brier": 0.6}
    return {"dataset": "semeval", "model": "m", "method": method, "seed": 0, "primary_metric": "accuracy",
            "test": metrics, "dev": metrics, "test_posthoc_ts": {"ece": 0.02, "nll": 1.4, "brier": 0.59},
            "posthoc_temperature": 1.3, "best_step": 5, "steps": 10,
            "params": {"trainable": trainable, "total": 1000 + trainable}, "mean_train_time_per_epoch_s": epoch_s}


def test_rows_are_relative_to_the_lora_run(tmp_path):
    for name, r in {"a": fake_results("full", 0.5, 150, 30.0), "b": fake_results("lora", 0.4, 100, 20.0)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    rows = summarise([load_run(str(tmp_path / "a")), load_run(str(tmp_path / "b"))])
    assert rows[0]["extra_params_vs_lora"] == 50 and rows[0]["epoch_time_vs_lora"] == pytest.approx(1.5)
    assert rows[1]["epoch_time_vs_lora"] == pytest.approx(1.0)
    table = markdown(rows).splitlines()
    assert table[2].startswith("| full | 50.00 | 5.00 |") and table[3].startswith("| lora | 40.00 |")


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_run(str(tmp_path))


def _write_metrics(folder, temperatures):
    folder.mkdir()
    records = [{"step": 10 * (i + 1), "split": "train", "loss": 1.0, "branch/temperature_mean": t}
               for i, t in enumerate(temperatures)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_telemetry_curves_name_the_runs_by_their_labels(tmp_path):
    import subprocess
    import sys
    _write_metrics(tmp_path / "run_a", [1.0, 2.0, 3.0])
    _write_metrics(tmp_path / "run_b", [1.0, 1.1, 1.0])
    png = tmp_path / "t.png"
    cmd = [sys.executable, "-m", "umema_jax.report", str(tmp_path / "run_a"), str(tmp_path / "run_b"),
           f"--telemetry={png}"]
    ok = subprocess.run(cmd + ["--labels=raw T,unit T"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(cmd + ["--labels=only one"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--labels has 1 names for 2 run directories" in bad.stderr
