"""benchmarks/gpu_check.py (the GPU path) on CPU with tiny shapes: it runs and reports."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_script_runs_end_to_end_on_tiny_shapes(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", f"--out={tmp_path}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["method"] for r in summary["bench"]] == ["lora", "full"]
    for r in summary["bench"]:
        assert r["dtype"] == "bfloat16" and r["seq_len"] == 32 and r["step_s"] > 0 and r["tokens_per_s"] > 0
    assert summary["bench"][1]["trainable_params"] > summary["bench"][0]["trainable_params"]
    assert summary["environment"]["backend"] == "cpu" and "jax[cuda12]" in summary["environment"]["install_line"]
    res = summary["run_results"]
    run_config = json.loads(open(os.path.join(summary["run_dir"], "config.json")).read())
    assert run_config["model"]["dtype"] == "bfloat16"
    assert 0.0 <= res["test"]["accuracy"] <= 1.0 and res["test"]["ece"] >= 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| lora |" in md and "| full |" in md and "Main job" in md and "failed" not in md
