"""A/B simulation (studies.abtest) and ``banditrec abtest``.

References: the shop's own day-by-day KPIs (an independent account of every visit, order,
click and margin) against the per-customer totals the test analyses; the assignment hash;
hand-computed pooling; the simulator's gateway items (ground truth) for the long-term arm.
"""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec import experiment
from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.features import joint_features
from banditrec.policies import make
from simulator import SimConfig
from simulator.carousel import Response
from studies.abtest import (
    AAStudy,
    MetricRow,
    Pooled,
    _LoggedDay,
    _warm_start,
    aa_table,
    analyse,
    load_config,
    metric_table,
    over_time_table,
    parse_arm,
    parse_arms,
    pool_seeds,
    run_abtest,
    write_report,
)
from tests.helpers import ROOT_DIR

SMALL = SimConfig(n_items=300, n_types=20, n_categories=5, n_customers=2500, history_days=20, gateway_share=0.05)


@pytest.fixture(scope="module")
def small_run():
    return run_abtest(parse_arms("margin,longterm,lambda=2"), SMALL, 14, seed=3, salt="s", n_candidates=30)


def test_parse_arms_presets_overrides_and_commas():
    arms = parse_arms("margin,longterm,lambda=3,linucb:alpha=0.5,epsilon=0.2,learn=margin,name=lin")
    assert [a.name for a in arms] == ["margin", "longterm", "lin"]
    assert arms[1].lam == 3.0 and arms[1].uses_longterm and arms[1].learn == "purchase"
    assert arms[2].policy == "linucb:alpha=0.5,epsilon=0.2" and arms[2].learn == "margin"
    assert not arms[0].uses_longterm and "value=margin" in arms[0].policy
    assert parse_arm("uniform,weight=3").weight == 3.0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("margin", "at least two arms"),
        ("margin,margin", "names must differ"),
        ("margin,click,learn=revenue", "learn must be one of"),
        ("margin,longterm,lambda=-1", "lambda must be >= 0"),
        ("margin,uniform,weight=0", "weight must be > 0"),
        ("margin,uniform,lambda=x", "must be numbers"),
    ],
)
def test_parse_arms_errors_name_the_problem(text, needle):
    with pytest.raises(ValidationError) as e:
        parse_arms(text)
    assert needle in str(e.value)


@pytest.mark.slow
def test_customer_totals_agree_with_the_shops_kpis(small_run):
    r = small_run
    f = r.final
    k = r.kpis
    assert len(k) == 14
    # every visitor of the test's days was alive on day 0, so the per-customer totals add up to the shop's
    assert f.visits.sum() == sum(x.visits for x in k)
    assert f.orders.sum() == sum(x.orders for x in k)
    assert f.clicks.sum() == sum(x.clicks for x in k)
    assert f.slots.sum() == sum(x.slots for x in k)
    assert f.margin.sum() == pytest.approx(sum(x.margin for x in k), rel=1e-9)
    assert f.revenue.sum() == pytest.approx(sum(x.revenue for x in k), rel=1e-9)
    # each visit got one carousel from its arm's engine
    for a in range(2):
        assert r.n_decisions[a] == f.visits[r.arm == a].sum()
    # the daily series ends at the per-customer means
    for a in range(2):
        assert r.daily_margin[-1, a] == pytest.approx(f.margin[r.arm == a].mean(), rel=1e-9)
    assert f.alive.sum() == k[-1].alive
    assert np.all(r.checkpoints[7].margin <= f.margin + 1e-9)


def test_assignment_is_the_salted_hash(small_run):
    r = small_run
    want = experiment.assign(np.arange(SMALL.n_customers), ["margin", "longterm"], "s")[r.customers]
    np.testing.assert_array_equal(r.arm, want)
    assert r.srm.counts == tuple(np.bincount(r.arm, minlength=2))


def test_same_seed_same_test_and_a_new_salt_a_new_split(small_run):
    arms = parse_arms("margin,longterm,lambda=2")
    again = run_abtest(arms, SMALL, 14, seed=3, salt="s", n_candidates=30)
    np.testing.assert_array_equal(again.final.margin, small_run.final.margin)
    np.testing.assert_array_equal(again.daily_margin, small_run.daily_margin)
    other = run_abtest(arms, SMALL, 3, seed=3, salt="t", n_candidates=30)
    np.testing.assert_array_equal(other.customers, small_run.customers)  # the same world
    agree = (other.arm == small_run.arm).mean()
    assert 0.4 < agree < 0.6  # an independent split of the same customers


def test_analysis_rows_match_direct_comparisons(small_run):
    r = small_run
    rows = analyse(r, n_boot=0)
    by = {x.metric: x.comparison for x in rows}
    ltv = experiment.compare_means(r.final.ltv[r.arm == 0], r.final.ltv[r.arm == 1], n_boot=0)
    assert by["ltv"].diff == pytest.approx(ltv.diff) and by["ltv"].p_value == pytest.approx(ltv.p_value)
    ctr = by["ctr"]
    assert ctr.mean_a == pytest.approx(r.final.clicks[r.arm == 0].sum() / r.final.slots[r.arm == 0].sum())
    assert by["aov (week 7)"].mean_b == pytest.approx(
        r.checkpoints[7].revenue[r.arm == 1].sum() / r.checkpoints[7].orders[r.arm == 1].sum()
    )
    table = metric_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| ltv | longterm |" in table


def test_cuped_rows_adjust_for_the_pre_period_margin(small_run):
    """The CUPED rows are experiment.compare_means on the same customers with their margin
    before day 0 as the covariate; the adjustment keeps the effect and narrows the interval
    (pre-period and later margin are correlated through each customer's visit rate)."""
    r = small_run
    by = {x.metric: x.comparison for x in analyse(r, n_boot=0)}
    a, b = r.arm == 0, r.arm == 1
    want = experiment.compare_means(
        r.final.ltv[a], r.final.ltv[b], covariates=(r.pre_margin[a], r.pre_margin[b]), n_boot=0
    )
    got = by["ltv (CUPED)"]
    assert got.kind == "cuped" and got.diff == pytest.approx(want.diff) and got.se == pytest.approx(want.se)
    assert np.corrcoef(r.pre_margin, r.final.ltv)[0, 1] > 0.1
    assert got.se < by["ltv"].se
    assert len(r.pre_margin) == len(r.customers) and (r.pre_margin >= 0).all()


def test_warm_start_is_the_ridge_fit_of_the_logged_slots():
    """A LinUCB warm-started from two logged days equals the ridge regression of each slot's
    reward on its joint features, solved directly: theta = (I + X'X)^-1 X'r."""
    rng = np.random.default_rng(4)
    d_c, d_i, n_items, k = 3, 4, 12, 2
    features = rng.normal(size=(n_items, d_i))
    days = []
    for m in (5, 7):
        cand = np.stack([rng.permutation(n_items)[:6] for _ in range(m)])
        slates = cand[:, :k]
        z = np.zeros((m, k))
        out = Response(
            click=rng.integers(0, 2, (m, k)),
            purchase=rng.integers(0, 2, (m, k)),
            cart=z,
            revenue=z,
            margin=rng.gamma(2.0, 3.0, (m, k)) * rng.integers(0, 2, (m, k)),
        )
        days.append(_LoggedDay(context=rng.normal(size=(m, d_c)), candidates=cand, slates=slates, out=out))
    pol = make("linucb:alpha=0.5,epsilon=0.1", context_dim=d_c, item_dim=d_i, n_items=n_items)
    assert _warm_start(pol, days, features, "margin") == 2 * 5 + 2 * 7
    X = np.concatenate([joint_features(np.repeat(d.context, k, axis=0), features[d.slates.ravel()]) for d in days])
    r = np.concatenate([d.out.margin.ravel() for d in days]).astype(float)
    theta = np.linalg.solve(np.eye(X.shape[1]) + X.T @ X, X.T @ r)
    np.testing.assert_allclose(pol.theta, theta, rtol=1e-8, atol=1e-10)


def test_a_burn_in_day_logs_the_uniform_loggers_own_propensities():
    """_LoggedDay's marginal and conditional propensities against EpsilonGreedySlate with
    epsilon 1 (uniform sampling without replacement, what the incumbent carousel does) over each
    decision's real candidates (padding left out)."""
    from banditrec.policies.slate import EpsilonGreedySlate

    rng = np.random.default_rng(9)
    k, m = 3, 6
    cand = np.full((m, 8), -1)
    for i, n in enumerate((3, 4, 5, 6, 7, 8)):
        cand[i, :n] = rng.permutation(20)[:n]
    slates = np.stack([rng.permutation(c[c >= 0])[:k] for c in cand])
    z = np.zeros((m, k))
    out = Response(click=rng.integers(0, 2, (m, k)), purchase=z, cart=z, revenue=z, margin=z)
    got = _LoggedDay(context=np.zeros((m, 2)), candidates=cand, slates=slates, out=out).decisions("click")
    for i in range(m):
        real = cand[i][cand[i] >= 0]
        slate = EpsilonGreedySlate(np.zeros(len(real)), np.ones(k))
        rows = got.row_decision == i
        pos = [int(np.flatnonzero(real == item)[0]) for item in slates[i]]
        shown = np.zeros(len(real), bool)
        want_cond = []
        for slot, j in enumerate(pos):
            want_cond.append(slate.slot_pmf(shown, slot)[j])
            shown[j] = True
        np.testing.assert_allclose(got.row_propensity[rows], want_cond, rtol=1e-12)
        np.testing.assert_allclose(got.row_pscore[rows], slate.marginals()[pos, np.arange(k)], rtol=1e-12)
        np.testing.assert_array_equal(got.row_action[rows], slates[i])
        np.testing.assert_array_equal(got.candidates[i], real)
    np.testing.assert_array_equal(got.row_reward, out.click.ravel())


def test_burn_in_runs_a_carousel_before_day_0(monkeypatch):
    """With a burn-in the pre-period's last days show carousels, so customers arrive on day 0
    having bought more; the test itself is still days 0..N-1; and every arm is trained on every
    slot of that log (what the training does is test_warm_start_is_the_ridge_fit_of_the_logged_slots)."""
    import studies.abtest as ab

    calls, real = [], ab._warm_start

    def recording(policy, logged, features, kind):
        rows = real(policy, logged, features, kind)
        calls.append((kind, sum(day.slates.size for day in logged), rows))
        return rows

    monkeypatch.setattr(ab, "_warm_start", recording)
    arms = parse_arms("margin,click")
    cold = run_abtest(arms, SMALL, 3, seed=5, n_candidates=30)
    assert [c[1:] for c in calls] == [(0, 0), (0, 0)]  # no burn-in, nothing to learn from
    calls.clear()
    warm = run_abtest(arms, SMALL, 3, seed=5, n_candidates=30, burn_in_days=5)
    assert [c[0] for c in calls] == [a.learn for a in arms]
    assert calls[0][1] > 0 and all(shown == rows == calls[0][1] for _, shown, rows in calls)
    assert [k.day for k in warm.kpis] == [0, 1, 2] and [k.day for k in cold.kpis] == [0, 1, 2]
    # the carousel sold things before day 0: the pre-period margin per customer is higher than without it
    assert warm.pre_margin.mean() > cold.pre_margin.mean()
    with pytest.raises(ValidationError) as e:
        run_abtest(arms, SMALL, 3, seed=5, burn_in_days=SMALL.history_days + 1)
    assert e.value.field == "burn_in_days"


def test_aa_table_flags_a_miscalibrated_test():
    """Uniform p-values pass; p-values from Beta(0.6, 1) (a test that rejects too often) show a
    high rate, a small binomial p and a small KS p. The rates are the counts below alpha."""
    rng = np.random.default_rng(8)
    ps = np.column_stack([rng.random(400), rng.beta(0.6, 1.0, 400)])
    study = AAStudy(n_tests=400, alpha=0.05, metrics=("fine", "broken"), p_values=ps)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in aa_table(study).splitlines()[2:]
    }
    assert float(rows["fine"][0]) == pytest.approx((ps[:, 0] < 0.05).mean(), abs=5e-4)
    assert float(rows["broken"][0]) == pytest.approx((ps[:, 1] < 0.05).mean(), abs=5e-4)
    assert float(rows["fine"][2]) > 0.01 and float(rows["broken"][2]) < 0.01  # KS
    assert float(rows["broken"][1]) < 0.01  # binomial: 0.05 ** 0.6 = 17% rejected, not 5%
    assert float(rows["mean over the 2 metrics"][0]) == pytest.approx((ps < 0.05).mean(), abs=5e-5)


def _row(metric, diff, se):
    c = experiment.Comparison(
        metric=metric,
        kind="mean",
        n_a=10,
        n_b=10,
        mean_a=1.0,
        mean_b=1.0 + diff,
        diff=diff,
        se=se,
        df=18.0,
        diff_ci=(0, 0),
        p_value=0.5,
        lift=diff,
        lift_se=se,
        lift_ci=(0, 0),
        boot_ci=(0, 0),
        boot_se=se,
        lift_boot_ci=(0, 0),
        alpha=0.05,
        n_boot=0,
        significant=False,
    )
    return MetricRow(metric=metric, arm="b", control="a", comparison=c)


def test_pooling_is_inverse_variance_weighted():
    pooled = pool_seeds([[_row("ltv", 1.0, 0.5)], [_row("ltv", 2.0, 1.0)], [_row("ltv", -1.0, 2.0)]])
    w = np.array([4.0, 1.0, 0.25])
    d = np.array([1.0, 2.0, -1.0])
    assert isinstance(pooled[0], Pooled)
    assert pooled[0].diff == pytest.approx((w * d).sum() / w.sum())
    assert pooled[0].se == pytest.approx(1 / np.sqrt(w.sum()))
    from scipy import stats

    assert pooled[0].p_value == pytest.approx(2 * stats.norm.sf(abs(pooled[0].diff) / pooled[0].se))


def test_longterm_arm_shows_more_gateway_items():
    """With a large lambda the long-term arm's value column favours items whose buyers spend
    more later; in a simulator without consumables (whose buyers also spend more later, on
    replenishment) those are the gateway items (ground truth)."""
    cfg = SimConfig(
        consumable_share=0.0,
        n_items=400,
        n_types=20,
        n_categories=5,
        n_customers=6000,
        history_days=120,
        gateway_share=0.08,
        gateway_visit_boost=1.0,
        gateway_churn_cut=0.7,
    )
    r = run_abtest(parse_arms("margin,longterm,lambda=20"), cfg, 7, seed=1, n_candidates=30)
    assert r.gateway_slots[1] > 1.5 * r.gateway_slots[0]
    assert r.longterm_value is not None and r.longterm_value.shape == (cfg.n_items,)


def test_over_time_table_reports_the_runs_own_curves(small_run):
    """Each cell against the result's arrays, found by a plain scan over the days."""
    r = small_run
    row = over_time_table([r]).splitlines()[2].strip("|").split("|")
    cells = [c.strip() for c in row]
    diff = [r.daily_margin[d, 1] - r.daily_margin[d, 0] for d in range(r.days)]
    low = min(range(r.days), key=lambda d: (diff[d], d))
    assert cells[0] == str(r.seed)
    assert cells[1] == f"{diff[6]:+.2f}" and cells[3] == f"{diff[-1]:+.2f}"
    assert cells[2] == f"{diff[low]:+.2f} ({low + 1})"
    owners = r.gateway_share[-1]
    assert cells[4:] == [f"{owners[0]:.1%}", f"{owners[1]:.1%}"]
    assert 0 <= owners.min() and owners.max() <= 1 and owners.max() > 0
    assert over_time_table([r]).splitlines()[0].split("|")[2].strip().endswith(": day 7")
    # a test shorter than a week: the first column is its last day, and says so
    short = dataclasses.replace(r, days=5, daily_margin=r.daily_margin[:5])
    lines = over_time_table([short]).splitlines()
    assert lines[0].split("|")[2].strip().endswith(": day 5")
    assert lines[2].split("|")[2].strip() == f"{diff[4]:+.2f}"


@pytest.mark.slow
def test_report_and_cli(tmp_path, small_run):
    path = write_report(tmp_path / "rep", results=[small_run], rows_by_seed=[analyse(small_run, n_boot=50)])
    text = path.read_text()
    assert "sample-ratio check" in text and "| ltv |" in text and "## Power" in text
    assert over_time_table([small_run]) in text
    assert (tmp_path / "rep" / "margin_by_day.png").stat().st_size > 10_000

    runner = CliRunner()
    cfg = tmp_path / "ab.toml"
    cfg.write_text(
        "n_items = 300\nn_types = 20\nn_categories = 5\nhistory_days = 20\n"
        '[abtest]\narms = "uniform,click"\ndays = 8\ncustomers = 1200\nseeds = 2\n'
    )
    out = runner.invoke(main, ["abtest", "--config", str(cfg), "--boot", "50", "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    assert "seed 0:" in out.output and "seed 1:" in out.output
    assert "| difference, pooled [95% CI] |" in out.output
    assert "| ctr | click |" in out.output and "per seed" in out.output
    report = (tmp_path / "cli" / "report.md").read_text()
    assert "Pooled over 2 seeds" in report

    out = runner.invoke(main, ["abtest", "--config", str(cfg), "--aa", "2", "--out", str(tmp_path / "aa")])
    assert out.exit_code == 0, out.output
    assert "false-positive rate" in out.output
    assert (tmp_path / "aa" / "aa_pvalues.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--arms", "margin"], "at least two arms"),
        (["--arms", "margin,nosuch"], "unknown policy 'nosuch'"),
        (["--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_cli_errors_are_clean(args, needle, tmp_path):
    out = CliRunner().invoke(main, ["abtest", *args, "--out", str(tmp_path)])
    assert out.exit_code == 2
    assert needle in out.output and "Traceback" not in out.output


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[abtest]\ndays = "many"\n')
    with pytest.raises(ValidationError) as e:
        load_config(bad)
    assert e.value.field == "days"
    bad.write_text("[abtest]\ncolour = 1\n")
    with pytest.raises(ValidationError) as e:
        load_config(bad)
    assert "unknown key 'colour'" in str(e.value)


def test_the_documented_mild_study_config_is_what_the_docs_say():
    """docs/abtest-mild.toml (quoted in README and docs/abtest.md): the gateway scenario's
    catalog with SimConfig's default gateway effect, lambda 3, 5 seeds, no burn-in."""

    from studies.abtest import SCENARIOS

    config, opts = load_config(ROOT_DIR / "docs" / "abtest-mild.toml")
    gateway = SCENARIOS["gateway"]
    for key in ("n_items", "n_types", "gateway_share", "history_days"):
        assert getattr(config, key) == gateway[key]
    assert (config.gateway_visit_boost, config.gateway_churn_cut) == (
        SimConfig().gateway_visit_boost,
        SimConfig().gateway_churn_cut,
    )
    assert opts.get("burn_in", 0) == 0 and opts["seeds"] == 5
    arms = parse_arms(opts["arms"])
    assert [a.name for a in arms] == ["margin", "longterm"] and arms[1].lam == 3.0


def test_an_aa_study_takes_one_arm_and_uses_only_the_first_of_several(tmp_path):
    cfg = tmp_path / "ab.toml"
    cfg.write_text("n_items = 300\nn_types = 20\nn_categories = 5\nhistory_days = 20\n")
    runner = CliRunner()

    def table(arms):
        out = runner.invoke(
            main,
            [
                "abtest",
                "--config",
                str(cfg),
                "--arms",
                arms,
                "--aa",
                "2",
                "--days",
                "5",
                "--customers",
                "1200",
                "--out",
                str(tmp_path / arms.replace(",", "_")),
            ],
        )
        assert out.exit_code == 0, out.output
        return out.output.split("report:")[0]

    one = table("uniform")
    assert "false-positive rate" in one and one == table("uniform,click")
    out = runner.invoke(main, ["abtest", "--config", str(cfg), "--arms", "uniform", "--days", "5"])
    assert out.exit_code != 0 and "at least two arms" in out.output
