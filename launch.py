"""Train and evaluate one configuration.

    python launch.py --config=configs/semeval.py [--config.key=value ...] [--workdir=DIR]

Re-running the same command resumes from the workdir's latest checkpoint.
Exit codes: 0 done, 2 bad config/data (nothing was computed), 3 non-finite
loss (last good checkpoint kept), 130 interrupted (checkpoint saved), 1 other.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from umema_jax.run import EXIT_BAD_INPUT, RunFailed, default_workdir, run_config
from umema_jax.runtime import enable_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (default: runs/<dataset>_<model>_<method>_n<size>_s<seed>).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (one process per host).")


def fail(code: int, msg: str) -> None:
    print(f"launch.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


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
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # configs/*.py import umema_jax.defaults
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(EXIT_BAD_INPUT, str(err).splitlines()[0])
    except (AttributeError, KeyError) as err:
        bad = unknown_config_key(argv)
        fail(EXIT_BAD_INPUT, f"unknown config key {bad!r} (not defined in the config file; see "
                             f"umema_jax/defaults.py)" if bad else f"bad config override: {err}")


def main(argv) -> None:
    if len(argv) > 1:
        fail(EXIT_BAD_INPUT, f"unexpected arguments {argv[1:]} (use --config.key=value)")
    config = _CONFIG.value
    from umema_jax.methods import validate_config
    from umema_jax.train.validate import ConfigError
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


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
