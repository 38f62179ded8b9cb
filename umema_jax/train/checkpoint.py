"""Orbax checkpoints of everything needed to resume bit-identically — minus the frozen backbone.

Two managers under `<workdir>/checkpoints/`:
* `latest/`: saved every N steps, at each evaluation and at the end
  (`max_to_keep`); resuming restores the newest one.
* `best/`: the best-on-dev state (`best_fn` over the dev metric, keeps 1);
  final dev/test numbers are computed from it.
Each checkpoint holds two items: `state` (TrainState: trainable params,
optimizer state, memory bank, step, RNG) and `meta` (JSON: data-iterator
position, early-stopping bookkeeping, and the config the run was trained under:
`config_identity`, the keys that decide results, and its hash). Orbax writes
into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; leftover temporaries are
removed on the next start.

Resuming (`restore_latest`) refuses a checkpoint trained under another config
(`CheckpointError`), and skips unreadable steps: the newest intact one is
restored, the newer broken ones are moved to `checkpoints/corrupt/` with a
one-line warning; with none intact it raises `CheckpointError`.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

DEV_METRIC_KEY = "dev_metric"
CONFIG_KEY, CONFIG_HASH_KEY = "config", "config_hash"     # in every checkpoint's `meta`
# Config keys that do not change results: a run may be resumed with other values for them.
RESUME_SAFE_PREFIXES = ("output.",)
RESUME_SAFE_KEYS = ("data.data_dir",)


class CheckpointError(RuntimeError):
    """A workdir whose checkpoints cannot be resumed (another config, none intact); one line, names the path."""


def flatten_config(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: config keys as written on the command line."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_identity(config, unused: tuple = ()) -> dict:
    """The flat `{'a.b': value}` keys of a config (ConfigDict, nested or flat dict) that decide results:
    everything but `RESUME_SAFE_PREFIXES` / `RESUME_SAFE_KEYS`, the `methods.*` sections of methods
    other than `model.method` and the `unused` prefixes (the sections of branches the method does not
    build: `Method.unused_config_prefixes`), with `model.lora.alpha` resolved."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    flat = flatten_config(json.loads(json.dumps(config, default=str)))
    if "model.lora.alpha" in flat:
        from umema_jax.adapters.lora import resolve_alpha
        flat["model.lora.alpha"] = resolve_alpha(flat.get("model.lora.rank", 8), flat["model.lora.alpha"])
    own = f"methods.{flat.get('model.method')}."
    unused = tuple(unused)
    return {k: v for k, v in flat.items() if not k.startswith(RESUME_SAFE_PREFIXES) and k not in RESUME_SAFE_KEYS
            and (not k.startswith("methods.") or k.startswith(own)) and not k.startswith(unused)}


def config_hash(config, unused: tuple = ()) -> str:
    return hashlib.sha256(json.dumps(config_identity(config, unused), sort_keys=True).encode()).hexdigest()[:16]


def config_differences(before, now, unused: tuple = ()) -> list:
    """Sorted keys that decide results and differ between two configs (the one notion of "same run").

    A key only one side has is a key added to the code in between; it is taken to hold the default it
    was introduced with, which must keep the old behaviour (a project rule: a new option defaults to
    off). Defaults that *change* are caught, since both sides have the key."""
    a, b = config_identity(before, unused), config_identity(now, unused)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k])


def _refuse_other_config(step_dir: str, meta: dict, identity: dict) -> bool:
    """Raises `CheckpointError` when `meta` records another config; False when it records none (old run)."""
    if CONFIG_KEY not in meta:
        return False
    changed = config_differences(meta[CONFIG_KEY], identity)
    if changed:
        raise CheckpointError(f"{step_dir} was trained under a different config ({', '.join(changed[:5])}); "
                              f"use another --workdir or delete it")
    return True


def check_config(workdir: str, config, unused: tuple = ()) -> None:
    """Cheap check before anything is built (plain JSON, no orbax): raises `CheckpointError` when the
    newest readable `latest` checkpoint of `workdir` was trained under another config."""
    folder = os.path.join(os.path.abspath(workdir), "checkpoints", "latest")
    steps = sorted((int(n) for n in os.listdir(folder) if n.isdigit()), reverse=True) if os.path.isdir(folder) else []
    for step in steps:
        try:
            with open(os.path.join(folder, str(step), "meta", "metadata"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue                      # unreadable: `restore_latest` skips it (or says none is intact)
        _refuse_other_config(os.path.join(folder, str(step)), meta, config_identity(config, unused))
        return


def _reason(err: BaseException, step_dir: str) -> str:
    """One line: the unreadable file when it is a JSON file (orbax's JSONDecodeError names none), else the error."""
    if isinstance(err, ValueError) and type(err).__name__ == "JSONDecodeError":
        for path in sorted(glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)):
            name = os.path.basename(path)
            if os.path.isfile(path) and (name in ("_METADATA", "_CHECKPOINT_METADATA", "metadata")
                                         or os.sep + "array_metadatas" + os.sep in path):
                try:
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                except (ValueError, OSError) as bad:
                    return f"{path}: {type(bad).__name__}: {bad}"
    text = " ".join(str(err).split())
    files = re.findall(r'local file "([^"]+)"', text)      # tensorstore names the file it could not read
    if files:
        return f"{files[-1]}: {type(err).__name__}: {text.split(':')[0]}"
    return f"{type(err).__name__}: {text[:240]}{'…' if len(text) > 240 else ''}"


@contextlib.contextmanager
def _quiet_aborted_reads():
    """A failed orbax restore leaves tensorstore reads whose completion callbacks hit the restore's
    closed event loop ("Exception ignored … Event loop is closed", one traceback each): drop those."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying the live arrays' shardings: restore lands on the same devices."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
    """`config`: the run's config; every save records its identity and `restore_latest` refuses another
    (`unused`: the config sections the method ignores, `config_identity`)."""

    def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True, config=None,
                 log: Callable[[str], None] | None = None, unused: tuple = ()):
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.root = root
        self.identity = None if config is None else config_identity(config, unused)
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._closed = False
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

    def _args(self, state, meta) -> ocp.args.Composite:
        if self.identity is not None:
            meta = {**meta, CONFIG_HASH_KEY: config_hash(self.identity), CONFIG_KEY: self.identity}
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

    def step_dir(self, step: int) -> str:
        return os.path.join(self.root, "latest", str(step))

    def restore_latest(self, like_state):
        """(state, meta) of the newest intact checkpoint, or None when there is none.

        Unreadable newer steps are moved to `checkpoints/corrupt/` (one warning line); a
        checkpoint of another config, or steps present but none intact, raise `CheckpointError`."""
        broken = []                       # (step, one-line reason), newest first
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                meta = dict(self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            except Exception as err:      # noqa: BLE001 - any unreadable step is skipped the same way
                broken.append((step, _reason(err, self.step_dir(step))))
                continue
            checked = self.identity is not None and _refuse_other_config(self.step_dir(step), meta, self.identity)
            try:
                with _quiet_aborted_reads():
                    state, meta = self._restore(self.latest, step, like_state)
            except Exception as err:      # noqa: BLE001
                with _quiet_aborted_reads():
                    time.sleep(0.2)       # let the aborted reads finish while their noise is dropped
                broken.append((step, _reason(err, self.step_dir(step))))
                continue
            if broken:
                self._set_aside([s for s, _ in broken])
                self._log(f"warning: skipped unreadable checkpoint{'s' if len(broken) > 1 else ''} "
                          + "; ".join(f"{self.step_dir(s)} ({why})" for s, why in broken)
                          + f"; moved to {os.path.join(self.root, 'corrupt')}, resuming from step {step}")
            if self.identity is not None and not checked:
                self._log(f"warning: {self.step_dir(step)} records no config (written before config checks); "
                          f"resuming it unchecked")
            return state, meta
        if broken:
            raise CheckpointError("no intact checkpoint to resume: "
                                  + "; ".join(f"{self.step_dir(s)} ({why})" for s, why in broken)
                                  + f"; delete {self.root} to start over")
        return None

    def _set_aside(self, steps) -> None:
        """Moves unreadable `latest` steps out of the manager's folder (kept for inspection, not resumed)."""
        if jax.process_index() == 0:
            aside = os.path.join(self.root, "corrupt")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target, n = os.path.join(aside, f"latest_{step}"), 1
                while os.path.exists(target):
                    target, n = os.path.join(aside, f"latest_{step}.{n}"), n + 1
                shutil.move(self.step_dir(step), target)
        self.latest.reload()

    def restore_best(self, like_state):
        """(state, meta) of the best-on-dev checkpoint, or None when there is none; an unreadable one
        raises `CheckpointError` (one line naming the file) instead of silently reporting another state."""
        step = self.best.best_step()
        if step is None:
            return None
        step_dir = os.path.join(self.root, "best", str(step))
        try:
            with _quiet_aborted_reads():
                return self._restore(self.best, step, like_state)
        except Exception as err:          # noqa: BLE001 - any unreadable file: one line, no final numbers
            raise CheckpointError(f"best checkpoint {step_dir} is unreadable ({_reason(err, step_dir)}); move it "
                                  f"out of {os.path.dirname(step_dir)} and re-run to report the last state "
                                  f"instead") from None

    def discard_after(self, step: int) -> None:
        """Drop best-checkpoints newer than `step` (written by a run that died before its next `latest`)."""
        for s in self.best.all_steps():
            if s > step:
                self.best.delete(s)
        self.best.reload()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def saved_latest_step(self) -> int | None:
        """The newest `latest` step complete on disk (a finished save's folder; never one still in flight)."""
        folder = os.path.join(self.root, "latest")
        steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
        return max(steps, default=None)

    def settle(self) -> int | None:
        """For every way out of a run: waits for pending saves, closes, returns `saved_latest_step()`."""
        try:
            self.close()                  # waits for the asynchronous saves, stops orbax's threads
        except Exception as err:          # noqa: BLE001 - a failed save: report what is on disk instead
            self._log(f"warning: a pending checkpoint save failed ({_reason(err, self.root)})")
        return self.saved_latest_step()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.latest.close()
        finally:
            self.best.close()
