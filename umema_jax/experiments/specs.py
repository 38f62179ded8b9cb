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
directories, and a lost machine loses no published number (`record`,
`ledger_entry`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import socket
import re
import shutil
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
        recorded = ledger_entry(ledger, spec)["config"] if in_ledger else _read_json(path)
        _STALE_CACHE[stamp] = config_differences(recorded, load_config(spec).to_dict(),
                                                 unused_config_prefixes(spec.get("model.method")))
    return list(_STALE_CACHE[stamp])


def _recorded_config(root: str, spec: RunSpec, ledger: str) -> tuple[str, bool]:
    """Where a run's config is recorded: (its `config.json`, False), else (its ledger entry, True)."""
    path = os.path.join(workdir(root, spec), "config.json")
    if os.path.isfile(path) or not ledger:
        return path, False
    return ledger_path(ledger, spec), True


def _read_json(path: str):
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


# --------------------------------------------------------------------------- claims (several runners, one root)

CLAIM_FILE = "claimed_by.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(root: str, spec: RunSpec) -> dict | None:
    """Claims `spec` for this process: None on success, else the live owner's record.

    Several runner processes (one per core, GPU or machine sharing a file system) can work through the
    same target: each claims a run before starting it, by creating the claim file exclusively (atomic on
    POSIX), so two never train in one directory. A claim whose process is gone (kill -9, crash) on this
    host is stale and taken over; the run then resumes from its checkpoint as usual.
    """
    wd = workdir(root, spec)
    os.makedirs(wd, exist_ok=True)
    path = os.path.join(wd, CLAIM_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                owner = {}                 # half-written by a process that died mid-write: stale
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                return None
            if owner.get("host") not in (None, me["host"]) or (owner.get("pid") and _alive(int(owner["pid"]))):
                return owner
            try:
                os.remove(path)            # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return None
    return {"pid": None, "host": None}     # lost the race for a stale claim to another runner


def release(root: str, spec: RunSpec) -> None:
    path = os.path.join(workdir(root, spec), CLAIM_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        os.remove(path)


def load_results(root: str, spec: RunSpec, ledger: str = "") -> dict | None:
    """A finished run's results: from its run directory, else from its ledger entry; None when unfinished
    or stale."""
    if spec.kind == "bench":
        if finished(root, spec):
            return {"records": _bench_records(root, spec)}
        entry = ledger_entry(ledger, spec)
        return None if entry is None else {"records": entry["records"]}
    if stale_keys(root, spec, ledger):
        return None
    path = os.path.join(workdir(root, spec), RESULT_FILE)
    if os.path.isfile(path):
        return _read_json(path)
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


def _bench_records(root: str, spec: RunSpec) -> list:
    with open(os.path.join(workdir(root, spec), BENCH_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _record_bench(root: str, ledger: str, spec: RunSpec) -> bool:
    """A finished benchmark's per-method records (step times per round, host CPU) into the ledger."""
    if not finished(root, spec):
        return False
    entry = {"run": spec.name, "command": spec.command(""), "source": "benchmark",
             "records": _bench_records(root, spec)}
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
             **{key: _read_json(path) for key, path in paths.items()}}
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
