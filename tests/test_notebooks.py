"""The notebooks in notebooks/: stored without outputs, and every one runs to the end at small size.

Each notebook is executed with nbclient in a fresh ``python3`` kernel -- ipykernel installed in
the project's venv, so the kernel is this interpreter (checked below) -- started in a scratch
directory, with ``BANDITREC_NB_SMALL=1`` in its environment; the notebooks read that variable
to choose small sizes. A notebook's own ``assert`` cells check the numbers it shows (estimates
against the simulator's truth, the direction of a trade-off), so running without an error
means those hold. A failing cell fails the test with that cell's source and traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tests.helpers import ROOT_DIR

ROOT = ROOT_DIR
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 180  # per cell; a notebook takes 10-40 s at small size on 2 cores

_spec = importlib.util.spec_from_file_location("notebooks_run", NOTEBOOK_DIR / "run.py")
runner = importlib.util.module_from_spec(_spec)
_dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in notebooks/
try:
    _spec.loader.exec_module(runner)
finally:
    sys.dont_write_bytecode = _dont_write


def stored_outputs(nb) -> list[str]:
    """What a notebook should not be stored with: code cells' outputs and execution counts."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has execution_count {cell.execution_count}")
    return found


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {
        "01_ab_simulation.ipynb",
        "02_offline_replay.ipynb",
        "03_objective_sensitivity.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    found = stored_outputs(nb)
    assert not found, (
        f"{path.name} is stored with outputs ({'; '.join(found)}); clear them before committing, "
        "e.g. jupyter nbconvert --clear-output, or write it with nbformat"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_stored_outputs_are_detected():
    clean = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    assert stored_outputs(clean) == []
    dirty = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("x"),
            nbformat.v4.new_code_cell(
                "1 + 1",
                execution_count=3,
                outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)],
            ),
        ]
    )
    assert stored_outputs(dirty) == ["cell 1 has 1 output(s)", "cell 1 has execution_count 3"]


def test_a_failing_cell_shows_its_error(tmp_path):
    probe = tmp_path / "probe.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('deliberate failure in cell 2')"),
            ],
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        ),
        probe,
    )
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CellExecutionError) as info:
        runner.execute(nbformat.read(probe, as_version=4), small=True, cwd=work, timeout=CELL_TIMEOUT_S)
    message = str(info.value)
    assert "ValueError" in message and "deliberate failure in cell 2" in message
    assert "raise ValueError" in message  # the failing cell's source is shown too
    executed = nbformat.read(probe, as_version=4)  # execute() never writes the file back
    assert stored_outputs(executed) == []


def test_kernel_is_this_interpreter_with_the_small_switch_in_a_scratch_dir(tmp_path):
    probe = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                f"import os, sys; print(sys.executable); print(os.environ[{runner.SMALL_ENV!r}]); print(os.getcwd())"
            )
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = tmp_path / "probe.ipynb"
    nbformat.write(probe, path)
    nb = runner.execute(nbformat.read(path, as_version=4), small=True, cwd=tmp_path, timeout=CELL_TIMEOUT_S)
    executable, small, cwd = nb.cells[0].outputs[0]["text"].splitlines()
    assert Path(executable).resolve() == Path(sys.executable).resolve(), (
        f"the python3 kernel runs {executable}, not this interpreter {sys.executable}: a user-level python3 "
        "kernelspec shadows the venv's ipykernel"
    )
    assert small == "1"
    assert Path(cwd).resolve() == tmp_path.resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_at_small_size(path, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in NOTEBOOK_DIR.iterdir()}
    try:
        nb = runner.execute(nbformat.read(path, as_version=4), small=True, cwd=tmp_path, timeout=CELL_TIMEOUT_S)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed at small size ({runner.SMALL_ENV}=1):\n{exc}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs), (
        f"{path.name} shows no plot"
    )
    after = {p.name: p.stat().st_mtime_ns for p in NOTEBOOK_DIR.iterdir()}
    assert after == before, "executing a notebook wrote into notebooks/"
