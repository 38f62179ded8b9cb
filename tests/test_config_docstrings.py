"""Every experiment config's docstring states the command that runs it (big_vision's habit), and
that command stays true: it parses with launch.py's flags and the config it builds validates."""
import ast
import glob
import os
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from umema_jax.methods import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))
COMMAND = re.compile(r"`(python launch\.py [^`]+)`")


def docstring_commands(path: str) -> list:
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    return [" ".join(m.split()) for m in COMMAND.findall(doc)]


def parse(command: str):
    """The config `launch.py` would run for `command` (its flags, in a private FlagValues)."""
    argv = shlex.split(command)[1:]            # drop `python`; argv[0] is launch.py
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workdir", "", "", flag_values=values)
    values(argv)
    return holder.value


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_docstring_states_a_command_that_parses(path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(REPO)
    commands = docstring_commands(path)
    assert commands, f"{os.path.relpath(path, REPO)}: the docstring gives no `python launch.py ...` command"
    rel = os.path.relpath(path, REPO)
    assert any(f"--config={rel}" in c for c in commands), f"{rel}: no command runs this config"
    for command in commands:
        config = parse(command)
        if config.data.data_dir and not os.path.isdir(config.data.data_dir) and "data.data_dir" not in command:
            config.data.data_dir = ""     # a machine without the data folder: the command's own keys still count
        validate_config(config)
        for arg in shlex.split(command):
            if arg.startswith("--config."):
                key, value = arg[len("--config."):].split("=", 1)
                node = config
                for part in key.split("."):
                    node = node[part]
                assert str(node) == value, f"{rel}: {arg} did not take effect"


def test_a_wrong_command_fails_to_parse(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(REPO)
    with pytest.raises(Exception):
        parse("python launch.py --config=configs/semeval.py --config.model.no_such_key=1")
