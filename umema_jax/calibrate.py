"""Adds post-hoc calibrators to a run that finished without them (or with other ones).

    python -m umema_jax.calibrate --workdir=runs/semeval_lora [--calibrators=laplace,laplace-dev,correctness]

restores the run's best checkpoint, makes the calibrators' forward passes (`train.posthoc`), and rewrites
its results.json and records.npz with them added; nothing else in them changes, and `posthoc_commit`
records the code that did it. The experiment runner's ledger picks the new files up at its next pass.
"""
from __future__ import annotations

import json
import os
import sys

from umema_jax.train.posthoc import run_calibrators
from umema_jax.uncertainty import posthoc as ph


def backfill(workdir: str, names: tuple | None = None) -> dict:
    """Adds post-hoc calibrators to a finished run (its best checkpoint); returns the updated results."""
    import ml_collections

    from umema_jax import methods
    from umema_jax.metrics import records
    from umema_jax.train import outputs as out
    from umema_jax.train.build import build_experiment
    from umema_jax.train.loop import Trainer
    from umema_jax.train.sharding import make_mesh

    paths = {k: os.path.join(workdir, f) for k, f in (("config", "config.json"), ("results", "results.json"),
                                                       ("record", records.FILE))}
    for key, path in paths.items():
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing; post-hoc calibration needs a finished run with a per-example record")
    with open(paths["config"], encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths["results"], encoding="utf-8") as f:
        results = json.load(f)
    config.output.progress_bar = False
    exp = build_experiment(config, methods.from_config(config))
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    trainer = Trainer(config, workdir, exp, mesh)
    try:
        state, frozen, _ = trainer.best()
        calibrated = run_calibrators(config, exp, trainer.plan, state, frozen, mesh, names)
    finally:
        trainer.ckpt.close()
    record = records.load(paths["record"])
    added = out.posthoc_results(record, calibrated)
    results.setdefault("posthoc", {}).update(added.pop("posthoc"))
    results.update(added)
    results["posthoc_commit"] = out.git_commit()
    records.save(paths["record"], record)
    out.write_json(paths["results"], results)
    return results


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Add post-hoc calibrators to a finished run.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--calibrators", default=",".join(ph.CALIBRATORS),
                        help=f"comma-separated, from: {', '.join(ph.CALIBRATORS)}")
    args = parser.parse_args(argv)
    try:
        results = backfill(args.workdir, ph.parse(args.calibrators))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in ph.parse(args.calibrators):
        m = results.get(f"test_{name}", {})
        print(f"{name}: test ECE {100 * m.get('ece', float('nan')):.2f}  NLL {m.get('nll', float('nan')):.4f}  "
              f"{results['posthoc'][name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
