"""A/B statistics: each interval against a hand formula or scipy, and its coverage against a
known truth by simulation (sizes and tolerances stated at each test; seeds fixed)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from banditrec.errors import ValidationError
from banditrec.experiment import (
    analyse,
    assign,
    compare_means,
    compare_ratios,
    cuped,
    duration_days,
    format_table,
    hash_unit,
    minimum_detectable_effect,
    power,
    sample_size,
    srm_check,
)


def within(x: float, target: float, tol: float) -> bool:
    return abs(x - target) <= tol


# ----------------------------------------------------------------------------- assign


def test_assign_shares_match_the_weights():
    """60,000 ids, weights 1:2:3: each arm's share within 4 binomial standard errors."""
    n = 60_000
    arm = assign(np.arange(n), ["a", "b", "c"], "exp-1", weights=[1, 2, 3])
    assert arm.dtype == np.int64 and arm.shape == (n,)
    for j, p in enumerate([1 / 6, 2 / 6, 3 / 6]):
        share = np.mean(arm == j)
        assert within(share, p, 4 * math.sqrt(p * (1 - p) / n)), (j, share)


def test_assign_is_deterministic_per_id_and_follows_the_documented_hash():
    ids = np.arange(1000, 3000)
    first = assign(ids, ["c", "t"], "salt")
    assert np.array_equal(first, assign(ids, ["c", "t"], "salt"))
    # per id, not per position: a shuffled subset, as a list of str, gets the same arms
    sub = np.random.default_rng(0).permutation(ids)[:300]
    assert np.array_equal(assign([str(i) for i in sub], ["c", "t"], "salt"), first[sub - 1000])
    # the documented recipe, by hand: top 53 bits of blake2b-64 of "salt:id"
    for uid in [1000, 1234, 2999]:
        word = int.from_bytes(hashlib.blake2b(f"salt:{uid}".encode(), digest_size=8).digest(), "big")
        u = (word >> 11) / 2**53
        assert hash_unit([uid], "salt")[0] == u
        assert first[uid - 1000] == (0 if u < 0.5 else 1)


def test_a_new_salt_gives_an_independent_assignment():
    """30,000 ids, 3 equal arms: two salts agree on ~1/3 of ids (4 SE) and the 3x3 table of
    (arm under salt 1, arm under salt 2) passes a chi-square independence test."""
    n, k = 30_000, 3
    x = assign(np.arange(n), ["a", "b", "c"], "s1")
    y = assign(np.arange(n), ["a", "b", "c"], "s2")
    agree = np.mean(x == y)
    assert within(agree, 1 / k, 4 * math.sqrt((1 / k) * (1 - 1 / k) / n)), agree
    table = np.zeros((k, k))
    np.add.at(table, (x, y), 1)
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert not np.array_equal(x, y)


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.one_of(st.integers(), st.text(max_size=12)), max_size=40),
    salt=st.text(max_size=10),
    weights=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=6),
)
def test_assign_always_returns_valid_indices(ids, salt, weights):
    arms = [f"arm{j}" for j in range(len(weights))]
    arm = assign(ids, arms, salt, weights=weights)
    assert arm.shape == (len(ids),) and arm.dtype == np.int64
    assert ((arm >= 0) & (arm < len(arms))).all()
    assert np.array_equal(arm, assign(ids, arms, salt, weights=weights))


@pytest.mark.parametrize(
    "arms, weights, field",
    [
        (["only"], None, "arms"),
        (["a", "a"], None, "arms"),
        ("ab", None, "arms"),
        (["a", "b"], [1.0, 0.0], "weights"),
        (["a", "b"], [1.0, -1.0], "weights"),
        (["a", "b"], [1.0, float("nan")], "weights"),
        (["a", "b"], [1.0, 1.0, 1.0], "weights"),
    ],
)
def test_assign_rejects_bad_arms_and_weights(arms, weights, field):
    with pytest.raises(ValidationError) as err:
        assign([1, 2, 3], arms, "s", weights=weights)
    assert err.value.field == field


# ----------------------------------------------------------------------------- srm


def test_srm_chi2_is_the_hand_formula():
    srm = srm_check([5000, 5300])
    assert srm.expected == (5150.0, 5150.0)
    assert srm.chi2 == pytest.approx(2 * 150**2 / 5150, rel=1e-12)
    assert srm.p_value == pytest.approx(stats.chi2.sf(2 * 150**2 / 5150, 1), rel=1e-9)
    counts, w = np.array([1000, 2100, 2900]), np.array([1, 2, 3]) / 6
    e = counts.sum() * w
    srm3 = srm_check(counts, weights=[1, 2, 3])
    assert srm3.chi2 == pytest.approx(np.sum((counts - e) ** 2 / e), rel=1e-12)
    assert srm3.p_value == pytest.approx(stats.chi2.sf(srm3.chi2, 2), rel=1e-9)


def test_srm_flags_a_mismatch():
    """5,000 vs 5,300 on a 50/50 split: chi2 = 8.74, p = 0.0031 -- flagged at alpha = 0.01 but
    not at the default 0.001; 5,000 vs 5,400 (p = 9e-5) is flagged at the default."""
    assert not srm_check([5000, 5300], alpha=0.01).ok
    assert srm_check([5000, 5300]).ok
    assert not srm_check([5000, 5400]).ok
    assert srm_check([5000, 5050]).ok


def test_srm_passes_a_real_assignment():
    arm = assign(np.arange(20_000), ["a", "b", "c"], "srm", weights=[0.5, 0.25, 0.25])
    assert srm_check(np.bincount(arm, minlength=3), weights=[0.5, 0.25, 0.25]).ok


@pytest.mark.parametrize(
    "counts, kw, field",
    [
        ([10], {}, "counts"),
        ([10, -1], {}, "counts"),
        ([10, 2.5], {}, "counts"),
        ([0, 0], {}, "counts"),
        ([10, 10], {"weights": [1, 2, 3]}, "weights"),
        ([10, 10], {"alpha": 0.0}, "alpha"),
    ],
)
def test_srm_rejects_bad_input(counts, kw, field):
    with pytest.raises(ValidationError) as err:
        srm_check(counts, **kw)
    assert err.value.field == field


# ----------------------------------------------------------------------------- compare_means


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_welch_interval_matches_the_hand_formula_and_scipy(alpha):
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 2, 57), rng.exponential(11, 83)
    c = compare_means(a, b, alpha=alpha, n_boot=0)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = b.mean() - a.mean()
    q = stats.t.ppf(1 - alpha / 2, df)
    assert c.diff == pytest.approx(diff, rel=1e-12) and c.se == pytest.approx(se, rel=1e-12)
    assert c.df == pytest.approx(df, rel=1e-12)
    assert c.diff_ci == pytest.approx((diff - q * se, diff + q * se), rel=1e-10)
    assert c.p_value == pytest.approx(2 * stats.t.sf(abs(diff) / se, df), rel=1e-9)
    welch = stats.ttest_ind(b, a, equal_var=False)
    ci = welch.confidence_interval(confidence_level=1 - alpha)
    assert c.diff_ci == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    assert c.significant == (c.p_value < alpha)
    assert c.lift == pytest.approx(b.mean() / a.mean() - 1, rel=1e-12)


def test_welch_and_lift_intervals_cover_the_truth():
    """2,000 simulated experiments with known means. Welch: normal arms, unequal sizes and
    variances (n 40 vs 60, sd 1 vs 3); lift: n 300 per arm, means 10 vs 11, sd 3 (true lift
    0.1). Each 95% interval covers its truth in 95% +- 1.5% (about 3 standard errors)."""
    rng = np.random.default_rng(2)
    reps = 2000
    a = rng.normal(5.0, 1.0, (reps, 40))
    b = rng.normal(5.3, 3.0, (reps, 60))
    hits = [(lambda c: c.diff_ci[0] <= 0.3 <= c.diff_ci[1])(compare_means(a[i], b[i], n_boot=0)) for i in range(reps)]
    assert within(np.mean(hits), 0.95, 0.015), np.mean(hits)
    a = rng.normal(10.0, 3.0, (reps, 300))
    b = rng.normal(11.0, 3.0, (reps, 300))
    hits = [(lambda c: c.lift_ci[0] <= 0.1 <= c.lift_ci[1])(compare_means(a[i], b[i], n_boot=0)) for i in range(reps)]
    assert within(np.mean(hits), 0.95, 0.015), np.mean(hits)


def test_bootstrap_intervals_cover_the_truth_on_skewed_data():
    """300 experiments of exponential arms (means 2 vs 2.5, n 150 per arm), 1,000 resamples
    each: the percentile intervals of the difference and of the lift (truth 0.25) cover in
    95% +- 4% (about 3 standard errors of 300 draws)."""
    rng = np.random.default_rng(3)
    reps = 300
    diff_hits, lift_hits = [], []
    for _ in range(reps):
        c = compare_means(rng.exponential(2.0, 150), rng.exponential(2.5, 150), n_boot=1000, rng=rng)
        diff_hits.append(c.boot_ci[0] <= 0.5 <= c.boot_ci[1])
        lift_hits.append(c.lift_boot_ci[0] <= 0.25 <= c.lift_boot_ci[1])
    assert within(np.mean(diff_hits), 0.95, 0.04), np.mean(diff_hits)
    assert within(np.mean(lift_hits), 0.95, 0.04), np.mean(lift_hits)


def test_bootstrap_agrees_with_welch_on_a_large_sample_and_is_reproducible():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.1, 2, 2000)
    c = compare_means(a, b, n_boot=2000, rng=np.random.default_rng(9))
    assert within(c.boot_se, c.se, 0.1 * c.se)
    assert within(c.boot_ci[0], c.diff_ci[0], 0.2 * c.se) and within(c.boot_ci[1], c.diff_ci[1], 0.2 * c.se)
    assert c == compare_means(a, b, n_boot=2000, rng=np.random.default_rng(9))
    assert c.boot_ci != compare_means(a, b, n_boot=2000, rng=np.random.default_rng(10)).boot_ci


def test_compare_means_does_not_touch_its_inputs():
    a, b = np.arange(10.0), np.arange(12.0)
    a0, b0 = a.copy(), b.copy()
    compare_means(a, b, n_boot=50, rng=0)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


def test_degenerate_arms_give_nan_rather_than_a_verdict():
    c = compare_means(np.zeros(20), np.zeros(30), n_boot=100, rng=0)
    assert c.diff == 0 and c.diff_ci == (0.0, 0.0) and math.isnan(c.p_value) and not c.significant
    assert math.isnan(c.lift) and math.isnan(c.lift_ci[0]) and math.isnan(c.lift_boot_ci[0])
    r = compare_ratios(np.zeros(20), np.ones(20), np.r_[1.0, np.zeros(19)], np.ones(20), n_boot=0)
    assert r.mean_a == 0 and math.isnan(r.lift) and r.diff == pytest.approx(0.05)


@pytest.mark.parametrize(
    "a, b, kw, field",
    [
        ([], [1.0, 2.0], {}, "a"),
        ([1.0], [1.0, 2.0], {}, "a"),
        ([1.0, 2.0], [1.0, float("nan")], {}, "b"),
        ([1.0, 2.0], [[1.0, 2.0]], {}, "b"),
        ([1.0, 2.0], [1.0, 3.0], {"alpha": 0.0}, "alpha"),
        ([1.0, 2.0], [1.0, 3.0], {"alpha": 1.5}, "alpha"),
        ([1.0, 2.0], [1.0, 3.0], {"n_boot": -1}, "n_boot"),
    ],
)
def test_compare_means_rejects_bad_input(a, b, kw, field):
    with pytest.raises(ValidationError) as err:
        compare_means(a, b, **kw)
    assert err.value.field == field


# ----------------------------------------------------------------------------- CUPED


def spenders(rng, n, effect=0.0, rho=0.8):
    """Pre-period spend ``x`` (lognormal) and later spend ``y`` correlated with it at about
    ``rho``, plus ``effect`` added to every customer (the treatment)."""
    x = rng.lognormal(1.0, 0.6, n)
    mu = math.exp(1.0 + 0.6**2 / 2)  # the lognormal's mean and sd (population values, not the sample's)
    z = (x - mu) / (mu * math.sqrt(math.expm1(0.6**2)))
    y = 10.0 + 3.0 * (rho * z + math.sqrt(1 - rho**2) * rng.normal(size=n)) + effect
    return y, x


def test_cuped_is_the_pooled_ols_adjustment():
    """theta is the slope of y on x over both arms (numpy's least squares), and the adjusted
    difference is ``diff - theta (mean x_b - mean x_a)``."""
    rng = np.random.default_rng(11)
    (ya, xa), (yb, xb) = spenders(rng, 700), spenders(rng, 900, effect=0.5)
    adj_a, adj_b, theta = cuped(ya, yb, xa, xb)
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    slope = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), y, rcond=None)[0][1]
    assert theta == pytest.approx(slope, rel=1e-10)
    assert adj_b.mean() - adj_a.mean() == pytest.approx(
        yb.mean() - ya.mean() - slope * (xb.mean() - xa.mean()), rel=1e-10
    )
    c = compare_means(ya, yb, covariates=(xa, xb), n_boot=0)
    assert c.kind == "cuped" and c.diff == pytest.approx(adj_b.mean() - adj_a.mean(), rel=1e-12)
    assert c.p_value == pytest.approx(stats.ttest_ind(adj_b, adj_a, equal_var=False).pvalue, rel=1e-9)


def test_cuped_cuts_the_variance_by_one_minus_rho_squared():
    """Correlation 0.8: the CUPED standard error is sqrt(1 - rho^2) = 0.6 of Welch's (the
    sample rho is used, so within 2%); an uninformative covariate changes almost nothing."""
    rng = np.random.default_rng(12)
    (ya, xa), (yb, xb) = spenders(rng, 20_000), spenders(rng, 20_000, effect=0.1)
    raw = compare_means(ya, yb, n_boot=0)
    adj = compare_means(ya, yb, covariates=(xa, xb), n_boot=0)
    rho = np.corrcoef(np.concatenate([xa, xb]), np.concatenate([ya, yb]))[0, 1]
    assert adj.se / raw.se == pytest.approx(math.sqrt(1 - rho**2), rel=0.02)
    assert 0.55 < adj.se / raw.se < 0.7
    noise_a, noise_b = rng.normal(size=20_000), rng.normal(size=20_000)
    same = compare_means(ya, yb, covariates=(noise_a, noise_b), n_boot=0)
    assert same.se / raw.se == pytest.approx(1.0, abs=0.01)


def test_cuped_intervals_cover_the_truth_and_are_narrower():
    """2,000 simulated experiments (n 400 per arm, true effect 0.3, rho 0.7): the CUPED 95%
    interval covers 0.3 in 95% +- 1.5%, and is narrower than Welch's on raw values every time
    but rarely (its width ratio stays near sqrt(1 - 0.49) = 0.71)."""
    rng = np.random.default_rng(13)
    hits, ratio = [], []
    for _ in range(2000):
        (ya, xa), (yb, xb) = spenders(rng, 400, rho=0.7), spenders(rng, 400, effect=0.3, rho=0.7)
        c = compare_means(ya, yb, covariates=(xa, xb), n_boot=0)
        hits.append(c.diff_ci[0] <= 0.3 <= c.diff_ci[1])
        ratio.append(c.se / compare_means(ya, yb, n_boot=0).se)
    assert within(np.mean(hits), 0.95, 0.015), np.mean(hits)
    assert within(np.median(ratio), math.sqrt(1 - 0.49), 0.03), np.median(ratio)


def test_a_constant_covariate_changes_nothing():
    rng = np.random.default_rng(14)
    a, b = rng.normal(size=50), rng.normal(1.0, 2.0, size=60)
    adj_a, adj_b, theta = cuped(a, b, np.ones(50), np.ones(60))
    assert theta == 0.0 and np.array_equal(adj_a, a) and np.array_equal(adj_b, b)


@pytest.mark.parametrize(
    "covariates, field",
    [
        (([1.0, 2.0], [1.0, 2.0, 3.0]), "covariates"),  # a's covariate is one short
        (([1.0, 2.0, 3.0],), "covariates"),
        (([1.0, 2.0, np.nan], [1.0, 2.0, 3.0]), "covariate_a"),
        ("x", "covariates"),
    ],
)
def test_cuped_rejects_bad_covariates(covariates, field):
    with pytest.raises(ValidationError) as err:
        compare_means([1.0, 2.0, 4.0], [1.0, 3.0, 5.0], covariates=covariates)
    assert err.value.field == field


# ----------------------------------------------------------------------------- compare_ratios


def clustered_ctr(rng, n, p_heavy, p_light):
    """Customers of two kinds, 30% heavy (Poisson(20) impressions, CTR ``p_heavy``) and 70%
    light (Poisson(2), ``p_light``): clicks are correlated within a customer."""
    heavy = rng.random(n) < 0.3
    impressions = rng.poisson(np.where(heavy, 20.0, 2.0))
    clicks = rng.binomial(impressions, np.where(heavy, p_heavy, p_light))
    return clicks.astype(float), impressions.astype(float)


def true_ctr(p_heavy, p_light):
    return (0.3 * 20 * p_heavy + 0.7 * 2 * p_light) / (0.3 * 20 + 0.7 * 2)


def test_ratio_delta_se_is_the_linearisation_and_reduces_to_welch():
    rng = np.random.default_rng(5)
    xa, ya = clustered_ctr(rng, 500, 0.05, 0.3)
    xb, yb = clustered_ctr(rng, 700, 0.06, 0.3)
    c = compare_ratios(xa, ya, xb, yb, n_boot=0)

    def var(x, y):  # influence function of R = mean(x)/mean(y): (x - R y) / mean(y)
        r = x.sum() / y.sum()
        return np.var((x - r * y) / y.mean(), ddof=1) / len(x)

    assert c.mean_a == pytest.approx(xa.sum() / ya.sum()) and c.mean_b == pytest.approx(xb.sum() / yb.sum())
    assert c.se == pytest.approx(math.sqrt(var(xa, ya) + var(xb, yb)), rel=1e-10)
    z = stats.norm.ppf(0.975)
    assert c.diff_ci == pytest.approx((c.diff - z * c.se, c.diff + z * c.se), rel=1e-12)
    assert c.p_value == pytest.approx(2 * stats.norm.sf(abs(c.diff / c.se)), rel=1e-9)
    # denominators of 1: the ratio is a mean, and the delta SE is Welch's
    m = compare_means(xa, xb, n_boot=0)
    r = compare_ratios(xa, np.ones_like(xa), xb, np.ones_like(xb), n_boot=0)
    assert (r.diff, r.se) == pytest.approx((m.diff, m.se), rel=1e-12)


def test_ratio_delta_se_agrees_with_the_customer_bootstrap():
    """20,000 customers per arm, 400 resamples (bootstrap SE within ~4% Monte Carlo error):
    delta-method and bootstrap SEs agree within 10%; the naive binomial SE (impressions as
    independent trials) is well below both."""
    rng = np.random.default_rng(6)
    xa, ya = clustered_ctr(rng, 20_000, 0.05, 0.3)
    xb, yb = clustered_ctr(rng, 20_000, 0.05, 0.3)
    c = compare_ratios(xa, ya, xb, yb, n_boot=400, rng=np.random.default_rng(7))
    assert within(c.boot_se, c.se, 0.1 * c.se), (c.boot_se, c.se)
    naive = math.sqrt(c.mean_a * (1 - c.mean_a) / ya.sum() + c.mean_b * (1 - c.mean_b) / yb.sum())
    assert naive < 0.85 * c.se  # about 0.80 here


def test_ratio_intervals_cover_the_truth():
    """2,000 experiments, 1,000 customers per arm, true CTRs from the mixture (control 0.05 /
    0.30, treatment 0.06 / 0.30). The delta-method 95% intervals of the difference and of the
    lift cover in 95% +- 1.5%; the naive binomial interval undercovers (about 89%; < 92% is
    4 standard errors away)."""
    rng = np.random.default_rng(8)
    reps, n = 2000, 1000
    r_a, r_b = true_ctr(0.05, 0.3), true_ctr(0.06, 0.3)
    diff_hits, lift_hits, naive_hits = [], [], []
    for _ in range(reps):
        xa, ya = clustered_ctr(rng, n, 0.05, 0.3)
        xb, yb = clustered_ctr(rng, n, 0.06, 0.3)
        c = compare_ratios(xa, ya, xb, yb, n_boot=0)
        diff_hits.append(c.diff_ci[0] <= r_b - r_a <= c.diff_ci[1])
        lift_hits.append(c.lift_ci[0] <= r_b / r_a - 1 <= c.lift_ci[1])
        naive = 1.96 * math.sqrt(c.mean_a * (1 - c.mean_a) / ya.sum() + c.mean_b * (1 - c.mean_b) / yb.sum())
        naive_hits.append(abs(c.diff - (r_b - r_a)) <= naive)
    assert within(np.mean(diff_hits), 0.95, 0.015), np.mean(diff_hits)
    assert within(np.mean(lift_hits), 0.95, 0.015), np.mean(lift_hits)
    assert np.mean(naive_hits) < 0.92, np.mean(naive_hits)


def test_ratio_bootstrap_covers_the_truth():
    """200 experiments of 1,000 customers per arm, 500 resamples: 95% +- 4.5% (3 SE)."""
    rng = np.random.default_rng(11)
    r_a, r_b = true_ctr(0.05, 0.3), true_ctr(0.06, 0.3)
    hits = []
    for _ in range(200):
        xa, ya = clustered_ctr(rng, 1000, 0.05, 0.3)
        xb, yb = clustered_ctr(rng, 1000, 0.06, 0.3)
        c = compare_ratios(xa, ya, xb, yb, n_boot=500, rng=rng)
        hits.append(c.boot_ci[0] <= r_b - r_a <= c.boot_ci[1])
    assert within(np.mean(hits), 0.95, 0.045), np.mean(hits)


def test_customers_without_a_denominator_count_as_zero():
    rng = np.random.default_rng(12)
    xa, ya = clustered_ctr(rng, 300, 0.05, 0.3)
    xb, yb = clustered_ctr(rng, 300, 0.06, 0.3)
    c = compare_ratios(xa, ya, xb, yb, n_boot=0)
    padded = compare_ratios(np.r_[xa, np.zeros(50)], np.r_[ya, np.zeros(50)], xb, yb, n_boot=0)
    assert padded.mean_a == pytest.approx(c.mean_a, rel=1e-12) and padded.n_a == 350
    with pytest.raises(ValidationError) as err:
        compare_ratios(xa, ya, np.zeros(5), np.zeros(5))
    assert err.value.field == "den_b" and "sums to 0" in err.value.message


@pytest.mark.parametrize(
    "args, kw, field",
    [
        (([1.0, 2.0], [1.0], [1.0, 2.0], [1.0, 2.0]), {}, "den_a"),
        (([], [], [1.0, 2.0], [1.0, 2.0]), {}, "num_a"),
        (([1.0, 2.0], [1.0, 2.0], [1.0, float("nan")], [1.0, 2.0]), {}, "num_b"),
        (([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, -2.0]), {}, "den_b"),
        (([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]), {"alpha": -0.1}, "alpha"),
    ],
)
def test_compare_ratios_rejects_bad_input(args, kw, field):
    with pytest.raises(ValidationError) as err:
        compare_ratios(*args, **kw)
    assert err.value.field == field


# ----------------------------------------------------------------------------- power

Z95, Z80 = stats.norm.ppf(0.975), stats.norm.ppf(0.8)


def test_sample_size_is_the_closed_form():
    """n = 2 (z_{1-a/2} + z_{1-b})^2 sigma^2 / delta^2, rounded up (or one less: the function
    returns the smallest n reaching the power, counting the far tail)."""
    closed = 2 * (Z95 + Z80) ** 2 * 4.0**2 / 0.5**2
    assert sample_size(baseline=10, sd=4, mde=0.05) in {math.ceil(closed) - 1, math.ceil(closed)}
    assert sample_size(baseline=10, sd=4, mde=0.5, relative=False) == sample_size(baseline=10, sd=4, mde=0.05)
    one_sided = 2 * (stats.norm.ppf(0.95) + Z80) ** 2 * 16 / 0.25
    assert sample_size(baseline=10, sd=4, mde=0.05, two_sided=False) == math.ceil(one_sided)
    unequal = (Z95 + Z80) ** 2 * (16 + 16 / 2) / 0.25  # treatment twice the control
    assert sample_size(baseline=10, sd=4, mde=0.05, ratio=2) in {math.ceil(unequal) - 1, math.ceil(unequal)}
    p1, p2 = 0.1, 0.12
    prop = (Z95 + Z80) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p2 - p1) ** 2
    assert sample_size(baseline=0.1, mde=0.2) in {math.ceil(prop) - 1, math.ceil(prop)}


@pytest.mark.parametrize(
    "kw",
    [
        dict(baseline=10, sd=4, mde=0.05),
        dict(baseline=0.1, mde=0.2),
        dict(baseline=0.03, mde=0.1, alpha=0.01, power=0.9, ratio=0.5),
    ],
)
def test_sample_size_is_the_smallest_n_with_enough_power(kw):
    n = sample_size(**kw)
    target = kw.get("power", 0.8)
    opts = {k: v for k, v in kw.items() if k != "power"}
    assert power(n, **opts) >= target > power(n - 1, **opts)
    mde = minimum_detectable_effect(n, **{k: v for k, v in kw.items() if k != "mde"})
    assert power(n, **{**opts, "mde": mde}) == pytest.approx(target, abs=1e-9)
    assert mde <= kw["mde"] and power(n - 1, **{**opts, "mde": mde}) < target


def test_sample_size_achieves_its_power_by_simulation():
    """At n = sample_size(...) per arm, 3,000 simulated experiments reject H0 in 80% +- 3%
    (4 standard errors): normal metric by Welch's test, proportion by the two-proportion z-test."""
    rng = np.random.default_rng(13)
    reps = 3000
    n = sample_size(baseline=10, sd=4, mde=0.05)
    a = rng.normal(10, 4, (reps, n))
    b = rng.normal(10.5, 4, (reps, n))
    rate = np.mean(stats.ttest_ind(b, a, axis=1, equal_var=False).pvalue < 0.05)
    assert within(rate, 0.8, 0.03), rate
    # half the customers: visibly underpowered (power about 0.51)
    half = np.mean(stats.ttest_ind(b[:, : n // 2], a[:, : n // 2], axis=1, equal_var=False).pvalue < 0.05)
    assert half < 0.6, half
    n = sample_size(baseline=0.1, mde=0.2)
    pa, pb = rng.binomial(n, 0.1, reps) / n, rng.binomial(n, 0.12, reps) / n
    z = (pb - pa) / np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
    rate = np.mean(np.abs(z) > Z95)
    assert within(rate, 0.8, 0.03), rate


def test_mde_shrinks_as_one_over_root_n():
    m1 = minimum_detectable_effect(1000, baseline=10, sd=4)
    m4 = minimum_detectable_effect(4000, baseline=10, sd=4)
    assert m4 == pytest.approx(m1 / 2, rel=1e-6)
    assert m1 == pytest.approx((Z95 + Z80) * 4 * math.sqrt(2 / 1000) / 10, rel=1e-4)
    assert minimum_detectable_effect(1000, baseline=10, sd=4, relative=False) == pytest.approx(10 * m1)


def test_duration_days():
    assert duration_days(1000, 500, 2) == 4
    assert duration_days(1005, 500, 2, traffic_share=0.5) == 9
    assert duration_days(10_000, 3000, 3, traffic_share=0.2) == 50


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: sample_size(baseline=5, mde=0.1), "baseline"),
        (lambda: sample_size(baseline=0.9, mde=0.2), "mde"),
        (lambda: sample_size(baseline=10, sd=4, mde=0), "mde"),
        (lambda: sample_size(baseline=10, sd=-4, mde=0.1), "sd"),
        (lambda: sample_size(baseline=0, sd=4, mde=0.1), "baseline"),
        (lambda: sample_size(baseline=10, sd=4, mde=0.1, alpha=1.0), "alpha"),
        (lambda: sample_size(baseline=10, sd=4, mde=0.1, power=1.0), "power"),
        (lambda: sample_size(baseline=10, sd=4, mde=0.1, ratio=0), "ratio"),
        (lambda: power(0, baseline=10, sd=4, mde=0.1), "n_per_arm"),
        (lambda: minimum_detectable_effect(10, baseline=0.999), "n_per_arm"),
        (lambda: duration_days(100, 10, 1), "n_arms"),
        (lambda: duration_days(100, 0, 2), "daily_eligible"),
        (lambda: duration_days(100, 10, 2, traffic_share=1.5), "traffic_share"),
    ],
)
def test_power_functions_reject_bad_input(call, field):
    with pytest.raises(ValidationError) as err:
        call()
    assert err.value.field == field


# ----------------------------------------------------------------------------- report


def test_analyse_dispatches_and_gives_each_metric_its_own_stream():
    rng = np.random.default_rng(14)
    rev_a, rev_b = rng.exponential(10, 400), rng.exponential(11, 400)
    xa, ya = clustered_ctr(rng, 400, 0.05, 0.3)
    xb, yb = clustered_ctr(rng, 400, 0.06, 0.3)
    rows = analyse({"revenue": (rev_a, rev_b), "ctr": (xa, ya, xb, yb)}, n_boot=300, rng=15)
    streams = np.random.default_rng(15).spawn(2)
    assert rows[0] == compare_means(rev_a, rev_b, n_boot=300, rng=streams[0], metric="revenue")
    assert rows[1] == compare_ratios(xa, ya, xb, yb, n_boot=300, rng=streams[1], metric="ctr")
    alone = analyse({"revenue": (rev_a, rev_b)}, n_boot=300, rng=15)
    assert alone[0] == rows[0]
    pre_a, pre_b = rev_a + rng.normal(0, 1, 400), rev_b + rng.normal(0, 1, 400)  # a CUPED covariate
    cuped = analyse({"revenue": (rev_a, rev_b), "revenue (CUPED)": (rev_a, rev_b, (pre_a, pre_b))}, n_boot=300, rng=15)
    assert cuped[0] == rows[0]
    assert cuped[1] == compare_means(
        rev_a,
        rev_b,
        covariates=(pre_a, pre_b),
        n_boot=300,
        rng=np.random.default_rng(15).spawn(2)[1],
        metric="revenue (CUPED)",
    )
    assert cuped[1].se < rows[0].se  # the covariate explains most of the variance
    with pytest.raises(ValidationError) as err:
        analyse({"x": (rev_a, rev_b, rev_a)})
    assert err.value.field == "metrics"


def test_format_table_is_markdown_with_one_row_per_metric():
    rng = np.random.default_rng(16)
    rows = analyse(
        {
            "revenue": (rng.normal(10, 2, 500), rng.normal(11, 2, 500)),
            "retention": (rng.random(500) < 0.3, rng.random(500) < 0.3),
        },
        n_boot=200,
        rng=17,
    )
    table = format_table(rows)
    lines = table.strip().split("\n")
    assert len(lines) == 4 and all(line.startswith("|") and line.endswith("|") for line in lines)
    assert lines[0].count("|") == lines[2].count("|") == 8
    assert "p-value" in lines[0] and "95% CI" in lines[0]
    assert lines[2].startswith("| revenue | ") and lines[2].endswith(" * |")  # 1 sd: significant
    assert f"{rows[0].mean_a:.4g}" in lines[2] and f"{100 * rows[0].lift:.4g}" in lines[2]
    assert lines[3].startswith("| retention | ")
