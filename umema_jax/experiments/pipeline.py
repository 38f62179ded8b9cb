"""Targets -> deduplicated run list -> runner -> aggregated outputs (and the dry-run plan)."""
from __future__ import annotations

import json
import os
import re

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import profiles as P
from umema_jax.experiments import ledger
from umema_jax.experiments import specs as S
from umema_jax.experiments.estimate import Estimator, hms, machine
from umema_jax.experiments.profiles import get_profile
from umema_jax.experiments.runner import execute
from umema_jax.experiments.targets import ORDER, TARGETS, Context


def expand(names) -> list:
    out = []
    for name in names:
        if name == "all":
            out += ORDER
        elif name in TARGETS:
            out.append(name)
        else:
            raise ValueError(f"unknown target {name!r}; choose from all, {', '.join(ORDER)}")
    return list(dict.fromkeys(out))


# Short names for the override keys a slice is usually cut along (`--only=dataset=semeval,size=1000`).
ONLY_ALIASES = {"dataset": "data.name", "size": "data.train_size", "method": "model.method",
                "lr": "optim.learning_rate", "missing": "data.missing_rate", "model": "model.name"}


def parse_only(items) -> dict:
    """`["dataset=semeval", "seed=0", "seed=1"]` -> {"data.name": {"semeval"}, "seed": {"0", "1"}}.

    Different keys must all match (AND); a key given twice matches either value (OR)."""
    only = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--only: {item!r} is not KEY=VALUE (e.g. dataset=semeval,size=1000,seed=0)")
        only.setdefault(ONLY_ALIASES.get(key.strip(), key.strip()), set()).add(value.strip())
    return only


def _same(actual, wanted: str) -> bool:
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(actual) == float(wanted)
        except ValueError:
            return False
    return str(actual) == wanted


def matches(spec: S.RunSpec, only: dict) -> bool:
    """Whether a run belongs to the slice `only` (a run without the key is outside it)."""
    over = dict(spec.overrides)
    return all(k in over and any(_same(over[k], v) for v in vals) for k, vals in only.items())


def select(jobs: dict, only: dict) -> dict:
    """The runs of `jobs` inside the slice."""
    return {key: v for key, v in jobs.items() if matches(v[0], only)} if only else jobs


def check_only(ctx: Context, names: list, only: dict) -> None:
    """A key that no run of the targets has is an error: a typo would otherwise select nothing."""
    if not only:
        return
    jobs, pending = collect(ctx, list(dict.fromkeys(["lr_select"] + names)))
    known = {k for spec, _ in list(jobs.values()) + list(pending.values()) for k, _ in spec.overrides}
    unknown = sorted(k for k in only if k not in known)
    if unknown:
        raise ValueError(f"--only: no run of {', '.join(names)} has the key {', '.join(unknown)} "
                         f"(short names: {', '.join(f'{a}={k}' for a, k in ONLY_ALIASES.items())})")


def target_specs(t, ctx: Context, cells: list) -> list:
    """Every run a target reads: its cells' runs and those tied to no cell (fig7's benchmark)."""
    return [s for c in cells for s in c.specs] + (t.extra_specs(ctx) if t.extra_specs else [])


def collect(ctx: Context, names: list, only: dict | None = None) -> tuple[dict, dict]:
    """({key: (spec, [targets])} runnable now, {key: (spec, [targets])} waiting for the LR choice),
    restricted to the slice `only` (see `parse_only`)."""
    jobs, pending = {}, {}
    for name in names:
        t = TARGETS[name]
        cells = t.cells(ctx)
        for s in target_specs(t, ctx, cells):
            jobs.setdefault(s.key, (s, []))[1].append(name)
        for c in cells:
            for s in c.placeholder:
                pending.setdefault(s.key, (s, []))[1].append(name)
    for key in [k for k in pending if k in jobs]:        # needed now by one target; by another if chosen
        jobs[key][1].extend(f"{t} (if this LR is chosen)" for t in pending.pop(key)[1])
    for v in list(jobs.values()) + list(pending.values()):
        v[1][:] = list(dict.fromkeys(v[1]))
    jobs = dict(sorted(jobs.items(), key=lambda kv: _seed(kv[1][0])))   # seed-major: a whole seed first
    pending = dict(sorted(pending.items(), key=lambda kv: _seed(kv[1][0])))
    return select(jobs, only or {}), select(pending, only or {})


def _seed(spec: S.RunSpec) -> int:
    """Runs are ordered seed by seed, so a target stopped part-way has complete comparisons at seed 0
    (benchmark specs have no seed: first)."""
    return int(spec.get("seed", 0))


def families_waiting(ctx: Context, names: list, only: dict | None = None) -> set:
    """The method families ('adapter', 'full_weight') whose LR the runs of `names` (in the slice) wait for."""
    family = {P.method_name(m, ctx.implemented): m.family for m in P.ABLATION + P.BASELINES}
    return {family.get(spec.get("model.method"), "adapter")
            for n in names for c in TARGETS[n].cells(ctx) if c.status == A.PENDING_LR
            for spec in c.placeholder if matches(spec, only or {})}


def lr_jobs(ctx: Context, families: set, only: dict | None = None) -> dict:
    """lr_select's runs for these families only: table5 waits for the adapter grid, not LISA's."""
    keys = {s.key for c in TARGETS["lr_select"].cells(ctx) if c.labels.get("family") in families for s in c.specs}
    jobs, _ = collect(ctx, ["lr_select"], only)
    return {k: v for k, v in jobs.items() if k in keys}


README_BLOCK = re.compile(r"(<!-- experiments:(?P<profile>[\w-]+)/(?P<target>\w+) -->\n)(?P<old>.*?)(<!-- /experiments -->)",
                          re.S)


_COMMIT = re.compile(r" at commit `[^`]*`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)/]+)\)")


def sync_readme(out_dir: str, profile: str, readme: str) -> list:
    """Rewrites each block `<!-- experiments:<profile>/<target> -->` … `<!-- /experiments -->` of `readme`
    with that target's table(s) and claim verdicts from its sidecar in `out_dir`, plus the command and
    commit, so the README shows the runner's numbers and never hand-copied ones. Returns the targets done."""
    if not os.path.isfile(readme):
        return []
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    done = []

    def fill(m):
        sidecar = os.path.join(out_dir, f"{m['target']}.json")
        if m["profile"] != profile or not os.path.isfile(sidecar):
            return m.group(0)
        with open(sidecar, encoding="utf-8") as f:
            side = json.load(f)
        if "summary_markdown" not in side:
            return m.group(0)
        done.append(m["target"])
        here = os.path.dirname(os.path.abspath(readme))
        rel = os.path.relpath(os.path.join(out_dir, f"{m['target']}.md"), here)
        summary = _IMAGE.sub(lambda i: f"![{i[1]}]({os.path.relpath(os.path.join(out_dir, i[2]), here)})",
                             side["summary_markdown"])      # a target's plots lie beside its tables
        block = (m.group(1) + summary.rstrip() + "\n\n"
                 + f"(`{side['command']}` at commit `{side['commit'][:12]}`; the full output with the deviations "
                   f"from the paper: [{rel}]({rel}))\n" + m.group(5))
        # same tables, only a newer commit: keep the block (a render alone must not churn the README)
        return m.group(0) if _COMMIT.sub("", block) == _COMMIT.sub("", m.group(0)) else block

    new = README_BLOCK.sub(fill, text)
    if new != text:
        from umema_jax.train.outputs import write_text
        write_text(readme, new)
    return done


# Pages whose `<!-- experiments:<profile>/<target> -->` blocks every render rewrites from the sidecars.
RESULT_PAGES = ("README.md", os.path.join("docs", "RESULTS.md"))


def render(ctx: Context, names: list, log) -> list:
    written = []
    for name in names:
        t = TARGETS[name]
        cells = t.cells(ctx)
        recorded = sum(ledger.record(ctx.root, ctx.ledger, s) for s in target_specs(t, ctx, cells))
        if recorded:
            log(f"[experiments] run ledger: {recorded} finished run(s) recorded under {ctx.ledger}")
        results = [A.summarise(c, ctx.root, ctx.ledger, ctx.profile.published) for c in cells]
        t.render(ctx, results)
        written.append(os.path.join(ctx.out, f"{name}.md"))
        done = sum(r.n for r in results)
        expected = sum(r.expected for r in results)
        log(f"[experiments] {name}: {done}/{expected} cell values computed -> {written[-1]}")
    if os.path.abspath(ctx.out) == os.path.join(S.REPO_ROOT, "results", ctx.profile.name):   # not a test's out
        for page in RESULT_PAGES:
            synced = sync_readme(ctx.out, ctx.profile.name, os.path.join(S.REPO_ROOT, page))
            if synced:
                log(f"[experiments] {page} blocks updated: {', '.join(synced)}")
    return written


def plan(ctx: Context, names: list, log, only: dict | None = None) -> dict:
    """The dry run: every run with its status and estimated time and memory on this machine."""
    est = Estimator(ctx.profile, ctx.root, ctx.ledger)
    jobs, pending = collect(ctx, names, only)
    if pending and "lr_select" not in names:     # the LR choice comes first: list its runs too
        first = lr_jobs(ctx, families_waiting(ctx, names, only), only)
        for key, (spec, targets) in first.items():
            jobs.setdefault(key, (spec, []))[1][:0] = ["lr_select (first)"]
            pending.pop(key, None)
        jobs = dict(sorted(jobs.items(), key=lambda kv: "lr_select (first)" not in kv[1][1]))
    m = machine()
    log(f"[experiments] dry run · profile {ctx.profile.name} · {m['platform']} · runs under {ctx.root}")
    if est.calibrated:
        log("[experiments] time estimates rescaled by finished runs: " +
            ", ".join(f"{k} ×{v:.2f}" for k, v in est.calibrated.items()))
    rows, totals = [], {"done": 0, "partial": 0, "todo": 0, "failed": 0, "pending LR": 0}
    todo_s, peak = 0.0, 0.0
    for kind, table in (("run", jobs), ("pending LR", pending)):
        for spec, targets in table.values():
            st = S.status(ctx.root, spec, ctx.ledger) if kind == "run" else "pending LR"
            totals[st] = totals.get(st, 0) + 1
            t = est.time_s(spec)
            mem, src = est.memory_gib(spec)
            if st != "done":
                todo_s += t
                peak = max(peak, mem or 0.0)
            rows.append({"status": st, "run": spec.name, "targets": targets, "est_s": t, "mem_gib": mem,
                         "mem_source": src, "command": spec.command(S.workdir(ctx.root, spec))})
            mem_txt = f"{mem:.1f} GiB ({src})" if mem is not None else "n/a"
            log(f"  {st:<10} {hms(t):>8}  {mem_txt:<24} {spec.name}  [{', '.join(targets)}]")
            if st == "stale":
                log(f"             {S.stale_note(ctx.root, spec, ctx.ledger)}")
    for name in names:
        n_t = sum(1 for r in rows if name in r["targets"])
        d_t = sum(1 for r in rows if name in r["targets"] and r["status"] == "done")
        log(f"[experiments] {name}: {d_t}/{n_t} runs done")
    log(f"[experiments] total {len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in totals.items() if v) +
        f"; remaining ≈ {hms(todo_s)} on this machine, peak memory ≈ {peak:.1f} GiB per device")
    if pending:
        log("[experiments] 'pending LR' runs wait for `lr_select`; a real run does it first")
    return {"runs": rows, "totals": totals, "remaining_s": todo_s, "peak_gib": peak}


def refuse_uncommitted(prof, allow_dirty: bool) -> None:
    """A published profile trains only from committed code: each run records its commit, and a `-dirty`
    one names no code anyone can check out. `allow_dirty` trains anyway; its cells are then marked."""
    from umema_jax.train.outputs import git_commit
    if prof.published and not allow_dirty and git_commit().endswith("-dirty"):
        raise ValueError(f"the checkout has uncommitted changes to tracked files; profile {prof.name!r} "
                         "publishes its runs, so commit first (or pass --allow_dirty: the cells are marked)")


def run_targets(names, profile: str, root: str = "", out: str = "", *, isolation: str = "subprocess",
                max_hours: float | None = None, retry_failed: bool = False, dry_run: bool = False,
                aggregate_only: bool = False, env: dict | None = None, log=None, only=None,
                allow_dirty: bool = False) -> dict:
    """The whole command: expand, (run lr_select first if needed), run, aggregate. Returns a summary.

    `only` (["dataset=semeval", "size=1000", ...]) runs one slice of the targets; the tables still
    show every cell, the ones outside the slice as not computed."""
    log = log or (lambda msg: print(msg, flush=True))
    prof = get_profile(profile)
    root = root or os.path.join(S.REPO_ROOT, "runs", "experiments", profile)
    out = out or os.path.join(S.REPO_ROOT, "results", profile)
    names = expand(names)
    only = parse_only(only)
    ctx = Context(prof, root, out)
    check_only(ctx, names, only)
    if dry_run:
        return {"plan": plan(ctx, names, log, only)}
    summary = {"targets": names, "runs": []}
    deadline = max_hours
    if not aggregate_only:
        refuse_uncommitted(prof, allow_dirty)
        est = Estimator(prof, ctx.root, ctx.ledger)
        waiting = families_waiting(ctx, names, only)
        if waiting:
            log(f"[experiments] learning rates not chosen yet ({', '.join(sorted(waiting))} family): "
                "running their lr_select grid first")
            jobs = lr_jobs(ctx, waiting, only)
            s = execute(list(jobs.values()), ctx.root, est, isolation=isolation, max_hours=deadline,
                        retry_failed=retry_failed, env=env, log=log, ledger=ctx.ledger)
            summary["runs"].append(s)
            render(ctx, ["lr_select"], log)
            ctx = Context(prof, root, out)
            if deadline is not None:
                deadline = max(0.0, deadline - s["elapsed_s"] / 3600)
            if s["stopped"]:
                render(ctx, names, log)
                summary["stopped"] = s["stopped"]
                return summary
        jobs, _ = collect(ctx, names, only)
        s = execute(list(jobs.values()), ctx.root, est, isolation=isolation, max_hours=deadline,
                    retry_failed=retry_failed, env=env, log=log, ledger=ctx.ledger)
        summary["runs"].append(s)
        summary["stopped"] = s["stopped"]
        if "lr_select" not in names and any("lr_select" in t for _, t in jobs.values()):
            render(ctx, ["lr_select"], log)
    summary["outputs"] = render(ctx, names, log)
    return summary
