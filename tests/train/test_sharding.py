"""Mesh/placement rules, and 1-device vs 2-device parity of the real model (subprocess, fake CPU devices)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from umema_jax.train import sharding as shd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_fsdp_rules_shard_big_frozen_weights_and_replicate_the_rest():
    rules, two = shd.DEFAULT_FSDP_RULES, {"data": 1, "model": 2}

    class FakeMesh:
        shape = two
    assert shd.spec_for("backbone/embed_tokens/embedding", (49152, 64), rules, FakeMesh) == P("model", None)
    assert shd.spec_for("backbone/layers/self_attn/q_proj/kernel", (2, 64, 64), rules, FakeMesh) == \
        P(None, "model", None)
    assert shd.spec_for("backbone/wte/embedding", (50257, 64), rules, FakeMesh) == P(None, None)  # odd: whole
    assert shd.spec_for("backbone/norm/weight", (64,), rules, FakeMesh) == P()


def test_two_fake_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "tests.train.two_device_parity"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report))
    assert report["grad_max_abs"] > 1e-4                       # gradients are not trivially zero
    assert report["single"]["emb_shard_rows"] == 49152
    assert report["fsdp2"]["emb_shard_rows"] == 49152 // 2      # frozen embedding really split over `model`
    for name in ("data2", "fsdp2"):
        r = report[name]
        assert r["loss_diff"] < 1e-5 and r["grad_diff"] < 1e-5 and r["memory_diff"] < 1e-5, r
    step = report["train_step_fsdp2"]
    assert step["loss_diff"] < 1e-5 and step["pointer"] == 1 and step["updated_params_diff"] < 1e-4, step


def test_batch_is_split_over_data_axis_and_bytes_per_device():
    mesh = shd.make_mesh(1, 1)
    b = shd.put_batch({"x": np.zeros((4, 3), np.float32)}, mesh)
    assert b["x"].sharding.spec == P(("data", "model"))
    abstract = {"w": jax.ShapeDtypeStruct((8, 4), np.float32)}
    assert shd.bytes_per_device(abstract, {"w": shd.replicated(mesh)}) == 8 * 4 * 4


def test_llama3_8b_lora_memory_estimate_from_shapes():
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", "umema_jax.memory_estimate", "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows = r["per_device_bytes"]
    frozen = rows["frozen backbone (bf16, FSDP over `model`)"]
    # 7.5e9 backbone params (no LM head for classification) in bf16, halved by FSDP, norms replicated.
    assert r["params_frozen"] * 2 // 2 <= frozen < r["params_frozen"] * 2 // 2 * 1.001
    lora = 32 * (4096 * 8 + 8 * 4096 + 4096 * 8 + 8 * 1024)   # q_proj and v_proj (GQA: v is 1024 wide)
    assert r["params_trainable"] == lora + 4096 * 19 + 19
    assert rows["AdamW moments (fp32)"] >= 2 * 4 * r["params_trainable"]
