"""A target's outputs: markdown tables pivoted from cells, their compact README view, and the
`<target>.md` + `<target>.json` pair every table and figure writes."""
from __future__ import annotations

import datetime
import inspect
import os

from umema_jax.experiments import specs as S
from umema_jax.experiments.aggregate import hosts_line
from umema_jax.experiments.verdicts import claims_markdown
from umema_jax.train.outputs import write_json, write_text


def pivot(results: list, row_keys: tuple, col_keys: tuple, col_name=None) -> list:
    """Markdown table: one row per distinct row-label tuple, one column per column-label tuple (in order)."""
    rows, cols, table = [], [], {}
    for r in results:
        rk = tuple(r.cell.labels.get(k) for k in row_keys)
        ck = tuple(r.cell.labels.get(k) for k in col_keys)
        if rk not in rows:
            rows.append(rk)
        if ck not in cols:
            cols.append(ck)
        table[rk, ck] = r.text()
    col_name = col_name or (lambda ck: " ".join(str(x) for x in ck))
    head = [str(k) for k in row_keys] + [col_name(ck) for ck in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rk in rows:
        lines.append("| " + " | ".join([str(x) for x in rk] + [table.get((rk, ck), "") for ck in cols]) + " |")
    return lines


def _empty(cell: str) -> bool:
    cell = cell.strip()
    return not cell or (cell.startswith("– (") and ("runs)" in cell or "LR not chosen" in cell))


def compact_tables(lines: list) -> list:
    """The markdown tables of `lines` without the columns and rows that hold no computed value (the
    README's view of a mostly empty grid); other lines as they are, plus a note when anything was left out."""
    out, dropped, i = [], False, 0
    while i < len(lines):
        if not (lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            out.append(lines[i])
            i += 1
            continue
        j = i + 2
        while j < len(lines) and lines[j].startswith("| "):
            j += 1
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in [lines[i]] + lines[i + 2:j]]
        head, body = rows[0], rows[1:]
        labels = max((k for k, h in enumerate(head) if h in ("method", "metric", "lr")), default=0) + 1   # row labels
        keep_rows = [r for r in body if not all(_empty(c) for c in r[labels:])]
        keep_cols = [k for k in range(len(head)) if k < labels or any(not _empty(r[k]) for r in keep_rows)]
        dropped |= len(keep_rows) < len(body) or len(keep_cols) < len(head)
        if not keep_rows:                 # nothing computed in this table: leave it out (and its blank line)
            if out and not out[-1].strip():
                out.pop()
            i = j
            continue
        for n, r in enumerate([head] + keep_rows):
            out.append("| " + " | ".join(r[k] for k in keep_cols) + " |")
            if n == 0:
                out.append("|" + "---|" * len(keep_cols))
        i = j
    if dropped:
        out += ["", "(Rows and columns with no computed value yet are left out here.)"]
    return out


def commit() -> str:
    from umema_jax.train.outputs import git_commit
    return git_commit()


def write(out_dir: str, target: str, title: str, ctx, body: list, claims: list, cells: list, extra: dict | None = None,
          doc: str = "") -> dict:
    """<out>/<target>.md and <target>.json (the sidecar)."""
    os.makedirs(out_dir, exist_ok=True)
    command = f"python -m umema_jax.experiments {target} --profile={ctx.profile.name}"
    sha = commit()
    md = [f"# {title}", ""]
    if doc:
        md += [inspect.cleandoc(doc), ""]
    md += body + ["", "## Claims (docs/EXPERIMENTS.md)", ""] + claims_markdown(claims)
    md += ["", "## Deviations from the paper (profile `%s`)" % ctx.profile.name, ""]
    md += [f"- {d}" for d in ctx.profile.deviations] or ["- none"]
    lr = ctx.lr_note()
    if lr:
        md += [f"- learning rates: {lr}"]
    hosts = hosts_line(cells)
    if hosts:
        md += [f"- runs by host CPU: {hosts}; seeds are paired only on one matmul path"]
    # No commit or date in the table itself (the sidecar has both): a fresh clone re-renders it byte-identical.
    md += ["", f"Command: `{command}` · runs under `{S.repo_relative(ctx.root)}`", ""]
    write_text(os.path.join(out_dir, f"{target}.md"), "\n".join(md))
    sidecar = {"target": target, "title": title, "profile": ctx.profile.name, "command": command, "commit": sha,
               "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "deviations": list(ctx.profile.deviations), "learning_rates": ctx.lr_selection,
               "root": S.repo_relative(ctx.root), "cells": [c.to_json() for c in cells], "claims": claims,
               # what the README shows of this output (pipeline.sync_readme): the table(s) and the verdicts
               "summary_markdown": "\n".join(compact_tables(body) + ["", "Claims (docs/EXPERIMENTS.md):", ""]
                                             + claims_markdown(claims))}
    sidecar.update(extra or {})
    write_json(os.path.join(out_dir, f"{target}.json"), sidecar)
    return sidecar
