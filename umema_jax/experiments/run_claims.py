"""Claims on runs, so several runners (one per core, GPU or machine sharing a file system) can work
through one root: each claims a run before starting it, and two never train in one directory."""
from __future__ import annotations

import json
import os
import socket

from umema_jax.experiments.specs import RunSpec, workdir

CLAIM_FILE = "claimed_by.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(root: str, spec: RunSpec) -> dict | None:
    """Claims `spec` for this process: None on success, else the live owner's record.

    Several runner processes (one per core, GPU or machine sharing a file system) can work through the
    same target: each claims a run before starting it, by creating the claim file exclusively (atomic on
    POSIX), so two never train in one directory. A claim whose process is gone (kill -9, crash) on this
    host is stale and taken over; the run then resumes from its checkpoint as usual.
    """
    wd = workdir(root, spec)
    os.makedirs(wd, exist_ok=True)
    path = os.path.join(wd, CLAIM_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                owner = {}                 # half-written by a process that died mid-write: stale
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                return None
            if owner.get("host") not in (None, me["host"]) or (owner.get("pid") and _alive(int(owner["pid"]))):
                return owner
            try:
                os.remove(path)            # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return None
    return {"pid": None, "host": None}     # lost the race for a stale claim to another runner


def release(root: str, spec: RunSpec) -> None:
    path = os.path.join(workdir(root, spec), CLAIM_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        os.remove(path)
