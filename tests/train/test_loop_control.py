"""Loop control on the stand-in experiment: early stopping, `max_steps`, `eval_every_steps`,
gradient accumulation inside `train_and_evaluate` (in-process, seconds each)."""
import json
import os

import numpy as np
import pytest

from tests.train.standins import tiny_config, tiny_experiment
from umema_jax.train import loop as loop_module
from umema_jax.train.loop import train_and_evaluate
from umema_jax.train.sharding import make_mesh
from umema_jax.train.state import make_optimizer


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def _steps(workdir, sub):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", sub)) if s.isdigit())


def _scripted_dev(exp, script):
    """Dev evaluations during training return the scripted primaries (then the real ones);
    remembers the dev probabilities each evaluation saw."""
    real, seen = exp.evaluate, []

    def evaluate(split, preds):
        metrics = real(split, preds)
        if split == "dev":
            seen.append(np.array(preds["probs"]))
            if len(seen) <= len(script):
                metrics = dict(metrics, primary=script[len(seen) - 1])
        return metrics

    exp.evaluate = evaluate
    return seen


def test_early_stopping_stops_after_patience_and_reports_the_best_checkpoint(tmp_path):
    # Dev evaluations every 2 steps of a 20-step run; the primary rises, ties (a tie is no
    # improvement), then falls: with patience 2 the run must stop at the 4th evaluation (step 8).
    config = tiny_config(**{"train.epochs": 4, "train.eval_every_steps": 2,
                            "train.early_stopping_patience": 2, "train.max_to_keep": 10})
    exp = tiny_experiment()
    seen = _scripted_dev(exp, [0.2, 0.5, 0.5, 0.4])
    run = train_and_evaluate(config, str(tmp_path), exp, make_mesh())
    assert run.stopped_early and run.steps == 8
    assert [(h["step"], h["dev_primary"]) for h in run.history] == [(2, 0.2), (4, 0.5), (6, 0.5), (8, 0.4)]
    assert run.best_step == 4 and _steps(tmp_path, "best") == [4]
    assert max(_steps(tmp_path, "latest")) == 8
    assert [r["step"] for r in _records(tmp_path, "train")] == list(range(1, 9))   # no step after the stop
    # The final numbers come from the step-4 state read back from disk, not from the last state.
    assert len(seen) == 5                                  # 4 during training + the final one
    np.testing.assert_array_equal(run.predictions["dev"]["probs"], seen[1])
    assert not np.array_equal(seen[1], seen[3])           # (the states really differ)
    # A re-run of the stopped workdir does not train on.
    again = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert again.steps == 8 and again.stopped_early and again.best_step == 4
    assert len(_records(tmp_path, "train")) == 8


def test_patience_zero_never_stops(tmp_path):
    config = tiny_config(**{"train.epochs": 3, "train.early_stopping_patience": 0})
    exp = tiny_experiment()
    _scripted_dev(exp, [0.9, 0.1, 0.1])
    run = train_and_evaluate(config, str(tmp_path), exp, make_mesh())
    assert not run.stopped_early and run.steps == 15 and run.best_step == 5


@pytest.mark.parametrize("max_steps, eval_every, steps, evals", [
    (7, 0, 7, [5, 7]),             # max_steps cuts epoch 2; the last step is always evaluated
    (-1, 3, 10, [3, 6, 9, 10]),    # every 3 steps across the epoch boundary, plus the end
    (25, 0, 10, [5, 10]),          # max_steps beyond the epochs: the epochs win
])
def test_max_steps_and_eval_every_steps(tmp_path, max_steps, eval_every, steps, evals):
    config = tiny_config(**{"train.max_steps": max_steps, "train.eval_every_steps": eval_every,
                            "train.max_to_keep": 20})
    run = train_and_evaluate(config, str(tmp_path), tiny_experiment(), make_mesh())
    assert run.steps == steps
    assert [h["step"] for h in run.history] == evals
    assert [r["step"] for r in _records(tmp_path, "dev")] == evals
    assert set(evals) <= set(_steps(tmp_path, "latest")) and max(_steps(tmp_path, "latest")) == steps
    train = _records(tmp_path, "train")
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    # The learning-rate schedule spans the run's real length (decays to 0 at `steps`, not at 10).
    _, schedule = make_optimizer(config.optim, steps)
    np.testing.assert_allclose([r["learning_rate"] for r in train],
                               [float(schedule(s - 1)) for s in range(1, steps + 1)], rtol=1e-6)


def test_grad_accumulation_in_the_loop_matches_one_big_batch(tmp_path, monkeypatch):
    built = []
    from umema_jax.train import assemble
    real_make = assemble.make_train_step

    def spy(model, tx, schedule, task_type, grad_accum_steps=1, **kwargs):
        built.append(grad_accum_steps)
        return real_make(model, tx, schedule, task_type, grad_accum_steps, **kwargs)

    monkeypatch.setattr(assemble, "make_train_step", spy)
    runs = {}
    for accum in (1, 2):
        config = tiny_config(**{"train.grad_accum_steps": accum})
        runs[accum] = train_and_evaluate(config, str(tmp_path / f"a{accum}"), tiny_experiment(), make_mesh())
    assert built == [1, 2]                                 # the loop hands the setting to the step
    ref = _records(tmp_path / "a1", "train")
    for accum in (2,):
        got = _records(tmp_path / f"a{accum}", "train")
        assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, 11))
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=2e-5, atol=1e-6)
        assert [r["tokens"] for r in got] == [r["tokens"] for r in ref]
        assert runs[accum].best_step == runs[1].best_step
        np.testing.assert_allclose(runs[accum].predictions["test"]["probs"], runs[1].predictions["test"]["probs"],
                                   rtol=1e-4, atol=1e-6)
