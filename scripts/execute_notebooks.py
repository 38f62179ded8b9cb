"""Re-executes every notebook in notebooks/ in place, so the saved outputs (plots included) that
GitHub renders match the current code and committed results.

    python scripts/execute_notebooks.py            # from the repository root, a few minutes on CPU

The test suite executes the same notebooks without saving (tests/test_notebooks.py).
"""
import glob
import os
import sys

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    for path in sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        nbformat.write(nb, path)
        print(f"{os.path.relpath(path, REPO)}: executed, outputs saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
