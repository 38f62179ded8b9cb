"""Targets -> deduplicated run list -> runner -> aggregated outputs (and the dry-run plan)."""
from __future__ import annotations

import os

from umema_jax.experiments import aggregate as A
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


def collect(ctx: Context, names: list) -> tuple[dict, dict]:
    """({key: (spec, [targets])} runnable now, {key: (spec, [targets])} waiting for the LR choice)."""
    jobs, pending = {}, {}
    for name in names:
        t = TARGETS[name]
        cells = t.cells(ctx)
        specs = [s for c in cells for s in c.specs] + (t.extra_specs(ctx) if t.extra_specs else [])
        for s in specs:
            jobs.setdefault(s.key, (s, []))[1].append(name)
        for c in cells:
            for s in c.placeholder:
                pending.setdefault(s.key, (s, []))[1].append(name)
    for key in [k for k in pending if k in jobs]:        # needed now by one target; by another if chosen
        jobs[key][1].extend(f"{t} (if this LR is chosen)" for t in pending.pop(key)[1])
    for v in list(jobs.values()) + list(pending.values()):
        v[1][:] = list(dict.fromkeys(v[1]))
    return jobs, pending


def needs_lr(ctx: Context, names: list) -> bool:
    return any(c.status == A.PENDING_LR for n in names for c in TARGETS[n].cells(ctx))


def render(ctx: Context, names: list, log) -> list:
    written = []
    for name in names:
        t = TARGETS[name]
        results = [A.summarise(c, ctx.root) for c in t.cells(ctx)]
        t.render(ctx, results)
        written.append(os.path.join(ctx.out, f"{name}.md"))
        done = sum(r.n for r in results)
        expected = sum(r.expected for r in results)
        log(f"[experiments] {name}: {done}/{expected} cell values computed -> {written[-1]}")
    return written


def plan(ctx: Context, names: list, log) -> dict:
    """The dry run: every run with its status and estimated time and memory on this machine."""
    est = Estimator(ctx.profile, ctx.root)
    jobs, pending = collect(ctx, names)
    if pending and "lr_select" not in names:     # the LR choice comes first: list its runs too
        first, _ = collect(ctx, ["lr_select"])
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
            st = S.status(ctx.root, spec) if kind == "run" else "pending LR"
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
    for name in names:
        n_t = sum(1 for r in rows if name in r["targets"])
        d_t = sum(1 for r in rows if name in r["targets"] and r["status"] == "done")
        log(f"[experiments] {name}: {d_t}/{n_t} runs done")
    log(f"[experiments] total {len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in totals.items() if v) +
        f"; remaining ≈ {hms(todo_s)} on this machine, peak memory ≈ {peak:.1f} GiB per device")
    if pending:
        log("[experiments] 'pending LR' runs wait for `lr_select`; a real run does it first")
    return {"runs": rows, "totals": totals, "remaining_s": todo_s, "peak_gib": peak}


def run_targets(names, profile: str, root: str = "", out: str = "", *, isolation: str = "subprocess",
                max_hours: float | None = None, retry_failed: bool = False, dry_run: bool = False,
                aggregate_only: bool = False, env: dict | None = None, log=None) -> dict:
    """The whole command: expand, (run lr_select first if needed), run, aggregate. Returns a summary."""
    log = log or (lambda msg: print(msg, flush=True))
    prof = get_profile(profile)
    root = root or os.path.join(S.REPO_ROOT, "runs", "experiments", profile)
    out = out or os.path.join(S.REPO_ROOT, "results", profile)
    names = expand(names)
    ctx = Context(prof, root, out)
    if dry_run:
        return {"plan": plan(ctx, names, log)}
    summary = {"targets": names, "runs": []}
    deadline = max_hours
    if not aggregate_only:
        est = Estimator(prof, ctx.root)
        if needs_lr(ctx, names):
            log("[experiments] learning rates not chosen yet: running lr_select first")
            jobs, _ = collect(ctx, ["lr_select"])
            s = execute(list(jobs.values()), ctx.root, est, isolation=isolation, max_hours=deadline,
                        retry_failed=retry_failed, env=env, log=log)
            summary["runs"].append(s)
            render(ctx, ["lr_select"], log)
            ctx = Context(prof, root, out)
            if deadline is not None:
                deadline = max(0.0, deadline - s["elapsed_s"] / 3600)
            if s["stopped"]:
                render(ctx, names, log)
                summary["stopped"] = s["stopped"]
                return summary
        jobs, _ = collect(ctx, names)
        s = execute(list(jobs.values()), ctx.root, est, isolation=isolation, max_hours=deadline,
                    retry_failed=retry_failed, env=env, log=log)
        summary["runs"].append(s)
        summary["stopped"] = s["stopped"]
        if "lr_select" not in names and any("lr_select" in t for _, t in jobs.values()):
            render(ctx, ["lr_select"], log)
    summary["outputs"] = render(ctx, names, log)
    return summary
