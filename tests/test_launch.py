"""launch.py end to end on the smoke config: outputs, config errors, SIGKILL/SIGINT + resume = same numbers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from umema_jax.metrics import records
from umema_jax.uncertainty.temperature import rescale_probs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Longer than the default smoke run so there is time to kill it between checkpoints and the end.
SMOKE = ["--config=configs/smoke.py", "--config.train.epochs=6", "--config.train.checkpoint_every_steps=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xla_cache")   # shared by this module's runs: compile once
    return dict(os.environ, UMEMA_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def launch(args, env, **kw):
    return subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def finalized_steps(workdir):
    folder = os.path.join(workdir, "checkpoints", "latest")
    if not os.path.isdir(folder):
        return []
    return sorted(int(s) for s in os.listdir(folder) if s.isdigit())


def interrupt_after_checkpoint(args, env, workdir, sig, after_step):
    """Starts a run, sends `sig` once a checkpoint newer than `after_step` is complete; returns (rc, err)."""
    proc = launch(args, env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [s for s in finalized_steps(workdir) if s > after_step]
        if done:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    rc, _, err = finish(proc)
    return rc, err


def read(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return f.read()


def check_outputs(workdir, out):
    for name in ("config.json", "metrics.jsonl", "results.json", "results.md", "predictions.jsonl",
                 "reliability.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    results = json.loads(read(workdir, "results.json"))
    for split in ("dev", "test"):
        for key in ("accuracy", "ece", "nll", "brier"):
            assert key in results[split]
    assert results["params"]["trainable"] < results["params"]["total"]
    assert results["posthoc_temperature"] > 0          # the post-hoc TS baseline is reported next to raw
    assert results["test_posthoc_ts"]["nll"] > 0 and "ece" in results["test_posthoc_ts"]
    assert results["dev_posthoc_ts"]["nll"] <= results["dev"]["nll"] + 1e-6   # T is fitted on dev NLL
    assert results["sizes"]["test"] == len(read(workdir, "predictions.jsonl").splitlines())
    assert results["method"] == "full" and results["train_time_per_epoch_s"]
    assert (results["lora"]["rank"], results["lora"]["alpha"], results["lora"]["scale"]) == (8, 16.0, 2.0)
    assert json.loads(read(workdir, "config.json"))["model"]["lora"]["alpha"] == 16.0   # -1 recorded resolved
    pred = json.loads(read(workdir, "predictions.jsonl").splitlines()[0])
    assert {"id", "gold", "pred", "confidence", "gold_prob", "top_probs", "aux"} <= set(pred)
    assert "u_bar" in pred["aux"]                       # the model's uncertainty outputs travel along
    assert "test accuracy" in out
    # The per-example record alone reproduces every reported metric (UM's AUROCs and post-hoc TS included).
    record = records.load(os.path.join(workdir, records.FILE))
    assert set(record["test"].scores) == {"u_ale", "u_epi", "u_bar", "temperature"}
    assert record.posthoc_temperature == results["posthoc_temperature"]
    for split in ("dev", "test"):
        recomputed = records.metrics_from_record(record, split)
        reported = {k: v for k, v in results[split].items() if isinstance(v, float) and k != "loss"}
        assert reported and {k: recomputed[k] for k in reported} == pytest.approx(reported, rel=1e-9, abs=1e-12)
        scaled = rescale_probs(record[split].probs, record.posthoc_temperature)
        ts = {k: v for k, v in results[f"{split}_posthoc_ts"].items() if isinstance(v, float)}
        assert {k: records.metrics_from_record(record, split, scaled)[k] for k in ts} == \
            pytest.approx(ts, rel=1e-5, abs=1e-7)
        # The post-hoc calibrators (Laplace, correctness head) run at the end and are in the record.
        assert set(record[split].posthoc) == {"laplace", "laplace-dev", "correctness"} == set(results["posthoc"])
        for name in record[split].posthoc:
            calibrated = {k: v for k, v in results[f"{split}_{name}"].items() if isinstance(v, float)}
            recomputed = records.metrics_from_record(record, split, posthoc=name)
            assert {k: recomputed[k] for k in calibrated} == pytest.approx(calibrated, rel=1e-9, abs=1e-12)
        assert "auroc_error_correctness" in results[f"{split}_correctness"]


def test_smoke_run_outputs_and_kill_interrupt_resume_is_bit_identical(env, tmp_path):
    """One test (not a shared fixture) so pytest-xdist never runs the reference twice."""
    reference = str(tmp_path / "reference")
    rc, out, err = finish(launch([*SMOKE, f"--workdir={reference}"], env))
    assert rc == 0, err[-3000:]
    check_outputs(reference, out)

    workdir = str(tmp_path / "resumed")
    args = [*SMOKE, f"--workdir={workdir}"]
    rc, err = interrupt_after_checkpoint(args, env, workdir, signal.SIGKILL, after_step=0)
    assert rc == -signal.SIGKILL, err[-2000:]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    killed_at = max(finalized_steps(workdir))
    rc, err = interrupt_after_checkpoint(args, env, workdir, signal.SIGINT, after_step=killed_at)
    assert rc == 130, err[-2000:]
    assert "re-run the same command to resume" in err
    rc, out, err = finish(launch(args, env))
    assert rc == 0, err[-3000:]
    assert "resumed from step" in err
    ref, new = json.loads(read(reference, "results.json")), json.loads(read(workdir, "results.json"))
    assert new["dev"] == ref["dev"] and new["test"] == ref["test"]        # bit-identical metrics
    assert new["best_step"] == ref["best_step"] and new["dev_history"] == ref["dev_history"]
    assert read(workdir, "predictions.jsonl") == read(reference, "predictions.jsonl")
    a, b = (records.load(os.path.join(d, records.FILE)) for d in (workdir, reference))
    assert all(np.array_equal(a[s].probs, b[s].probs) and np.array_equal(a[s].scores["u_bar"], b[s].scores["u_bar"])
               for s in ("dev", "test"))
    # Dev records are bit-identical. A train record averages loss/tokens over its logging
    # window; a SIGKILL loses the part of that window before the kill, so the resumed run's
    # first window covers fewer steps: compare which steps were logged and their schedule only.
    logs = [[json.loads(line) for line in read(d, "metrics.jsonl").splitlines()] for d in (workdir, reference)]
    assert [r for r in logs[0] if r["split"] == "dev"] == [r for r in logs[1] if r["split"] == "dev"]
    assert [(r["step"], r["learning_rate"]) for r in logs[0] if r["split"] == "train"] == \
        [(r["step"], r["learning_rate"]) for r in logs[1] if r["split"] == "train"]


@pytest.mark.parametrize("override, message", [
    ("--config.model.method=lora+xyz", "model.method"),
    ("--config.data.data_dir=/no/such/dir", "data.data_dir"),
    ("--config.optim.learning_rate=-1", "optim.learning_rate"),
    ("--config.optim.learning_rate=inf", "optim.learning_rate"),
    ("--config.data.train_size=0", "data.train_size"),
    ("--config.train.no_such_key=1", "unknown config key"),
])
def test_bad_config_fails_fast_with_one_line(override, message, env, tmp_path):
    workdir = tmp_path / "never"
    rc, out, err = finish(launch(["--config=configs/smoke.py", override, f"--workdir={workdir}"], env))
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip() and "PyTorch was not found" not in line]
    assert len(lines) == 1 and lines[0].startswith("launch.py: error:") and message in lines[0], err
    assert not workdir.exists()                         # failed before anything was written or computed


def test_resuming_with_a_different_config_is_refused(env, tmp_path):
    sys.path.insert(0, REPO)
    from configs.smoke import get_config
    (tmp_path / "config.json").write_text(json.dumps(get_config().to_dict()))
    rc, _, err = finish(launch(["--config=configs/smoke.py", "--config.seed=1", f"--workdir={tmp_path}"], env))
    assert rc == 2 and "different config (seed)" in err
    assert not (tmp_path / "checkpoints").exists()


def error_line(err):
    """The one stderr line of a refused start (the PyTorch notice of transformers aside)."""
    lines = [line for line in err.splitlines() if line.strip() and "PyTorch was not found" not in line]
    assert len(lines) == 1 and lines[0].startswith("launch.py: error:"), err
    return lines[0]


def test_unknown_model_name_fails_at_once_offline(env, tmp_path):
    """Not a built-in, a local path or a cached hub id: one line, before any download is tried."""
    workdir = tmp_path / "never"
    t0 = time.time()
    rc, _, err = finish(launch(["--config=configs/smoke.py", "--config.model.name=bogus-model",
                                "--config.model.init_from_scratch=False", f"--workdir={workdir}"],
                               dict(env, HF_HUB_OFFLINE="1")))
    assert rc == 2 and "model.name='bogus-model'" in error_line(err)
    assert time.time() - t0 < 60 and not workdir.exists()


def test_failed_start_leaves_no_config_that_refuses_the_corrected_command(env, tmp_path):
    """A start that fails on its data writes no config.json; the next command (another seed and
    data_dir) is not refused as 'a different config'. Both data errors name file:line."""
    bad = {}
    for name, lineno, edit in (("malformed", 2, lambda b: b"Not-A-Relation\r"),
                               ("latin1", 3, lambda b: b[:9] + b"\xff" + b[9:])):
        folder = tmp_path / name
        shutil.copytree(os.path.join(REPO, "tests", "fixtures", "data", "semeval_tiny"), folder)
        lines = (folder / "TRAIN_FILE.TXT").read_bytes().split(b"\n")
        lines[lineno - 1] = edit(lines[lineno - 1])
        (folder / "TRAIN_FILE.TXT").write_bytes(b"\n".join(lines))
        bad[name] = (folder, lineno)
    workdir = tmp_path / "run"
    for seed, (name, (folder, lineno)) in enumerate(bad.items()):
        rc, _, err = finish(launch(["--config=configs/smoke.py", f"--config.data.data_dir={folder}",
                                    f"--config.seed={seed}", f"--workdir={workdir}"], env))
        assert rc == 2 and f"{folder / 'TRAIN_FILE.TXT'}:{lineno}:" in error_line(err), name
        assert not (workdir / "config.json").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "cannot create", "not writable"])
def test_unusable_workdir_fails_with_one_line(where, env, tmp_path):
    (tmp_path / "file").write_text("x")
    workdir = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "run",
               "cannot create": "/sys/umema_jax_test_workdir",   # sysfs: mkdir refused, even to root
               "not writable": "/proc/1"}[where]                 # exists; no write access, even for root
    if where in ("cannot create", "not writable") and not os.path.isdir(os.path.dirname(str(workdir))):
        pytest.skip("needs Linux /sys and /proc")
    rc, _, err = finish(launch(["--config=configs/smoke.py", f"--workdir={workdir}"], env))
    assert rc == 2 and f"--workdir={workdir}:" in error_line(err)


def test_nonfinite_stop_keeps_the_checkpoint_it_names_and_that_checkpoint_knows_its_config(env, tmp_path):
    """Exit 3 waits for the save it reports (nothing half-written, no orbax traceback at exit); the
    checkpoint records its config, so with config.json gone another seed is still refused (exit 2)."""
    workdir = tmp_path / "run"
    args = ["--config=configs/smoke.py", "--config.optim.learning_rate=1e3",
            "--config.train.checkpoint_every_steps=1", f"--workdir={workdir}"]
    rc, _, err = finish(launch(args, env))
    lines = [line for line in err.splitlines() if line.strip() and "PyTorch was not found" not in line]
    assert rc == 3 and lines[-1].startswith("launch.py: error: non-finite") and "Traceback" not in err, err[-3000:]
    saved = finalized_steps(str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == sorted(str(s) for s in saved)  # no temporaries
    assert saved and f"kept at step {saved[-1]} " in lines[-1], (saved, lines[-1])
    os.remove(workdir / "config.json")
    rc, _, err = finish(launch([*args, "--config.seed=1"], env))
    lines = [line for line in err.splitlines() if line.strip() and "PyTorch was not found" not in line]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("launch.py: error:"), err[-3000:]
    assert f"latest/{saved[-1]} was trained under a different config (seed)" in lines[0]
    assert not (workdir / "config.json").exists() and not (workdir / "results.json").exists()


def test_the_runners_own_outputs_do_not_make_a_checkout_dirty(tmp_path):
    """The runner rewrites tables, the ledger and the README's generated blocks in its checkout when a run
    ends; the next run launched from that checkout still names a clean commit. A code change does not."""
    from umema_jax.train.outputs import RUNNER_OUTPUTS, git_commit
    repo = tmp_path / "repo"
    for rel in RUNNER_OUTPUTS + ("umema_jax/model.py",):
        path = repo / rel / "table.md" if rel == "results" else repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("committed\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    head = git_commit(str(repo))
    assert len(head) == 40
    for rel in ("results/table.md", "README.md", "docs/RESULTS.md"):
        (repo / rel).write_text("re-rendered\n")
    assert git_commit(str(repo)) == head
    (repo / "umema_jax" / "model.py").write_text("changed\n")
    assert git_commit(str(repo)) == head + "-dirty"


def test_results_record_the_commit_training_started_from_not_the_head_at_the_end(tmp_path, monkeypatch):
    """A run lasts hours; commits land meanwhile. Its results name the code it trained with."""
    sys.path.insert(0, REPO)
    import launch as launch_module
    from configs.smoke import get_config
    from umema_jax.train import outputs
    heads = iter(["a" * 40, "b" * 40 + "-dirty"])
    monkeypatch.setattr(outputs, "git_commit", lambda: next(heads, "b" * 40 + "-dirty"))
    config = get_config()
    config.train.epochs, config.output.progress_bar, config.output.tensorboard = 1, False, False
    results = launch_module.run_config(config, str(tmp_path / "run"))
    assert results["git_commit"] == "a" * 40
