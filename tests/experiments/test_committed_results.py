"""What a fresh clone has of the published results: the run ledger with its per-example records.

Two promises: every committed record reproduces the metrics its run reported, and the committed tables
re-render byte-identical from the ledger alone (no run directory, no training).
"""
import glob
import json
import os
import shutil

import pytest

from umema_jax.experiments import pipeline
from umema_jax.experiments import specs as S
from umema_jax.experiments.profiles import get_profile
from umema_jax.experiments.targets import LR_FILE, Context
from umema_jax.metrics import records
from umema_jax.uncertainty.temperature import rescale_probs

RESULTS = os.path.join(S.REPO_ROOT, "results", "cpu")
RECORDS = sorted(glob.glob(os.path.join(RESULTS, S.LEDGER_DIR, "*.npz")))
# The committed outputs whose every cell is read from the ledger (runs, records and fig7's benchmark).
LEDGER_TABLES = ("lr_select", "table3", "table5", "table7", "uncertainty", "fig4", "fig5", "fig6", "fig7")


def test_the_cpu_ledger_has_records():
    assert RECORDS, f"no per-example record under {RESULTS}/{S.LEDGER_DIR}"


@pytest.mark.parametrize("path", RECORDS, ids=[os.path.basename(p)[:60] for p in RECORDS])
def test_a_committed_record_reproduces_its_runs_results(path):
    with open(path[:-len(".npz")] + ".json", encoding="utf-8") as f:
        results = json.load(f)["results"]
    record = records.load(path)
    assert record.posthoc_temperature == results["posthoc_temperature"]
    for split in ("dev", "test"):
        assert len(record[split]) == results["sizes"][split]
        reported = {k: v for k, v in results[split].items() if isinstance(v, float) and k != "loss"}
        recomputed = records.metrics_from_record(record, split)
        assert {k: recomputed[k] for k in reported} == pytest.approx(reported, rel=1e-9, abs=1e-12), split
        ts = {k: v for k, v in results[f"{split}_posthoc_ts"].items() if isinstance(v, float)}
        scaled = records.metrics_from_record(record, split, rescale_probs(record[split].probs,
                                                                          record.posthoc_temperature))
        assert {k: scaled[k] for k in ts} == pytest.approx(ts, rel=1e-5, abs=1e-7), split
        for name in record[split].posthoc:            # post-hoc calibrators, where the run has them
            calibrated = {k: v for k, v in results[f"{split}_{name}"].items() if isinstance(v, float)}
            recomputed = records.metrics_from_record(record, split, posthoc=name)
            assert {k: recomputed[k] for k in calibrated} == pytest.approx(calibrated, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("path", RECORDS, ids=[os.path.basename(p)[:60] for p in RECORDS])
def test_tables_recompute_a_metric_from_the_record_as_the_run_reported_it(path):
    """A cell whose run predates one of its metrics reads it from the run's record (`record_metric`): where
    the run did report it, the two agree, and today's metrics (AURC, PRR per score) are all there."""
    from umema_jax.experiments.aggregate import record_metric
    with open(path[:-len(".npz")] + ".json", encoding="utf-8") as f:
        results = json.load(f)["results"]
    sections = ["test", "test_posthoc_ts"] + [f"test_{n}" for n in records.load(path)["test"].posthoc]
    for section in sections:
        reported = {k: v for k, v in results[section].items() if isinstance(v, float) and k != "loss"}
        recomputed = {k: record_metric(path, f"{section}.{k}") for k in reported}
        assert recomputed == pytest.approx(reported, rel=1e-5, abs=1e-7), section
        assert record_metric(path, f"{section}.aurc_maxprob") is not None, section
        assert record_metric(path, f"{section}.prr_maxprob") is not None, section
    assert record_metric(path, "test.{primary}", results["primary_metric"]) == pytest.approx(
        results["test"][results["primary_metric"]])
    assert record_metric(path, "test_no_such_calibrator.ece") is None


def test_committed_tables_rerender_byte_identical_from_the_ledger(tmp_path):
    out = tmp_path / "cpu"
    shutil.copytree(os.path.join(RESULTS, S.LEDGER_DIR), out / S.LEDGER_DIR)
    if os.path.exists(os.path.join(RESULTS, LR_FILE)):
        shutil.copy(os.path.join(RESULTS, LR_FILE), out / LR_FILE)
    # The default root, as in a clone: run directories there (a developer's) hold the ledger's own files.
    ctx = Context(get_profile("cpu"), os.path.join(S.REPO_ROOT, "runs", "experiments", "cpu"), str(out))
    pipeline.render(ctx, list(LEDGER_TABLES), log=lambda m: None)
    for name in LEDGER_TABLES:
        with open(os.path.join(RESULTS, f"{name}.md"), encoding="utf-8") as f:
            committed = f.read()
        assert (out / f"{name}.md").read_text(encoding="utf-8") == committed, name


def _absolute_paths(node):
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [p for item in node for p in _absolute_paths(item)]
    return [node] if isinstance(node, str) and os.path.isabs(node) else []


def test_committed_ledger_and_tables_name_no_path_outside_the_repository():
    """Runs trained under a --root outside the checkout, on data outside it, are recorded with a
    repository-relative command and `$UMEMA_DATA_DIR`: no committed result names a machine's path."""
    results = os.path.join(S.REPO_ROOT, "results")
    for path in glob.glob(os.path.join(results, "**", "*.json"), recursive=True) + \
            glob.glob(os.path.join(results, "**", "*.md"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "--workdir=/" not in text and "runs under `/" not in text, path
        if path.endswith(".json"):
            assert _absolute_paths(json.loads(text)) == [], path
