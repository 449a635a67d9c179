"""The simulator's source ablation: a left-out source never reaches the log, and the table is
the runs' paired differences."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from simulator import SimConfig
from studies.ablation import ArmRun, ablation_table
from studies.simulate import simulate

TINY = SimConfig(n_items=120, n_types=10, n_customers=300, history_days=40)


def _sources(db):
    with sqlite3.connect(db) as con:
        return {s for (text,) in con.execute("SELECT candidate_sources FROM decisions") for s in json.loads(text)}


def test_a_left_out_source_never_reaches_the_log(tmp_path):
    every = simulate(TINY, "egreedy:epsilon=0.2", 3, seed=1, brains=True, db=tmp_path / "all.db")
    without = simulate(TINY, "egreedy:epsilon=0.2", 3, seed=1, brains=True, without="reorder", db=tmp_path / "wo.db")
    assert {"reorder", "factors", "complement"} <= _sources(every.db)
    assert "reorder" not in _sources(without.db) and "factors" in _sources(without.db)


def test_the_table_is_the_paired_differences():
    runs = [ArmRun(None, s, 1.0 + s, 2.0, 3.0) for s in (0, 1, 2)]
    runs += [ArmRun("factors", s, 0.9 + s + 0.01 * s, 2.0, 3.0) for s in (0, 1, 2)]
    table = ablation_table(runs)
    d = np.array([-0.1, -0.09, -0.08])
    from scipy.stats import t

    half = t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert f"| factors | {d.mean():+.4f} ({d.mean() - half:+.4f}, {d.mean() + half:+.4f}) | +0.0000" in table
    assert "clicks (all: 2.0000)" in table


@pytest.mark.slow
def test_the_command_prints_a_row_per_source():
    out = CliRunner().invoke(
        main,
        [
            "simulate-ablation",
            "--days",
            "2",
            "--items",
            "100",
            "--customers",
            "200",
            "--seeds",
            "1",
            "--source",
            "reorder",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "| reorder |" in out.output
