"""The retail simulator: exact choice probabilities, complements, gateways, state, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from banditrec.errors import ValidationError
from simulator import Environment, SimConfig
from simulator.state import Stock, push

SMALL = SimConfig(n_items=400, n_types=20, n_categories=4, n_customers=3000, history_days=10)


@pytest.fixture(scope="module")
def warm_env():
    env = Environment(SMALL, seed=11)
    env.warm_up()
    return env


def random_slates(env, req, k, rng):
    keys = rng.random((len(req), env.catalog.n_items))
    return np.argsort(keys, axis=1)[:, :k]


def scalar_terms(env, req, r, j):
    """Attraction and purchase probability of item j for request r, written out one at a time."""
    cat, pop, c = env.catalog, env.population, env.config
    u = int(req.customer[r])
    held = [int(x) for x in list(req.owned[r]) + list(req.cart[r]) if x >= 0]
    comp = max([float(cat.complement[cat.product_type[h], cat.product_type[j]]) for h in held], default=0.0)
    t = cat.product_type[j]
    owned_days = [int(d) for x, d in zip(req.owned[r], req.owned_day[r]) if x >= 0 and cat.product_type[x] == t]
    owned = bool(owned_days) and not cat.consumable[t]
    cycle = pop.reorder_cycle[u, cat.consumable_column[t]] if cat.consumable[t] else None
    due = bool(owned_days) and cat.consumable[t] and req.day - max(owned_days) >= cycle
    lp = math.log(cat.price[j]) - cat.log_price_ref
    taste = sum(float(a) * float(b) for a, b in zip(pop.preference[u], cat.latent[j]))
    z = (
        c.base_logit
        + cat.bias[j]
        + taste
        - pop.price_sensitivity[u] * lp
        + c.complement_boost * comp
        - c.owned_penalty * owned
        + c.reorder_boost * due
    )
    q = 1 / (1 + math.exp(-(c.purchase_logit - pop.price_sensitivity[u] * lp + c.complement_boost * comp)))
    return 1 / (1 + math.exp(-z)), q * bool(req.available[j]), (comp, owned, due)


def test_attraction_and_purchase_equal_the_written_out_formula(warm_env):
    env = Environment(SMALL, seed=11)
    env.warm_up()
    req = env.requests()
    rng = np.random.default_rng(0)
    slates = random_slates(env, req, 6, rng)
    a, q = env.model.attraction_and_purchase(req, slates)
    seen = set()
    for r in range(min(len(req), 300)):
        for k in range(6):
            sa, sq, terms = scalar_terms(env, req, r, int(slates[r, k]))
            assert a[r, k] == pytest.approx(sa, rel=1e-5)
            assert q[r, k] == pytest.approx(sq, rel=1e-5)
            seen.add((terms[0] > 0, terms[1], terms[2]))
    # the sample exercised complements and ownership, not only the plain taste term
    assert (True, False, False) in seen and any(o for _, o, _ in seen)


@pytest.mark.parametrize("click_model", ["pbm", "cascade"])
def test_click_and_purchase_frequencies_match_the_exact_probabilities(click_model):
    """40,000 draws of 5 carousels of 4 slots: every slot's click and purchase frequency within
    4.5 binomial standard errors of the exact probability; mean revenue within 4.5 SE of the
    exact expectation."""
    env = Environment(SMALL.replace(click_model=click_model), seed=3)
    env.warm_up()
    req = env.requests()
    rng = np.random.default_rng(1)
    pick = np.arange(5)
    base = req.take(pick)
    slates = random_slates(env, base, 4, rng)
    reps = 40_000
    big = base.take(np.repeat(np.arange(5), reps))
    out = env.outcomes(big, np.repeat(slates, reps, axis=0), rng)
    a, q = env.model.attraction_and_purchase(base, slates)
    p_click = env.model.click_probabilities(base, slates)
    for p, drawn in ((p_click, out.click), (p_click * q, out.purchase)):
        freq = drawn.reshape(5, reps, 4).mean(axis=1)
        se = np.sqrt(p * (1 - p) / reps)
        assert (np.abs(freq - p) <= 4.5 * se + 1e-12).all()
    revenue = out.revenue.sum(axis=1).reshape(5, reps)
    exact = env.expected_reward(base, slates, "revenue")
    se = revenue.std(axis=1) / math.sqrt(reps)
    assert (np.abs(revenue.mean(axis=1) - exact) <= 4.5 * se).all()
    if click_model == "cascade":  # at most one click per carousel, and the closed form
        assert out.click.sum(axis=1).max() == 1
        rho = env.config.cascade_patience
        assert p_click[0, 2] == pytest.approx(a[0, 2] * rho**2 * (1 - a[0, 0]) * (1 - a[0, 1]))
    else:
        theta = (np.arange(1, 5.0)) ** -(env.config.eta * np.asarray(env.config.device_eta)[base.device[0]])
        np.testing.assert_allclose(p_click[0], a[0] * theta)


def test_expected_reward_kinds_are_the_sum_over_slots(warm_env):
    env = Environment(SMALL, seed=5)
    env.warm_up()
    req = env.requests()
    slates = random_slates(env, req, 3, np.random.default_rng(2))
    a, q = env.model.attraction_and_purchase(req, slates)
    pc = env.model.click_probabilities(req, slates)
    np.testing.assert_allclose(env.expected_reward(req, slates, "click"), pc.sum(1))
    np.testing.assert_allclose(env.expected_reward(req, slates, "purchase"), (pc * q).sum(1))
    np.testing.assert_allclose(env.expected_reward(req, slates, "margin"), (pc * q * env.catalog.margin[slates]).sum(1))
    np.testing.assert_allclose(
        env.expected_reward(req, slates, "royalty"), (pc * q * env.catalog.columns["royalty"][slates]).sum(1)
    )
    with pytest.raises(ValidationError, match="kind must be one of click, purchase, revenue, margin, royalty"):
        env.expected_reward(req, slates, "profit")


def test_complement_graph_is_directed_from_pricier_to_cheaper_types():
    env = Environment(SimConfig(n_items=2000, n_types=60), seed=1)
    A = env.catalog.complement
    assert (A > 0).sum() >= 60  # most types have partners
    assert not ((A > 0) & (A.T > 0)).any()
    src, dst = np.nonzero(A)
    typical = np.array([np.median(env.catalog.price[env.catalog.items_of_type(t)]) for t in range(60)])
    # edges follow the types' drawn price levels; the items' median price agrees in most cases
    assert (typical[src] > typical[dst]).mean() > 0.8


def test_complement_graph_does_not_depend_on_the_order_argpartition_returns(monkeypatch):
    """numpy's argpartition returns the k selected in an order of its (CPU-dependent SIMD)
    choosing; the graph's edge weights are drawn edge by edge, so the world must fix the order.
    Reversing what argpartition returns (a CPU could) gives the same graph."""
    import simulator.world as world

    def build():
        return world._complement_graph(
            40, np.arange(40) % 5, np.random.default_rng(2).normal(size=40), 4, np.random.default_rng(3)
        )

    def reordered(a, kth, axis=-1):  # the kth + 1 smallest first, as a set, in reverse order
        out = real(a, kth, axis=axis)
        out[..., : kth + 1] = out[..., kth::-1]
        return out

    want = build()
    real = np.argpartition
    monkeypatch.setattr(world.np, "argpartition", reordered)
    assert (want > 0).sum() > 40
    np.testing.assert_array_equal(build(), want)


def test_generated_co_purchases_show_the_complement_asymmetry():
    """In the pre-period, a later purchase in a visit is a complement of the earlier one far
    more often than the other way round (binomial test on pairs that are complements one way)."""
    env = Environment(SimConfig(n_customers=10_000, n_items=2000, n_types=60, history_days=20), seed=2)
    history = env.warm_up()
    first, later = history.ordered_pairs("purchase")
    t = env.catalog.product_type
    A = env.catalog.complement
    forward = int((A[t[first], t[later]] > 0).sum())
    backward = int((A[t[later], t[first]] > 0).sum())
    assert forward > 200
    assert stats.binomtest(backward, forward + backward, 0.5, alternative="less").pvalue < 1e-6
    assert backward < 0.2 * forward
    # and the history has all three signals: views, co-views within a visit, view-then-buy
    v1, v2 = history.ordered_pairs("view")
    assert len(history.select("view")) > 5 * len(history.select("purchase")) > 0
    assert (t[v1] == t[v2]).mean() > 0.9  # co-views are substitutes (same type)


def _retention_by_gateway(config, seed):
    env = Environment(config, seed=seed)
    env.warm_up()
    alive0 = env.state.alive.copy()
    bought_before = env.state.purchases >= 0
    had_gateway = env.state.gateway.copy()
    rng = np.random.default_rng(seed)
    for _ in range(90):
        req = env.requests()
        env.respond(req, random_slates(env, req, 4, rng), rng)
        env.advance_day()
    # compare customers alive at day 0 who had bought in the pre-period, gateway vs not, within
    # strata of their (hidden) base visit rate and churn hazard: comparable customers
    pop = env.population
    keep = alive0 & bought_before.any(axis=1)
    strata = np.digitize(pop.visit_rate0, np.quantile(pop.visit_rate0, [0.25, 0.5, 0.75])) * 4 + np.digitize(
        pop.churn0, np.quantile(pop.churn0, [0.25, 0.5, 0.75])
    )
    diffs, weights, variances = [], [], []
    for s in np.unique(strata[keep]):
        g = keep & (strata == s) & had_gateway
        n = keep & (strata == s) & ~had_gateway
        if g.sum() < 5 or n.sum() < 5:
            continue
        pg, pn = env.state.alive[g].mean(), env.state.alive[n].mean()
        diffs.append(pg - pn)
        weights.append(g.sum())
        variances.append(max(pg * (1 - pg), 1e-3) / g.sum() + max(pn * (1 - pn), 1e-3) / n.sum())
    w = np.asarray(weights) / np.sum(weights)
    diff = float(w @ np.asarray(diffs))
    se = float(np.sqrt(w**2 @ np.asarray(variances)))
    return diff, se


@pytest.mark.slow
def test_gateway_buyers_are_retained_better_than_comparable_customers():
    config = SimConfig(n_customers=20_000, n_items=1000, n_types=40, history_days=20, gateway_share=0.05)
    diff, se = _retention_by_gateway(config, seed=4)
    assert diff / se > 3.0  # one-sided z-test, p < 0.0014
    # the same study with the gateway effect switched off finds nothing
    off, se_off = _retention_by_gateway(config.replace(gateway_churn_cut=0.0, gateway_visit_boost=0.0), seed=4)
    assert abs(off) < 3.0 * se_off
    assert diff > off + 2 * math.hypot(se, se_off)


def test_better_carousels_bring_customers_back():
    """Satisfaction is long-term state: showing each visitor the most attractive of 40 random
    items, instead of the least attractive, raises later visits (same world, same seed)."""
    visits = {}
    for name, pick in (("best", -1), ("worst", 1)):
        env = Environment(SMALL, seed=9)
        env.warm_up()
        rng = np.random.default_rng(0)
        total = 0
        for day in range(30):
            req = env.requests()
            pool = random_slates(env, req, 40, rng)
            a = env.model.attraction(req, pool)
            order = np.argsort(pick * a, axis=1, kind="stable")[:, :4]
            env.respond(req, np.take_along_axis(pool, order, axis=1), rng)
            k = env.advance_day()
            total += k.visits if day >= 15 else 0
        visits[name] = total
    assert visits["best"] > 1.1 * visits["worst"]


def test_lifetime_value_is_the_discounted_margin_of_recorded_purchases():
    env = Environment(SMALL.replace(ltv_horizon_days=8), seed=6)
    env.warm_up()
    env.recording = True
    rng = np.random.default_rng(0)
    for _ in range(12):
        req = env.requests()
        env.respond(req, random_slates(env, req, 4, rng), rng)
        env.advance_day()
    events = env.events().select("purchase", from_day=0, before_day=8)
    expected = np.zeros(SMALL.n_customers)
    delta = (1 + SMALL.annual_discount) ** (-1 / 365)
    for cust, item, day in zip(events.customer, events.item, events.day):
        expected[cust] += env.catalog.margin[item] * delta**day
    np.testing.assert_allclose(env.state.ltv, expected)
    assert expected.sum() > 0


def test_same_seed_same_world_and_run_different_seed_different():
    def run(seed):
        env = Environment(SMALL, seed=seed)
        env.warm_up()
        rng = np.random.default_rng(1)
        for _ in range(5):
            req = env.requests()
            env.respond(req, random_slates(env, req, 3, rng), rng)
            env.advance_day()
        return env

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a.catalog.price, b.catalog.price)
    np.testing.assert_array_equal(a.catalog.complement, b.catalog.complement)
    np.testing.assert_array_equal(a.state.purchases, b.state.purchases)
    np.testing.assert_array_equal(a.state.ltv, b.state.ltv)
    assert [k.clicks for k in a.kpis] == [k.clicks for k in b.kpis]
    assert not np.array_equal(a.catalog.price, c.catalog.price)


def test_days_use_common_random_numbers_across_policies():
    """Two policies on one seed: day 0's visitors (before any carousel) are the same customers."""
    e1, e2 = Environment(SMALL, seed=3), Environment(SMALL, seed=3)
    e1.warm_up(), e2.warm_up()
    r1, r2 = e1.requests(), e2.requests()
    np.testing.assert_array_equal(r1.customer, r2.customer)
    np.testing.assert_array_equal(r1.views, r2.views)


@pytest.mark.parametrize("start", [0, -100])  # the pre-period's days are negative
def test_stock_runs_out_and_comes_back(start):
    c = SimConfig(n_items=50, n_types=5, n_categories=1, stock_level=3, restock_days=4.0)
    stock = Stock.new(c, np.random.default_rng(0))
    stock.take(np.repeat(np.arange(10), 3))
    assert not stock.available[:10].any() and stock.available[10:].all()
    rng = np.random.default_rng(1)
    back_on = {}
    for day in range(start, start + 60):
        stock.advance(day, c, rng)
        for i in np.flatnonzero(stock.available[:10]):
            back_on.setdefault(int(i), day)
    assert sorted(back_on) == list(range(10)) and (stock.units[:10] == 3).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), max_size=12), max_size=4), st.integers(1, 4))
def test_ring_push_keeps_each_customers_latest_entries_in_order(batches, size):
    ring = np.full((5, size), -1)
    pointer = np.zeros(5, np.int16)
    pushed = {c: [] for c in range(5)}
    value = 100
    for rows in batches:  # several pushes: the pointer carries over between them
        values = np.arange(value, value + len(rows))
        value += len(rows)
        push(ring, pointer, np.asarray(rows, np.int64), values)
        for r, v in zip(rows, values.tolist()):
            pushed[r].append(v)
    for cust in range(5):
        # reading the ring from its pointer gives the pushes oldest to newest
        read = [x for x in np.roll(ring[cust], -int(pointer[cust])).tolist() if x >= 0]
        assert read == pushed[cust][-size:]


def test_request_and_respond_refuse_misuse(warm_env):
    env = Environment(SMALL, seed=1)
    env.warm_up()
    req = env.requests()
    with pytest.raises(ValidationError, match="already called for day 0"):
        env.requests()
    with pytest.raises(ValidationError, match=r"shape \(\d+, K\)") as info:
        env.respond(req, np.zeros((len(req) + 1, 3), dtype=int), np.random.default_rng(0))
    assert info.value.field == "slates"
    dup = np.tile([1, 2, 1], (len(req), 1))
    with pytest.raises(ValidationError, match="shows an item twice"):
        env.respond(req, dup, np.random.default_rng(0))
    with pytest.raises(ValidationError, match="outside"):
        env.respond(req, np.full((len(req), 1), 10_000), np.random.default_rng(0))
    env.advance_day()
    with pytest.raises(ValidationError, match="from day 0; the shop is at day 1"):
        env.respond(req, random_slates(env, req, 2, np.random.default_rng(0)), np.random.default_rng(0))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_items": 0}, "SimConfig.n_items must be >= 1, got 0"),
        ({"n_items": 2.5}, "SimConfig.n_items must be an integer, got 2.5"),
        ({"gateway_share": 1.5}, "SimConfig.gateway_share must be <= 1.0, got 1.5"),
        ({"visit_rate": 0.0}, "SimConfig.visit_rate must be > 0.0, got 0.0"),
        ({"eta": float("nan")}, "SimConfig.eta must be a finite number, got nan"),
        ({"click_model": "dbn"}, "SimConfig.click_model must be 'pbm' or 'cascade', got 'dbn'"),
        ({"extra_columns": ["price"]}, "distinct names other than 'price' and 'margin'"),
        ({"device_eta": [1.0, 2.0]}, "device_eta must have 3 numbers"),
        (
            {"margin_rate_low": 0.5, "margin_rate_high": 0.2},
            "margin_rate_low \\(0.5\\) must not exceed margin_rate_high",
        ),
        ({"n_types": 500, "n_items": 100}, "n_types \\(500\\) must not exceed n_items"),
        ({"colour": 1}, "SimConfig has no field 'colour'"),
    ],
)
def test_config_errors_name_the_field_and_value(changes, message):
    with pytest.raises(ValidationError, match=message) as info:
        SimConfig().replace(**changes)
    assert info.value.field == next(iter(changes)) or info.value.field in changes


def test_config_from_toml_tables_and_errors(tmp_path):
    good = tmp_path / "shop.toml"
    good.write_text(
        '[catalog]\nn_items = 300\nextra_columns = ["royalty", "shipping"]\n'
        '[customers]\nn_customers = 1000\n[choice]\nclick_model = "cascade"\n'
    )
    c = SimConfig.from_toml(good)
    assert (c.n_items, c.n_customers, c.click_model, c.extra_columns) == (300, 1000, "cascade", ("royalty", "shipping"))
    assert SimConfig.from_dict(c.to_dict()) == c
    env = Environment(c.replace(n_types=10, n_categories=2), seed=0)
    assert set(env.catalog.columns) == {"royalty", "shipping"}
    for text, message in [
        ("[catalog]\nn_itemz = 3\n", "unknown setting 'n_itemz'"),
        ("n_items = 'many'\n", "SimConfig.n_items must be an integer, got 'many'"),
        ("n_items = [\n", "is not valid TOML"),
        ("n_items = 300\n[x]\nn_items = 200\n", "setting 'n_items' is given twice"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValidationError, match=message):
            SimConfig.from_toml(bad)
    with pytest.raises(ValidationError, match="does not exist"):
        SimConfig.from_toml(tmp_path / "missing.toml")


def test_visit_rates_follow_the_configured_mean():
    env = Environment(SimConfig(n_customers=20_000, history_days=0, churn_hazard=0.0), seed=0)
    req = env.requests()
    rate = env.population.visit_rate0
    expected = float((-np.expm1(-rate)).sum())
    assert abs(len(req) - expected) < 4.5 * math.sqrt(expected)
    assert rate.mean() == pytest.approx(0.15, rel=0.03)


def test_new_items_launch_on_day_zero_without_history():
    env = Environment(
        SimConfig(n_items=2000, n_types=40, n_customers=5000, history_days=10, new_item_share=0.1), seed=3
    )
    new = np.flatnonzero(env.catalog.launch_day == 0)
    assert 120 < len(new) < 280
    assert not env.stock.available[new].any()
    history = env.warm_up()
    assert len(history) > 10_000 and not np.isin(history.item, new).any()
    assert env.stock.available[new].all()
    env.recording = True
    for _ in range(3):
        env.requests()
        env.advance_day()
    assert np.isin(env.events().select("view", from_day=0).item, new).any()  # browsable once launched


def test_titles_share_words_within_a_type_and_a_brand():
    cat = Environment(SimConfig(n_items=600, n_types=30, n_categories=5), seed=0).catalog
    words = [set(t.split()) for t in cat.title]
    same_type = [(i, j) for i in range(50) for j in range(i + 1, 600) if cat.product_type[i] == cat.product_type[j]]
    other = [(i, j) for i in range(50) for j in range(i + 1, 600) if cat.category[i] != cat.category[j]]
    assert min(len(words[i] & words[j]) for i, j in same_type) >= 3  # category word + two type words
    assert max(len(words[i] & words[j] - {w for w in words[i] if w.startswith("m")}) for i, j in other) <= 1
    assert all(cat.brand[i] // SimConfig().brands_per_category == cat.category[i] for i in range(600))


def test_one_visitor_at_a_time_is_the_batch_response_of_that_visitor():
    """The per-request wrapper (what an HTTP demo client uses) answers exactly as the batch API
    does for that one request and the same draws."""
    a, b = Environment(SMALL, seed=2), Environment(SMALL, seed=2)
    a.warm_up(), b.warm_up()
    ra, rb = a.requests(), b.requests()
    info = ra.describe(3)
    assert info["user_id"] == f"u{ra.customer[3]}" and len(info["context"]) == a.context_dim
    assert set(info["cart"] + info["purchases"] + info["views"]) <= set(a.catalog.item_ids)
    slate = [7, 99, 12]
    one = a.respond_one(ra, 3, [f"i{j}" for j in slate], np.random.default_rng(5))
    batch = b.respond(rb.take(3), np.array([slate]), np.random.default_rng(5))
    assert one == {
        "click": batch.click[0].astype(int).tolist(),
        "purchase": batch.purchase[0].astype(int).tolist(),
        "margin": batch.margin[0].tolist(),
    }
    np.testing.assert_array_equal(a.state.purchases, b.state.purchases)
    with pytest.raises(ValidationError, match="item ids look like 'i42'"):
        a.respond_one(ra, 3, ["apple"], np.random.default_rng(5))


def test_active_customers_are_those_who_visited_in_the_last_30_days():
    env = Environment(SMALL.replace(history_days=5), seed=4)
    env.warm_up()
    k = env.kpis[-1]
    visited = env.state.visits > 0
    assert k.active_30d == int((env.state.alive & visited).sum()) < int(env.state.alive.sum())


def test_recent_items_come_newest_first():
    env = Environment(SMALL.replace(history_days=25), seed=8)
    env.recording = True
    env.warm_up()
    req = env.requests()
    events = env.events()
    checked = 0
    for i in range(len(req)):
        c = int(req.customer[i])
        rec = req.recent(i)
        mine = events.select("view", before_day=req.day)
        views = mine.item[mine.customer == c]
        if len(rec["views"]) >= 2 and len(views) >= len(rec["views"]):
            # the ring holds the last V views (today's included): newest first
            today = events.select("view", from_day=req.day)
            all_views = np.r_[views, today.item[today.customer == c]]
            np.testing.assert_array_equal(rec["views"], all_views[::-1][: len(rec["views"])])
            checked += 1
        days = req.owned_day[i][np.argsort(-req.owned_day[i].astype(int), kind="stable")]
        assert len(rec["purchases"]) == 0 or (np.diff(days[: len(rec["purchases"])]) <= 0).all()
    assert checked > 20


def test_large_segment_counts_and_dimensions_keep_contexts_one_hot():
    env = Environment(
        SimConfig(n_items=300, n_types=10, n_categories=2, n_customers=2000, dim=125, n_segments=200, history_days=0),
        seed=0,
    )
    req = env.requests()
    ctx = req.context
    c = env.config
    np.testing.assert_array_equal(ctx[:, c.dim : c.dim + c.n_segments].sum(axis=1), 1.0)
    np.testing.assert_array_equal(ctx[:, c.dim + c.n_segments : c.dim + c.n_segments + 3].sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.argmax(ctx[:, c.dim : c.dim + c.n_segments], axis=1), req.segment)
