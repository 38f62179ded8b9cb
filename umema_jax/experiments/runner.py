"""Run what a target needs: skip finished runs, resume half-finished ones, stop cleanly at a time cap.

Each training is an ordinary launch.py run directory under `root`, named
`<dataset>_<model>_<method>_n<size>_s<seed>_lr<lr>-<hash of the overrides>`.
`isolation='subprocess'` (default) runs `python launch.py ...` per run — a
fresh process per run, so compile caches and memory never accumulate and the
directory is exactly what the printed command makes; `'inprocess'` calls
`umema_jax.run.run_config`, the function launch.py's main calls, in this process, which saves start-up per run for the
seconds-long smoke profile. Both resume a half-finished run from its checkpoint
(launch.py's own resume path) and refuse a directory holding another config.
A run that fails (bad config, non-finite loss, crash) leaves
`experiment_failed.json` and is skipped on later invocations unless
`retry_failed`; an interrupt (Ctrl-C) checkpoints the run and stops the runner.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

from umema_jax.experiments import run_claims
from umema_jax.experiments.ledger import record as record_in_ledger
from umema_jax.experiments import specs as S
from umema_jax.experiments.estimate import hms
from umema_jax.experiments.profiles import REPO_ROOT

EXIT_INTERRUPTED = 130


class StopRequested(Exception):
    pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _train_subprocess(spec: S.RunSpec, workdir: str, env: dict) -> tuple[int, str]:
    cmd = [sys.executable, "launch.py", *spec.launch_args(workdir), "--config.output.progress_bar=False"]
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "launch.log")
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n# {_now()} {' '.join(cmd)}\n")
        log.flush()
        # Its own session: a terminal's Ctrl-C reaches only this runner, which forwards exactly one SIGINT
        # (a second one would make launch.py skip its checkpoint), and so does `kill` of a background runner.
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait()        # launch.py checkpoints and exits 130
            raise StopRequested(f"interrupted; {workdir} checkpointed (rc {rc})") from None
    if rc == 0:
        return rc, ""
    with open(log_path, encoding="utf-8") as f:
        tail = [line.strip() for line in f.readlines()[-20:] if line.strip()]
    err = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
    return rc, err


def _train_inprocess(spec: S.RunSpec, workdir: str) -> tuple[int, str]:
    """`umema_jax.run.run_config` in this process (the function launch.py calls: same outputs, same resume)."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)      # configs/*.py
    from umema_jax import run
    from umema_jax.methods import validate_config
    from umema_jax.runtime import enable_compilation_cache
    from umema_jax.train.validate import ConfigError

    from absl import logging
    logging.set_verbosity(logging.WARNING)          # as launch.py: orbax logs every save at INFO
    try:
        config = S.load_config(spec)
        config.output.progress_bar = False
        validate_config(config)
    except (ConfigError, KeyError, ValueError) as err:
        return run.EXIT_BAD_INPUT, str(err)
    enable_compilation_cache()
    try:
        run.run_config(config, workdir)
    except run.RunFailed as err:
        if err.code == run.EXIT_INTERRUPTED:
            raise StopRequested(str(err)) from None
        return err.code, str(err)
    return 0, ""


def _bench_subprocess(spec: S.RunSpec, workdir: str, env: dict) -> tuple[int, str]:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, S.BENCH_FILE + ".tmp")
    if os.path.exists(tmp):
        os.remove(tmp)
    cmd = [sys.executable, "-m", "umema_jax.bench", *spec.args, f"--output={tmp}"]
    with open(os.path.join(workdir, "bench.log"), "a", encoding="utf-8") as log:
        log.write(f"\n# {_now()} {' '.join(cmd)}\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        except KeyboardInterrupt:
            raise StopRequested("interrupted during the benchmark") from None
    if rc == 0:
        os.replace(tmp, os.path.join(workdir, S.BENCH_FILE))
        with open(os.path.join(workdir, "done"), "w", encoding="utf-8") as f:
            f.write(_now() + "\n")
        with open(os.path.join(workdir, "command.txt"), "w", encoding="utf-8") as f:
            f.write(" ".join(cmd[:1] + ["-m", "umema_jax.bench"] + list(spec.args)) + "\n")
    return rc, "" if rc == 0 else f"benchmark exited {rc} (see {workdir}/bench.log)"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupt_on_signals() -> dict:
    """SIGINT and SIGTERM stop the runner cleanly (the running launch.py checkpoints), also when it was
    started in the background, where the shell leaves SIGINT ignored. Returns the handlers to restore."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt)}


def run_one(spec: S.RunSpec, root: str, isolation: str = "subprocess", env: dict | None = None) -> tuple[int, str]:
    wd = S.workdir(root, spec)
    env = dict(os.environ if env is None else env)
    if spec.kind == "bench":
        rc, msg = _bench_subprocess(spec, wd, env)
    elif isolation == "inprocess":
        rc, msg = _train_inprocess(spec, wd)
    else:
        rc, msg = _train_subprocess(spec, wd, env)
    fail_path = os.path.join(wd, S.FAILED_FILE)
    if rc == 0:
        if os.path.exists(fail_path):
            os.remove(fail_path)
    elif rc != EXIT_INTERRUPTED:
        os.makedirs(wd, exist_ok=True)
        with open(fail_path, "w", encoding="utf-8") as f:
            json.dump({"rc": rc, "message": msg, "time": _now(), "command": spec.command(wd)}, f, indent=2)
    return rc, msg


def execute(jobs: list, root: str, estimator, **kwargs) -> dict:
    """Runs `jobs` that are not finished (see `_execute`), with SIGINT / SIGTERM stopping it cleanly."""
    old = _interrupt_on_signals()
    try:
        return _execute(jobs, root, estimator, **kwargs)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _execute(jobs: list, root: str, estimator, *, isolation: str = "subprocess", max_hours: float | None = None,
             retry_failed: bool = False, env: dict | None = None, log=None, ledger: str = "") -> dict:
    """Runs `jobs` ([(spec, [target names])], deduplicated, in order) that are not finished (in `root`
    or in the run ledger `ledger`); each run that finishes is recorded in the ledger at once.

    Time cap: between runs, a run whose estimated end falls past `max_hours` is left for the next
    invocation (the first run of an invocation always starts, so a run longer than the cap still
    advances; `max_hours=0` starts nothing). Prints progress: which
    run, how many done of how many, the target(s) it serves, and the ETA from the estimates rescaled by
    the runs finished in this session.

    Parallel: several invocations of the same command on one `root` (e.g. one per core, pinned with
    `taskset -c i`) share the work: each claims a run before training it (`run_claims.claim`) and skips runs
    another live runner holds, so every run is trained once.
    """
    log = log or (lambda msg: print(msg, flush=True))
    todo = []
    for spec, names in jobs:
        st = S.status(root, spec, ledger)
        if st == "stale":
            log(f"[experiments] stale: {S.stale_note(root, spec, ledger)}")
        if st in ("done", "stale") or (st == "failed" and not retry_failed):
            continue
        todo.append((spec, names, st))
    total_jobs = len(jobs)
    already = total_jobs - len(todo)
    skipped_failed = 0 if retry_failed else sum(1 for spec, _ in jobs if S.status(root, spec, ledger) == "failed")
    est = {spec.key: estimator.time_s(spec) for spec, _, _ in todo}
    summary = {"planned": total_jobs, "already_done": already - skipped_failed, "skipped_failed": skipped_failed,
               "ran": 0, "failed": [], "stopped": None, "elapsed_s": 0.0, "claimed_elsewhere": 0}
    log(f"[experiments] {total_jobs} runs needed: {already - skipped_failed} already done, "
        f"{skipped_failed} failed before (skipped; --retry_failed to rerun), {len(todo)} to run "
        f"(estimated {hms(sum(est.values()))})")
    t_start = time.monotonic()
    spent_est, spent_real = 0.0, 0.0
    for i, (spec, names, st) in enumerate(todo):
        if S.finished(root, spec, ledger) or (not retry_failed and S.failure(root, spec)):
            continue                       # finished (or failed) meanwhile by another runner on this root
        elapsed = time.monotonic() - t_start
        if max_hours is not None and (summary["ran"] or max_hours <= 0) and \
                elapsed + est[spec.key] > max_hours * 3600:
            summary["stopped"] = (f"time cap {max_hours:g} h: stopped before run {i + 1}/{len(todo)} after "
                                  f"{hms(elapsed)}; re-run the same command to continue")
            log(f"[experiments] {summary['stopped']}")
            break
        owner = run_claims.claim(root, spec)
        if owner is not None:
            summary["claimed_elsewhere"] += 1
            log(f"[experiments] skipped {spec.name}: another runner (pid {owner.get('pid')} on "
                f"{owner.get('host')}) is training it")
            continue
        if S.finished(root, spec, ledger):  # finished by another runner between the check above and the claim
            run_claims.release(root, spec)
            continue
        ratio = spent_real / spent_est if spent_est else 1.0
        remaining = sum(est[s.key] for s, _, _ in todo[i:]) * ratio
        wd = S.workdir(root, spec)
        log_name = "launch.log" if spec.kind == "train" else "bench.log"
        log(f"[experiments] run {already + i + 1}/{total_jobs} ({', '.join(names)}): {spec.name}"
            f"{' (resuming)' if st == 'partial' else ''} — est {hms(est[spec.key] * ratio)}, "
            f"ETA all {hms(remaining)}" + ("" if isolation == "inprocess" and spec.kind == "train" else
                                           f"; log {os.path.join(wd, log_name)}"))
        t0 = time.monotonic()
        try:
            rc, msg = run_one(spec, root, isolation, env)
        except (StopRequested, KeyboardInterrupt) as stop:
            summary["stopped"] = str(stop) or "interrupted"
            log(f"[experiments] {stop}; re-run the same command to resume")
            break
        finally:
            run_claims.release(root, spec)
        dt = time.monotonic() - t0
        if rc == EXIT_INTERRUPTED:        # the run alone got the signal (e.g. `kill -INT` of launch.py): stop too
            summary["stopped"] = f"{spec.name} interrupted after {hms(dt)}; it checkpointed"
            log(f"[experiments] {summary['stopped']}; re-run the same command to resume")
            break
        spent_est += est[spec.key]
        spent_real += dt
        summary["ran"] += 1
        if rc == 0:
            record_in_ledger(root, ledger, spec)
            log(f"[experiments]   done in {hms(dt)}")
        else:
            summary["failed"].append({"run": spec.name, "rc": rc, "message": msg})
            log(f"[experiments]   FAILED (rc {rc}) in {hms(dt)}: {msg}")
    summary["elapsed_s"] = time.monotonic() - t_start
    return summary
