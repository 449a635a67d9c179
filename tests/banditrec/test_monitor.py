"""The health monitor (``banditrec monitor``): each figure against an independent reference, the
drift rule's false-alarm rate and power on the simulator, and the command's exit contract."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from banditrec.cli import main
from banditrec.errors import BanditRecError, ValidationError
from banditrec.experiment import srm_check
from banditrec.monitor import (
    ALERT_EXIT,
    Thresholds,
    effective_sample_size,
    feature_shifts,
    kish_size,
    parse_reference,
    parse_time,
    psi,
    psi_columns,
    run_monitor,
    wilson,
)
from banditrec.store import DecisionLog
from simulator import SimConfig
from studies.simulate import simulate

TINY = SimConfig(n_items=300, n_types=15, n_categories=3, n_customers=1500, history_days=10)
DAYS, SHIFT_DAY = 6, 3
MOBILE = TINY.dim + TINY.n_segments + 1  # the simulator's context: taste, segment, device one-hot, hour


def _sim(tmp_path_factory, name, config, seed):
    db = tmp_path_factory.mktemp(name) / "log.db"
    simulate(config, "uniform", days=DAYS, db=db, seed=seed, n_slots=4, n_candidates=20)
    return db


@pytest.fixture(scope="module")
def stationary(tmp_path_factory):
    return _sim(tmp_path_factory, "stationary", TINY, 1)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """From day 3 of 6, half of all customers browse on mobile (the simulator's mix shift)."""
    return _sim(tmp_path_factory, "drifted", TINY.replace(mix_shift_day=SHIFT_DAY, mix_shift_share=0.5), 1)


# ---------------------------------------------------------------------------------------- figures


def _wilson_by_roots(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's interval as the roots of ``(phat - p)^2 = z^2 p (1 - p) / n`` in p."""
    phat = k / n
    roots = np.roots([1 + z * z / n, -(2 * phat + z * z / n), phat * phat])
    return float(roots.real.min()), float(roots.real.max())


def test_reward_rates_match_a_count_in_sql(stationary):
    """Per day, position and source: slots and reward against a GROUP BY on the log; the Wilson
    interval against the roots of its defining quadratic."""
    rep = run_monitor(stationary)
    con = sqlite3.connect(stationary)
    base = (
        "SELECT {key}, count(*), sum((SELECT coalesce(sum(r.reward), 0) FROM rewards r WHERE r.event_id = s.event_id "
        "AND r.position = s.position AND r.kind = 'click' AND r.late = 0)) FROM slots s JOIN decisions d "
        "ON d.event_id = s.event_id GROUP BY 1 ORDER BY 1"
    )
    keys = {
        "day": "date(d.ts, 'unixepoch')",
        "position": "s.position",
        "source": "s.source",
    }
    z = stats.norm.ppf(0.975)
    for by, key in keys.items():
        want = con.execute(base.format(key=key)).fetchall()
        got = rep.rates[by]
        assert [(r.key, r.slots, r.reward) for r in got] == [(str(k), n, float(s)) for k, n, s in want]
        for r in got:
            assert r.interval == "wilson"
            lo, hi = _wilson_by_roots(int(r.reward), r.slots, z)
            assert (r.lower, r.upper) == pytest.approx((lo, hi), abs=1e-9)
    assert sum(r.slots for r in rep.rates["day"]) == con.execute("SELECT count(*) FROM slots").fetchone()[0]


@given(k=st.integers(0, 500), extra=st.integers(1, 500))
def test_wilson_interval_holds_the_rate_and_solves_its_equation(k, extra):
    n = k + extra
    lo, hi = wilson(np.array([k]), np.array([n]))
    assert 0 <= lo[0] <= k / n <= hi[0] <= 1
    assert (lo[0], hi[0]) == pytest.approx(_wilson_by_roots(k, n, stats.norm.ppf(0.975)), abs=1e-9)


def _hand_psi(ref: np.ndarray, cur: np.ndarray, bins: int) -> float:
    """PSI by explicit loops: the reference's decile cuts, each value counted into its bin."""
    cuts = sorted(set(np.quantile(ref, [b / bins for b in range(1, bins)]).tolist()))

    def shares(x):
        counts = [0] * (len(cuts) + 1)
        for v in x.tolist():
            counts[sum(v > c for c in cuts)] += 1
        return [max(c / len(x), 1e-4) for c in counts]

    return sum((c - r) * math.log(c / r) for r, c in zip(shares(ref), shares(cur)))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shift=st.floats(-2, 2),
    discrete=st.booleans(),
    n=st.integers(20, 300),
)
def test_psi_and_ks_match_a_hand_psi_and_scipy(seed, shift, discrete, n):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, 3))
    cur = rng.normal(shift, 1.0, size=(n + 7, 3))
    if discrete:  # one-hot-like columns: the quantile cuts collapse
        ref, cur = (ref > 0.5).astype(float), (cur > 0.5).astype(float)
    got = psi_columns(ref, cur, 10)
    for j in range(3):
        assert got[j] == pytest.approx(_hand_psi(ref[:, j], cur[:, j], 10), rel=1e-9, abs=1e-12)
        assert got[j] >= 0
    assert psi(ref[:, 0], ref[:, 0]) == 0.0
    shifts = feature_shifts("context", ["a", "b", "c"], ref, cur, p_cut=0.01, psi_min=0.1, bins=10)
    for j, s in enumerate(shifts):
        want = stats.ks_2samp(ref[:, j], cur[:, j])
        assert s.ks == pytest.approx(want.statistic)
        assert s.p_value == pytest.approx(want.pvalue) or (np.isnan(want.pvalue) and s.p_value == 1.0)
        assert s.drifted == (s.p_value < 0.01 and s.psi >= 0.1)


def test_the_drift_rule_alarms_on_at_most_its_false_alarm_rate_on_iid_windows():
    """400 stationary pairs of windows, 20 features each, KS only (PSI floor 0): the share of runs
    with any feature flagged is at most drift_alpha = 1% plus 3 standard errors."""
    rng = np.random.default_rng(7)
    alpha, m, reps, n = 0.01, 20, 400, 300
    alarms = 0
    for _ in range(reps):
        ref, cur = rng.normal(size=(n, m)), rng.normal(size=(n, m))
        shifts = feature_shifts(
            "c", list("abcdefghijklmnopqrst"), ref, cur, p_cut=alpha / m, psi_min=0.0, bins=10, n_eff=(n, n)
        )
        alarms += any(s.drifted for s in shifts)
    assert alarms / reps <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


@given(w=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=50))
def test_ess_lies_between_one_and_n_and_is_n_for_equal_weights(w):
    ess = effective_sample_size(np.array(w))
    assert 1 - 1e-9 <= ess <= len(w) + 1e-9
    assert effective_sample_size(np.full(len(w), w[0])) == pytest.approx(len(w))


def test_kish_size_is_the_cluster_count_for_equal_clusters():
    assert kish_size(np.repeat(np.arange(10), 4)) == pytest.approx(10)
    assert kish_size(np.array(["u1"] * 9 + ["u2"])) == pytest.approx(100 / 82)


def test_uniform_logging_gives_a_uniform_target_an_ess_of_n(stationary):
    """The simulator's uniform logger: every marginal is 1/n_candidates, so every weight is 1."""
    rep = run_monitor(stationary)
    n = sqlite3.connect(stationary).execute("SELECT count(*) FROM slots").fetchone()[0]
    assert rep.propensity.ess == pytest.approx(n)
    assert rep.propensity.ess_share == pytest.approx(1.0)
    assert rep.propensity.floor_violations == 0 and rep.propensity.floor_checked == n
    assert rep.propensity.min_marginal == pytest.approx(1 / 20)


def test_join_lag_matches_numpy_on_the_logged_rewards(stationary):
    rep = run_monitor(stationary)
    con = sqlite3.connect(stationary)
    lag = np.array(con.execute("SELECT r.ts - d.ts FROM rewards r JOIN decisions d USING (event_id)").fetchall())[:, 0]
    assert rep.lag.rewards == len(lag)
    assert rep.lag.quantiles["p90"] == pytest.approx(np.quantile(lag, 0.9))
    assert rep.lag.quantiles["max"] == pytest.approx(lag.max())


# ---------------------------------------------------------------------------------------- planted logs


def _planted(
    path, *, n=400, arms=None, arm_shares=None, min_epsilon=0.1, props=None, late_every=0, seed=0, rewarded=None
):
    """A log written with SQL: ``n`` decisions of 10 candidates and 2 slots a minute apart, one
    user each; slot propensities ``props`` (default 0.5, 0.5); every ``late_every``-th reward late."""
    DecisionLog(path).close()
    rng = np.random.default_rng(seed)
    con = sqlite3.connect(path)
    params = {"min_epsilon": min_epsilon}
    if arm_shares:
        params["arms"] = arm_shares
    props = props if props is not None else np.full((n, 2), 0.5)
    for i in range(n):
        eid = f"e{i}"
        row = [
            eid,
            60.0 * i,
            f"u{i}",
            "home",
            "p",
            json.dumps(params),
            "v",
            2,
            json.dumps([f"i{j}" for j in range(10)]),
            json.dumps(list(range(10))),
            json.dumps(rng.normal(size=3).tolist()),
            0.25,
            math.log(0.25),
        ]
        cols = (
            "event_id, ts, user_id, surface, policy, policy_params, model_version, n_slots, candidates, "
            "candidate_index, context, joint_propensity, log_joint_propensity"
        )
        if arms is not None:
            cols += ", arm"
            row.append(arms[i])
        con.execute(f"INSERT INTO decisions ({cols}) VALUES ({', '.join('?' * len(row))})", row)
        for k in range(2):
            p = float(props[i, k])
            con.execute(
                "INSERT INTO slots (event_id, position, item_id, item_index, propensity, marginal, marginal_draws, "
                "source) VALUES (?, ?, ?, ?, ?, ?, 0, 'popular')",
                (eid, k, f"i{k}", k, p, p),
            )
        if rewarded is not None and not rewarded(i):
            continue
        late = int(late_every > 0 and i % late_every == 0)
        con.execute("INSERT INTO rewards VALUES (?, 0, 'click', 1.0, ?, ?)", (eid, 60.0 * i + 30 + i, late))
    con.commit()
    con.close()
    return path


def test_floor_violations_are_slots_under_min_epsilon_over_the_free_candidates(tmp_path):
    """min_epsilon 0.1, 10 candidates: slot 0's floor is 0.01, slot 1's 0.1/9."""
    props = np.full((400, 2), 0.5)
    props[:7, 0] = 0.0099  # under 0.01
    props[7:10, 0] = 0.01  # on the floor
    props[10:15, 1] = 0.011  # under 0.0111
    props[15:20, 1] = 0.1 / 9
    rep = run_monitor(_planted(tmp_path / "log.db", props=props))
    assert rep.propensity.floor_violations == 12 and rep.propensity.floor_checked == 800
    check = next(c for c in rep.checks if c.name == "floor_violations")
    assert check.alert and check.value == pytest.approx(12 / 800)
    assert rep.propensity.min_propensity == pytest.approx(0.0099)


def test_srm_counts_users_per_arm_and_flags_a_planted_imbalance(tmp_path):
    """Configured 5% holdout and 5% control; planted 10% holdout: flagged, with srm_check's p."""
    n = 2000
    arms = np.array(["main"] * 1700 + ["holdout"] * 200 + ["control"] * 100)
    shares = {"holdout": 0.05, "control": 0.05}
    rep = run_monitor(_planted(tmp_path / "bad.db", n=n, arms=arms.tolist(), arm_shares=shares))
    want = srm_check([1700, 200, 100], [0.9, 0.05, 0.05], alpha=0.001)
    check = next(c for c in rep.checks if c.name == "srm")
    assert check.alert and rep.srm is not None
    assert rep.srm.users == (1700, 200, 100) and rep.srm.p_value == pytest.approx(want.p_value)
    fair = np.array(["main"] * 1800 + ["holdout"] * 100 + ["control"] * 100)
    rep = run_monitor(_planted(tmp_path / "fair.db", n=n, arms=fair.tolist(), arm_shares=shares))
    assert next(c for c in rep.checks if c.name == "srm").status == "ok"
    # --arm-shares overrides what the log says
    rep = run_monitor(tmp_path / "bad.db", arm_shares={"holdout": 0.1, "control": 0.05})
    assert next(c for c in rep.checks if c.name == "srm").status == "ok"


def test_srm_is_skipped_with_a_note_on_a_log_without_arms(tmp_path):
    rep = run_monitor(_planted(tmp_path / "log.db"))
    check = next(c for c in rep.checks if c.name == "srm")
    assert check.status == "skipped" and "arm" in check.detail and rep.srm is None


def test_late_share_alerts_over_its_threshold(tmp_path):
    db = _planted(tmp_path / "log.db", late_every=10)  # 40 of 400 late
    rep = run_monitor(db)
    check = next(c for c in rep.checks if c.name == "late_share")
    assert check.value == pytest.approx(0.1) and check.alert
    relaxed = run_monitor(db, thresholds=Thresholds(max_late_share=0.2))
    assert next(c for c in relaxed.checks if c.name == "late_share").status == "ok"


# ---------------------------------------------------------------------------------------- drift on the simulator


def test_drift_injected_in_the_simulator_is_flagged(drifted):
    rep = run_monitor(drifted)
    flagged = {s.feature for s in rep.shifts if s.drifted}
    assert f"ctx[{MOBILE}]" in flagged
    assert flagged <= {f"ctx[{MOBILE - 1}]", f"ctx[{MOBILE}]", f"ctx[{MOBILE + 1}]"}
    assert next(c for c in rep.checks if c.name == "drift_context").alert


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_drift_is_flagged_on_stationary_runs(tmp_path_factory, stationary, seed):
    """Designed for at most 1% of stationary runs; three fixed seeds flag nothing."""
    db = stationary if seed == 1 else _sim(tmp_path_factory, f"stationary{seed}", TINY, seed)
    rep = run_monitor(db)
    assert not [s.feature for s in rep.shifts if s.drifted]
    assert rep.exit_code == 0, rep.checks_table()


# ---------------------------------------------------------------------------------------- inputs


def test_time_bounds_accept_epoch_iso_and_relative_forms():
    assert parse_time("86400", last_ts=None, name="--since") == 86400.0
    assert parse_time("1970-01-02", last_ts=None, name="--since") == 86400.0
    assert parse_time("-1d", last_ts=2 * 86400.0, name="--since") == 86400.0
    assert parse_reference("-8d:-1d", last_ts=8 * 86400.0) == (0.0, 7 * 86400.0)
    assert parse_reference("1970-01-01T00:00..1970-01-02T00:00", last_ts=None) == (0.0, 86400.0)
    with pytest.raises(ValidationError, match="--since"):
        parse_time("yesterday", last_ts=0.0, name="--since")
    with pytest.raises(ValidationError, match="start before"):
        parse_reference("200:100", last_ts=None)


def test_threshold_files_name_the_file_and_the_field(tmp_path):
    good = tmp_path / "ok.toml"
    good.write_text("[monitor]\npsi_min = 0.2\nmax_join_lag_p99_s = 3600\n")
    th = Thresholds.from_toml(good)
    assert th.psi_min == 0.2 and th.max_join_lag_p99_s == 3600.0 and th.drift_alpha == 0.01
    bad = tmp_path / "bad.toml"
    for text, match in (
        ("psi_min = 'high'", "psi_min must be a number"),
        ("drift_alpha = 2", "drift_alpha must be in"),
        ("psi_mn = 0.2", "unknown threshold 'psi_mn'"),
        ("psi_min = [", "not valid TOML"),
    ):
        bad.write_text(text)
        with pytest.raises(ValidationError, match=match) as err:
            Thresholds.from_toml(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(ValidationError, match="no such thresholds file"):
        Thresholds.from_toml(tmp_path / "missing.toml")


def test_missing_log_and_empty_window_are_clear_errors(tmp_path, stationary):
    with pytest.raises(BanditRecError, match="no such decision log"):
        run_monitor(tmp_path / "nope.db")
    (tmp_path / "junk.db").write_text("not sqlite at all " * 100)
    with pytest.raises(ValidationError, match="is not a decision log"):
        run_monitor(tmp_path / "junk.db")
    with pytest.raises(ValidationError, match="no decisions in the window"):
        run_monitor(stationary, since="2030-01-01")


# ---------------------------------------------------------------------------------------- the command


def _run(*args):
    return CliRunner().invoke(main, ["monitor", *map(str, args)], catch_exceptions=False)


def test_cli_exits_0_on_a_healthy_log_and_writes_parseable_gauges(tmp_path, stationary):
    prom = tmp_path / "banditrec.prom"
    res = _run("--db", stationary, "--out", tmp_path / "out", "--prom", prom)
    assert res.exit_code == 0, res.output
    assert "ALERT" not in res.stderr
    assert (tmp_path / "out" / "monitor.md").is_file()
    assert {p.name for p in (tmp_path / "out").glob("monitor-*.png")} == {
        "monitor-reward.png",
        "monitor-drift.png",
        "monitor-propensity.png",
        "monitor-lag.png",
    }
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    alerts = {s.labels["check"]: s.value for s in families["banditrec_monitor_alert"].samples}
    assert set(alerts) == {
        "reward_drop",
        "drift_context",
        "drift_item",
        "min_propensity",
        "floor_violations",
        "ess_share",
        "srm",
        "late_share",
        "join_lag_p99",
    }
    assert set(alerts.values()) == {0.0}
    assert families["banditrec_monitor_ess_share"].samples[0].value == pytest.approx(1.0)


def test_cli_exits_with_the_alert_code_and_one_stderr_line_per_alert(tmp_path, drifted):
    prom = tmp_path / "banditrec.prom"
    res = _run("--db", drifted, "--out", tmp_path / "out", "--prom", prom, "--json")
    assert res.exit_code == ALERT_EXIT
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("banditrec.monitor ALERT ")]
    report = json.loads(res.stdout)
    assert len(lines) == len(report["alerts"]) >= 1 and "drift_context" in report["alerts"]
    assert lines[0].startswith("banditrec.monitor ALERT drift_context=")
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    alerts = {s.labels["check"]: s.value for s in families["banditrec_monitor_alert"].samples}
    assert alerts["drift_context"] == 1.0
    # a threshold flag can raise the PSI floor above the shift: then the log is healthy
    res = _run("--db", drifted, "--out", tmp_path / "out", "--threshold", "psi_min=1")
    assert res.exit_code == 0, res.stderr


def test_cli_reports_a_bad_threshold_file_without_a_traceback(tmp_path, stationary):
    bad = tmp_path / "th.toml"
    bad.write_text("min_ess_share = -1\n")
    res = _run("--db", stationary, "--out", tmp_path / "out", "--thresholds", bad)
    assert res.exit_code == 2
    assert f"{bad}: threshold min_ess_share must be >= 0, got -1.0" in res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_the_simulators_mix_shift_moves_devices_from_its_day_only():
    """Off by default; on, the days before the shift are the same draws, and from the shift a
    share s of customers are on mobile besides those already there: 0.45 + 0.55 s in expectation."""
    from simulator.environment import Environment

    small = TINY.replace(history_days=2)
    share = 0.5

    def devices(config):
        env = Environment(config, seed=3)
        env.warm_up()
        out = []
        for _ in range(4):
            req = env.requests()
            out.append(req.device.copy())
            env.respond(req, np.tile(np.arange(4), (len(req.customer), 1)), np.random.default_rng(0))
            env.advance_day()
        return out, env.population.device

    base, _ = devices(small)
    shifted, population = devices(small.replace(mix_shift_day=2, mix_shift_share=share))
    for day in (0, 1):
        np.testing.assert_array_equal(base[day], shifted[day])
    mobile = float((population == 1).mean())
    sd = math.sqrt(0.25 / len(population))
    assert abs(mobile - (0.45 + 0.55 * share)) < 4 * sd
    assert (shifted[2] == 1).mean() > (base[2] == 1).mean() + 0.15


def test_a_target_spec_replayed_on_the_log_gives_the_closed_form_uniform_ess(tmp_path):
    """On an epsilon-greedy log, the uniform target's ESS from the closed form (1/n per slot)
    equals the one replayed through the off-policy machinery (``--target uniform``)."""
    from banditrec.policies import make

    db = tmp_path / "log.db"
    simulate(TINY, "egreedy:epsilon=0.3", days=2, db=db, seed=4, n_slots=4, n_candidates=20)
    closed = run_monitor(db).propensity
    con = sqlite3.connect(db)
    feats = np.array([json.loads(f) for (f,) in con.execute("SELECT features FROM items ORDER BY item_index")])
    target = make("uniform", context_dim=closed_ctx_dim(con), item_dim=feats.shape[1], n_items=len(feats))
    replayed = run_monitor(db, target=target, item_features=feats).propensity
    assert closed.ess_share < 0.9  # the logger is not uniform
    assert replayed.ess == pytest.approx(closed.ess, rel=1e-9)
    assert replayed.target == target.spec


def closed_ctx_dim(con) -> int:
    return len(json.loads(con.execute("SELECT context FROM decisions LIMIT 1").fetchone()[0]))


def test_ignored_features_are_reported_but_never_alarm(tmp_path, drifted):
    toml = tmp_path / "th.toml"
    toml.write_text(f'ignore_features = ["ctx[{MOBILE}]"]\n')
    res = _run(
        "--db", drifted, "--out", tmp_path / "out", "--thresholds", toml, "--ignore-feature", f"ctx[{MOBILE - 1}]"
    )
    assert res.exit_code == 0, res.stderr
    rep = run_monitor(drifted, thresholds=Thresholds.from_toml(toml))
    mobile = next(s for s in rep.shifts if s.feature == f"ctx[{MOBILE}]")
    assert mobile.ignored and not mobile.drifted and mobile.psi > 0.1
    with pytest.raises(ValidationError, match="ignore_features must be a list"):
        Thresholds(ignore_features="ctx[0]")


def test_reward_drop_alerts_when_the_current_rate_falls(tmp_path):
    """The first half of the decisions earn a click on slot 0 (rate 0.5 per slot), the second
    half 40% of that: a drop of 0.6 against the default 0.25."""
    rep = run_monitor(_planted(tmp_path / "log.db", rewarded=lambda i: i < 200 or i % 5 < 2))
    check = next(c for c in rep.checks if c.name == "reward_drop")
    assert check.alert and check.value == pytest.approx(0.6)
    assert rep.rate_windows["reference"].rate == pytest.approx(0.5)
    steady = run_monitor(_planted(tmp_path / "steady.db"))
    assert next(c for c in steady.checks if c.name == "reward_drop").status == "ok"


@pytest.fixture(scope="module")
def shop_served(sim_shop_dir, tmp_path_factory):
    """300 decisions served from a shop directory, a minute apart, the first slot clicked at times."""
    from banditrec.shop import Shop, engine_for_shop

    shop = Shop(sim_shop_dir)
    path = tmp_path_factory.mktemp("served") / "log.db"
    log = DecisionLog(path)
    clock = {"now": float(shop.manifest["now"])}
    engine = engine_for_shop(shop, "egreedy:epsilon=0.3", log, seed=5, n_candidates=20, clock=lambda: clock["now"])
    rng = np.random.default_rng(3)
    users = list(shop.parts().user_index)[:150]
    for k in range(300):
        clock["now"] += 60.0
        d = engine.decide(users[k % len(users)], 3)
        if rng.random() < 0.3:
            engine.reward(d.event_id, 1.0, position=0)
    log.close()
    return shop, sim_shop_dir, path


def test_cli_names_features_from_the_shop_and_replays_a_target(tmp_path, shop_served):
    shop, shop_dir, db = shop_served
    res = _run(
        "--shop", shop_dir, "--db", db, "--out", tmp_path / "out", "--json",
        "--threshold", "min_window_rows=50", "--target", "uniform",
    )  # fmt: skip
    assert res.exit_code in (0, ALERT_EXIT), res.output
    report = json.loads(res.stdout)
    context_names, item_names = list(shop.feature_names.context), list(shop.feature_names.item)
    assert len(item_names) == shop.item_dim and len(context_names) == shop.context_dim
    assert [s["feature"] for s in report["shifts"] if s["group"] == "context"] == context_names
    assert [s["feature"] for s in report["shifts"] if s["group"] == "item"] == item_names
    closed = run_monitor(db, thresholds=Thresholds(min_window_rows=50)).propensity
    assert report["propensity"]["target"] == "uniform:epsilon=1.0"
    assert report["propensity"]["ess"] == pytest.approx(closed.ess, rel=1e-9)
    res = _run("--db", db, "--out", tmp_path / "out", "--target", "uniform")
    assert res.exit_code == 2 and "--target needs --shop" in res.stderr
