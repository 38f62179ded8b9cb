"""Loop, checkpoints and trackers on the stand-in experiment (in-process, seconds)."""
import json
import os

import jax
import numpy as np
import pytest

from tests.train.standins import tiny_config, tiny_experiment
from umema_jax.train.checkpoint import Checkpoints
from umema_jax.train.loop import NonFiniteLoss, train_and_evaluate
from umema_jax.train.sharding import make_mesh


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


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


def test_rerun_of_finished_workdir_resumes_without_training(tmp_path):
    config = tiny_config()
    first = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    again = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert again.steps == first.steps and again.test == first.test
    assert len([r for r in _records(tmp_path) if r["split"] == "train"]) == 10   # not appended twice


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tmp_path):
    config = tiny_config(**{"train.max_to_keep": 10})
    full = train_and_evaluate(config, str(tmp_path / "full"), tiny_experiment(), make_mesh())
    # Simulate a crash after step 6: copy the run, then delete every checkpoint newer than 6.
    import shutil
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for sub in ("latest", "best"):
        for step in os.listdir(part / "checkpoints" / sub):
            if int(step) > 6:
                shutil.rmtree(part / "checkpoints" / sub / step)
    resumed = train_and_evaluate(config, str(part), tiny_experiment(), make_mesh())
    assert resumed.test == full.test and resumed.dev == full.dev
    np.testing.assert_array_equal(resumed.predictions["test"]["probs"], full.predictions["test"]["probs"])
    assert _records(part) == _records(tmp_path / "full")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"optim.learning_rate": 1e30, "train.checkpoint_every_steps": 1,
                            "optim.warmup_ratio": 0.0})
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    ckpt = Checkpoints(str(tmp_path))
    step = ckpt.latest_step()
    assert step is not None
    from umema_jax.train.state import create_train_state, make_optimizer
    exp = tiny_experiment()
    tx, _ = make_optimizer(config.optim, 10)
    template = create_train_state(exp.trainable, exp.memory, tx, 0)
    state, meta = ckpt.restore_latest(template)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.trainable))
    ckpt.close()


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
