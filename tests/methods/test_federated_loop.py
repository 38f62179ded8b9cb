"""SplitLoRA and FLoRA through the real pipeline (smoke config): they train, and a run killed
mid-round resumes to the same final numbers as the uninterrupted run."""
import json
import os

import numpy as np
import pytest

from configs.smoke import get_config
from tests.train.standins import killed_after
from umema_jax import methods
from umema_jax.train.build import build_experiment
from umema_jax.train.loop import train_and_evaluate
from umema_jax.train.sharding import make_mesh


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method, overrides, cut_after", [
    ("splitlora", {}, 4),                                   # parallel, 3 clients: 6 steps per epoch
    # 3 clients x 2 local passes of 3 steps: client 0 has steps 0-5, step 7 is inside client 1's first pass
    ("flora", {"clients": 3, "local_epochs": 2}, 7),
])
def test_trains_and_resumes_mid_round_to_identical_results(tmp_path, method, overrides, cut_after):
    config = get_config()
    config.model.method = method
    for key, value in overrides.items():
        config.methods[method][key] = value
    config.train.max_to_keep = 20
    config.data.pad_to_multiple = 64                         # one batch shape: one compile per step function
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full = train_and_evaluate(config, str(full_dir), build_experiment(config, methods.from_config(config)), make_mesh())
    assert full.steps == 12 if method == "splitlora" else full.steps == 36
    killed_after(full_dir, cut_after, part_dir)
    resumed = train_and_evaluate(config, str(part_dir), build_experiment(config, methods.from_config(config)), make_mesh())
    assert resumed.test == full.test and resumed.dev == full.dev
    assert resumed.method_state == full.method_state             # end-of-training host state, for results.json
    if method == "splitlora":                                    # the whole run's traffic, not the best step's
        logged = [r["splitlora_traffic_mb_total"] for r in _records(full_dir) if "splitlora_traffic_mb_total" in r]
        assert full.method_state["traffic_mb_total"] >= max(logged) > 0
    else:
        assert full.method_state["round"] > 0
    np.testing.assert_array_equal(resumed.predictions["test"]["probs"], full.predictions["test"]["probs"])
    assert _records(part_dir) == _records(full_dir)
    losses = [r["loss"] for r in _records(full_dir) if r["split"] == "train"]
    assert np.all(np.isfinite(losses))
