"""Loop, checkpoints and trackers on the stand-in experiment (in-process, seconds)."""
import json
import os
import shutil
import threading

import jax
import numpy as np
import pytest

from tests.train.standins import killed_after, tiny_config, tiny_experiment
from umema_jax.train.checkpoint import CheckpointError, Checkpoints, check_config
from umema_jax.train.loop import NonFiniteLoss, train_and_evaluate
from umema_jax.train.sharding import make_mesh


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def train_steps(monkeypatch):
    """Records every call of the jitted train step: a resumed run must not redo finished steps
    (a deterministic retrain from step 0 would end with the same numbers)."""
    from umema_jax.train import assemble
    calls = []
    real = assemble.jit_train_step

    def counting(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def run(*a, **k):
            calls.append(1)
            return step_fn(*a, **k)
        return run

    monkeypatch.setattr(assemble, "jit_train_step", counting)
    return calls


@pytest.fixture
def saves_finish_when_waited_for(monkeypatch):
    """An asynchronous save is finalized (renamed into place) only once something waits for it, as
    when the interpreter exits right after the run returns: a run that does not wait leaves it unfinished."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.checkpointers import async_checkpointer
    gate = threading.Event()
    real_commit, real_wait = async_checkpointer._on_commit_callback, ocp.CheckpointManager.wait_until_finished

    def commit(*args, **kwargs):
        gate.wait(timeout=60)
        return real_commit(*args, **kwargs)

    def wait(self):
        gate.set()
        try:
            return real_wait(self)
        finally:
            gate.clear()

    monkeypatch.setattr(async_checkpointer, "_on_commit_callback", commit)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
    yield
    gate.set()                            # let whatever a failing run left behind finish


def _saved_steps(workdir):
    """Finalized `latest` steps; fails on a save still in flight (an orbax temporary folder)."""
    entries = os.listdir(os.path.join(workdir, "checkpoints", "latest"))
    assert all(n.isdigit() for n in entries), f"unfinished saves left behind: {entries}"
    return sorted(int(n) for n in entries)


def test_trains_evaluates_and_keeps_best(tmp_path):
    config = tiny_config()
    run = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert run.steps == 10                                   # 40 examples / 8 per batch * 2 epochs
    assert [h["step"] for h in run.history] == [5, 10]      # one dev evaluation per epoch
    best = max(run.history, key=lambda h: h["dev_primary"])
    assert run.best_step == best["step"]
    assert run.dev["primary"] == pytest.approx(best["dev_primary"])   # final dev = best checkpoint
    assert run.predictions["test"]["probs"].shape == (20, 3)
    recs = _records(tmp_path)
    train_losses = [r["loss"] for r in recs if r["split"] == "train"]
    assert len(train_losses) == 10 and train_losses[-1] < train_losses[0]
    assert max(int(s) for s in os.listdir(tmp_path / "checkpoints" / "latest")) == 10
    assert os.listdir(tmp_path / "checkpoints" / "best") == [str(run.best_step)]


def test_rerun_of_finished_workdir_resumes_without_training(tmp_path, train_steps):
    config = tiny_config()
    first = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert len(train_steps) == 10
    train_steps.clear()
    again = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert again.steps == first.steps and again.test == first.test
    assert train_steps == []                                  # nothing retrained
    assert len([r for r in _records(tmp_path) if r["split"] == "train"]) == 10   # not appended twice


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tmp_path, train_steps):
    config = tiny_config(**{"train.max_to_keep": 10})
    full = train_and_evaluate(config, str(tmp_path / "full"), tiny_experiment(), make_mesh())
    part = killed_after(tmp_path / "full", 6, tmp_path / "part")          # a crash after step 6
    train_steps.clear()
    resumed = train_and_evaluate(config, str(part), tiny_experiment(), make_mesh())
    assert len(train_steps) == 4                              # steps 7..10 only
    assert resumed.test == full.test and resumed.dev == full.dev
    np.testing.assert_array_equal(resumed.predictions["test"]["probs"], full.predictions["test"]["probs"])
    assert _records(part) == _records(tmp_path / "full")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, saves_finish_when_waited_for):
    config = tiny_config(**{"optim.learning_rate": 1e30, "train.checkpoint_every_steps": 1,
                            "optim.warmup_ratio": 0.0})
    with pytest.raises(NonFiniteLoss, match="non-finite") as err:
        train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    # The step the message names is complete on disk when the run returns: no save left in flight.
    saved = _saved_steps(tmp_path)
    assert saved and f"kept at step {saved[-1]} " in str(err.value), (saved, str(err.value))
    ckpt = Checkpoints(str(tmp_path))
    step = ckpt.latest_step()
    assert step == saved[-1]
    from umema_jax.train.state import create_train_state, make_optimizer
    exp = tiny_experiment()
    tx, _ = make_optimizer(config.optim, 10)
    template = create_train_state(exp.trainable, exp.memory, tx, 0)
    state, meta = ckpt.restore_latest(template)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.trainable))
    ckpt.close()


def test_nan_before_the_first_checkpoint_says_there_is_none(tmp_path):
    config = tiny_config(**{"optim.learning_rate": 1e30, "train.checkpoint_every_steps": 100,
                            "optim.warmup_ratio": 0.0})
    with pytest.raises(NonFiniteLoss) as err:
        train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert "no checkpoint was saved" in str(err.value) and "None" not in str(err.value), str(err.value)
    assert _saved_steps(tmp_path) == []


def test_an_error_waits_for_pending_saves_and_reports_them(tmp_path, saves_finish_when_waited_for, capsys):
    exp = tiny_experiment()
    evaluate = exp.evaluate

    def evaluate_then_fail(split, preds):
        if split == "dev" and os.path.exists(tmp_path / "checkpoints" / "best"):
            if os.listdir(tmp_path / "checkpoints" / "best"):   # the second dev evaluation (step 10)
                raise RuntimeError("evaluation broke")
        return evaluate(split, preds)

    exp.evaluate = evaluate_then_fail
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train_and_evaluate(tiny_config(), str(tmp_path), exp, make_mesh())
    assert _saved_steps(tmp_path)[-1] == 9                    # saved just before step 10, now complete
    assert "stopped at step 10 by RuntimeError; last good checkpoint kept at step 9" in capsys.readouterr().err


def test_a_checkpoint_of_another_config_is_refused(tmp_path, train_steps):
    """The config travels with the checkpoint: no config.json is needed to notice another seed."""
    config = tiny_config(**{"train.epochs": 1})
    train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    other = tiny_config(**{"train.epochs": 1, "seed": 1})
    train_steps.clear()
    with pytest.raises(CheckpointError, match=r"latest/5 was trained under a different config \(seed\)"):
        train_and_evaluate(other, str(tmp_path), tiny_experiment(), make_mesh())
    with pytest.raises(CheckpointError, match=r"different config \(seed\)"):
        check_config(str(tmp_path), other.to_dict())           # launch.py's check before building
    assert train_steps == [] and _saved_steps(tmp_path) == [3, 5]
    # Keys that do not change results may differ on resume.
    same = tiny_config(**{"train.epochs": 1, "data.data_dir": "/moved/data", "output.predictions": False})
    check_config(str(tmp_path), same)
    train_and_evaluate(same, str(tmp_path), tiny_experiment(), make_mesh())
    assert train_steps == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run keeping every `latest` step; tests damage copies of it."""
    workdir = tmp_path_factory.mktemp("finished")
    config = tiny_config(**{"train.max_to_keep": 10})
    run = train_and_evaluate(config, str(workdir), tiny_experiment(), make_mesh())
    return workdir, config, run


def _truncate(path, size=0):
    with open(path, "r+b") as f:
        f.truncate(size)


def _largest_data_file(step_dir):
    files = [os.path.join(d, n) for d, _, names in os.walk(step_dir / "state" / "d") for n in names]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage, named", [
    (lambda step: _truncate(_largest_data_file(step), 10), "latest/10/state/d/"),
    (lambda step: _truncate(step / "state" / "_METADATA"), "latest/10/state/_METADATA: JSONDecodeError"),
    (lambda step: _truncate(step / "meta" / "metadata", 3), "latest/10/meta/metadata: JSONDecodeError"),
], ids=["truncated-array-file", "empty-_METADATA", "truncated-meta"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(
        finished_run, tmp_path, train_steps, capsys, damage, named):
    full_dir, config, full = finished_run
    shutil.copytree(full_dir, tmp_path / "run")
    workdir = tmp_path / "run"
    damage(workdir / "checkpoints" / "latest" / "10")
    capsys.readouterr()
    train_steps.clear()
    resumed = train_and_evaluate(config, str(workdir), tiny_experiment(), make_mesh())
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and named in warnings[0] and "resuming from step 9" in warnings[0], warnings
    assert len(train_steps) == 1                              # step 10 again, from step 9
    assert resumed.test == full.test and resumed.dev == full.dev
    assert os.listdir(workdir / "checkpoints" / "corrupt") == ["latest_10"]   # set aside, not deleted
    assert _saved_steps(workdir)[-1] == 10                    # and written anew


def test_no_intact_checkpoint_is_a_one_line_error(finished_run, tmp_path, train_steps):
    full_dir, config, _ = finished_run
    shutil.copytree(full_dir, tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest"
    for step in os.listdir(latest):
        _truncate(latest / step / "state" / "_METADATA")
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume") as err:
        train_and_evaluate(config, str(tmp_path / "run"), tiny_experiment(), make_mesh())
    message = str(err.value)
    assert "\n" not in message and all(f"latest/{s}/state/_METADATA" in message for s in os.listdir(latest))
    assert train_steps == [] and not (tmp_path / "run" / "checkpoints" / "corrupt").exists()


def test_a_corrupt_best_checkpoint_is_a_one_line_error_and_moving_it_away_reports_the_last_state(
        finished_run, tmp_path, train_steps, capsys):
    full_dir, config, full = finished_run
    shutil.copytree(full_dir, tmp_path / "run")
    best_dir = tmp_path / "run" / "checkpoints" / "best"
    (best_step,) = [s for s in os.listdir(best_dir) if s.isdigit()]
    _truncate(best_dir / best_step / "state" / "_METADATA")
    with pytest.raises(CheckpointError, match="best checkpoint .* is unreadable") as err:
        train_and_evaluate(config, str(tmp_path / "run"), tiny_experiment(), make_mesh())
    assert "\n" not in str(err.value) and f"best/{best_step}/state/_METADATA" in str(err.value)
    assert train_steps == []                                  # finished: nothing retrained
    shutil.move(str(best_dir / best_step), str(tmp_path / "aside"))
    # as if the best dev score had come at step 5: the last state (step 10) is then not the best one
    meta_path = tmp_path / "run" / "checkpoints" / "latest" / str(full.steps) / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["best_step"] = 5
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    last = train_and_evaluate(config, str(tmp_path / "run"), tiny_experiment(), make_mesh())
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: no best")]
    assert len(warning) == 1 and "best dev step was 5" in warning[0] and f"step {full.steps}" in warning[0]
    assert last.best_step == last.steps == full.steps         # reports the state it evaluated, not step 5
    assert last.test == full.test                             # here the best was the last state


def test_checkpoints_hold_no_frozen_weights(tmp_path):
    config = tiny_config(**{"train.epochs": 1})
    exp = tiny_experiment()
    train_and_evaluate(config, str(tmp_path), exp, make_mesh())
    ckpt = Checkpoints(str(tmp_path))
    meta = ckpt.latest.item_metadata(ckpt.latest_step())
    shapes = {tuple(m.shape) for m in jax.tree.leaves(meta["state"], is_leaf=lambda x: hasattr(x, "shape"))}
    frozen_shapes = {tuple(x.shape) for x in jax.tree.leaves(exp.frozen)}
    assert shapes and not shapes & frozen_shapes
    with open(tmp_path / "checkpoints" / "latest" / str(ckpt.latest_step()) / "meta" / "metadata") as f:
        position = json.load(f)
    assert position["epoch"] == 1 and position["step_in_epoch"] == 0
    ckpt.close()
