"""Long-term item values (banditrec.longterm) and the value-weighted policies that use them.

References: the window sums and the estimator against plain loops; a planted effect in
synthetic logs; the simulator's gateway items (ground truth) with the effect on and off.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.longterm import DAY_S, estimate_item_values, window_margins
from banditrec.policies import Request, make
from simulator import Environment, SimConfig


def _loop_windows(user, ts, amount, horizon, skip):
    later, prior = [], []
    for u, t in zip(user, ts):
        later.append(sum(a for v, s, a in zip(user, ts, amount) if v == u and t + skip < s <= t + horizon))
        prior.append(sum(a for v, s, a in zip(user, ts, amount) if v == u and t - horizon <= s < t))
    return np.array(later), np.array(prior)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 40), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=40
    ),
    st.integers(1, 15),
    st.integers(0, 5),
)
def test_window_sums_match_loops(rows, horizon, skip):
    skip = min(skip, horizon - 1)
    user = np.array([r[0] for r in rows])
    ts = np.array([r[1] for r in rows], dtype=float)  # ties in time are allowed
    amount = np.array([r[2] for r in rows])
    later, prior = window_margins(user, ts, amount, horizon_s=horizon, skip_s=skip)
    ref_later, ref_prior = _loop_windows(user.tolist(), ts.tolist(), amount.tolist(), horizon, skip)
    np.testing.assert_allclose(later, ref_later, atol=1e-9)
    np.testing.assert_allclose(prior, ref_prior, atol=1e-9)


def _loop_estimate(user, item, ts, margin, groups, horizon_s, skip_s, end, cap):
    """The estimator written as plain loops over purchases, items and groups."""
    later, prior = _loop_windows(user.tolist(), ts.tolist(), margin[item].tolist(), horizon_s, skip_s)
    seen, rows = set(), []
    for e in np.argsort(ts, kind="stable"):
        key = (user[e], item[e])
        if key not in seen:
            seen.add(key)
            if ts[e] + horizon_s <= end:
                rows.append(e)
    rows = sorted(rows)
    y_cap, x_cap = np.quantile([later[e] for e in rows], cap), np.quantile([prior[e] for e in rows], cap)
    later = [min(v, y_cap) for v in later]
    prior = [min(v, x_cap) for v in prior]
    by_group = {}
    for e in rows:
        by_group.setdefault(groups[item[e]], []).append(e)
    yc, xc = {}, {}
    for _g, es in by_group.items():
        my, mx = np.mean([later[e] for e in es]), np.mean([prior[e] for e in es])
        for e in es:
            yc[e], xc[e] = later[e] - my, prior[e] - mx
    sxx = sum(xc[e] ** 2 for e in rows)
    b = sum(xc[e] * yc[e] for e in rows) / sxx if sxx > 0 else 0.0
    resid = {e: yc[e] - b * xc[e] for e in rows}
    raw, n = np.zeros(len(margin)), np.zeros(len(margin))
    for j in range(len(margin)):
        es = [e for e in rows if item[e] == j]
        raw[j] = np.mean([resid[e] for e in es]) if es else 0.0
        n[j] = len(es)
    # pooled residual variance: one mean per group that has buyers, and the slope
    s2 = sum(resid[e] ** 2 for e in rows) / (len(rows) - len(by_group) - 1)
    # between-item variance by moments, items weighted by their buyers, floored at 0
    tau2 = max(sum(n[j] * (raw[j] ** 2 - s2 / n[j]) for j in range(len(margin)) if n[j]) / n.sum(), 0.0)
    value = np.array([raw[j] * tau2 / (tau2 + s2 / n[j]) if n[j] and tau2 > 0 else 0.0 for j in range(len(margin))])
    return raw, b, s2, tau2, value


@pytest.mark.parametrize(
    "seed, cap, empty_group",
    [(0, 1.0, False), (1, 1.0, False), (2, 0.9, False), (3, 0.75, False), (4, 1.0, True), (5, 0.9, True)],
)
def test_estimator_matches_loops(seed, cap, empty_group):
    """Raw values, slope, residual and prior spread and the shrunk values against loops; with
    ``empty_group`` two items nobody buys form a group whose label sorts first (it must not
    count as a group)."""
    rng = np.random.default_rng(seed)
    n = 120
    user = rng.integers(0, 15, n)
    item = rng.integers(0, 12, n)
    ts = np.round(rng.uniform(0, 60, n), 2) * DAY_S
    margin = rng.uniform(1, 5, 14 if empty_group else 12)
    groups = np.r_[np.arange(12) % 3, [-1, -1] if empty_group else []].astype(int)
    got = estimate_item_values(
        user, item, ts, margin, groups, horizon_days=10, skip_days=1, end_ts=60 * DAY_S, cap_quantile=cap
    )
    raw, b, s2, tau2, value = _loop_estimate(user, item, ts, margin, groups, 10 * DAY_S, DAY_S, 60 * DAY_S, cap)
    np.testing.assert_allclose(got.raw, raw, atol=1e-9)
    assert got.slope == pytest.approx(b, abs=1e-9)
    assert got.residual_sd == pytest.approx(np.sqrt(s2), rel=1e-9)
    assert got.prior_sd == pytest.approx(np.sqrt(tau2), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(got.value, value, atol=1e-9)
    # shrinkage never flips a sign and never inflates
    assert np.all(np.abs(got.value) <= np.abs(got.raw) + 1e-12)
    assert np.all(got.value * got.raw >= -1e-12)


def _planted_log(rng, effect, n_users=4000, n_items=200, days=300):
    """Users buy at their own Poisson rate; a first purchase of a "gateway" item (every 10th)
    brings ``effect`` extra margin as one extra purchase within the next 20 days (of a filler
    item in a group of its own, which is left out of the comparison by its group)."""
    rate = rng.gamma(2.0, 0.05, n_users)  # purchases per day
    counts = rng.poisson(rate * days)
    user = np.repeat(np.arange(n_users), counts)
    ts = rng.uniform(0, days, len(user)) * DAY_S
    item = rng.integers(0, n_items, len(user))
    gateway = np.arange(n_items) % 10 == 0
    margin = np.r_[rng.uniform(2, 6, n_items), effect]  # the filler item last
    groups = np.r_[np.arange(n_items) // 20, -1]
    order = np.lexsort((ts, item, user))
    first = np.zeros(len(user), bool)
    u, j = user[order], item[order]
    first[order] = np.r_[True, (u[1:] != u[:-1]) | (j[1:] != j[:-1])]
    trig = first & gateway[item]
    extra_ts = ts[trig] + rng.uniform(1.5, 20, trig.sum()) * DAY_S
    user = np.r_[user, user[trig]]
    ts = np.r_[ts, extra_ts]
    item = np.r_[item, np.full(trig.sum(), n_items)]
    return user, item, ts, margin, groups, gateway


def test_planted_effect_is_recovered():
    rng = np.random.default_rng(5)
    effect = 6.0
    user, item, ts, margin, groups, gateway = _planted_log(rng, effect)
    r = estimate_item_values(user, item, ts, margin, groups, horizon_days=30, skip_days=1, end_ts=300 * DAY_S)
    g = np.r_[gateway, False]
    real = np.r_[np.ones(len(gateway), bool), False]
    w = r.n_buyers.astype(float)
    gw = np.average(r.raw[g], weights=w[g])
    non = np.average(r.raw[real & ~g], weights=w[real & ~g])
    # the contrast recovers the planted effect (other purchases' windows see some of the extra
    # purchases too, which pulls the contrast a little below the effect)
    assert 0.75 * effect < gw - non < 1.1 * effect
    # and ranks the planted items first
    top = np.argsort(-r.value[real])[: g.sum()]
    assert gateway[top].mean() > 0.9


def test_estimator_matches_loops_where_items_truly_differ():
    """A small planted log, so that the between-item spread is positive and the shrunk values
    are not all 0: residual and prior spread and every value against the loops."""
    rng = np.random.default_rng(7)
    user, item, ts, margin, groups, _ = _planted_log(rng, 20.0, n_users=60, n_items=40, days=120)
    got = estimate_item_values(user, item, ts, margin, groups, horizon_days=30, skip_days=1, end_ts=120 * DAY_S)
    raw, b, s2, tau2, value = _loop_estimate(user, item, ts, margin, groups, 30 * DAY_S, DAY_S, 120 * DAY_S, 0.99)
    assert tau2 > 0 and np.count_nonzero(value) > 10
    np.testing.assert_allclose(got.raw, raw, atol=1e-9)
    assert got.residual_sd == pytest.approx(np.sqrt(s2), rel=1e-9)
    assert got.prior_sd == pytest.approx(np.sqrt(tau2), rel=1e-9)
    np.testing.assert_allclose(got.value, value, atol=1e-9)


def test_null_log_gives_values_near_zero():
    rng = np.random.default_rng(6)
    user, item, ts, margin, groups, gateway = _planted_log(rng, 0.0)
    r = estimate_item_values(user, item, ts, margin, groups, horizon_days=30, skip_days=1, end_ts=300 * DAY_S)
    real = np.r_[np.ones(len(gateway), bool), False]
    # shrinkage: with no true spread, the values are pulled well inside the raw noise
    assert np.abs(r.value[real]).mean() < 0.5 * np.abs(r.raw[real]).mean()
    assert r.prior_sd < r.residual_sd / np.sqrt(r.n_buyers[real].mean())


def test_censored_and_repeat_purchases_are_left_out():
    user = np.array([0, 0, 0, 1, 1])
    item = np.array([3, 3, 4, 3, 4])
    ts = np.array([0.0, 2.0, 5.0, 1.0, 40.0]) * DAY_S
    r = estimate_item_values(user, item, ts, np.ones(5), np.zeros(5), horizon_days=10, end_ts=45 * DAY_S)
    # user 0 buys item 3 twice (the first counts), item 4 once; user 1's item-4 window is censored
    assert r.n_buyers.tolist() == [0, 0, 0, 2, 1]
    assert r.n_purchases == 3


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"horizon_days": 0}, "horizon_days"),
        ({"skip_days": 30}, "skip_days"),
        ({"item": [0, 9]}, "item"),
        ({"ts": [0.0, np.nan]}, "ts"),
        ({"groups": [0]}, "groups"),
        ({"user": [0]}, "item"),
        ({"cap_quantile": 0}, "cap_quantile"),
    ],
)
def test_bad_input_names_the_field(kw, field):
    args = {"user": [0, 1], "item": [0, 1], "ts": [0.0, 1.0], "item_margin": [1.0, 2.0], "groups": [0, 0]}
    opts = {"horizon_days": 30, "skip_days": 0, "cap_quantile": 0.99}
    for k, v in kw.items():
        (opts if k in opts else args)[k] = v
    with pytest.raises(ValidationError) as e:
        estimate_item_values(**args, **opts)
    assert e.value.field == field


def _gateway_study(boost, cut, seed=3):
    cfg = SimConfig(
        n_items=600,
        n_types=30,
        n_customers=12000,
        gateway_share=0.08,
        history_days=90,
        gateway_visit_boost=boost,
        gateway_churn_cut=cut,
    )
    env = Environment(cfg, seed=seed)
    h = env.warm_up()
    p = h.kind == 2
    ts = h.day[p] * DAY_S + np.arange(p.sum()) * 1e-3
    cat = env.catalog
    r = estimate_item_values(
        h.customer[p], h.item[p], ts, cat.margin, cat.product_type, horizon_days=30, skip_days=1, end_ts=0.0
    )
    g, w = cat.gateway, r.n_buyers.astype(float)
    diff = np.average(r.raw[g], weights=w[g]) - np.average(r.raw[~g], weights=w[~g])
    se = r.residual_sd * np.sqrt(1 / w[g].sum() + 1 / w[~g].sum())
    return diff / se


def test_simulated_gateway_items_have_higher_value():
    """Ground truth from the simulator: gateway purchases raise visit rates and cut churn, so
    their buyers' later margin is higher than that of buyers of the same types' other items.
    With the effect switched off (same world otherwise), the contrast is noise."""
    assert _gateway_study(1.0, 0.7) > 4.0
    assert abs(_gateway_study(0.0, 0.0)) < 3.0


# ---- value-weighted policies -----------------------------------------------------------------------


def _requests(rng, n_req=30, n_items=40, d=3):
    feats = rng.normal(size=(n_items, d))
    out = []
    for _ in range(n_req):
        items = rng.choice(n_items, 12, replace=False)
        out.append(Request(context=rng.normal(size=d), items=items, item_features=feats[items]))
    return out, feats


def test_value_column_ranks_by_score_times_value():
    rng = np.random.default_rng(0)
    reqs, feats = _requests(rng)
    value = rng.uniform(0.5, 3.0, 40)
    plain = make("linucb:alpha=0.5,epsilon=0", context_dim=3, item_dim=3)
    weighted = make("linucb:alpha=0.5,epsilon=0,value=worth", context_dim=3, item_dim=3, item_columns={"worth": value})
    ctx = rng.normal(size=(200, 3))
    items = rng.integers(0, 40, 200)
    for p in (plain, weighted):
        p.update(ctx, feats[items], (ctx @ np.ones(3) * 0.1 + feats[items][:, 0] * 0.2 > 0).astype(float))
    for r in reqs:
        s = plain.scores(r)
        want = np.argsort(-(np.maximum(s, 0) * value[r.items]), kind="stable")[:4]
        slate = weighted.distribution(r, 4).sample(np.random.default_rng(1))
        assert list(slate.index) == list(want)
    assert "value=worth" in weighted.spec


def test_value_weighted_batch_equals_one_by_one():
    rng = np.random.default_rng(1)
    reqs, feats = _requests(rng)
    value = rng.uniform(0.0, 2.0, 40)
    value[:5] = 0.0  # zero values tie: the batched path must still agree
    pol = make("linucb:alpha=1.0,epsilon=0.2,value=v", context_dim=3, item_dim=3, item_columns={"v": value})
    ctx = rng.normal(size=(100, 3))
    items = rng.integers(0, 40, 100)
    pol.update(ctx, feats[items], rng.random(100))
    batch = pol.distributions(reqs, 4)
    for r, dist in zip(reqs, batch):
        alone = pol.distribution(r, 4)
        np.testing.assert_array_equal(dist.marginals(), alone.marginals())


def test_set_value_checks_and_applies():
    value = np.ones(10)
    pol = make("linucb:alpha=0.0,epsilon=0,value=v", context_dim=2, item_dim=2, item_columns={"v": value})
    with pytest.raises(ValidationError) as e:
        pol.set_value(np.ones(9))
    assert e.value.field == "value"
    with pytest.raises(ValidationError):
        pol.set_value(-np.ones(10))
    with pytest.raises(ValidationError) as e:
        make("linucb:value=missing", context_dim=2, item_dim=2, item_columns={"v": value})
    assert e.value.field == "value" and "missing" in str(e.value)
    new = np.zeros(10)
    new[7] = 5.0
    pol.set_value(new)
    feats = np.eye(10)[:, :2] + 0.5
    r = Request(context=np.ones(2), items=np.arange(10), item_features=feats)
    pol.update(np.ones((5, 2)), feats[:5], np.ones(5))
    assert pol.distribution(r, 1).sample(np.random.default_rng(0)).index[0] == 7
