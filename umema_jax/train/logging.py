"""Metric trackers behind one interface (Levanter-style): the loop logs once, every sink receives it.

`metrics.jsonl` is the source of truth (one JSON object per record, with
`step` and `split`); TensorBoard event files mirror it for browsing. On resume
both are rewound to the restored step, so a killed-and-resumed run leaves the
same records as an uninterrupted one (no duplicates).
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence


class Tracker:
    def log(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def numeric(scalars: Mapping) -> dict:
    """The loggable entries: numbers (not bools, strings or tables)."""
    import numbers
    return {k: v for k, v in scalars.items()
            if isinstance(v, numbers.Number) and not isinstance(v, bool)}


def _clean(scalars: Mapping[str, float]) -> dict:
    out = {}
    for k, v in numeric(scalars).items():
        v = float(v)
        out[k] = v if math.isfinite(v) else str(v)
    return out


class JsonlTracker(Tracker):
    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            self._rewind(resume_step)
        self._f = open(path, "a", encoding="utf-8")

    def _rewind(self, step: int) -> None:
        """Keep only records up to `step` (later ones are replayed by the resumed run)."""
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def log(self, step, split, scalars):
        self._f.write(json.dumps({"step": int(step), "split": split, **_clean(scalars)}) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: str, resume_step: int | None = None):
        from tensorboardX import SummaryWriter
        # purge_step hides events logged after the restored step by a killed run.
        self._w = SummaryWriter(logdir, purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step, split, scalars):
        for k, v in numeric(scalars).items():
            v = float(v)
            if math.isfinite(v):
                self._w.add_scalar(f"{split}/{k}", v, int(step))

    def close(self):
        self._w.flush()
        self._w.close()


class MultiTracker(Tracker):
    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log(self, step, split, scalars):
        for t in self.trackers:
            t.log(step, split, scalars)

    def close(self):
        for t in self.trackers:
            t.close()


def make_tracker(workdir: str, tensorboard: bool = True, resume_step: int | None = None) -> Tracker:
    trackers: list[Tracker] = [JsonlTracker(os.path.join(workdir, "metrics.jsonl"), resume_step)]
    if tensorboard:
        trackers.append(TensorBoardTracker(os.path.join(workdir, "tensorboard"), resume_step))
    return MultiTracker(trackers)
