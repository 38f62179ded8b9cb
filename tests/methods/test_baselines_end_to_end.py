"""MiLoRA and ALoRA through the real pipeline on the smoke config: they train, log what they must
(expert usage; the rank allocation per round), and a run resumed from a mid-run checkpoint ends
bit-identical to the uninterrupted one (ALoRA: crashed between two pruning rounds)."""
import json
import os
import shutil

import numpy as np
import pytest

from configs.smoke import get_config as smoke_config
from umema_jax import methods
from umema_jax.methods.alora import round_steps
from umema_jax.train.build import build_experiment
from umema_jax.train.loop import train_and_evaluate
from umema_jax.train.sharding import make_mesh
from umema_jax.methods import validate_config


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _crash_after(src, dst, step):
    """A copy of run `src` as if killed right after its checkpoint of `step`."""
    shutil.copytree(src, dst)
    for sub in ("latest", "best"):
        for s in os.listdir(os.path.join(dst, "checkpoints", sub)):
            if int(s) > step:
                shutil.rmtree(os.path.join(dst, "checkpoints", sub, s))


@pytest.mark.parametrize("method", ["milora", "alora"])
def test_smoke_run_logs_and_resumes_bit_identically(tmp_path, method):
    config = smoke_config()
    config.model.method = method
    config.train.max_to_keep = 20
    validate_config(config)
    full = train_and_evaluate(config, str(tmp_path / "full"), build_experiment(config, methods.from_config(config)), make_mesh())
    total = full.steps                                   # 2 epochs of the fixture's train set (7 steps each)
    assert not full.stopped_early and total > 8 and np.isfinite(full.test["loss"])
    recs = _records(tmp_path / "full")
    train = [r for r in recs if r["split"] == "train"]
    if method == "milora":
        usage = [r for r in train if "method/usage/attn/c_attn" in r]
        assert len(usage) == len(train) and "method/balance_loss" in usage[0]
        for r in usage:        # K = 2 of 4 experts per example: the usage shares sum to K
            assert sum(r[f"method/usage/{e}"] for e in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")) \
                == pytest.approx(2.0)
    else:
        rounds = [r for r in recs if r["split"] == "method"]
        planned = round_steps(config.methods.alora, total, total // config.train.epochs)
        assert [r["step"] - 1 for r in rounds] == planned and len(planned) == 8   # logged at the next step
        assert all(r["alora/total_rank"] <= 2 * 8 for r in rounds)          # GPT-2 tiny: 2 modules x r = 8
    crash = 8                                                                  # ALoRA: after 4 of its 8 rounds
    _crash_after(tmp_path / "full", tmp_path / "part", crash)
    resumed = train_and_evaluate(config, str(tmp_path / "part"), build_experiment(config, methods.from_config(config)), make_mesh())
    assert resumed.dev == full.dev and resumed.test == full.test
    np.testing.assert_array_equal(resumed.predictions["test"]["probs"], full.predictions["test"]["probs"])
    assert _records(tmp_path / "part") == recs


def test_the_runner_treats_both_as_implemented_adapter_baselines():
    from umema_jax.experiments import profiles as P
    for label, name in (("MiLoRA", "milora"), ("ALoRA", "alora")):
        row = next(m for m in P.BASELINES if m.label == label)
        assert P.method_name(row) == name and row.family == "adapter"
