"""The notebooks in notebooks/ run top to bottom; a failing cell fails the test.

Each notebook is executed in memory with nbclient in a fresh kernel, so the
committed outputs are never rewritten by a test run. Rewrite them on purpose
with ``jupyter execute --inplace notebooks/*.ipynb`` (nbclient's command).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the notebooks, executed

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names[:3] == ["01_quickstart", "02_superlevel_sets", "03_flax_training"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_its_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, path.name
    assert all(c.execution_count is not None for c in code), "commit it executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel imports lyapopt from this checkout, installed or not.
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on a failure
