"""Run in a subprocess with 2 fake CPU devices (XLA_FLAGS set by the caller before jax loads).

Computes loss, gradients and the new memory bank of the real UmemaModel
(llama-tiny, method `lora+ema`) on one mini-batch under three meshes — 1 device,
data-parallel 2x1, FSDP 1x2 — plus one full train step on each, and prints the
largest differences against the 1-device run as JSON.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np


def main():
    assert len(jax.devices()) == 2, jax.devices()
    from umema_jax.defaults import base_config
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.model import init_variables, make_model
    from umema_jax.train import sharding as shd
    from umema_jax.train.assemble import model_config_view
    from umema_jax.train.state import create_train_state, make_optimizer, split_params
    from umema_jax.train.step import make_loss_fn, make_train_step

    config = base_config()
    config.model.method = "lora+ema"   # EMA: the bank write is the cross-shard reduction to check
    model = make_model(model_config_view(config, "cls", 5), get_backbone_config("llama-tiny"), use_lora=True,
                       use_um=False, use_ema=True)
    variables = init_variables(model, jax.random.PRNGKey(0))
    trained, frozen = split_params(variables["params"], config.train.trainable_regex)
    trainable = {"lora": variables["lora"], "params": trained}
    # Non-zero LoRA B so LoRA gradients flow through A too.
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    rng = np.random.default_rng(0)
    B, n = 8, 16
    mask = np.ones((B, n), np.int32)
    mask[:, 10:] = rng.integers(0, 2, size=(B, 6))
    batch = {"input_ids": rng.integers(1, 49152, size=(B, n)).astype(np.int32), "attention_mask": mask,
             "labels": rng.integers(0, 5, size=(B,)).astype(np.int32),
             "example_mask": np.array([1] * 7 + [0], np.int32), "task_id": np.zeros(B, np.int32)}
    loss_fn = make_loss_fn(model, "cls")
    tx, schedule = make_optimizer(config.optim, 10)
    results = {}
    for name, devices, shape in (("single", jax.devices()[:1], (1, 1)), ("data2", jax.devices(), (2, 1)),
                                 ("fsdp2", jax.devices(), (1, 2))):
        mesh = shd.make_mesh(*shape, devices=devices)
        frozen_sh = shd.named(mesh, shd.tree_specs(frozen, shd.DEFAULT_FSDP_RULES, mesh))
        f = jax.device_put(frozen, frozen_sh)
        t = jax.device_put(trainable, shd.replicated(mesh))
        mem = jax.device_put(variables["memory"], shd.replicated(mesh))
        b = shd.put_batch(batch, mesh)
        grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                       in_shardings=(shd.replicated(mesh), frozen_sh, shd.replicated(mesh),
                                     shd.batch_sharding(mesh), shd.replicated(mesh), shd.replicated(mesh)))
        (loss, (new_mem, _)), grads = grad(t, f, mem, b, jax.random.PRNGKey(1), jnp.float32(7.0))
        emb = f["backbone"]["embed_tokens"]["embedding"]
        results[name] = {"loss": float(loss), "grads": jax.device_get(grads), "memory": jax.device_get(new_mem),  # the bank entry's sums
                         "emb_shard_rows": int(emb.addressable_shards[0].data.shape[0])}
    # The whole jitted train step (in/out shardings, donation, optimizer, bank write) on the FSDP mesh,
    # against the update computed on the host from the 1-device gradients.
    import optax
    ref_grads = results["single"]["grads"]
    updates, _ = tx.update(ref_grads, tx.init(trainable), trainable)
    expected = optax.apply_updates(trainable, updates)
    state = jax.device_get(create_train_state(trainable, variables["memory"], tx, 0))
    mesh = shd.make_mesh(1, 2)
    frozen_sh = shd.named(mesh, shd.tree_specs(frozen, shd.DEFAULT_FSDP_RULES, mesh))
    state_sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
    step = jax.jit(make_train_step(model, tx, schedule, "cls"), in_shardings=(
        state_sh, frozen_sh, shd.batch_sharding(mesh)), out_shardings=(state_sh, shd.replicated(mesh)),
        donate_argnums=(0,))
    new_state, metrics = step(jax.device_put(state, state_sh), jax.device_put(frozen, frozen_sh),
                              shd.put_batch(batch, mesh))
    step_result = (float(metrics["loss"]), int(new_state.memory["pointer"]), jax.device_get(new_state.trainable))

    def maxdiff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    ref = results["single"]
    report = {"grad_max_abs": max(float(np.max(np.abs(x))) for x in jax.tree.leaves(ref["grads"]))}
    for name in ("data2", "fsdp2"):
        r = results[name]
        report[name] = {"loss_diff": abs(r["loss"] - ref["loss"]), "grad_diff": maxdiff(r["grads"], ref["grads"]),
                        "memory_diff": maxdiff(r["memory"], ref["memory"]),
                        "emb_shard_rows": r["emb_shard_rows"]}
    report["train_step_fsdp2"] = {"loss_diff": abs(step_result[0] - ref["loss"]), "pointer": step_result[1],
                                  "updated_params_diff": maxdiff(step_result[2], expected)}
    report["single"] = {"loss": ref["loss"], "emb_shard_rows": ref["emb_shard_rows"]}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
