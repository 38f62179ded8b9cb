"""Train and evaluate one configuration.

    python launch.py --config=configs/semeval.py [--config.key=value ...] [--workdir=DIR]

Re-running the same command resumes from the workdir's latest checkpoint.
Exit codes: 0 done, 2 bad config/data (nothing was computed), 3 non-finite
loss (last good checkpoint kept), 130 interrupted (checkpoint saved), 1 other.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from umema_jax.runtime import enable_compilation_cache  # noqa: F401  (also used by the experiment runner)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (default: runs/<dataset>_<model>_<method>_n<size>_s<seed>).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (one process per host).")

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 2, 3, 130


class RunFailed(Exception):
    """A run that cannot start or go on: `code` is the exit code, the message one line."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


def fail(code: int, msg: str) -> None:
    print(f"launch.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def default_workdir(config) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(config.model.name.rstrip("/")))
    name = f"{config.data.name}_{model}_{config.model.method}_n{config.data.train_size}_s{config.seed}"
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs", name)


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
    from umema_jax.train.checkpoint import CheckpointError, check_config, config_differences
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            before = resolved_config(json.load(f))
        changed = config_differences(before, resolved)
        if changed:
            raise RunFailed(EXIT_BAD_INPUT, f"{workdir} holds a run with a different config "
                                            f"({', '.join(changed[:5])}); use another --workdir or delete it")
    try:
        check_config(workdir, resolved)
    except CheckpointError as err:
        raise RunFailed(EXIT_BAD_INPUT, str(err)) from None


def unknown_config_key(argv: list) -> str | None:
    """The first `--config.a.b=v` override naming a key the config file does not define."""
    import importlib.util
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("_launch_config", path.split(":", 1)[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node = config
        for key in arg[len("--config."):].split("=", 1)[0].split("."):
            if not hasattr(node, "keys") or key not in node.keys():
                return arg.split("=", 1)[0][len("--"):]
            node = node[key]
    return None


def parse_flags(argv: list) -> list:
    """absl parsing with one-line errors (config_flags raises a traceback for an unknown key)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # configs import configs.common
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(EXIT_BAD_INPUT, str(err).splitlines()[0])
    except (AttributeError, KeyError) as err:
        bad = unknown_config_key(argv)
        fail(EXIT_BAD_INPUT, f"unknown config key {bad!r} (not defined in the config file; see "
                             f"configs/common.py)" if bad else f"bad config override: {err}")


def main(argv) -> None:
    if len(argv) > 1:
        fail(EXIT_BAD_INPUT, f"unexpected arguments {argv[1:]} (use --config.key=value)")
    config = _CONFIG.value
    from umema_jax.train.validate import ConfigError, validate_config
    try:
        validate_config(config)
    except ConfigError as err:
        fail(EXIT_BAD_INPUT, str(err))

    from absl import logging
    logging.set_verbosity(logging.WARNING)          # orbax logs every save at INFO
    import jax
    enable_compilation_cache()
    if _MULTIHOST.value:
        jax.distributed.initialize()
    try:
        run_config(config, os.path.abspath(_WORKDIR.value or default_workdir(config)))
    except RunFailed as err:
        fail(err.code, str(err))


def run_config(config, workdir: str) -> dict:
    """Trains and evaluates a validated config in `workdir` (resuming it), writes the outputs and
    returns `results.json`'s content. The one way to run a config: launch.py's `main` and the
    experiment runner's in-process mode both call it. Raises `RunFailed(exit code, one line)`."""
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
        exp = build_experiment(config)
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


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
