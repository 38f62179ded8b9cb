"""`python -m umema_jax.experiments all --profile=smoke`, trained for real (tiny random GPT-2, fixtures).

One test (not a shared fixture) so pytest-xdist never trains the profile twice. It checks content:
the numbers in every table are the runs' results.json values, missing cells are marked, the LR
comes from the LoRA baseline's dev score, and a second invocation runs nothing.
"""
import json
import os
import re

from umema_jax.experiments import pipeline
from umema_jax.experiments import profiles as P
from umema_jax.experiments.targets import LR_FILE, ORDER


def _row(md: str, *cells) -> str:
    """The markdown row starting with these cells."""
    prefix = "| " + " | ".join(cells) + " |"
    rows = [line for line in md.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (prefix, rows)
    return rows[0]


def test_all_targets_of_the_smoke_profile(tmp_path):
    # XLA's persistent cache is launch.py's default ($UMEMA_JAX_CACHE or ~/.cache/umema_jax/xla): the
    # executables are identical either way, and a second suite run on the same machine skips compiling.
    root, out = str(tmp_path / "runs"), str(tmp_path / "results")
    logs = []
    summary = pipeline.run_targets(["all"], "smoke", root, out, isolation="inprocess", log=logs.append)
    failed = [f for s in summary["runs"] for f in s["failed"]]
    assert not failed, failed
    assert any(re.search(r"run \d+/\d+ \(.*\): .* ETA all", m) for m in logs)          # progress lines

    for name in ORDER:
        assert os.path.getsize(os.path.join(out, f"{name}.md")) > 0, name
        side = json.load(open(os.path.join(out, f"{name}.json")))
        assert side["profile"] == "smoke" and side["commit"] and side["deviations"], name
        assert side["command"] == f"python -m umema_jax.experiments {name} --profile=smoke"
        md = open(os.path.join(out, f"{name}.md")).read()
        assert "## Claims" in md and "## Deviations from the paper" in md, name
        # every computed value in the sidecar is the run's own number, and its text is in the table
        for cell in side["cells"]:
            for seed, value in cell["per_seed"].items():
                results = json.load(open(os.path.join(cell["runs"][0], "results.json")))
                node = results
                for part in cell["metric"].replace("{primary}", results["primary_metric"]).split("."):
                    node = node[part]
                assert value == node, (name, cell)
            assert name == "fig7" or cell["text"] in md, (name, cell["text"])
    for name in ("fig4", "fig5", "fig6", "fig7"):
        assert os.path.getsize(os.path.join(out, f"{name}.png")) > 0
    # fig6's curves come from the runs' per-example records; the bins' mean confidence lies in [0, 1]
    curves = json.load(open(os.path.join(out, "fig6.json")))["curves"]
    assert curves and all(0 <= x <= 1 for c in curves.values() for x in c["confidence"] + c["accuracy"])
    # calibrators run only where a table reads them (smoke profile), and those rows are computed
    unc = json.load(open(os.path.join(out, "uncertainty.json")))["cells"]
    laplace = [c for c in unc if c["labels"]["method"] == "LoRA + last-layer Laplace" and c["labels"]["metric"] == "ECE"]
    assert laplace and all(v is not None for c in laplace for v in c["per_seed"].values()) and \
        all(c["per_seed"] for c in laplace)
    # every claim states its effect and interval, or why it has none
    for name in ORDER:
        for c in json.load(open(os.path.join(out, f"{name}.json")))["claims"]:
            for comp in c["comparisons"]:
                assert comp.get("detail"), (name, c["id"])

    # LR: chosen on the LoRA baseline's dev score (ties to the lower LR), then used by the tables
    sel = json.load(open(os.path.join(out, LR_FILE)))["gpt2-tiny"]["adapter"]
    lr_side = json.load(open(os.path.join(out, "lr_select.json")))
    dev = {c["labels"]["lr"]: c["mean"] for c in lr_side["cells"] if c["labels"]["family"] == "adapter"}
    best = max(dev.values())
    assert sel["chosen"] == min(lr for lr, v in dev.items() if v == best)
    t5 = json.load(open(os.path.join(out, "table5.json")))
    for cell in t5["cells"]:
        cfg = json.load(open(os.path.join(cell["runs"][0], "config.json")))
        assert cfg["optim"]["learning_rate"] == sel["chosen"]

    # table5 holds the four ablation runs' test accuracy (x100, 2 decimals)
    md5 = open(os.path.join(out, "table5.md")).read()
    for cell in t5["cells"]:
        acc = json.load(open(os.path.join(cell["runs"][0], "results.json")))["test"]["accuracy"]
        assert _row(md5, "tiny GPT-2 (random)", cell["labels"]["method"]).endswith(f"| {100 * acc:.2f} |")
    # table7's post-hoc TS row is the LoRA run's test_posthoc_ts
    lora_run = next(c["runs"][0] for c in t5["cells"] if c["labels"]["method"] == "LoRA")
    ts = json.load(open(os.path.join(lora_run, "results.json")))["test_posthoc_ts"]
    assert _row(open(os.path.join(out, "table7.md")).read(), "tiny GPT-2 (random)", "LoRA + post-hoc TS") \
        .startswith(f"| tiny GPT-2 (random) | LoRA + post-hoc TS | {100 * ts['ece']:.2f} | {ts['nll']:.4f} | "
                    f"{ts['brier']:.4f} |")

    # missing cells are marked, never dropped
    md3 = open(os.path.join(out, "table3.md")).read()
    for baseline in ("SplitLoRA", "LISA", "MiLoRA", "FLoRA", "ALoRA", "full FT"):
        if P.method_name(next(m for m in P.BASELINES if m.label == baseline)) is None:
            assert _row(md3, "tiny GPT-2 (random)", baseline).endswith("| not implemented |")
    md4 = open(os.path.join(out, "fig4.md")).read()
    assert "| PLONER | LoRA | n=16 | – (not in profile) | – (not in profile) |" in md4

    # a second invocation finds everything done; a result lost from its run directory is still in the run
    # ledger (results/<profile>/runs/), and lost from both it reads as missing in the rebuilt table
    again = pipeline.run_targets(["table5", "table6"], "smoke", root, out, isolation="inprocess", log=logs.append)
    assert [s["ran"] for s in again["runs"]] == [0]
    lora_row = _row(md5, "tiny GPT-2 (random)", "LoRA")
    os.remove(os.path.join(lora_run, "results.json"))
    pipeline.run_targets(["table5"], "smoke", root, out, aggregate_only=True, log=logs.append)
    assert _row(open(os.path.join(out, "table5.md")).read(), "tiny GPT-2 (random)", "LoRA") == lora_row
    os.remove(os.path.join(out, "runs", os.path.basename(lora_run) + ".json"))
    pipeline.run_targets(["table5"], "smoke", root, out, aggregate_only=True, log=logs.append)
    assert _row(open(os.path.join(out, "table5.md")).read(), "tiny GPT-2 (random)", "LoRA").endswith(
        "| – (0/1 runs) |")
