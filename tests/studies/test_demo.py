"""The demo end to end at small size: the simulated shop exported, built, served over HTTP,
learned from and evaluated, with the estimates beside the exact truth; and the coverage study."""

from __future__ import annotations

import re
import sqlite3

import pytest
from click.testing import CliRunner

from banditrec.cli import main
from simulator import SimConfig
from studies.demo import run_shop_demo
from tests.helpers import SMALL

DEMO_SMALL = SimConfig(n_items=400, n_types=20, n_customers=1_500, history_days=12)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_shop_demo(
        days=4,
        n_slots=3,
        n_candidates=15,
        seed=3,
        out=out,
        config=DEMO_SMALL,
        echo=None,
        targets=("uniform", "popularity:epsilon=0.1"),
    )


@pytest.mark.slow
def test_the_demo_goes_through_the_shop_directory_and_the_service(demo):
    assert demo.max_pscore_mismatch == 0.0  # recomputed from the log, bit for bit
    con = sqlite3.connect(demo.db)
    assert con.execute("SELECT count(*) FROM decisions").fetchone()[0] == demo.n_decisions
    assert con.execute("SELECT count(*) FROM slots").fetchone()[0] == 3 * demo.n_decisions
    assert {b for (b,) in con.execute("SELECT DISTINCT shop_build FROM decisions")} == {demo.build}
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == demo.n_events
    assert con.execute("SELECT count(*) FROM rewards").fetchone()[0] == demo.n_rewards
    # a snapshot a day, each reloaded by the service: the decisions were served by >= 3 models
    assert con.execute("SELECT count(*) FROM model_versions").fetchone()[0] >= 3
    assert con.execute("SELECT count(DISTINCT model_version) FROM decisions").fetchone()[0] >= 3
    files = demo.db.parent / "files"
    assert all((files / f).stat().st_size > 0 for f in ("items.csv", "interactions.csv", "users.csv"))


def test_the_demo_estimates_sit_near_the_exact_truth(demo):
    ev = demo.evaluation
    assert [c.spec for c in ev.candidates] == ["uniform", "popularity:epsilon=0.1"]
    # the logging policy's on-policy value is the observed clicks per evaluated decision
    con = sqlite3.connect(demo.db)
    seqs = [s for (s,) in con.execute("SELECT seq FROM decisions ORDER BY seq")][ev.n_train :]
    clicks = con.execute(
        f"SELECT count(*) FROM rewards r JOIN decisions d ON d.event_id = r.event_id "
        f"WHERE r.kind = 'click' AND d.seq >= {seqs[0]}"
    ).fetchone()[0]
    assert ev.logging.value == pytest.approx(clicks / len(seqs), rel=1e-12)
    checked = []
    for label, e in [("logging", ev.logging)] + [(c.spec, e) for c in ev.candidates for e in c.estimates.values()]:
        truth = demo.truth[label]
        assert 0 < truth < 3
        if e.ess < 100:  # resting on a handful of rows: it must say so, and its interval is not checked
            assert any("effective sample size" in w for w in e.warnings), (label, e)
            continue
        assert abs(e.value - truth) <= 4 * e.se, (label, e, truth)
        checked.append(label)
    assert "logging" in checked and "uniform" in checked  # the well-supported targets are always checked
    assert demo.truth["uniform"] < demo.truth["logging"]
    report = demo.report.read_text()
    assert "| clicks |" in report and "uniform" in report


def test_cli_demo_prints_the_table_and_where_everything_is(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(
        main, ["demo", "--days", "2", "--items", "300", "--customers", "800", "--out", str(out), "--target", "uniform"]
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"uniform\s+IPS\s+-?\d\.\d{4}\s+\[-?\d\.\d{3}, -?\d\.\d{3}\]\s+\d\.\d{4}", res.output)
    for line in (f"report: {out / 'report.md'}", f"log:    {out / 'log.db'}", f"shop:   {out / 'shop'}"):
        assert line in res.output
    assert "export " in res.output and "build " in res.output and "serve     day  2" in res.output


def test_cli_demo_bad_policy_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--days", "2", "--policy", "linucb:beta=2", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "policy linucb has no parameter beta" in res.output
    assert "Traceback" not in res.output


def test_coverage_study_counts_and_standardised_errors():
    from studies.coverage import coverage_study, coverage_table

    rows = coverage_study(
        seeds=range(3),
        n_decisions=300,
        n_slots=3,
        n_candidates=15,
        batch=150,
        targets=("uniform",),
        shop_config=SMALL,
        echo=None,
    )
    assert [(r.policy.split(":")[0], r.estimator) for r in rows] == [
        ("linucb", "IPS"),
        ("linucb", "SNIPS"),
        ("uniform", "IPS"),
        ("uniform", "SNIPS"),
    ]
    for r in rows:
        assert r.runs == 3 and len(r.z) == 3
        assert r.covered == int((abs(r.z) <= 1.959963984540054 + 1e-9).sum())
    table = coverage_table(rows)
    for r in rows:
        assert f"{r.covered:>4}/{r.runs:<4}" in table
