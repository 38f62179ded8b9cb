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
