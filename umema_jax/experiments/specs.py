"""Run specifications: one launch.py run (or one benchmark) as data, keyed by its config overrides.

A `RunSpec` is a config file plus a sorted tuple of `(dotted.key, value)`
overrides. Its key is a hash of exactly that (output.* keys excluded: they do
not change results), so two targets that need the same training share one run
directory, and a run directory is never reused for a different configuration.
Keying by the overrides (not by the fully resolved config) keeps finished runs
valid when a new config key with a default is added; every key a table depends
on is an explicit override. A changed *default* would silently leave a finished
run's numbers in a table they no longer describe, so a run whose `config.json`
differs from what its spec resolves to today is `stale` (`stale_keys`): never
aggregated, never resumed, reported with the keys that differ.

Run directories hold checkpoints and live on one machine; what the tables read
from a finished run (its `config.json` and `results.json`) is also kept in the
*run ledger*, one small JSON file per run under `<out>/runs/` (committed with
the tables), so a fresh clone regenerates every table without the run
directories, and a lost machine loses no published number (`ledger_entry`;
written by `ledger.record`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sys

from umema_jax.experiments.profiles import REPO_ROOT

RESULT_FILE = "results.json"
RECORD_FILE = "records.npz"          # umema_jax.metrics.records.FILE
FAILED_FILE = "experiment_failed.json"
BENCH_FILE = "bench.jsonl"
LEDGER_DIR = "runs"              # under a profile's outputs: results/<profile>/runs/<run name>.json


@dataclasses.dataclass(frozen=True)
class RunSpec:
    config_file: str                 # relative to the repository root, e.g. configs/semeval.py
    overrides: tuple                 # sorted ((key, value), ...)
    kind: str = "train"              # train | bench
    args: tuple = ()                 # bench: umema_jax.bench flags

    def get(self, key: str, default=None):
        return dict(self.overrides).get(key, default)

    @property
    def key(self) -> str:
        payload = [self.kind, self.config_file,
                   [[k, v] for k, v in self.overrides if not k.startswith("output.")], list(self.args)]
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        if self.kind == "bench":
            backbone = next((a.split("=", 1)[1] for a in self.args if a.startswith("--backbone=")), "bench")
            return _safe(f"bench_{backbone}-{self.key}")
        g = self.get
        model = os.path.basename(str(g("model.name", "model")).rstrip("/"))
        name = (f"{g('data.name')}_{model}_{g('model.method')}_n{g('data.train_size')}_s{g('seed')}"
                f"_lr{float(g('optim.learning_rate', 0)):g}")
        if g("data.missing_rate"):
            name += f"_miss{float(g('data.missing_rate')):g}"
        return _safe(f"{name}-{self.key}")

    def launch_args(self, workdir: str) -> list:
        """The launch.py command line of this run."""
        return [f"--config={self.config_file}"] + [f"--config.{k}={_flag_value(v)}" for k, v in self.overrides] \
            + [f"--workdir={workdir}"]

    def command(self, workdir: str) -> str:
        if self.kind == "bench":
            return "python -m umema_jax.bench " + " ".join(self.args)
        return "python launch.py " + " ".join(self.launch_args(workdir))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)


def _flag_value(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def make_spec(config_file: str, *override_groups) -> RunSpec:
    """Later groups win; the result is sorted by key."""
    merged: dict = {}
    for group in override_groups:
        for k, v in (group.items() if isinstance(group, dict) else group):
            merged[k] = v
    return RunSpec(config_file, tuple(sorted(merged.items())))


# --------------------------------------------------------------------------- configs

def load_config(spec: RunSpec):
    """The ml_collections config launch.py would resolve for this spec (config file + overrides)."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    path = os.path.join(REPO_ROOT, spec.config_file)
    module_spec = importlib.util.spec_from_file_location("_experiments_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in spec.overrides:
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise KeyError(f"unknown config key {key!r} (not in {spec.config_file})")
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(f"unknown config key {key!r} (not in {spec.config_file})")
        node[parts[-1]] = value
    return config


# --------------------------------------------------------------------------- run directories

def repo_relative(path: str) -> str:
    """A path inside the repository as seen from its root (what the ledger and sidecars record, so they do
    not change with the clone's location); a path outside it, absolute."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


def workdir(root: str, spec: RunSpec) -> str:
    return os.path.join(root, "bench", spec.name) if spec.kind == "bench" else os.path.join(root, spec.name)


def finished(root: str, spec: RunSpec, ledger: str = "") -> bool:
    """Finished in its run directory, or recorded in the run ledger (`ledger`: that directory, or '')."""
    d = workdir(root, spec)
    here = os.path.isfile(os.path.join(d, BENCH_FILE if spec.kind == "bench" else RESULT_FILE)) and \
        (spec.kind != "bench" or os.path.isfile(os.path.join(d, "done")))
    return here or ledger_entry(ledger, spec) is not None


def started(root: str, spec: RunSpec) -> bool:
    return os.path.isfile(os.path.join(workdir(root, spec), "config.json")) or \
        os.path.isdir(os.path.join(workdir(root, spec), "checkpoints"))


def failure(root: str, spec: RunSpec) -> dict | None:
    path = os.path.join(workdir(root, spec), FAILED_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_STALE_CACHE: dict = {}


def stale_keys(root: str, spec: RunSpec, ledger: str = "") -> list:
    """Config keys that decide results (`train.checkpoint.config_differences`, the resume check's notion)
    and differ between the run's recorded config (its `config.json`, else its ledger entry) and what
    `spec` resolves to with today's defaults; [] when they agree or the run has not started."""
    if spec.kind != "train":
        return []
    path, in_ledger = _recorded_config(root, spec, ledger)
    try:
        stamp = (path, os.stat(path).st_mtime_ns, spec.key)
    except OSError:
        return []
    if stamp not in _STALE_CACHE:
        from umema_jax.methods import unused_config_prefixes
        from umema_jax.train.checkpoint import config_differences
        recorded = ledger_entry(ledger, spec)["config"] if in_ledger else read_json(path)
        _STALE_CACHE[stamp] = config_differences(recorded, load_config(spec).to_dict(),
                                                 unused_config_prefixes(spec.get("model.method")))
    return list(_STALE_CACHE[stamp])


def _recorded_config(root: str, spec: RunSpec, ledger: str) -> tuple[str, bool]:
    """Where a run's config is recorded: (its `config.json`, False), else (its ledger entry, True)."""
    path = os.path.join(workdir(root, spec), "config.json")
    if os.path.isfile(path) or not ledger:
        return path, False
    return ledger_path(ledger, spec), True


def read_json(path: str):
    """A JSON file's content (run configs, results, ledger entries)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stale_note(root: str, spec: RunSpec, ledger: str = "") -> str:
    """One line for a stale run: where it is, what differs, what to do."""
    path, in_ledger = _recorded_config(root, spec, ledger)
    where = path if in_ledger else workdir(root, spec)
    return (f"{where} was trained under other defaults ({', '.join(stale_keys(root, spec, ledger)[:5])}); "
            "not used: delete it to rerun, or key the setting explicitly")


def status(root: str, spec: RunSpec, ledger: str = "") -> str:
    """done | stale (trained under other defaults: `stale_keys`) | failed | partial (resumable) | todo."""
    if stale_keys(root, spec, ledger):
        return "stale"
    if finished(root, spec, ledger):
        return "done"
    if failure(root, spec):
        return "failed"
    return "partial" if started(root, spec) else "todo"


def load_results(root: str, spec: RunSpec, ledger: str = "") -> dict | None:
    """A finished run's results: from its run directory, else from its ledger entry; None when unfinished
    or stale."""
    if spec.kind == "bench":
        if finished(root, spec):
            return {"records": bench_records(root, spec)}
        entry = ledger_entry(ledger, spec)
        return None if entry is None else {"records": entry["records"]}
    if stale_keys(root, spec, ledger):
        return None
    path = os.path.join(workdir(root, spec), RESULT_FILE)
    if os.path.isfile(path):
        return read_json(path)
    entry = ledger_entry(ledger, spec)
    return None if entry is None else entry["results"]


# --------------------------------------------------------------------------- the run ledger

def ledger_path(ledger: str, spec: RunSpec) -> str:
    """`<ledger>/<run>.json` for training runs, `<ledger>/bench/<run>.json` for benchmarks (as run dirs)."""
    return os.path.join(ledger, *(("bench",) if spec.kind == "bench" else ()), f"{spec.name}.json")


def ledger_entry(ledger: str, spec: RunSpec) -> dict | None:
    """The ledger's record of a training run ({'run', 'config', 'results', 'source', ...}) or of a
    benchmark ({'run', 'command', 'source', 'records'}), or None."""
    if not ledger:
        return None
    path = ledger_path(ledger, spec)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            entry = json.load(f)
        except ValueError as err:
            raise ValueError(f"{path}: not a run-ledger entry ({err}); delete it to rebuild it") from None
    needs = {"records"} if spec.kind == "bench" else {"config", "results"}
    if not isinstance(entry, dict) or not needs <= entry.keys():
        raise ValueError(f"{path}: not a run-ledger entry (needs {' and '.join(map(repr, sorted(needs)))}); "
                         "delete it to rebuild it")
    return entry


def bench_records(root: str, spec: RunSpec) -> list:
    """A finished benchmark run's JSON lines."""
    with open(os.path.join(workdir(root, spec), BENCH_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ledger_record_path(ledger: str, spec: RunSpec) -> str:
    return os.path.join(ledger, f"{spec.name}.npz")


def record_path(root: str, spec: RunSpec, ledger: str = "") -> str | None:
    """A finished, non-stale run's per-example record (`metrics.records`): in its run directory, else in
    the ledger; None when it has none (e.g. runs recovered from published tables)."""
    if spec.kind != "train" or stale_keys(root, spec, ledger):
        return None
    for path in (os.path.join(workdir(root, spec), RECORD_FILE),
                 ledger_record_path(ledger, spec) if ledger else ""):
        if path and os.path.isfile(path):
            return path
    return None
