"""`banditrec simulate`: the shop run with a policy, every decision logged through the store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.errors import ValidationError
from simulator import SimConfig
from studies.simulate import simulate

TINY = SimConfig(n_items=300, n_types=15, n_categories=3, n_customers=1500, history_days=10)


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory):
    db = tmp_path_factory.mktemp("sim") / "sim.db"
    return simulate(TINY, "uniform", days=6, db=db, seed=1, n_slots=4, n_candidates=20), db


def test_every_decision_and_reward_is_in_the_log(make_log, uniform_run):
    result, db = uniform_run
    assert result.n_decisions == sum(k.impressions for k in result.kpis) == sum(k.visits for k in result.kpis) > 300
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from decisions").fetchone()[0] == result.n_decisions
    assert con.execute("select count(*) from slots").fetchone()[0] == 4 * result.n_decisions
    clicks = con.execute("select count(*), sum(reward) from rewards where kind = 'click'").fetchone()
    assert clicks[0] == clicks[1] == sum(k.clicks for k in result.kpis)
    buys = con.execute("select count(*) from rewards where kind = 'purchase'").fetchone()[0]
    assert buys == sum(k.carousel_purchases for k in result.kpis)
    margin = con.execute("select sum(reward) from rewards where kind = 'margin'").fetchone()[0]
    assert margin == pytest.approx(sum(k.carousel_margin for k in result.kpis))
    assert con.execute("select count(*) from rewards").fetchone()[0] == result.n_rewards
    # a uniform logger over 20 candidates and 4 slots: every marginal propensity is 1/20
    marg = make_log(str(db)).decisions(kind="click").row_pscore
    np.testing.assert_allclose(marg, 1 / 20)


def test_logged_clicks_agree_with_the_exact_expectation(uniform_run):
    """The log's click count is a draw whose mean is the exact expected clicks of the shown
    carousels: within 4.5 standard deviations (Poisson-binomial variance <= mean)."""
    result, _ = uniform_run
    clicks = sum(k.clicks for k in result.kpis)
    assert abs(clicks - result.expected["click"]) < 4.5 * np.sqrt(result.expected["click"])


@pytest.mark.slow
def test_a_learning_policy_beats_uniform_on_exact_expected_clicks():
    kw = dict(days=8, seed=2, n_slots=4, n_candidates=30)
    uniform = simulate(TINY, "uniform", **kw)
    learned = simulate(TINY, "linucb:alpha=0.5,epsilon=0.05", **kw)
    per = lambda r: r.expected["click"] / r.n_decisions  # noqa: E731
    assert per(learned) > 1.2 * per(uniform)


@pytest.mark.slow
def test_same_seed_same_run():
    a = simulate(TINY, "egreedy:epsilon=0.2", days=3, seed=5, n_slots=3, n_candidates=10)
    b = simulate(TINY, "egreedy:epsilon=0.2", days=3, seed=5, n_slots=3, n_candidates=10)
    assert [k.clicks for k in a.kpis] == [k.clicks for k in b.kpis]
    assert a.expected == b.expected and a.ltv == b.ltv


def test_simulate_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValidationError, match="slots \\(9\\) must not exceed candidates \\(5\\)"):
        simulate(TINY, "uniform", days=1, n_slots=9, n_candidates=5)
    with pytest.raises(ValidationError, match="unknown policy 'nope'"):
        simulate(TINY, "nope", days=1)
    existing = tmp_path / "old.db"
    existing.write_bytes(b"")
    with pytest.raises(ValidationError, match="already exists"):
        simulate(TINY, "uniform", days=1, db=existing)


def test_cli_prints_daily_kpis_and_logs(tmp_path):
    cfg = tmp_path / "shop.toml"
    cfg.write_text("[catalog]\nn_items = 300\nn_types = 15\nn_categories = 3\n[customers]\nhistory_days = 10\n")
    db = tmp_path / "out" / "sim.db"
    args = [
        "simulate",
        "--days",
        "4",
        "--customers",
        "1200",
        "--config",
        str(cfg),
        "--db",
        str(db),
        "--slots",
        "3",
        "--candidates",
        "12",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["day", "visits", "CTR", "conv", "AOV", "revenue", "margin", "active", "retained"]
    days = [line.split() for line in lines[2:6]]
    assert [int(d[0]) for d in days] == [0, 1, 2, 3]
    n = int(res.output.split(" decisions and ")[0].split()[-1].replace(",", ""))
    assert n == sum(int(d[1].replace(",", "")) for d in days)
    assert sqlite3.connect(db).execute("select count(*) from decisions").fetchone()[0] == n
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(main, [*args, "--replace"]).exit_code == 0
    cfg.write_text("[catalog]\nn_items = -1\n")
    bad = CliRunner().invoke(main, [*args, "--replace"])
    assert bad.exit_code == 2 and "SimConfig.n_items must be >= 1, got -1" in bad.output


@pytest.mark.slow
def test_true_values_pair_policies_on_each_seed():
    """Long-term value by simulation: pairing on a seed removes the world's variation, so the
    paired standard error of a difference is smaller than the unpaired one; and a learning
    policy's customers are worth more than a uniform policy's on every seed."""
    from studies.simulate import paired_difference, true_values

    specs = ["uniform", "linucb:alpha=0.5,epsilon=0.05"]
    values = true_values(specs, TINY.replace(n_customers=1000), days=6, seeds=range(4), n_slots=4, n_candidates=20)
    assert [(v.spec, v.seed) for v in values] == [(s, seed) for seed in range(4) for s in specs]
    diff, se, n = paired_difference(values, specs[1], specs[0], "clicks_per_carousel")
    assert n == 4 and diff > 3 * se > 0
    a = np.array([v.clicks_per_carousel for v in values if v.spec == specs[1]])
    b = np.array([v.clicks_per_carousel for v in values if v.spec == specs[0]])
    assert se < np.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 4)
    with pytest.raises(ValidationError, match="no seed has both"):
        paired_difference(values, "uniform", "softmax")


def test_new_items_without_history_reach_the_carousel(make_log, uniform_run):
    """Items launched on day 0 have no events; metadata similarity makes them candidates, so a
    uniform policy shows some of them within days."""
    result, db = uniform_run
    log = make_log(str(db))
    _, _, attrs = log.items()
    new = {j for j, a in enumerate(attrs) if a["launch_day"] == 0}
    assert len(new) >= 5
    shown = set(log.decisions(kind="click").row_action.tolist())
    assert len(new & shown) >= len(new) // 3


def test_the_log_gets_events_of_every_simulated_day(uniform_run):
    """Views, carts and purchases after the pre-period reach the log too (the candidate model's
    refits and `banditrec similar` learn from them)."""
    _, db = uniform_run
    con = sqlite3.connect(db)
    start = TINY.history_days * 86_400.0
    per_day = con.execute(
        "SELECT CAST((ts - ?) / 86400 AS INTEGER) AS d, count(*) FROM events WHERE ts >= ? GROUP BY d ORDER BY d",
        (start, start),
    ).fetchall()
    assert [d for d, _ in per_day] == list(range(6)) and min(n for _, n in per_day) > 100
