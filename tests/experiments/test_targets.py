"""The experiment runner without training: specs, LR selection, cells, claims, time cap, dry run, outputs.

Runs are faked by writing a results.json into the run directory a spec names
(what launch.py leaves behind), so every aggregation path is checked in
milliseconds; tests/experiments/test_smoke_all.py trains the smoke profile for real.
"""
import json
import os
import re
import shutil

import pytest

from umema_jax.experiments import aggregate as A
from umema_jax.experiments import tables
from umema_jax.experiments import verdicts as V
from umema_jax.experiments import pipeline, runner
from umema_jax.experiments import profiles as P
from umema_jax.experiments import ledger, run_claims
from umema_jax.experiments import specs as S
from umema_jax.experiments import targets as T
from umema_jax.experiments.targets import LR_FILE, ORDER, TARGETS, Context


def fake_results(spec, primary=0.5, dev=0.4, **extra):
    metric = "span_f1" if spec.get("data.name") in ("wnut17", "ploner") else "accuracy"
    test = {metric: primary, "ece": 0.1, "nll": 1.5, "brier": 0.6, "auroc_error_maxprob": 0.77}
    r = {"dataset": spec.get("data.name"), "model": spec.get("model.name"), "method": spec.get("model.method"),
         "seed": spec.get("seed"), "primary_metric": metric, "test": test, "dev": {metric: dev, "ece": 0.1},
         "test_posthoc_ts": {metric: primary, "ece": 0.05, "nll": 1.4, "brier": 0.59}, "best_step": 5, "steps": 10,
         "params": {"trainable": 100, "total": 1000}, "memory": {"peak_rss_mb": 2048.0},
         "mean_train_time_per_epoch_s": 30.0, "wall_time_s": 100.0}
    r.update(extra)
    return r


class FixedEstimate:
    """The runner's estimator with one fixed duration per run (seconds)."""

    def __init__(self, seconds=1.0):
        self.seconds = seconds

    def time_s(self, spec):
        return self.seconds


def write_run(root, spec, results):
    d = S.workdir(root, spec)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(S.load_config(spec).to_dict(), f)          # what launch.py records


# The paper's four variants only: these tests check how cells read while baselines are missing, whichever
# baselines the code implements today.
PAPER_ONLY = frozenset(m.method for m in P.ABLATION)


def choose(tmp_path, profile="cpu", lr=2e-4):
    """A context whose adapter LR has been chosen (as lr_select would record it); baselines unimplemented."""
    prof = P.get_profile(profile)
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    sel = {b.name: {"adapter": {"grid": list(prof.lr_grid), "chosen": lr, "complete": True}} for b in prof.backbones}
    (out / LR_FILE).write_text(json.dumps(sel))
    return Context(prof, str(tmp_path / "runs"), str(out), implemented=PAPER_ONLY)


def test_spec_key_is_the_overrides_not_their_order_nor_output_keys():
    a = S.make_spec("configs/semeval.py", {"seed": 1, "optim.learning_rate": 1e-3})
    b = S.make_spec("configs/semeval.py", {"optim.learning_rate": 1e-3}, {"seed": 1})
    c = S.make_spec("configs/semeval.py", {"optim.learning_rate": 1e-3, "seed": 1, "output.tensorboard": False})
    assert a.key == b.key == c.key
    assert S.make_spec("configs/semeval.py", {"seed": 2, "optim.learning_rate": 1e-3}).key != a.key
    assert "--config.optim.learning_rate=0.001" in a.launch_args("/w") and a.launch_args("/w")[-1] == "--workdir=/w"
    config = S.load_config(a)
    assert config.seed == 1 and config.optim.learning_rate == 1e-3 and config.data.name == "semeval"
    with pytest.raises(KeyError, match="unknown config key"):
        S.load_config(S.make_spec("configs/semeval.py", {"train.no_such_key": 1}))


def test_every_profile_expands_every_target_and_resolves_its_configs(tmp_path):
    for name in P.PROFILES:
        ctx = choose(tmp_path / name, name)
        jobs, pending = pipeline.collect(ctx, ORDER)
        assert jobs and not pending, name
        for spec, _ in jobs.values():
            if spec.kind == "train":
                S.load_config(spec)          # every override names a real key


def test_lr_select_reads_only_the_lora_baselines_dev_score(tmp_path):
    ctx = Context(P.get_profile("cpu"), str(tmp_path / "runs"), str(tmp_path / "out"), implemented=PAPER_ONLY)
    cells = TARGETS["lr_select"].cells(ctx)
    adapter = [c for c in cells if c.labels["family"] == "adapter"]
    assert [c.labels["lr"] for c in adapter] == list(ctx.profile.lr_grid)
    for c in adapter:
        assert c.metric.startswith("dev.") and [s.get("model.method") for s in c.specs] == ["lora"]
        assert c.specs[0].get("data.name") == "semeval" and c.specs[0].get("data.train_size") == 1000
        assert c.specs[0].get("seed") == 0
    # dev peaks at 1e-3 (tie with 2e-3 -> the lower), test would have picked 5e-3
    dev = {1e-3: 0.6, 2e-3: 0.6}
    curves = {1e-3: [0.4, 0.6, 0.58], 2e-3: [0.5, 0.55, 0.6], 5e-3: [0.1, 0.2, 0.3]}
    for c in adapter:
        lr = c.labels["lr"]
        history = [{"step": 10 * (i + 1), "dev_primary": v} for i, v in enumerate(curves[lr])]
        write_run(ctx.root, c.specs[0], fake_results(c.specs[0], primary=0.9 if lr == 5e-3 else 0.1,
                                                     dev=dev.get(lr, 0.3), dev_history=history))
    pipeline.render(ctx, ["lr_select"], log=lambda m: None)
    sel = json.loads((tmp_path / "out" / LR_FILE).read_text())["smollm2-135m"]
    assert sel["adapter"]["chosen"] == 1e-3 and sel["full_weight"]["status"] == "not implemented"
    assert sel["adapter"]["converged"] is True              # best at evaluation 2 of 3
    md = (tmp_path / "out" / "lr_select.md").read_text()
    assert "| SmolLM2-135M | adapter | 0.002 | 50.0 55.0 60.0 | 3 of 3 | no |" in md
    assert "| SmolLM2-135M | adapter | 0.001 | 40.0 60.0 58.0 | 2 of 3 | yes |" in md
    assert T.converged([0.30, 0.597, 0.598, 0.60]) and not T.converged([0.30, 0.59, 0.598, 0.60])
    ctx2 = Context(P.get_profile("cpu"), ctx.root, ctx.out)
    assert ctx2.lr(ctx.profile.backbones[0], "adapter") == 1e-3
    md = (tmp_path / "out" / "table2.md")
    pipeline.render(ctx2, ["table2"], log=lambda m: None)
    assert "**0.001**" in md.read_text()


def test_no_table_uses_a_learning_rate_other_than_the_selected_one(tmp_path):
    unchosen = Context(P.get_profile("cpu"), str(tmp_path / "a"), str(tmp_path / "a_out"))
    for name in ("table3", "table4", "table5", "table6", "table7", "fig5", "fig6", "fig7"):
        cells = TARGETS[name].cells(unchosen)
        assert not [s for c in cells for s in c.specs], name           # nothing runs before lr_select
        assert any(c.status == A.PENDING_LR for c in cells), name
    ctx = choose(tmp_path, lr=5e-4)
    for name in ("table3", "table4", "table5", "table6", "table7", "fig5", "fig6", "fig7"):
        lrs = {s.get("optim.learning_rate") for c in TARGETS[name].cells(ctx) for s in c.specs}
        assert lrs == {5e-4}, name
    # a chosen LR recorded on another grid is stale: treated as not chosen
    (tmp_path / "out" / LR_FILE).write_text(json.dumps({"smollm2-135m": {"adapter": {"grid": [1.0], "chosen": 1.0}}}))
    assert Context(P.get_profile("cpu"), ctx.root, ctx.out).lr(ctx.profile.backbones[0], "adapter") is None


def test_cells_say_what_is_missing_and_baselines_fill_in_when_implemented(tmp_path):
    ctx = choose(tmp_path)
    cells = TARGETS["table5"].cells(ctx)
    central = next(c for c in cells if c.labels == {"backbone": "SmolLM2-135M", "method": "LoRA",
                                                     "dataset": "SemEval", "size": "n=1000"})
    assert [dict(s.overrides)["seed"] for s in central.specs] == [0, 1, 2, 3, 4]   # the central comparison
    cell = next(c for c in cells if c.labels == {"backbone": "SmolLM2-135M", "method": P.UM.label,
                                                  "dataset": "SemEval", "size": "n=1000"})
    assert len(cell.specs) == 3
    assert A.summarise(cell, ctx.root).text() == "– (0/3 runs)"
    write_run(ctx.root, cell.specs[0], fake_results(cell.specs[0], primary=0.30))
    write_run(ctx.root, cell.specs[1], fake_results(cell.specs[1], primary=0.34))
    r = A.summarise(cell, ctx.root)
    assert r.text() == "32.00 ± 2.83 (2/3 seeds)" and r.values == {0: 0.30, 1: 0.34}
    write_run(ctx.root, cell.specs[2], fake_results(cell.specs[2], primary=0.32))
    assert A.summarise(cell, ctx.root).text() == "32.00 ± 2.00"
    # a key the run does not have (e.g. telemetry added later) reads n/a, never a crash or a silent drop
    missing = A.Cell(cell.labels, specs=cell.specs, metric="test.error_auroc")
    assert A.summarise(missing, ctx.root).text() == "n/a (no error_auroc)"

    t3 = TARGETS["table3"].cells(ctx)
    lisa = [c for c in t3 if c.labels["method"] == "LISA"]
    assert lisa and all(c.status == A.NOT_IMPLEMENTED and not c.specs for c in lisa)
    # the day a baseline lands under one of its names, its cells expand to runs with no runner change
    ctx2 = Context(ctx.profile, ctx.root, ctx.out, implemented=PAPER_ONLY | {"milora", "lisa"})
    t3 = TARGETS["table3"].cells(ctx2)
    milora = [c for c in t3 if c.labels["method"] == "MiLoRA"]
    assert all(c.specs and c.specs[0].get("model.method") == "milora" for c in milora)
    assert all(s.get("optim.learning_rate") == 2e-4 for c in milora for s in c.specs)       # adapter family LR
    assert all(c.status == A.PENDING_LR for c in t3 if c.labels["method"] == "LISA")        # its own grid first
    fw = [c for c in TARGETS["lr_select"].cells(ctx2) if c.labels["family"] == "full_weight"]
    assert [c.labels["lr"] for c in fw] == list(ctx.profile.full_weight_lr_grid)
    assert all(c.specs[0].get("model.method") == "lisa" for c in fw)


def test_claim_verdicts_use_paired_seeds_and_holm():
    def res(values, metric="test.accuracy"):
        return A.CellResult(A.Cell({}, metric=metric), dict(enumerate(values)), expected=len(values))

    def verdict(*pairs, mode="every", higher=True):
        return V.combine([V.compare(a, b, higher) for a, b in pairs], mode)[0]
    assert verdict((res([0.50, 0.51, 0.52]), res([0.40, 0.41, 0.42]))) == V.SUPPORTS
    assert verdict((res([0.40, 0.41, 0.42]), res([0.50, 0.51, 0.52]))) == V.CONTRADICTS
    assert verdict((res([0.40, 0.50, 0.60]), res([0.45, 0.50, 0.55]))) == V.CANNOT_TELL
    # The seeds pair up: a steady 1-2 point gain is found although the seeds spread over 20 points, which
    # unpaired means would call noise (t = 5.0 on 2 df, p = 0.038) ...
    assert verdict((res([0.52, 0.62, 0.72]), res([0.50, 0.60, 0.71]))) == V.SUPPORTS
    # ... and an unsteady one is not (d = 2, 2, -1 points: t = 0.76)
    assert verdict((res([0.52, 0.62, 0.70]), res([0.50, 0.60, 0.71]))) == V.CANNOT_TELL
    assert verdict((res([0.9]), res([0.1]))) == V.CANNOT_TELL                  # one seed: no interval
    assert "1 seed" in V.compare(res([0.9]), res([0.1]))["detail"]
    assert verdict((res([0.1, 0.1], "test.ece"), res([0.2, 0.2], "test.ece")), higher=False) == V.SUPPORTS
    assert V.compare(res([]), res([0.1]))["verdict"] == V.NOT_COMPUTED
    # Holm: p = 0.02 alone supports; as one of three cells (the others null) it no longer does.
    d = [0.0462, 0.0505, 0.0566]                                             # mean 0.0511, p ~ 0.0016
    assert verdict((res(d), res([0, 0, 0]))) == V.SUPPORTS
    lone = V.compare(res([0.02, 0.02, 0.01]), res([0, 0, 0]))                # p = 0.038
    assert 0.03 < lone["p"] < 0.05
    assert V.combine([dict(lone)])[0] == V.SUPPORTS
    flat = V.compare(res([0.5, -0.5, 0.1]), res([0, 0, 0]))
    assert V.combine([dict(lone), dict(flat), dict(flat)])[0] == V.CANNOT_TELL
    comps = [dict(lone), dict(flat)]
    V.combine(comps, "most")
    assert comps[0]["p_holm"] == pytest.approx(2 * lone["p"]) and comps[0]["verdict"] == V.CANNOT_TELL
    strong = V.compare(res([0.50, 0.51, 0.52]), res([0.40, 0.41, 0.42]))
    assert V.combine([dict(strong), dict(strong)])[0] == V.SUPPORTS
    assert V.combine([dict(strong), V.compare(res([]), res([0.1]))])[0] == V.CANNOT_TELL   # "every" needs all
    assert V.combine([V.compare(res([]), res([0.1]))])[0] == V.NOT_COMPUTED


def test_seeds_pair_only_on_one_matmul_path_and_tables_name_the_hosts():
    def res(values, paths, cpu="cpu A"):
        hosts = {s: A.Host(cpu, p, f"runs/{cpu}-{p}-{s}") for s, p in enumerate(paths)}
        return A.CellResult(A.Cell({}, metric="test.accuracy"), dict(enumerate(values)), expected=len(values),
                            hosts=hosts)
    a, b = [0.50, 0.51, 0.52], [0.40, 0.41, 0.42]
    same = V.compare(res(a, ["xla"] * 3), res(b, ["xla"] * 3, cpu="cpu B"))    # CPUs may differ within a pair
    assert same["n_seeds"] == 3 and "unpaired" not in same["detail"]
    mixed = V.compare(res(a, ["xla", "onednn", "xla"]), res(b, ["xla"] * 3))
    assert mixed["n_seeds"] == 2 and "1 seed(s) left unpaired (different matmul paths)" in mixed["detail"]
    assert V.compare(res(a, ["onednn"] * 3), res(b, ["xla"] * 3))["verdict"] == V.NOT_COMPUTED
    derived = A.CellResult(A.Cell({}, metric="test.accuracy"), dict(enumerate(b)), expected=3)   # no hosts
    assert V.compare(res(a, ["onednn"] * 3), derived)["n_seeds"] == 3
    line = A.hosts_line([res(a, ["xla"] * 3), res(b, ["xla", "xla", "onednn"], cpu="cpu B")])
    assert line == "3 on cpu A (xla matmul path); 1 on cpu B (onednn matmul path); 2 on cpu B (xla matmul path)"


def test_tables_hold_the_runs_numbers_and_state_claims(tmp_path):
    ctx = choose(tmp_path)
    accs = {"lora": [0.30, 0.31, 0.32, 0.29, 0.33], "lora+um": [0.33, 0.34, 0.35], "lora+ema": [0.31, 0.30, 0.32],
            "full": [0.40, 0.41, 0.42, 0.39, 0.43]}          # LoRA and Ours: the central comparison's 5 seeds
    for c in TARGETS["table5"].cells(ctx):
        if c.labels["dataset"] == "SemEval" and c.labels["size"] == "n=1000":
            for s in c.specs:
                write_run(ctx.root, s, fake_results(s, primary=accs[s.get("model.method")][s.get("seed")],
                                                    test_posthoc_ts={"ece": 0.01, "nll": 1.0, "brier": 0.5}))
    pipeline.render(ctx, ["table5", "table7", "table3"], log=lambda m: None)
    md = (tmp_path / "out" / "table5.md").read_text()
    assert "| SmolLM2-135M | Ours (LoRA+UM+EMA) |" in md and "41.00 ± 1.58 |" in md
    assert "– (0/3 runs)" in md                       # 20News and the smaller sizes are not computed yet
    side = json.loads((tmp_path / "out" / "table5.json").read_text())
    cell = next(c for c in side["cells"] if c["labels"]["method"] == "+UM" and c["labels"]["size"] == "n=1000"
                and c["labels"]["dataset"] == "SemEval")
    assert cell["per_seed"] == {"0": 0.33, "1": 0.34, "2": 0.35} and cell["mean"] == pytest.approx(0.34)
    assert side["command"] == "python -m umema_jax.experiments table5 --profile=cpu" and side["commit"]
    assert side["deviations"] == list(ctx.profile.deviations)
    claims = {c["id"]: c for c in side["claims"]}
    assert claims["C8c"]["verdict"] == V.CANNOT_TELL          # Ours > +UM holds where computed, cells missing
    assert "3 support" in claims["C8c"]["detail"] or "1 support" in claims["C8c"]["detail"]
    t7 = (tmp_path / "out" / "table7.md").read_text()
    ts_row = "| LoRA + post-hoc TS | – (0/3 runs) | – (0/3 runs) | – (0/3 runs) | – (0/3 runs) | 1.00 ± 0.00 | " \
             "1.0000 ± 0.0000 | 0.5000"
    assert ts_row in t7                              # 20News not computed; SemEval read from test_posthoc_ts
    assert "| SmolLM2-135M | +UM (extra) | – (0/3 runs) | – (0/3 runs) | – (0/3 runs) | – (0/3 runs) | 10.00 ± " \
        in t7                                        # the ablation's other rows, with the primary metric
    auroc = t7.split("Error detection")[1]
    assert "| SmolLM2-135M | Ours (LoRA+UM+EMA) |" in auroc and "n/a (no auroc_error_u_bar)" in auroc
    assert "| SmolLM2-135M | LoRA | – (0/3 runs) |  |  |  | 77.00 ± 0.00 |" in auroc   # LoRA: max-prob only
    t3 = (tmp_path / "out" / "table3.md").read_text()
    assert "| SmolLM2-135M | LISA | not implemented |" in t3
    # table 3's second part: each method at the selection cell with its LR, calibration and cost (same runs)
    profile = t3.split("Each method on SemEval")[1].split("## Claims")[0]
    assert "| backbone | method | lr | Acc | ECE | NLL | ECE after TS | NLL after TS | trainable params | " \
        "s / epoch |" in profile
    assert "| SmolLM2-135M | LoRA | 0.0002 | 31.00 ± 1.58 | 10.00 ± 0.00 | 1.5000 ± 0.0000 | 1.00 ± 0.00 | " \
        "1.0000 ± 0.0000 | 100 ± 0 | 30 ± 0 |" in profile
    assert "| SmolLM2-135M | LISA | – | not implemented |" in profile
    assert "of 6 comparisons" in t3                  # C5: Ours vs LoRA in 2 datasets x 3 sizes, accuracy part only


def test_time_cap_stops_between_runs_and_the_next_call_continues(tmp_path, monkeypatch):
    ctx = choose(tmp_path)
    jobs, _ = pipeline.collect(ctx, ["table5"])
    jobs = list(jobs.values())[:3]
    ran, clock = [], [0.0]

    def fake_run(spec, root, isolation="subprocess", env=None):
        clock[0] += 3600.0                      # each run takes an hour
        ran.append(spec.key)
        write_run(root, spec, fake_results(spec))
        return 0, ""

    monkeypatch.setattr(runner, "run_one", fake_run)
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    logs = []
    s = runner.execute(jobs, ctx.root, FixedEstimate(3600.0), max_hours=1.5, log=logs.append)
    assert s["ran"] == 1 and "time cap" in s["stopped"]            # the first run always starts
    assert any("run 1/3" in m and "ETA" in m for m in logs)
    s = runner.execute(jobs, ctx.root, FixedEstimate(3600.0), max_hours=2.5, log=logs.append)
    assert s["ran"] == 2 and s["already_done"] == 1 and not s["stopped"]
    # all finished: skipped
    assert runner.execute(jobs, ctx.root, FixedEstimate(3600.0), log=logs.append)["ran"] == 0
    assert len(set(ran)) == 3


def test_two_runners_on_one_root_train_each_run_once_and_take_over_stale_claims(tmp_path, monkeypatch):
    ctx = choose(tmp_path)
    jobs = list(pipeline.collect(ctx, ["table5"])[0].values())[:4]
    specs = [spec for spec, _ in jobs]
    # a runner killed with -9 left a claim behind on run 0: its pid no longer exists
    dead = S.workdir(ctx.root, specs[0])
    os.makedirs(dead)
    with open(os.path.join(dead, run_claims.CLAIM_FILE), "w") as f:
        json.dump({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}, f)
    trained, nested, inside = [], [], []

    def fake_run(spec, root, isolation="subprocess", env=None):
        trained.append(spec.key)
        assert json.load(open(os.path.join(S.workdir(root, spec), run_claims.CLAIM_FILE)))["pid"] == os.getpid()
        if not inside:    # while this run trains, a second runner works through the same list
            inside.append(True)
            nested.append(runner.execute(jobs, root, FixedEstimate(), log=lambda m: None))
        write_run(root, spec, fake_results(spec))
        return 0, ""

    monkeypatch.setattr(runner, "run_one", fake_run)
    # the nested runner is this same process: pretend it is another live one holding run 0
    real_claim = run_claims.claim
    monkeypatch.setattr(run_claims, "claim", lambda root, spec: {"pid": 1, "host": "other"} if inside and not nested and
                        spec.key == trained[0] else real_claim(root, spec))
    first = runner.execute(jobs, ctx.root, FixedEstimate(), log=lambda m: None)
    assert trained[0] == specs[0].key                         # the stale claim was taken over
    assert sorted(trained) == sorted(s.key for s in specs)    # every run trained exactly once
    assert nested[0]["claimed_elsewhere"] == 1 and nested[0]["ran"] == 3
    assert first["ran"] == 1                                  # the rest were finished by the other runner
    assert not any(os.path.exists(os.path.join(S.workdir(ctx.root, s), run_claims.CLAIM_FILE)) for s in specs)
    # a live claim from another process is respected
    live = S.workdir(ctx.root, specs[1])
    with open(os.path.join(live, run_claims.CLAIM_FILE), "w") as f:
        json.dump({"pid": os.getppid(), "host": __import__("socket").gethostname()}, f)
    assert real_claim(ctx.root, specs[1])["pid"] == os.getppid()


FAKE_LAUNCH = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
open("started", "w").write(str(os.getsid(0)))
while not got:
    time.sleep(0.01)
time.sleep(0.2)                          # a second forwarded signal would arrive here
open("signals", "w").write(str(len(got)))
sys.exit(130)                            # launch.py: checkpointed, interrupted
"""


def test_sigterm_to_a_background_runner_checkpoints_the_run_and_stops(tmp_path, monkeypatch):
    import signal
    import threading
    import time
    ctx = choose(tmp_path)
    jobs = list(pipeline.collect(ctx, ["table5"])[0].values())[:2]
    fake_repo = tmp_path / "repo"
    fake_repo.mkdir()
    (fake_repo / "launch.py").write_text(FAKE_LAUNCH)
    monkeypatch.setattr(runner, "REPO_ROOT", str(fake_repo))
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)      # as `nohup ... &` leaves it
    try:
        def terminate():
            while not (fake_repo / "started").exists():
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=terminate, daemon=True).start()

        s = runner.execute(jobs, ctx.root, FixedEstimate(), log=lambda m: None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN             # handlers restored
    finally:
        signal.signal(signal.SIGINT, old)
    assert "interrupted" in s["stopped"] and s["ran"] == 0 and not s["failed"]
    assert (fake_repo / "signals").read_text() == "1"                        # exactly one SIGINT forwarded
    assert int((fake_repo / "started").read_text()) != os.getsid(0)          # own session: no terminal ^C
    spec = jobs[0][0]
    assert S.status(ctx.root, spec) != "failed"                              # resumable, not failed
    assert not os.path.exists(os.path.join(S.workdir(ctx.root, spec), run_claims.CLAIM_FILE))
    assert not os.path.exists(S.workdir(ctx.root, jobs[1][0]))              # the runner stopped there


def test_failed_runs_are_recorded_and_skipped_unless_retried(tmp_path, monkeypatch):
    ctx = choose(tmp_path)
    jobs = list(pipeline.collect(ctx, ["table5"])[0].values())[:1]
    spec = jobs[0][0]
    calls = []

    def failing(spec, workdir, env):
        calls.append(1)
        return 3, "non-finite loss"
    monkeypatch.setattr(runner, "_train_subprocess", failing)

    s = runner.execute(jobs, ctx.root, FixedEstimate(), log=lambda m: None)
    assert s["failed"][0]["rc"] == 3 and S.status(ctx.root, spec) == "failed"
    assert runner.execute(jobs, ctx.root, FixedEstimate(), log=lambda m: None)["ran"] == 0
    assert runner.execute(jobs, ctx.root, FixedEstimate(), retry_failed=True, log=lambda m: None)["ran"] == 1
    cell = next(c for c in TARGETS["table5"].cells(ctx) if spec in c.specs)
    assert "failed" in A.summarise(A.Cell(cell.labels, specs=[spec]), ctx.root).text()


def test_dry_run_lists_lr_selection_first_with_time_and_memory(tmp_path):
    logs = []
    out = pipeline.run_targets(["table5"], "cpu", str(tmp_path / "runs"), str(tmp_path / "out"), dry_run=True,
                               log=logs.append)
    rows = out["plan"]["runs"]
    assert rows[0]["status"] == "todo" and "lr_select (first)" in rows[0]["targets"]
    cpu = P.get_profile("cpu")
    # table5 holds adapter-family methods only: it waits for the LoRA grid, not the full-weight one
    assert sum(r["status"] == "todo" for r in rows) == len(cpu.lr_grid)
    assert all(r["run"].split("_")[2] == "lora" for r in rows if r["status"] == "todo")
    assert sum(r["status"] == "pending LR" for r in rows) == 4 * 2 * 3 * 3 - 1 + 2 * 2   # one coincides with lr_select's; LoRA, Ours 5 seeds
    seeds = [int(re.search(r"_s(\d+)_lr", r["run"]).group(1)) for r in rows if r["status"] == "pending LR"]
    assert seeds == sorted(seeds)                  # seed-major: a stopped target has whole seeds
    sem = next(r for r in rows if r["run"].startswith("semeval_smollm2-135m_full_n1000_s0"))
    assert 20 * 60 < sem["est_s"] < 2 * 60 * 60 and 0.5 < sem["mem_gib"] < 16     # 10 epochs of 63 steps
    assert any("remaining" in m for m in logs) and not os.path.exists(tmp_path / "runs")


def test_only_runs_one_slice_and_the_table_marks_the_rest(tmp_path, monkeypatch):
    ctx = choose(tmp_path)
    ran = []

    def fake_run(spec, root, isolation="subprocess", env=None):
        ran.append(spec)
        write_run(root, spec, fake_results(spec))
        return 0, ""

    monkeypatch.setattr(runner, "run_one", fake_run)
    monkeypatch.setattr(P, "implemented_methods", lambda: PAPER_ONLY)
    pipeline.run_targets(["table5"], "cpu", ctx.root, ctx.out, log=lambda m: None, allow_dirty=True,
                         only=["dataset=semeval", "size=1000", "seed=0", "seed=1"])
    got = {(s.get("data.name"), s.get("data.train_size"), s.get("seed"), s.get("model.method")) for s in ran}
    assert got == {("semeval", 1000, seed, m) for seed in (0, 1) for m in ("lora", "lora+um", "lora+ema", "full")}
    assert [s.get("seed") for s in ran] == sorted(s.get("seed") for s in ran)
    side = json.loads((tmp_path / "out" / "table5.json").read_text())
    for c in side["cells"]:           # the slice's cells hold 2 of 3 seeds; every other cell says it is missing
        inside = c["labels"]["dataset"] == "SemEval" and c["labels"]["size"] == "n=1000"
        assert (c["status"], c["n"]) == (("partial", 2) if inside else ("missing", 0)), c["labels"]
    assert "(0/3 runs)" in (tmp_path / "out" / "table5.md").read_text()
    with pytest.raises(ValueError, match="no run of table5 has the key data.colour"):
        pipeline.run_targets(["table5"], "cpu", ctx.root, ctx.out, dry_run=True, only=["data.colour=red"])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        pipeline.run_targets(["table5"], "cpu", ctx.root, ctx.out, dry_run=True, only=["seed"])


def test_published_profiles_train_only_from_committed_code(tmp_path, monkeypatch):
    from umema_jax.train import outputs
    monkeypatch.setattr(outputs, "git_commit", lambda: "0123abc-dirty")
    monkeypatch.setattr(runner, "run_one", lambda *a, **k: pytest.fail("a run started from uncommitted code"))
    with pytest.raises(ValueError, match="uncommitted changes.*--allow_dirty"):
        pipeline.run_targets(["table5"], "cpu", str(tmp_path / "runs"), str(tmp_path / "out"), log=lambda m: None)
    pipeline.run_targets(["table5"], "cpu", str(tmp_path / "runs"), str(tmp_path / "out"), dry_run=True,
                         log=lambda m: None)                      # a dry run trains nothing: allowed


def test_paper_profile_memory_comes_from_shapes():
    from umema_jax.experiments.estimate import run_memory_gib
    prof = P.get_profile("paper")
    ctx = Context(prof, "/nonexistent", "/nonexistent")
    spec = next(c for c in TARGETS["lr_select"].cells(ctx) if c.labels["backbone"] == "LLaMA3-8B").specs[0]
    gib = run_memory_gib(spec, prof.datasets["semeval"])
    # bf16 frozen 7.5 B params FSDP over 2 devices (~7 GiB each) + LoRA state + remat activations
    assert 7.0 < gib < 12.0


def test_fig7_reads_benchmark_step_times(tmp_path):
    ctx = choose(tmp_path)
    (bench,) = TARGETS["fig7"].extra_specs(ctx)
    assert "--compare" in bench.args and "--backbone=smollm2-135m" in bench.args
    d = S.workdir(ctx.root, bench)
    os.makedirs(d)
    with open(os.path.join(d, S.BENCH_FILE), "w") as f:
        for m, t in (("lora", 1.0), ("lora+um", 1.05), ("lora+ema", 1.06), ("full", 1.1)):
            rounds = [t * (1 + w) for w in (0.01, -0.02, 0.0, 0.015, -0.01, 0.005)]   # round-to-round drift,
            f.write(json.dumps({"method": m, "step_s": t, "trainable_params": 1000, "relative_step_time": t,
                                "step_s_per_round": rounds, "peak_rss_mb": 3000.0}) + "\n")   # shared by all
    open(os.path.join(d, "done"), "w").close()
    pipeline.render(ctx, ["fig7"], log=lambda m: None)
    md = (tmp_path / "out" / "fig7.md").read_text()
    assert "| SmolLM2-135M | +UM | 1,000 | 1.0500 | 1.050 | 66.2 | 3000 |" in md   # 63 steps per epoch
    assert "| SmolLM2-135M | LISA | not implemented |" in md
    side = json.loads((tmp_path / "out" / "fig7.json").read_text())
    c15 = {c["id"]: c for c in side["claims"]}["C15"]
    assert c15["verdict"] == V.SUPPORTS and "+EMA / +UM step time x1.010" in c15["detail"]
    assert os.path.getsize(tmp_path / "out" / "fig7.png") > 0
    # +EMA within round noise of +UM (a 1 % median gap against 3 % swings that do not pair up): cannot tell
    records = [json.loads(line) for line in open(os.path.join(d, S.BENCH_FILE))]
    ema = next(r for r in records if r["method"] == "lora+ema")
    ema["step_s_per_round"] = [1.06 * (1 + w) for w in (-0.03, 0.03, 0.02, -0.02, 0.01, -0.01)]
    with open(os.path.join(d, S.BENCH_FILE), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    pipeline.render(ctx, ["fig7"], log=lambda m: None)
    side = json.loads((tmp_path / "out" / "fig7.json").read_text())
    assert {c["id"]: c["verdict"] for c in side["claims"]}["C15"] == V.CANNOT_TELL

    # the benchmark is in the run ledger: a clone without the run directory renders the same figure
    entry = json.load(open(S.ledger_path(ctx.ledger, bench)))
    assert entry["records"] == records and entry["command"].startswith("python -m umema_jax.bench --backbone=")
    md = (tmp_path / "out" / "fig7.md").read_text()
    shutil.rmtree(ctx.root)
    assert S.finished(ctx.root, bench, ctx.ledger) and not S.finished(ctx.root, bench)
    pipeline.render(ctx, ["fig7"], log=lambda m: None)
    assert (tmp_path / "out" / "fig7.md").read_text() == md


def test_estimates_count_aloras_scoring_and_the_cpu_profile_scores_to_first_order(tmp_path):
    from umema_jax.experiments import estimate as E
    from umema_jax.experiments import targets as T
    ctx = Context(P.get_profile("cpu"), str(tmp_path / "runs"), str(tmp_path / "out"))
    b, setup = ctx.profile.backbones[0], ctx.profile.dataset("semeval")
    spec = lambda method, extra=(): T.train_spec(ctx, b, setup, method, 1000, 0, 5e-3, extra)   # noqa: E731
    assert spec("alora").get("methods.alora.scoring") == "taylor" and spec("lora").get("methods.alora.scoring") is None
    lora, taylor = E.run_time_s(spec("lora"), setup, 60), E.run_time_s(spec("alora"), setup, 60)
    ablation = E.run_time_s(spec("alora", (("methods.alora.scoring", "ablation"),)), setup, 60)
    assert lora < taylor < 1.2 * lora                 # 8 rounds x 2 backward passes of 32 examples
    assert ablation > 4 * lora                        # 8 rounds x 2 x 481 forward passes of 32 examples


def test_estimates_are_rescaled_by_the_ledgers_runs_on_this_cpu_first(tmp_path, monkeypatch):
    """A fresh machine has no run directories: the ledger's measured wall times rescale its estimates, and
    runs recorded on this host's CPU model outrank those of other hosts."""
    from umema_jax import runtime
    from umema_jax.experiments import estimate as E
    ctx = choose(tmp_path)
    spec = _lora_seed0(ctx)
    base = E.Estimator(ctx.profile, ctx.root, ctx.ledger).time_s(spec)
    monkeypatch.setattr(runtime, "cpu_model", lambda: "this cpu")

    def ledger_run(seed, cpu, factor):
        s = S.RunSpec(spec.config_file, tuple((k, seed if k == "seed" else v) for k, v in spec.overrides))
        entry = {"run": s.name, "config": S.load_config(s).to_dict(),
                 "results": fake_results(s, wall_time_s=factor * base, numerics={"cpu": cpu})}
        os.makedirs(ctx.ledger, exist_ok=True)
        json.dump(entry, open(os.path.join(ctx.ledger, f"{s.name}.json"), "w"))
    ledger_run(1, "other cpu", 3.0)
    assert E.Estimator(ctx.profile, ctx.root, ctx.ledger).time_s(spec) == pytest.approx(3.0 * base)
    assert E.Estimator(ctx.profile, ctx.root).time_s(spec) == pytest.approx(base)      # no ledger: analytic
    ledger_run(2, "this cpu", 1.5)
    assert E.Estimator(ctx.profile, ctx.root, ctx.ledger).time_s(spec) == pytest.approx(1.5 * base)


def test_readme_blocks_show_the_runners_tables_and_verdicts(tmp_path):
    ctx = choose(tmp_path)
    for spec, _ in pipeline.collect(ctx, ["table5"])[0].values():
        if spec.get("data.name") == "semeval" and spec.get("data.train_size") == 1000:
            write_run(ctx.root, spec, fake_results(spec, primary=0.6543))
    pipeline.render(ctx, ["table5"], log=lambda m: None)
    readme = tmp_path / "README.md"
    intro, outro = "# Title\n\nhand-written text\n\n", "\nmore text\n<!-- experiments:paper/table5 -->\nkept\n" \
                                                      "<!-- /experiments -->\n"
    readme.write_text(intro + "<!-- experiments:cpu/table5 -->\nstale 12.34\n<!-- /experiments -->\n"
                      "<!-- experiments:cpu/table6 -->\nnot rendered yet\n<!-- /experiments -->\n" + outro)
    assert pipeline.sync_readme(ctx.out, "cpu", str(readme)) == ["table5"]
    text = readme.read_text()
    block = text.split("<!-- experiments:cpu/table5 -->\n")[1].split("<!-- /experiments -->")[0]
    table = (tmp_path / "out" / "table5.md").read_text()
    assert "65.43" in block and "stale" not in block and "Claims" in block and "SemEval n=1000" in block
    assert "(0/3 runs)" not in block and "left out here" in block          # the empty grid is compacted
    compact = tables.compact_tables(table.splitlines())
    assert all(line in compact for line in block.splitlines() if line.startswith("| "))   # the output's own rows
    assert "python -m umema_jax.experiments table5 --profile=cpu" in block and "out/table5.md" in block
    assert text.startswith(intro) and text.endswith(outro) and "not rendered yet" in text   # the rest untouched
    pipeline.sync_readme(ctx.out, "cpu", str(readme))
    assert readme.read_text() == text                                                   # idempotent
    # a later render at another commit with the same numbers leaves the README alone; new numbers do not
    sidecar = tmp_path / "out" / "table5.json"
    side = json.loads(sidecar.read_text())
    side["commit"] = "f" * 40
    sidecar.write_text(json.dumps(side))
    pipeline.sync_readme(ctx.out, "cpu", str(readme))
    assert readme.read_text() == text
    side["summary_markdown"] = side["summary_markdown"].replace("65.43", "66.66")
    sidecar.write_text(json.dumps(side))
    pipeline.sync_readme(ctx.out, "cpu", str(readme))
    assert "66.66" in readme.read_text() and "ffffffffffff" in readme.read_text()
    # a target's plot lies beside its tables: the block points there from the page's own folder
    side["summary_markdown"] += "\n![fig](fig.png)\n"
    sidecar.write_text(json.dumps(side))
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "RESULTS.md"
    page.write_text("<!-- experiments:cpu/table5 -->\n<!-- /experiments -->\n")
    pipeline.sync_readme(ctx.out, "cpu", str(page))
    assert "![fig](../out/fig.png)" in page.read_text()


def test_compact_tables_leave_out_what_has_no_value():
    lines = ["intro", "| backbone | method | a | b | c |", "|---|---|---|---|---|",
             "| M | LoRA | 1.00 | – (0/3 runs) | – (LR not chosen) |",
             "| M | Ours | – (0/3 runs) | – (0/3 runs) | – (0/3 runs) |",
             "| M | UM | 2.00 (1/3 seeds) |  | – (0/1 runs) |", "", "| backbone | method | x |", "|---|---|---|",
             "| M | LISA | – (0/1 runs) |", "outro"]
    assert tables.compact_tables(lines) == [
        "intro", "| backbone | method | a |", "|---|---|---|", "| M | LoRA | 1.00 |", "| M | UM | 2.00 (1/3 seeds) |",
        "outro", "", "(Rows and columns with no computed value yet are left out here.)"]
    full = ["| backbone | method | a |", "|---|---|---|", "| M | LoRA | 1.00 |"]
    assert tables.compact_tables(full) == full                     # nothing to leave out: unchanged, no note
    with_lr = ["| backbone | method | lr | a |", "|---|---|---|---|", "| M | LoRA | 0.005 | 1.00 |",
               "| M | LISA | – | – (LR not chosen) |"]        # an LR label column is a row label, not a value
    assert tables.compact_tables(with_lr)[:3] == with_lr[:3] and len(tables.compact_tables(with_lr)) == 5


def test_a_run_trained_under_other_defaults_is_stale_never_aggregated_nor_resumed(tmp_path, monkeypatch):
    """Runs are keyed by their overrides, so a changed default (`model.um.temperature_input`)
    would leave a finished run's numbers in a table they no longer describe: such a run is `stale`."""
    root = str(tmp_path / "runs")
    spec = S.make_spec("configs/smoke.py", {"model.method": "full", "seed": 0})
    lora = S.make_spec("configs/smoke.py", {"model.method": "lora", "seed": 0})
    for s in (spec, lora):
        write_run(root, s, fake_results(s))
    assert S.status(root, spec) == "done" and S.load_results(root, spec) is not None

    def record_other_temperature_input(s):          # as if trained before the default changed
        path = os.path.join(S.workdir(root, s), "config.json")
        recorded = json.load(open(path))
        um = recorded["model"]["um"]
        um["temperature_input"] = "raw" if um["temperature_input"] == "unit" else "unit"
        json.dump(recorded, open(path, "w"))

    record_other_temperature_input(spec)
    assert S.stale_keys(root, spec) == ["model.um.temperature_input"]
    assert S.status(root, spec) == "stale" and S.load_results(root, spec) is None
    # a method without the UM branch does not depend on its settings: the same edit leaves it done
    record_other_temperature_input(lora)
    assert S.status(root, lora) == "done"
    # the runner neither trains nor counts the stale run, and says why
    trained, lines = [], []
    monkeypatch.setattr(runner, "run_one", lambda spec, *a, **k: trained.append(spec) or (0, ""))
    summary = runner.execute([(spec, ["table7"]), (lora, ["table7"])], root, FixedEstimate(), log=lines.append)
    assert trained == [] and summary["ran"] == 0
    assert any("stale:" in line and "model.um.temperature_input" in line and "not used" in line for line in lines)


def _lora_seed0(ctx):
    return next(s for c in TARGETS["table5"].cells(ctx) for s in c.specs if s.get("data.name") == "semeval"
                and s.get("data.train_size") == 1000 and s.get("model.method") == "lora" and s.get("seed") == 0)


def test_the_run_ledger_keeps_finished_runs_when_their_directories_are_gone(tmp_path, monkeypatch):
    """Run directories live on one machine; the ledger (config + results per run, committed with the tables)
    lets a fresh clone render the same tables and keeps the runner from training the run again."""
    ctx = choose(tmp_path)
    spec = _lora_seed0(ctx)
    write_run(ctx.root, spec, fake_results(spec, primary=0.6543))
    config_path = os.path.join(S.workdir(ctx.root, spec), "config.json")
    config = json.load(open(config_path))
    config["data"]["data_dir"] = str(tmp_path / "data")                  # a data folder outside the checkout
    json.dump(config, open(config_path, "w"))
    lines = []
    pipeline.render(ctx, ["table5"], log=lines.append)
    entry = json.load(open(S.ledger_path(ctx.ledger, spec)))
    assert entry["results"]["test"]["accuracy"] == 0.6543 and entry["config"]["model"]["method"] == "lora"
    assert entry["command"].endswith(f"--workdir=runs/{spec.name}")   # a root outside the checkout is not named
    assert entry["config"]["data"]["data_dir"] == ledger.DATA_DIR_MARK       # nor the data folder
    assert str(tmp_path) not in json.dumps(entry)
    assert any("run ledger: 1 finished run(s) recorded" in line for line in lines)
    lines.clear()
    pipeline.render(ctx, ["table5"], log=lines.append)
    assert not any("run ledger" in line for line in lines)            # unchanged: not rewritten
    table = (tmp_path / "out" / "table5.md").read_text()
    assert "65.43" in table

    shutil.rmtree(ctx.root)                                            # the machine that trained it is gone
    assert S.status(ctx.root, spec, ctx.ledger) == "done" and S.status(ctx.root, spec) == "todo"
    (tmp_path / "out" / "table5.md").unlink()
    pipeline.render(ctx, ["table5"], log=lambda m: None)
    assert (tmp_path / "out" / "table5.md").read_text() == table
    trained = []
    monkeypatch.setattr(runner, "run_one", lambda spec, *a, **k: trained.append(spec) or (0, ""))

    summary = runner.execute([(spec, ["table5"])], ctx.root, FixedEstimate(), log=lambda m: None, ledger=ctx.ledger)
    assert trained == [] and summary["already_done"] == 1

    # an entry recorded under other defaults is stale like a run directory would be, and says where it is
    entry["config"]["data"]["max_len"] += 1
    json.dump(entry, open(S.ledger_path(ctx.ledger, spec), "w"))
    assert S.stale_keys(ctx.root, spec, ctx.ledger) == ["data.max_len"]
    assert S.status(ctx.root, spec, ctx.ledger) == "stale" and S.load_results(ctx.root, spec, ctx.ledger) is None
    assert S.ledger_path(ctx.ledger, spec) in S.stale_note(ctx.root, spec, ctx.ledger)
    # a damaged entry is an error naming the file, never a silently missing cell
    with open(S.ledger_path(ctx.ledger, spec), "w") as f:
        f.write('{"config": ')
    with pytest.raises(ValueError, match=re.escape(S.ledger_path(ctx.ledger, spec)) + ".*not a run-ledger entry"):
        S.load_results(ctx.root, spec, ctx.ledger)


def test_a_finished_run_is_recorded_by_the_runner_as_soon_as_it_ends(tmp_path, monkeypatch):
    ctx = choose(tmp_path)
    spec = _lora_seed0(ctx)
    monkeypatch.setattr(runner, "run_one",
                        lambda s, root, *a, **k: write_run(root, s, fake_results(s, primary=0.61)) or (0, ""))

    runner.execute([(spec, ["table5"])], ctx.root, FixedEstimate(), log=lambda m: None, ledger=ctx.ledger)
    assert S.ledger_entry(ctx.ledger, spec)["results"]["test"]["accuracy"] == 0.61


def test_curve_shape_claims_compare_points_paired_over_seeds():
    """fig4's C10 and fig5's C13: each (better, worse) pair of points on a line is compared by the
    project's rule (paired over seeds, Holm across the comparisons); a line with a missing point can
    refute but never support."""
    from umema_jax.experiments.targets import figures

    def point(x, values):
        labels = {"dataset": "SemEval", "backbone": "B", "method": "LoRA", "size": "n=200", "x": x}
        return A.CellResult(A.Cell(labels, metric="test.accuracy"), dict(enumerate(values)), expected=3)

    def claim(points):
        return figures._ordered_claim(points, "C", "falls", lambda xs, b: list(zip(xs, xs[1:])))

    high, mid, low = [0.60, 0.62, 0.61], [0.50, 0.51, 0.53], [0.40, 0.43, 0.41]
    assert claim([point(0.0, high), point(0.1, mid), point(0.2, low)])["verdict"] == V.SUPPORTS
    assert claim([point(0.0, low), point(0.1, mid), point(0.2, high)])["verdict"] == V.CONTRADICTS
    gap = claim([point(0.0, high), point(0.1, []), point(0.2, low)])
    assert gap["verdict"] == V.CANNOT_TELL and "1/3" not in gap["detail"] and "2/3" in gap["detail"]
    assert [(c["better"], c["worse"]) for c in gap["comparisons"]] == [(0.0, 0.2)]
    assert claim([point(0.0, high)])["verdict"] == V.NOT_COMPUTED


def test_steeper_drop_claim_pairs_per_seed_slopes_over_seeds():
    """fig5's C13b: the per-seed slope on PLONER minus that on SemEval, paired over seeds, by the rule;
    a dataset with a missing point can refute but never support."""
    from umema_jax.experiments.targets import figures

    def point(dataset, x, values):
        labels = {"dataset": dataset, "backbone": "B", "method": "LoRA", "size": "n=200", "x": x}
        return A.CellResult(A.Cell(labels, metric="test.accuracy"), dict(enumerate(values)), expected=3)

    clean, gentle, steep = [0.60, 0.62, 0.61], [0.58, 0.59, 0.59], [0.30, 0.35, 0.31]

    def claim(ploner_end, semeval_end, extra=()):
        pts = [point("PLONER", 0.0, clean), point("PLONER", 0.5, ploner_end),
               point("SemEval", 0.0, clean), point("SemEval", 0.5, semeval_end), *extra]
        return figures._steeper_claim(pts, "PLONER", "SemEval")

    assert claim(steep, gentle)["verdict"] == V.SUPPORTS
    assert claim(gentle, steep)["verdict"] == V.CONTRADICTS
    gap = claim(steep, gentle, extra=[point("PLONER", 0.3, [])])
    assert gap["verdict"] == V.CANNOT_TELL and "still missing" in gap["detail"]
    one_seed = figures._steeper_claim([point("PLONER", 0.0, [0.6]), point("PLONER", 0.5, [0.3]),
                                        point("SemEval", 0.0, [0.6]), point("SemEval", 0.5, [0.5])],
                                       "PLONER", "SemEval")
    assert one_seed["verdict"] == V.CANNOT_TELL and "1 seed" in one_seed["detail"]
    assert figures._steeper_claim([point("SemEval", 0.0, clean)], "PLONER", "SemEval")["verdict"] == V.NOT_COMPUTED


def test_the_estimate_counts_a_sampling_heads_forward_passes():
    """MC dropout evaluates dev every epoch, and test, with `samples` passes: the estimate says so."""
    from umema_jax.experiments import estimate as E
    base = (("data.name", "semeval"), ("data.train_size", 1000), ("model.method", "lora+um"),
            ("model.name", "smollm2-135m"), ("train.epochs", 10))
    um = S.RunSpec("configs/semeval.py", base)
    mc = S.RunSpec("configs/semeval.py", base + (("model.mc_dropout.samples", 8), ("model.uncertainty", "mc_dropout")))
    assert E.eval_samples(um) == 1 and E.eval_samples(mc) == 8
    setup = P.get_profile("cpu").datasets["semeval"]
    assert E.run_time_s(mc, setup, 0.0) > 1.5 * E.run_time_s(um, setup, 0.0)
