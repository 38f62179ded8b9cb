"""Name -> class tables filled by decorators (`methods.register`, `uncertainty.heads.register_head`)."""
from __future__ import annotations

import sys


def add(table: dict, cls: type, what: str, caller_depth: int = 2) -> type:
    """Registers `cls` under `cls.name`. The same definition registered again (a config file that defines
    one, executed twice: once by the flag parser, once more by launch.py to name a mistyped key) replaces
    itself; another class under a taken name is refused."""
    origin = (sys._getframe(caller_depth).f_globals.get("__file__"), cls.__qualname__)
    prev = table.get(cls.name)
    if not cls.name or (prev is not None and getattr(prev, "_registered_from", None) != origin):
        raise ValueError(f"{what} name {cls.name!r} is empty or already registered")
    cls._registered_from = origin
    table[cls.name] = cls
    return cls
