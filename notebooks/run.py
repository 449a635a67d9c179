"""Execute a notebook of this folder with nbclient and write the executed copy elsewhere.

    .venv/bin/python notebooks/run.py notebooks/02_offline_replay.ipynb          # full size
    .venv/bin/python notebooks/run.py --small notebooks/03_objective_sensitivity.ipynb

The executed copy (outputs and plots included) goes to ``out/notebooks/<name>``; the notebook
in ``notebooks/`` is never written, so it stays stored without outputs. The kernel is
``python3`` as resolved from this interpreter's environment (ipykernel installed in ``.venv``),
and it runs in a scratch directory so that nothing a notebook writes lands in the repository.
``--small`` sets ``BANDITREC_NB_SMALL=1``, which every notebook reads to choose small sizes
(what ``make test`` runs, through ``tests/test_notebooks.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

SMALL_ENV = "BANDITREC_NB_SMALL"


def execute(nb: nbformat.NotebookNode, *, small: bool, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` (in place: the outputs of the cells that ran stay there even
    when one fails) in a fresh ``python3`` kernel started in ``cwd``; return ``nb``.
    ``timeout`` is per cell, in seconds. A failing cell raises
    ``nbclient.exceptions.CellExecutionError``, whose message shows the cell's source and
    traceback."""
    previous = os.environ.get(SMALL_ENV)
    os.environ[SMALL_ENV] = "1" if small else "0"  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(SMALL_ENV, None)
        else:
            os.environ[SMALL_ENV] = previous
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--small", action="store_true", help=f"small sizes ({SMALL_ENV}=1), as the tests run")
    parser.add_argument("--out", type=Path, default=Path("out/notebooks"), help="where the executed copy goes")
    parser.add_argument(
        "--timeout", type=int, default=3600, help="seconds per cell (a full-size A/B cell runs several 90-day tests)"
    )
    args = parser.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / args.notebook.name
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="banditrec-nb-") as scratch:
            execute(nb, small=args.small, cwd=Path(scratch), timeout=args.timeout)
    except (CellExecutionError, CellTimeoutError) as exc:
        nbformat.write(nb, dest)  # what ran, up to the failing cell
        print(
            f"{exc}\n{args.notebook} failed after {time.perf_counter() - start:.1f} s; "
            f"the cells that ran are in {dest}",
            file=sys.stderr,
        )
        return 1
    nbformat.write(nb, dest)
    print(
        f"{args.notebook} executed in {time.perf_counter() - start:.1f} s "
        f"({'small' if args.small else 'full'} size): {dest}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
