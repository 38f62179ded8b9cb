"""Rebuild run-ledger entries from the published outputs when the run directories are lost.

    python -m umema_jax.experiments.recover --profile=cpu [--dry_run]

The run ledger (`specs.record`) keeps each finished run's config and results
next to the tables. Runs finished before the ledger existed, on a machine that
is gone, survive only as the numbers the sidecars published
(`results/<profile>/<target>.json`: per cell, the metric path, one value per
seed and the run directories). This collects those numbers run by run and
writes one ledger entry per run that has neither a finished directory nor an
entry, marked `"source": "recovered from published outputs"`: its `results`
hold exactly the published metric paths (a table asking for any other metric
shows `n/a`), and its `config` is what the run's overrides resolve to at
recovery time (the run's own `config.json` was lost; a later change of a
default still marks the entry stale). Two sidecars that disagree on a value
are an error, never averaged.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys

from absl import app, flags

from umema_jax.experiments import specs as S
from umema_jax.experiments.profiles import get_profile
from umema_jax.experiments.targets import LR_FILE, NER, ORDER, TARGETS, Context
from umema_jax.train.outputs import git_commit, write_json

RECOVERED = "recovered from published outputs"


def _primary(spec: S.RunSpec) -> str:
    return "span_f1" if spec.get("data.name") in NER else "accuracy"


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def published_values(ctx: Context) -> dict:
    """{run name: (spec, {metric path: (value, sidecar)})} from every sidecar of the profile's outputs."""
    specs = {s.name: s for t in ORDER for c in TARGETS[t].cells(ctx) for s in c.specs if s.kind == "train"}
    found: dict = {}
    for path in sorted(glob.glob(os.path.join(ctx.out, "*.json"))):
        with open(path, encoding="utf-8") as f:
            side = json.load(f)
        if not isinstance(side, dict) or "cells" not in side:
            continue                                   # lr_selection.json and other non-table files
        rel = S.repo_relative(path)
        for cell in side["cells"]:
            for run_dir in cell.get("runs", []):
                spec = specs.get(os.path.basename(run_dir))
                if spec is None:
                    continue                           # a run today's targets no longer ask for
                value = cell.get("per_seed", {}).get(str(spec.get("seed", 0)))
                if value is None:
                    continue
                metric = cell["metric"].replace("{primary}", _primary(spec))
                _, metrics = found.setdefault(spec.name, (spec, {}))
                old = metrics.get(metric)
                if old is not None and abs(old[0] - value) > 1e-12:
                    raise ValueError(f"{rel}: {spec.name} {metric} = {value} but {old[1]} says {old[0]}")
                metrics[metric] = (float(value), rel)
    return found


def lr_facts(ctx: Context) -> dict:
    """{run name: {'best_step', 'steps'}} for the runs lr_selection.json recorded them for (the chosen LR's)."""
    facts = {}
    cells = TARGETS["lr_select"].cells(ctx)
    for backbone, fams in ctx.lr_selection.items():
        for fam, sel in fams.items():
            if sel.get("chosen") is None or sel.get("steps") is None:
                continue
            for c in cells:
                labels = c.labels
                if labels.get("family") == fam and labels.get("lr") == sel["chosen"] and c.specs and \
                        c.specs[0].get("model.name") == backbone:
                    facts[c.specs[0].name] = {"best_step": sel.get("best_step"), "steps": sel["steps"]}
    return facts


def recover(ctx: Context, dry_run: bool = False, log=print) -> list:
    """Writes the missing ledger entries; returns their run names."""
    found, facts, written = published_values(ctx), lr_facts(ctx), []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name, (spec, metrics) in sorted(found.items()):
        if S.finished(ctx.root, spec, ctx.ledger):
            continue                                   # its directory or its entry is the better source
        results = {"dataset": spec.get("data.name"), "model": spec.get("model.name"),
                   "method": spec.get("model.method"), "seed": spec.get("seed"), "primary_metric": _primary(spec)}
        for metric, (value, _) in metrics.items():
            _set(results, metric, value)
        results.update(facts.get(name, {}))
        sources = sorted({src for _, src in metrics.values()})
        entry = {"run": name, "command": spec.command(os.path.join("runs", "experiments", ctx.profile.name, name)),
                 "source": RECOVERED, "recovered_from": sources, "recovered_at": stamp,
                 "recovered_at_commit": git_commit(),
                 "config_source": "resolved from the run's overrides at recovery (its config.json was lost)",
                 "config": S.load_config(spec).to_dict(), "results": results}
        log(f"[recover] {name}: {len(metrics)} published value(s) from {', '.join(sources)}")
        if not dry_run:
            os.makedirs(ctx.ledger, exist_ok=True)
            write_json(S.ledger_path(ctx.ledger, spec), entry)
        written.append(name)
    log(f"[recover] {len(written)} ledger entr{'y' if len(written) == 1 else 'ies'} "
        f"{'would be ' if dry_run else ''}written under {ctx.ledger}")
    return written


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    root = f.root or os.path.join(S.REPO_ROOT, "runs", "experiments", f.profile)
    out = f.out or os.path.join(S.REPO_ROOT, "results", f.profile)
    if not os.path.isfile(os.path.join(out, LR_FILE)):
        print(f"recover: error: {os.path.join(out, LR_FILE)} not found (nothing was published there)",
              file=sys.stderr)
        sys.exit(2)
    try:
        recover(Context(get_profile(f.profile), root, out), dry_run=f.dry_run)
    except ValueError as err:
        print(f"recover: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # Flags are defined only when run as a program: importing this module (tests) must not claim names
    # like --out that other entry points define.
    flags.DEFINE_enum("profile", "cpu", ["smoke", "cpu", "paper"], "Experiment profile.")
    flags.DEFINE_string("root", "", "Run directories (default runs/experiments/<profile>/).")
    flags.DEFINE_string("out", "", "Published outputs and ledger (default results/<profile>/).")
    flags.DEFINE_bool("dry_run", False, "List what would be recovered; write nothing.")
    app.run(main)
