"""One run: a validated config and its method → trained, evaluated, written to its workdir.

`run_config` is the one way to run a config: `launch.py` (the command line) and the experiment
runner's in-process mode both call it. Exit codes of a failed run (`RunFailed.code`): 2 bad
config/data (nothing was computed), 3 non-finite loss (last good checkpoint kept), 130 interrupted
(checkpoint saved).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 2, 3, 130


class RunFailed(Exception):
    """A run that cannot start or go on: `code` is the exit code, the message one line."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def default_workdir(config) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(config.model.name.rstrip("/")))
    name = f"{config.data.name}_{model}_{config.model.method}_n{config.data.train_size}_s{config.seed}"
    return os.path.join(REPO_ROOT, "runs", name)


def make_workdir(workdir: str) -> None:
    """Creates the run directory, or fails in one line (a file, a read-only or unwritable place)."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise RunFailed(EXIT_BAD_INPUT, f"--workdir={workdir}: cannot create it ({err.strerror or err})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise RunFailed(EXIT_BAD_INPUT, f"--workdir={workdir}: not writable (read-only filesystem or permissions)")


def resolved_config(config: dict) -> dict:
    """The config as config.json records it: settings whose default depends on others resolved
    (model.lora.alpha=-1 -> 2 * rank), so the file says what was trained."""
    from umema_jax.adapters.lora import resolve_alpha
    lora = config.get("model", {}).get("lora", {})
    if "alpha" in lora:
        lora["alpha"] = resolve_alpha(lora.get("rank", 8), lora["alpha"])
    return config


def check_resumable(workdir: str, resolved: dict) -> None:
    """Refuses to resume a workdir trained under a different config (results would be a mix): by its
    config.json, and by the config its newest checkpoint records (which travels with the checkpoint).
    Which keys count: `umema_jax.train.checkpoint.config_identity` (not output.*, data.data_dir)."""
    from umema_jax.methods import unused_config_prefixes
    from umema_jax.train.checkpoint import CheckpointError, check_config, config_differences
    unused = unused_config_prefixes(resolved.get("model", {}).get("method"))
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            before = resolved_config(json.load(f))
        changed = config_differences(before, resolved, unused)
        if changed:
            raise RunFailed(EXIT_BAD_INPUT, f"{workdir} holds a run with a different config "
                                            f"({', '.join(changed[:5])}); use another --workdir or delete it")
    try:
        check_config(workdir, resolved, unused)
    except CheckpointError as err:
        raise RunFailed(EXIT_BAD_INPUT, str(err)) from None


def run_config(config, workdir: str) -> dict:
    """Trains and evaluates a validated config in `workdir` (resuming it), writes the outputs and
    returns `results.json`'s content. The one way to run a config: launch.py's `main` and the
    experiment runner's in-process mode both call it. Raises `RunFailed(exit code, one line)`."""
    from umema_jax import methods
    from umema_jax.train import outputs
    from umema_jax.train.build import build_experiment
    from umema_jax.train.checkpoint import CheckpointError
    from umema_jax.train.loop import Interrupted, NonFiniteLoss, train_and_evaluate
    from umema_jax.train.sharding import make_mesh

    make_workdir(workdir)
    resolved = resolved_config(config.to_dict())
    check_resumable(workdir, resolved)
    commit = outputs.git_commit()          # the code this process trains with (not what HEAD is at the end)

    t0 = time.perf_counter()
    try:
        exp = build_experiment(config, methods.from_config(config))
        mesh = make_mesh(config.mesh.data, config.mesh.model)
    except (OSError, ValueError, KeyError) as err:
        raise RunFailed(EXIT_BAD_INPUT, f"{type(err).__name__}: {err}".splitlines()[0]) from None
    # Only now: a start that failed above leaves no config.json to refuse the corrected command.
    outputs.write_json(os.path.join(workdir, "config.json"), resolved)
    enc = exp.info["encoding"]
    print(f"{config.data.name}: train/dev/test = {exp.info['sizes']['train']}/{exp.info['sizes']['dev']}/"
          f"{exp.info['sizes']['test']}, max_len {config.data.max_len} "
          f"(truncated {enc['train']['truncated_examples']}/{enc['dev']['truncated_examples']}/"
          f"{enc['test']['truncated_examples']}); {config.model.name} {config.model.method}: "
          f"{exp.info['params']['trainable']:,} trainable of {exp.info['params']['total']:,} params; "
          f"workdir {workdir}", file=sys.stderr, flush=True)
    try:
        run = train_and_evaluate(config, workdir, exp, mesh)
    except NonFiniteLoss as err:
        raise RunFailed(EXIT_NONFINITE, str(err)) from None
    except CheckpointError as err:          # another config's checkpoint, or none intact
        raise RunFailed(EXIT_BAD_INPUT, str(err)) from None
    except Interrupted as err:
        raise RunFailed(EXIT_INTERRUPTED, str(err)) from None
    results = outputs.write_all(workdir, config, exp, run, time.perf_counter() - t0, mesh, commit=commit)
    primary = results["primary_metric"]
    print(f"test {primary} {100 * results['test'][primary]:.2f}  ECE {100 * results['test']['ece']:.2f}  "
          f"(dev {primary} {100 * results['dev'][primary]:.2f}; best step {run.best_step}) -> "
          f"{os.path.join(workdir, 'results.json')}", flush=True)
    return results
