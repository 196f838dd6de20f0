"""notebooks/: every notebook runs top to bottom (nbclient, a fresh python3 kernel) within its time budget,
and is committed without outputs (they are regenerated on every run)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the [dev] extras (nbformat, nbclient)")
NotebookClient = pytest.importorskip("nbclient", reason="needs the [dev] extras (nbformat, nbclient)").NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
BUDGET_S = 90  # each notebook is meant to take well under a minute on a 2-core CPU


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"explore_schedules.ipynb", "what_if_hardware.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 4, f"{path.name} drew {images} figures"
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s"
