"""The demo path end to end at small size: HTTP in, SQLite log, estimates beside exact truth."""

from __future__ import annotations

import re
import sqlite3

import pytest

from click.testing import CliRunner

from banditrec.cli import main
from banditrec.demo import run_demo
from conftest import SMALL


def test_run_demo_small(tmp_path):
    result = run_demo(n_decisions=900, n_slots=3, n_candidates=15, batch=300, seed=3, out=tmp_path,
                      shop_config=SMALL, echo=None)
    assert result.n_decisions == 900
    assert result.max_pscore_mismatch == 0.0  # recomputed from the log, bit for bit
    assert [r.spec.split(":")[0] for r in result.results] == ["shared-linucb", "uniform", "popularity"]
    for r in result.results:
        for e in r.estimates.values():
            assert abs(e.value - r.truth) <= 4 * e.se, (r.spec, e, r.truth)
    logging = result.results[0].estimates["IPS"]
    assert logging.ess == 2700  # weights are all 1 for the logging policy
    con = sqlite3.connect(result.db)
    assert con.execute("SELECT count(*) FROM decisions").fetchone()[0] == 900
    assert con.execute("SELECT count(*) FROM slots").fetchone()[0] == 2700
    assert con.execute("SELECT count(*), sum(reward) FROM rewards").fetchone() == (result.n_rewards, result.n_rewards)
    # the logging IPS is the observed clicks per decision
    assert logging.value == pytest.approx(result.n_rewards / 900, rel=1e-12)
    report = result.report.read_text()
    assert "| `uniform:epsilon=1.0` | IPS |" in report
    assert (tmp_path / "estimates.png").stat().st_size > 10_000
    assert len(result.batch_truth["logging"]) == 3


def test_cli_demo_prints_the_table_and_where_the_report_is(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--decisions", "400", "--batch", "200", "--out", str(out),
                                    "--target", "uniform"])
    assert res.exit_code == 0, res.output
    assert re.search(r"uniform:epsilon=1.0\s+IPS\s+\d\.\d{4}\s+\[\d\.\d{3}, \d\.\d{3}\]\s+\d\.\d{4}", res.output)
    assert f"report: {out / 'report.md'}" in res.output
    assert (out / "report.md").exists()


def test_cli_demo_bad_policy_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--decisions", "10", "--policy", "shared-linucb:beta=2", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "policy shared-linucb has no parameter beta" in res.output
    assert "Traceback" not in res.output


def test_coverage_study_counts_and_standardised_errors():
    from banditrec.demo import coverage_study, coverage_table

    rows = coverage_study(seeds=range(3), n_decisions=300, n_slots=3, n_candidates=15, batch=150,
                          targets=("uniform",), shop_config=SMALL, echo=None)
    assert [(r.policy.split(":")[0], r.estimator) for r in rows] == [
        ("shared-linucb", "IPS"), ("shared-linucb", "SNIPS"), ("uniform", "IPS"), ("uniform", "SNIPS")]
    for r in rows:
        assert r.runs == 3 and len(r.z) == 3
        assert r.covered == int((abs(r.z) <= 1.959963984540054 + 1e-9).sum())
    table = coverage_table(rows)
    for r in rows:
        assert f"{r.covered:>4}/{r.runs:<4}" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--slots", "40"], "slots must be between 1 and candidates (30), got 40"),
        (["--candidates", "3"], "slots must be between 1 and candidates (3), got 5"),
        (["--candidates", "5000"], "candidates (5000) exceeds the 992 items a customer has not bought"),
        (["--decisions", "1"], "decisions must be at least 2"),
        (["--target", "nope"], "unknown policy 'nope'"),
        (["--batch", "0"], "Invalid value for '--batch'"),
    ],
)
def test_cli_demo_refuses_impossible_sizes_before_simulating(tmp_path, args, message):
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "report.md").exists()


def test_demo_table_flags_a_low_effective_sample_size(tmp_path):
    result = run_demo(n_decisions=300, n_slots=3, n_candidates=15, batch=150, seed=3, out=tmp_path,
                      shop_config=SMALL, echo=None, plot=False, targets=("popularity:epsilon=0.0",))
    low = [e for r in result.results for e in r.estimates.values() if e.warnings]
    assert low and all(e.ess < 300 or e.max_weight > 0.1 * e.ess for e in low)  # what the estimators flag
    table = result.table()
    assert table.count(" !") == len(low)
    assert "diagnostics warn" in table
