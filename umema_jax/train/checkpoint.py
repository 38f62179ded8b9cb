"""Orbax checkpoints of everything needed to resume bit-identically — minus the frozen backbone.

Two managers under `<workdir>/checkpoints/`:
* `latest/`: saved every N steps, at each evaluation and at the end
  (`max_to_keep`); resuming restores the newest one.
* `best/`: the best-on-dev state (`best_fn` over the dev metric, keeps 1);
  final dev/test numbers are computed from it.
Each checkpoint holds two items: `state` (TrainState: trainable params,
optimizer state, memory bank, step, RNG) and `meta` (JSON: data-iterator
position, early-stopping bookkeeping). Orbax writes into a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact; leftover temporaries are removed on the next start.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

DEV_METRIC_KEY = "dev_metric"


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying the live arrays' shardings: restore lands on the same devices."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
    def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.latest = ocp.CheckpointManager(
            os.path.join(root, "latest"), item_names=("state", "meta"), item_handlers=handlers,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save))
        self.best = ocp.CheckpointManager(
            os.path.join(root, "best"), item_names=("state", "meta"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[DEV_METRIC_KEY], best_mode="max",
                keep_checkpoints_without_metrics=False, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save))

    @staticmethod
    def _args(state, meta) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save_latest(self, step: int, state, meta: dict) -> None:
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=self._args(state, meta), force=True)

    def save_best(self, step: int, state, meta: dict, dev_metric: float) -> None:
        self.best.save(step, args=self._args(state, meta), metrics={DEV_METRIC_KEY: float(dev_metric)},
                       force=True)

    def _restore(self, manager, step, like_state):
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(like_state)), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, like_state):
        """(state, meta) of the newest complete checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        return None if step is None else self._restore(self.latest, step, like_state)

    def restore_best(self, like_state):
        step = self.best.best_step()
        return None if step is None else self._restore(self.best, step, like_state)

    def discard_after(self, step: int) -> None:
        """Drop best-checkpoints newer than `step` (written by a run that died before its next `latest`)."""
        for s in self.best.all_steps():
            if s > step:
                self.best.delete(s)
        self.best.reload()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
