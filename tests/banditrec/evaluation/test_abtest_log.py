"""``banditrec abtest --db``: the analysis holdout of a live log (evaluation/abtest_log.py,
store/arms.py and the study command's --db mode).

Aggregates are checked against SQL and numpy written independently, the statistics against
scipy and a hand-computed CUPED slope, and the end-to-end run against an effect planted per arm.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from banditrec.apprentice import Arms
from banditrec.errors import ValidationError
from banditrec.evaluation.abtest_log import Shares, analyse_log, parse_time
from banditrec.experiment import hash_unit
from banditrec.store import DecisionLog
from banditrec.types import Decision, Reward, Slot
from studies.cli import abtest
from tests.helpers import make_engine

DAY = 86_400.0
START = 10 * DAY  # the experiment window starts on day 10; days 0-7 are the pre-period
HOLDOUT, CONTROL, SALT = 0.3, 0.3, "synthetic"


def _decision(event_id: str, user: str, ts: float, arm: str) -> Decision:
    slots = tuple(Slot(position=k, item_id=f"i{k}", propensity=0.5, marginal=0.5) for k in range(2))
    return Decision(
        event_id=event_id,
        user_id=user,
        slots=slots,
        joint_propensity=0.25,
        log_joint_propensity=float(2 * np.log(0.5)),
        policy="test",
        model_version="test-0",
        candidates=("i0", "i1", "i2"),
        ts=ts,
        arm=arm,
        served="baseline" if arm == "control" else "policy",
    )


def synthetic_log(path, arm_of: dict[str, str], *, effect: float = 0.1, seed: int = 5, params=None) -> DecisionLog:
    """Each user has a click propensity q (Beta(2, 6)), shared by the pre-period (arm "main")
    and the window; in the window a holdout user's q is raised by ``effect``. Each decision
    has 2 slots, each clicked with probability q, and a whole-decision margin reward
    Exp(1) x clicks; 1-4 decisions per user in each period."""
    rng = np.random.default_rng(seed)
    log = DecisionLog(path)
    records, rewards = [], []
    params = {"epsilon": 0.1} if params is None else params
    for j, (user, arm) in enumerate(arm_of.items()):
        q = rng.beta(2, 6)
        for period, (t0, arm_now) in enumerate(((0.0, "main"), (START, arm))):
            p = q + (effect if arm_now == "holdout" else 0.0)
            for i in range(int(rng.integers(1, 5))):
                event = f"e{j}-{period}-{i}"
                ts = t0 + float(rng.uniform(0, 7 * DAY))
                records.append((_decision(event, user, ts, arm_now), params, [0, 1, 2], [0, 1], [0.0]))
                clicks = rng.random(2) < p
                for k in np.flatnonzero(clicks).tolist():
                    rewards.append(Reward(event, 1.0, position=k, ts=ts + 1))
                if clicks.any():
                    rewards.append(Reward(event, float(rng.exponential()) * clicks.sum(), kind="margin", ts=ts + 1))
    log.write_decisions(records, rewards=rewards)
    return log


def hashed_arms(users: list[str]) -> dict[str, str]:
    u = hash_unit(users, SALT)
    return dict(zip(users, np.where(u < HOLDOUT, "holdout", np.where(u < HOLDOUT + CONTROL, "control", "main"))))


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    users = [f"u{i}" for i in range(900)]
    arms = hashed_arms(users)
    params = {"epsilon": 0.1, "arms": {"holdout": HOLDOUT, "control": CONTROL, "salt": SALT}}
    log = synthetic_log(tmp_path_factory.mktemp("ab") / "log.db", arms, params=params)
    yield log, arms
    log.close()


def brute_force(log: DecisionLog, kind: str, since: float, until: float | None = None):
    """Per user (arm, decisions, kind reward) straight from SQL."""
    until = 1e18 if until is None else until
    rows = log.db.execute(
        "SELECT d.user_id, d.arm, count(*), "
        "(SELECT coalesce(sum(r.reward), 0) FROM rewards r JOIN decisions e ON e.event_id = r.event_id "
        " WHERE e.user_id = d.user_id AND r.kind = ? AND e.ts >= ? AND e.ts < ?) "
        "FROM decisions d WHERE d.ts >= ? AND d.ts < ? GROUP BY d.user_id, d.arm",
        (kind, since, until, since, until),
    ).fetchall()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for arm in ("main", "holdout", "control"):
        mine = [r for r in rows if r[1] == arm]
        out[arm] = (np.array([r[3] for r in mine], float), np.array([r[2] for r in mine], float))
    return out, rows


def row(result, treatment: str, metric: str):
    comp = next(c for c in result.comparisons if c.treatment == treatment)
    return next(r for r in comp.rows if r.metric == metric)


def test_per_arm_aggregates_match_sql(balanced):
    log, arms = balanced
    result = analyse_log(log, kinds=("click", "margin"), treatments=("holdout", "main"), n_boot=0)
    assert result.since == pytest.approx(
        log.db.execute("SELECT min(ts) FROM decisions WHERE arm != 'main'").fetchone()[0]
    )
    for kind in ("click", "margin"):
        ref, rows = brute_force(log, kind, result.since)
        assert result.users == {a: len(ref[a][0]) for a in ("main", "holdout", "control")}
        assert result.decisions == {a: int(ref[a][1].sum()) for a in ("main", "holdout", "control")}
        for treatment in ("holdout", "main"):
            (ya, na), (yb, nb) = ref["control"], ref[treatment]
            per_user = row(result, treatment, f"{kind} per user")
            assert (per_user.n_a, per_user.n_b) == (len(ya), len(yb))
            assert per_user.mean_a == pytest.approx(ya.mean(), rel=1e-12)
            assert per_user.mean_b == pytest.approx(yb.mean(), rel=1e-12)
            per_decision = row(result, treatment, f"{kind} per decision")
            assert per_decision.mean_a == pytest.approx(ya.sum() / na.sum(), rel=1e-12)
            assert per_decision.mean_b == pytest.approx(yb.sum() / nb.sum(), rel=1e-12)
        assert row(result, "holdout", "decisions per user").mean_b == pytest.approx(ref["holdout"][1].mean())
    # a window: only its decisions count
    until = START + 3 * DAY
    cut = analyse_log(log, kinds=("click",), until=until, n_boot=0)
    ref, _ = brute_force(log, "click", cut.since, until)
    assert row(cut, "holdout", "click per user").mean_b == pytest.approx(ref["holdout"][0].mean(), rel=1e-12)
    assert cut.users["holdout"] == len(ref["holdout"][0])


def test_welch_matches_scipy_on_the_same_per_user_arrays(balanced):
    log, _ = balanced
    result = analyse_log(log, kinds=("click",), n_boot=0, alpha=0.1)
    ref, _ = brute_force(log, "click", result.since)
    ya, yb = ref["control"][0], ref["holdout"][0]
    t = stats.ttest_ind(yb, ya, equal_var=False)
    r = row(result, "holdout", "click per user")
    assert r.p_value == pytest.approx(t.pvalue, rel=1e-9)
    lo, hi = t.confidence_interval(0.9)
    assert r.diff_ci == pytest.approx((lo, hi), rel=1e-9)


def per_user_sql(log: DecisionLog, kind: str, where: str, args: tuple) -> dict[str, tuple[str, float]]:
    """user -> (arm, summed ``kind`` reward) over the decisions ``where`` selects."""
    return {
        u: (arm, total)
        for u, arm, total in log.db.execute(
            "SELECT d.user_id, max(d.arm), coalesce(sum(r.reward), 0) FROM decisions d LEFT JOIN rewards r "
            f"ON r.event_id = d.event_id AND r.kind = ? WHERE {where} GROUP BY d.user_id",
            (kind, *args),
        )
    }


def test_cuped_uses_the_pre_period_reward_and_theta_is_cov_over_var(balanced):
    log, _ = balanced
    result = analyse_log(log, kinds=("click",), pre_days=10, n_boot=0)
    window = per_user_sql(log, "click", "d.ts >= ?", (result.since,))
    pre = per_user_sql(log, "click", "d.ts < ? AND d.ts >= ?", (result.since, result.since - 10 * DAY))
    arrays = {}
    for arm in ("control", "holdout"):
        users = sorted(u for u, (a, _) in window.items() if a == arm)
        arrays[arm] = (np.array([window[u][1] for u in users]), np.array([pre.get(u, ("", 0.0))[1] for u in users]))
    (ya, xa), (yb, xb) = arrays["control"], arrays["holdout"]
    y, x = np.r_[ya, yb], np.r_[xa, xb]
    theta = np.cov(y, x)[0, 1] / np.var(x, ddof=1)
    comp = result.comparisons[0]
    assert comp.theta["click"] == pytest.approx(theta, rel=1e-9)
    adjusted = row(result, "holdout", "click per user, CUPED")
    plain = row(result, "holdout", "click per user")
    assert adjusted.kind == "cuped"
    assert adjusted.diff == pytest.approx(plain.diff - theta * (xb.mean() - xa.mean()), rel=1e-9)
    # each user's own propensity drives both periods: the adjusted interval is narrower
    assert adjusted.se < plain.se
    assert "days before the window" in result.covariate
    # the MDE is reported for both, smaller with CUPED
    mde = {p.metric: p.mde for p in comp.power}
    assert mde["click per user, CUPED"] < mde["click per user"]


def test_srm_passes_a_balanced_assignment_and_the_logged_shares_are_used(balanced):
    log, arms = balanced
    result = analyse_log(log, kinds=("click",), n_boot=0)
    assert result.shares == Shares(HOLDOUT, CONTROL, SALT, "log")
    assert result.srm is not None and result.srm.ok and result.ok
    assert result.mismatched == 0
    assert result.srm.counts == tuple(result.users[a] for a in ("main", "holdout", "control"))


def test_srm_flags_a_planted_imbalance(tmp_path):
    users = [f"u{i}" for i in range(900)]
    arms = hashed_arms(users)
    # every fifth main user moved to the holdout: 0.3 + 0.08 of the users instead of 0.3
    main = [u for u, a in arms.items() if a == "main"]
    planted = {**arms, **{u: "holdout" for u in main[::5]}}
    log = synthetic_log(tmp_path / "log.db", planted)
    try:
        result = analyse_log(
            log, kinds=("click",), shares=Shares.parse(f"holdout={HOLDOUT},control={CONTROL},salt={SALT}"), n_boot=0
        )
    finally:
        log.close()
    assert result.srm is not None and not result.srm.ok and not result.ok
    assert result.mismatched == len(main[::5])
    # without a salt there is no re-hash, and the counts alone still flag it
    log = DecisionLog(tmp_path / "log.db")
    try:
        no_salt = analyse_log(log, kinds=("click",), shares=Shares(HOLDOUT, CONTROL), n_boot=0)
    finally:
        log.close()
    assert no_salt.mismatched is None and not no_salt.srm.ok
    runner = CliRunner()
    out = runner.invoke(
        abtest, ["--db", str(tmp_path / "log.db"), "--shares", "holdout=0.3,control=0.3", "--boot", "0"]
    )
    assert out.exit_code == 1, out.output
    assert "SAMPLE RATIO MISMATCH" in out.output


def test_crossover_users_are_left_out(tmp_path):
    users = [f"u{i}" for i in range(200)]
    arms = hashed_arms(users)
    log = synthetic_log(tmp_path / "log.db", arms)
    try:
        moved = next(u for u, a in arms.items() if a == "control")
        log.write_decisions([(_decision("extra", moved, START + 1, "holdout"), {}, [0, 1, 2], [0, 1], [0.0])])
        result = analyse_log(log, kinds=("click",), shares=Shares(HOLDOUT, CONTROL), n_boot=0)
    finally:
        log.close()
    assert result.crossovers == 1
    assert result.users["control"] == sum(a == "control" for a in arms.values()) - 1
    assert any("more than one arm" in w for w in result.warnings)


def test_the_engine_with_arms_end_to_end_finds_the_planted_effect(small_shop, tmp_path):
    """400 users x 4 decisions on the small shop, Arms(0.3, 0.3); each decision is clicked
    with probability 0.35 for a holdout or main user and 0.15 for a control user, so the true
    effect is +0.2 clicks per decision and +0.8 per user. With seed 3 the 95% intervals cover
    it (a fixed draw: an interval misses 5% of draws)."""
    path = tmp_path / "log.db"
    engine = make_engine(small_shop, db=path)
    engine.arms = Arms(holdout=HOLDOUT, control=CONTROL, salt=SALT)
    rng = np.random.default_rng(3)
    users = [str(u) for u in small_shop.customers.user_ids]
    for _ in range(4):
        for user in users:
            d = engine.decide(user, 3)
            if rng.random() < (0.15 if d.arm == "control" else 0.35):
                engine.reward(d.event_id, 1.0, position=int(rng.integers(3)))
    engine.log.close()
    runner = CliRunner()
    out = runner.invoke(
        abtest,
        ["--db", str(path), "--shares", f"holdout={HOLDOUT},control={CONTROL},salt={SALT}", "--json", "--boot", "400"],
    )
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["mismatched"] == 0 and got["srm"]["ok"]
    rows = {r["metric"]: r for r in got["comparisons"][0]["rows"]}
    for metric, truth in (("click per decision", 0.2), ("click per user", 0.8)):
        r = rows[metric]
        assert r["diff"] > 0 and r["significant"]
        assert r["diff_ci"][0] <= truth <= r["diff_ci"][1]
        assert r["boot_ci"][0] <= truth <= r["boot_ci"][1]
    text = runner.invoke(
        abtest,
        [
            "--db",
            str(path),
            "--shares",
            f"holdout={HOLDOUT},control={CONTROL}",
            "--boot",
            "0",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert text.exit_code == 0, text.output
    assert "holdout (the policy, not trained on) vs control (baseline)" in text.output
    # the engine logs its shares and salt with each decision: no --shares needed
    logged = runner.invoke(abtest, ["--db", str(path), "--boot", "0", "--json"])
    assert logged.exit_code == 0, logged.output
    assert json.loads(logged.output)["shares"] == {
        "holdout": HOLDOUT,
        "control": CONTROL,
        "salt": SALT,
        "source": "log",
    }
    assert (tmp_path / "rep" / "report.md").read_text() in text.output + "\n"
    assert json.loads((tmp_path / "rep" / "abtest.json").read_text())["users"]["control"] > 0


def test_a_log_without_arms_is_a_clear_error(small_shop, tmp_path):
    path = tmp_path / "plain.db"
    engine = make_engine(small_shop, db=path)
    for user in ("u1", "u2", "u3"):
        engine.decide(user, 3)
    engine.log.close()
    out = CliRunner().invoke(abtest, ["--db", str(path)])
    assert out.exit_code == 2
    assert f"{path} has no decision of a holdout or control user" in out.output
    assert "Traceback" not in out.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--db", "X", "--days", "3"], "--days simulate a test"),
        (["--db", "X", "--arms", "margin,click", "--salt", "s"], "--arms, --salt simulate a test"),
        (["--since", "2026-01-01"], "--since need --db"),
        (["--db", "missing.db"], "no decision log at missing.db"),
        (["--db", "X", "--shares", "holdout=lots"], "shares must be numbers"),
        (["--db", "X", "--shares", "treatment=0.1"], "shares must read holdout=H,control=C"),
        (["--db", "X", "--since", "yesterday"], "since must be seconds since the epoch or an ISO date"),
        (["--db", "X", "--metric", "purchase"], "has no 'purchase' rewards; it has 'click'"),
    ],
)
def test_cli_errors_are_usage_errors(args, needle, balanced, tmp_path, monkeypatch):
    log, _ = balanced
    monkeypatch.chdir(tmp_path)
    args = [str(log.path) if a == "X" else a for a in args]
    out = CliRunner().invoke(abtest, args)
    assert out.exit_code == 2, out.output
    assert needle in out.output


def test_parse_time_reads_epoch_seconds_and_iso_dates_as_utc():
    assert parse_time("86400") == 86400.0
    assert parse_time("1970-01-02") == 86400.0
    assert parse_time("1970-01-02T01:00:00+01:00") == 86400.0
    with pytest.raises(ValidationError, match="until must be"):
        parse_time("soon", "until")


def test_a_covariate_mapping_gives_what_the_pre_period_gives(balanced):
    log, _ = balanced
    by_pre = analyse_log(log, kinds=("click",), pre_days=10, n_boot=0)
    pre = per_user_sql(log, "click", "d.ts < ? AND d.ts >= ?", (by_pre.since, by_pre.since - 10 * DAY))
    by_map = analyse_log(log, kinds=("click",), covariate={u: v for u, (_, v) in pre.items()}, n_boot=0)
    assert by_map.comparisons[0].theta["click"] == pytest.approx(by_pre.comparisons[0].theta["click"], rel=1e-12)
    cuped = "click per user, CUPED"
    assert row(by_map, "holdout", cuped).diff == pytest.approx(row(by_pre, "holdout", cuped).diff, rel=1e-12)
    assert "shop's build" in by_map.covariate


def test_the_shop_option_takes_each_users_interactions(balanced, sim_shop_dir):
    from banditrec.evaluation.abtest_log import shop_interactions
    from banditrec.shop import Shop

    log, _ = balanced
    shop = Shop(sim_shop_dir)
    counts = shop_interactions(shop.user_ids, shop.history)
    dense = shop.history.toarray()
    assert counts == {u: float((dense[i] != 0).sum()) for i, u in enumerate(shop.user_ids)}
    out = CliRunner().invoke(abtest, ["--db", str(log.path), "--shop", str(sim_shop_dir), "--boot", "0"])
    assert out.exit_code == 0, out.output
    assert "CUPED covariate: each user's interactions in the shop's build" in out.output
    both = CliRunner().invoke(abtest, ["--db", str(log.path), "--shop", str(sim_shop_dir), "--pre-days", "3"])
    assert both.exit_code == 2 and "give one of them" in both.output
