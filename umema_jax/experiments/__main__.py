"""python -m umema_jax.experiments TARGET [TARGET ...] --profile=smoke|cpu|paper [--dry_run] [--max_hours=H]
                                  [--only=dataset=semeval,size=1000,seed=0,seed=1]

TARGET: lr_select, table1 ... table7, fig4 ... fig7, uncertainty, or all. Runs not finished are run (half-finished
ones resumed), then every target's table / figure is written to --out with a JSON sidecar.
`--dry_run` prints the run list with estimated time and memory on this machine and runs nothing;
`--aggregate_only` rebuilds the outputs from the runs that exist.
"""
from __future__ import annotations

import sys

from absl import app, flags

_PROFILE = flags.DEFINE_enum("profile", "smoke", ["smoke", "cpu", "paper"], "Experiment profile.")
_ROOT = flags.DEFINE_string("root", "", "Run directories (default runs/experiments/<profile>/).")
_OUT = flags.DEFINE_string("out", "", "Tables, figures and sidecars (default results/<profile>/).")
_DRY = flags.DEFINE_bool("dry_run", False, "Print the run list with time / memory estimates; run nothing.")
_MAX_HOURS = flags.DEFINE_float("max_hours", None, "Stop between runs before this many hours are exceeded.")
_ISOLATION = flags.DEFINE_enum("isolation", "subprocess", ["subprocess", "inprocess"],
                               "One launch.py process per run, or the same code in this process.")
_RETRY = flags.DEFINE_bool("retry_failed", False, "Re-run runs that failed before (default: skip them).")
_ONLY = flags.DEFINE_list("only", [], "Run one slice: KEY=VALUE,... over the runs' config overrides "
                          "(dataset, size, seed, method, lr, missing, model or any dotted key; a key "
                          "repeated = either value), e.g. --only=dataset=semeval,size=1000.")
_DIRTY = flags.DEFINE_bool("allow_dirty", False, "Train even with uncommitted changes (published profiles "
                           "refuse otherwise); such runs are marked in their tables.")
_AGG = flags.DEFINE_bool("aggregate_only", False, "Run nothing; rebuild outputs from existing runs.")


def main(argv) -> None:
    from umema_jax.experiments.pipeline import run_targets
    names = argv[1:]
    if not names:
        raise app.UsageError("name a target: lr_select, table1..table7, fig4..fig7, uncertainty or all")
    try:
        summary = run_targets(names, _PROFILE.value, _ROOT.value, _OUT.value, isolation=_ISOLATION.value,
                              max_hours=_MAX_HOURS.value, retry_failed=_RETRY.value, dry_run=_DRY.value,
                              aggregate_only=_AGG.value, only=_ONLY.value,
                              allow_dirty=_DIRTY.value)
    except ValueError as err:
        print(f"experiments: error: {err}", file=sys.stderr)
        sys.exit(2)
    failed = [f for s in summary.get("runs", []) for f in s["failed"]]
    if failed:
        print(f"[experiments] {len(failed)} run(s) failed: " + "; ".join(f"{f['run']} (rc {f['rc']})" for f in failed),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
