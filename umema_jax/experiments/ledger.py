"""Writing the run ledger: a finished run's `config.json`, `results.json` and per-example record (or a
benchmark's records) copied next to the tables, free of this machine's paths, so a fresh clone
re-renders every table without the run directories (reading it: `specs.ledger_entry`)."""
from __future__ import annotations

import os
import shutil

from umema_jax.experiments.specs import (RECORD_FILE, RESULT_FILE, RunSpec, bench_records, read_json, finished,
                                         ledger_entry, ledger_path, ledger_record_path, repo_relative, stale_keys,
                                         workdir)


def _record_bench(root: str, ledger: str, spec: RunSpec) -> bool:
    """A finished benchmark's per-method records (step times per round, host CPU) into the ledger."""
    if not finished(root, spec):
        return False
    entry = {"run": spec.name, "command": spec.command(""), "source": "benchmark",
             "records": bench_records(root, spec)}
    if ledger_entry(ledger, spec) == entry:
        return False
    from umema_jax.train.outputs import write_json
    os.makedirs(os.path.dirname(ledger_path(ledger, spec)), exist_ok=True)
    write_json(ledger_path(ledger, spec), entry)
    return True


def record(root: str, ledger: str, spec: RunSpec) -> bool:
    """Copies a finished, non-stale run's `config.json` and `results.json` into the ledger (atomic write;
    rewritten only when they changed); a benchmark's records likewise. Returns whether the entry was
    written."""
    if ledger and spec.kind == "bench":
        return _record_bench(root, ledger, spec)
    if not ledger or spec.kind != "train" or stale_keys(root, spec, ledger):
        return False
    wd = workdir(root, spec)
    paths = {"config": os.path.join(wd, "config.json"), "results": os.path.join(wd, RESULT_FILE)}
    if not all(os.path.isfile(p) for p in paths.values()):
        return False
    shown = repo_relative(wd)
    if os.path.isabs(shown):           # a root outside the checkout is this machine's business, not the ledger's
        shown = os.path.join("runs", spec.name)
    entry = {"run": spec.name, "command": spec.command(shown), "source": "run directory",
             **{key: read_json(path) for key, path in paths.items()}}
    entry["config"] = portable_config(entry["config"])
    record_src = os.path.join(wd, RECORD_FILE)
    record_dst = ledger_record_path(ledger, spec)
    copy_record = os.path.isfile(record_src) and not _same_file_bytes(record_src, record_dst)
    if ledger_entry(ledger, spec) == entry and not copy_record:
        return False
    from umema_jax.train.outputs import write_json
    os.makedirs(ledger, exist_ok=True)
    if copy_record:                    # the record first: an entry never points at a missing record
        shutil.copyfile(record_src, record_dst + ".tmp")
        os.replace(record_dst + ".tmp", record_dst)
    write_json(ledger_path(ledger, spec), entry)
    return True


DATA_DIR_MARK = "$UMEMA_DATA_DIR"


def portable_config(config: dict) -> dict:
    """A run's config as the ledger keeps it, free of this machine's paths: the data folder (which does not
    decide results, `RESUME_SAFE_KEYS`) repository-relative, or `$UMEMA_DATA_DIR` when outside the checkout."""
    data_dir = config.get("data", {}).get("data_dir", "")
    if data_dir:
        shown = repo_relative(data_dir)
        config = {**config, "data": {**config["data"], "data_dir": DATA_DIR_MARK if os.path.isabs(shown) else shown}}
    return config


def _same_file_bytes(a: str, b: str) -> bool:
    if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()
