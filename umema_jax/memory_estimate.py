"""Per-device memory of a training setup (any `model.method`) from shapes alone (`jax.eval_shape`: no weights are materialised).

    python -m umema_jax.memory_estimate [--model llama3-8b] [--method lora] [--devices 2]
        [--compile --batch 8 --seq 512]

Frozen backbone in bf16, FSDP-sharded over the `model` axis by the same rules
training uses; LoRA factors, head (and UM/EMA) in fp32, replicated, with
their gradients and AdamW moments. `--compile` additionally lowers and
compiles the real train step on fake CPU devices and reports XLA's own
per-device buffer sizes (arguments, outputs, temporaries = activations).
"""
from __future__ import annotations

import argparse
import os
import sys


def _fake_devices(n: int) -> None:
    """Must run before jax is imported: ask XLA for `n` host devices."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def estimate(model_name: str = "llama3-8b", method: str = "lora", devices: int = 2, num_labels: int = 19,
             rank: int = 8, compile_step: bool = False, batch: int = 8, seq: int = 512,
             remat: bool = False) -> dict:
    import jax
    from umema_jax import methods
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.defaults import base_config
    from umema_jax.model import dummy_batch
    from umema_jax.train import sharding as shd
    from umema_jax.train.assemble import assemble_steps, build_setup

    config = base_config()
    config.model.method = method
    config.model.lora.rank = rank
    config.model.dtype = "bfloat16"
    config.model.remat = remat
    meth = methods.from_config(config)
    # The assembly training uses (train/assemble.py), on shapes only.
    setup = build_setup(config, meth, "cls", num_labels, get_backbone_config(model_name), abstract=True,
                        frozen_dtype="bfloat16")
    frozen, trainable, memory = setup.frozen, setup.trainable, setup.memory
    mesh = shd.make_mesh(1, devices, devices=jax.devices()[:devices])
    steps = assemble_steps(setup, meth, task_type="cls", total_steps=1000, grad_accum_steps=1, seed=0, mesh=mesh,
                           abstract=True)
    state, frozen_sh = steps.state, steps.frozen_sharding
    rep = lambda tree: jax.tree.map(lambda _: shd.replicated(mesh), tree)  # noqa: E731
    count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))  # noqa: E731
    gib = 2.0 ** 30
    rows = {
        "frozen backbone (bf16, FSDP over `model`)": shd.bytes_per_device(frozen, frozen_sh),
        "trainable (replicated)": shd.bytes_per_device(trainable, rep(trainable)),
        "gradients (transient)": shd.bytes_per_device(trainable, rep(trainable)),
        "AdamW moments (fp32)": shd.bytes_per_device(state.opt_state, rep(state.opt_state)),
        "memory bank (fp32)": shd.bytes_per_device(memory, rep(memory)),
        "method state (LISA blocks, FLoRA delta)": shd.bytes_per_device(state.extra, rep(state.extra)),
    }
    report = {"model": model_name, "method": method, "lora_rank": rank, "devices": devices,
              "mesh": dict(mesh.shape), "params_frozen": count(frozen),
              "params_trainable": meth.count_trainable(trainable),
              "per_device_bytes": rows, "per_device_total_gib": sum(rows.values()) / gib,
              "frozen_total_gib_unsharded": count(frozen) * 2 / gib}
    if compile_step:
        b = {k: jax.ShapeDtypeStruct((batch, seq) if k in ("input_ids", "attention_mask") else (batch,), v.dtype)
             for k, v in {**dummy_batch((1, seq)), "labels": jax.numpy.zeros((1,), jax.numpy.int32)}.items()}
        analysis = steps.train_step.lower(state, frozen, b).compile().memory_analysis()
        report["compiled"] = {"batch": batch, "seq": seq, "remat": remat,
                              "argument_bytes": int(analysis.argument_size_in_bytes),
                              "output_bytes": int(analysis.output_size_in_bytes),
                              "temp_bytes": int(analysis.temp_size_in_bytes),
                              "alias_bytes": int(analysis.alias_size_in_bytes)}
    return report


def format_report(r: dict) -> str:
    gib = 2.0 ** 30
    lines = [f"{r['model']} · {r['method']} (LoRA r={r['lora_rank']}) · mesh {r['mesh']} "
             f"({r['devices']} devices)",
             f"params: frozen {r['params_frozen']:,} · trainable {r['params_trainable']:,}",
             f"frozen backbone unsharded (bf16): {r['frozen_total_gib_unsharded']:.2f} GiB", "",
             f"{'per device':<46}{'bytes':>16}{'GiB':>10}"]
    for name, value in r["per_device_bytes"].items():
        lines.append(f"{name:<46}{value:>16,}{value / gib:>10.3f}")
    lines.append(f"{'total (weights + optimizer)':<46}{int(r['per_device_total_gib'] * gib):>16,}"
                 f"{r['per_device_total_gib']:>10.3f}")
    if "compiled" in r:
        c = r["compiled"]
        lines += ["", f"compiled train step, global batch {c['batch']} x {c['seq']} tokens, remat={c['remat']} "
                      f"(XLA, per device):"]
        for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes"):
            lines.append(f"  {key:<20}{c[key]:>16,}{c[key] / gib:>10.3f} GiB")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--method", default="lora", help="any registered model.method (umema_jax/methods)")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also compile the train step (slow on CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--remat", action="store_true", help="rematerialise backbone layers (with --compile)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _fake_devices(args.devices)
    report = estimate(args.model, args.method, args.devices, rank=args.rank, compile_step=args.compile,
                      batch=args.batch, seq=args.seq, remat=args.remat)
    if args.json:
        import json
        print(json.dumps(report))
    else:
        print(format_report(report))


if __name__ == "__main__":
    main()
