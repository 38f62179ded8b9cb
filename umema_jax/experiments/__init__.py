"""Regenerate the paper's tables and figures: `python -m umema_jax.experiments TARGET --profile=...`.

Targets (`targets.py`, one docstring each): lr_select, table1 ... table7, fig4 ... fig7, all.
Profiles (`profiles.py`): smoke (tiny random GPT-2 on the test fixtures), cpu (SmolLM2-135M),
paper (GPT-2 S / M, LLaMA3-8B). Runs are ordinary launch.py run directories under
`runs/experiments/<profile>/`, keyed by their config overrides and shared between targets;
outputs (markdown / PNG + JSON sidecar) go to `results/<profile>/`.
"""
from umema_jax.experiments.pipeline import expand, run_targets
from umema_jax.experiments.targets import ORDER, TARGETS

__all__ = ["ORDER", "TARGETS", "expand", "run_targets"]
