"""Replenishment of consumables: per-customer cycles, interval noise, loyalty, lapses, the
carousel's due boost, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from banditrec.errors import ValidationError
from simulator import Environment, SimConfig
from simulator.state import NOT_DUE

BASE = SimConfig(
    n_items=400, n_types=20, n_categories=4, n_customers=3000, consumable_share=0.5, stock_level=1000, history_days=10
)


def replenishments(h):
    """Mask of the purchases made in replenishment orders: sessions without a view (every visit
    views at least one item)."""
    p = h.select("purchase")
    return p, ~np.isin(p.session, h.select("view").session)


def consecutive(env, p):
    """(customer, column, interval days, later is a replenishment, later item, earlier item) of
    consecutive purchases of one consumable type by one customer."""
    cat = env.catalog
    t = cat.product_type[p.item]
    cons = cat.consumable[t]
    key = p.customer * cat.n_types + t
    o = np.lexsort((np.arange(len(key)), key))
    o = o[cons[o]]
    k, d, cust, item = key[o], p.day[o], p.customer[o], p.item[o]
    same = k[1:] == k[:-1]
    col = cat.consumable_column[t[o]]
    return cust[1:][same], col[1:][same], np.diff(d)[same], o[1:][same], item[1:][same], item[:-1][same]


def test_customer_cycles_are_lognormal_around_the_type_cycle():
    """3,000 customers x 10 types: mean log ratio within 4 standard errors of 0, sd within 3%."""
    env = Environment(BASE.replace(reorder_customer_spread=0.4), seed=1)
    cat = env.catalog
    cyc = env.population.reorder_cycle
    assert cyc.shape == (BASE.n_customers, int(cat.consumable.sum())) and cyc.dtype == np.float32
    z = np.log(cyc / cat.reorder_days[cat.consumable][None, :])
    assert abs(z.mean()) < 4 * 0.4 / np.sqrt(z.size)
    assert z.std() == pytest.approx(0.4, rel=0.03)
    assert np.abs(z.mean(axis=0)).max() < 4 * 0.4 / np.sqrt(BASE.n_customers)
    flat = Environment(BASE.replace(reorder_customer_spread=0.0), seed=1)
    np.testing.assert_array_equal(
        flat.population.reorder_cycle, np.broadcast_to(cat.reorder_days[cat.consumable], cyc.shape)
    )


@pytest.fixture(scope="module")
def long_run():
    env = Environment(BASE.replace(history_days=150, replenish_rate=1.0, reorder_loyalty=0.5), seed=2)
    return env, env.warm_up()


def _due_today(env, item_of_column):
    """Make every live customer due today for each consumable column, last item given per column."""
    st = env.state
    st.due_day[:] = NOT_DUE
    st.due_day[st.alive, :] = env.day
    st.last_consumable[:] = np.asarray(item_of_column)[None, :]


def test_realised_intervals_have_the_configured_noise():
    """No other purchases, no churn, no stock-outs: every customer replenishes every consumable on day 0, then
    again after a realised interval; log(interval / the customer's cycle) over 30,000 intervals
    has mean 0 within 0.02 (days are whole) and sd reorder_noise within 3%."""
    cfg = BASE.replace(
        history_days=120,
        organic_purchase=0.0,
        cart_rate=0.0,
        churn_hazard=0.0,
        replenish_rate=1.0,
        reorder_loyalty=1.0,
        reorder_days_high=30,
        stock_level=10**6,
    )
    env = Environment(cfg, seed=2)
    cat = env.catalog
    types = np.flatnonzero(cat.consumable)
    _due_today(env, [cat.items_of_type(t)[0] for t in types])
    env.stock.units[:] = cfg.stock_level  # never out of stock: no waiting
    h = env.warm_up()
    p, repl = replenishments(h)
    assert repl.all()
    cust, col, iv, later, _, _ = consecutive(env, p)
    first = np.r_[True, (cust[1:] != cust[:-1]) | (col[1:] != col[:-1])]  # the interval after day -120
    assert first.sum() == cfg.n_customers * len(types)
    z = np.log(iv[first] / env.population.reorder_cycle[cust[first], col[first]])
    assert abs(z.mean()) < 0.02
    assert z.std() == pytest.approx(cfg.reorder_noise, rel=0.03)


def test_replenishments_are_loyal_at_the_configured_rate(long_run):
    """reorder_loyalty 0.5: the share of replenishments repeating the last item is 0.5 + 0.5 x
    (the share of substitute picks that happen to be the last item), within 4 standard errors."""
    env, h = long_run
    p, repl = replenishments(h)
    _, _, iv, later, item, prev = consecutive(env, p)
    r = repl[later] & (iv > 0)
    same = item[r] == prev[r]
    # a substitute pick equals the last item at some rate s; measure s where loyalty is 0
    env0 = Environment(env.config.replace(reorder_loyalty=0.0), seed=2)
    h0 = env0.warm_up()
    p0, repl0 = replenishments(h0)
    _, _, iv0, later0, item0, prev0 = consecutive(env0, p0)
    r0 = repl0[later0] & (iv0 > 0)
    s = (item0[r0] == prev0[r0]).mean()
    assert s < 0.5
    want = 0.5 + 0.5 * s
    se = np.sqrt(want * (1 - want) / r.sum() + 0.25 * s * (1 - s) / r0.sum())
    assert abs(same.mean() - want) < 4 * se


@pytest.mark.parametrize("rate", [0.3, 1.0])
def test_due_customers_replenish_at_the_configured_rate_and_reschedule(rate):
    """All 3,000 customers due at once: the share who buy is replenish_rate (4 standard errors),
    loyalty 1 buys the last item, the others lapse (no due day), and the buyers' next due day is
    their cycle times the noise, rounded."""
    env = Environment(BASE.replace(replenish_rate=rate, reorder_loyalty=1.0, history_days=0), seed=3)
    cat = env.catalog
    t = int(np.flatnonzero(cat.consumable)[0])
    item = int(cat.items_of_type(t)[0])
    items = [cat.items_of_type(u)[0] for u in np.flatnonzero(cat.consumable)]
    _due_today(env, items)
    env.state.due_day[:, 1:] = NOT_DUE
    env.recording = True
    env.requests()
    h = env.events()
    p, repl = replenishments(h)
    bought = p.customer[repl & (p.item == item)]
    n = int(env.state.alive.sum())
    assert abs(len(bought) / n - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9
    assert len(np.unique(bought)) == len(bought)
    lapsed = np.setdiff1d(np.arange(env.config.n_customers), bought)
    organic = p.customer[~repl & (cat.product_type[p.item] == t)]
    lapsed = np.setdiff1d(lapsed, organic)
    assert (env.state.due_day[lapsed, 0] == NOT_DUE).all()
    gap = env.state.due_day[bought, 0].astype(float) - env.day
    z = np.log(gap / env.population.reorder_cycle[bought, 0])
    assert (gap >= 1).all()
    assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(env.config.reorder_noise, rel=0.15)
    # one order (session) per replenishing customer
    assert len(np.unique(p.session[repl])) == len(np.unique(p.customer[repl]))


def test_no_replenishment_when_the_rate_is_zero():
    env = Environment(BASE.replace(history_days=60, replenish_rate=0.0), seed=4)
    h = env.warm_up()
    _, repl = replenishments(h)
    assert len(h.select("purchase")) > 100 and not repl.any()


def test_out_of_stock_replenishment_waits_for_the_next_day():
    env = Environment(BASE.replace(replenish_rate=1.0, reorder_loyalty=1.0, history_days=0), seed=5)
    t = int(np.flatnonzero(env.catalog.consumable)[0])
    item = int(env.catalog.items_of_type(t)[0])
    _due_today(env, [item] * int(env.catalog.consumable.sum()))
    env.stock.units[item] = 0
    env.recording = True
    env.requests()
    p = env.events().select("purchase")
    bought = np.isin(np.arange(env.config.n_customers), p.customer[env.catalog.product_type[p.item] == t])
    waiting = env.state.alive & ~bought
    assert waiting.sum() > 2000
    assert (env.state.due_day[waiting, 0] == env.day).all()


def test_the_due_boost_reads_the_customers_own_cycle():
    """A consumable bought 20 days ago: due (attraction logit + reorder_boost) for a customer
    whose cycle is 15 days, not due for one whose cycle is 25, whatever the type's cycle."""
    env = Environment(BASE.replace(history_days=0, reorder_boost=2.0), seed=6)
    cat = env.catalog
    req = env.requests()
    assert len(req) >= 2
    req = req.take([0, 1])
    t = int(np.flatnonzero(cat.consumable)[0])
    item = int(cat.items_of_type(t)[0])
    req.owned[:] = -1
    req.owned[:, 0] = item
    req.owned_day[:, 0] = req.day - 20
    c0, c1 = req.customer
    cyc = env.population.reorder_cycle
    col = int(cat.consumable_column[t])
    slates = np.array([[item], [item]])
    logit = lambda: np.log(env.model.attraction(req, slates)[:, 0] / (1 - env.model.attraction(req, slates)[:, 0]))  # noqa: E731
    cyc[c0, col], cyc[c1, col] = 25.0, 25.0
    base = logit()
    cyc[c0, col], cyc[c1, col] = 15.0, 25.0
    boosted = logit()
    assert boosted[0] - base[0] == pytest.approx(2.0, abs=1e-6)
    assert boosted[1] == pytest.approx(base[1], abs=1e-9)


def test_same_seed_same_replenishment():
    cfg = BASE.replace(n_customers=500, history_days=60)
    a, b = Environment(cfg, seed=7), Environment(cfg, seed=7)
    ha, hb = a.warm_up(), b.warm_up()
    for name in ("customer", "item", "day", "session", "kind"):
        np.testing.assert_array_equal(getattr(ha, name), getattr(hb, name))
    np.testing.assert_array_equal(a.state.due_day, b.state.due_day)
    np.testing.assert_array_equal(a.population.reorder_cycle, b.population.reorder_cycle)
    c = Environment(cfg, seed=8)
    assert not np.array_equal(a.population.reorder_cycle, c.population.reorder_cycle)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(reorder_customer_spread=-0.1), "reorder_customer_spread"),
        (dict(reorder_noise=float("nan")), "reorder_noise"),
        (dict(replenish_rate=1.5), "replenish_rate"),
        (dict(reorder_loyalty=-0.2), "reorder_loyalty"),
    ],
)
def test_replenishment_settings_are_checked(changes, field):
    with pytest.raises(ValidationError) as exc:
        BASE.replace(**changes)
    assert exc.value.field == field


def test_replenishments_count_in_revenue_not_in_visits_orders():
    """Orders are visits with a purchase: a day with 3,000 replenishments has as many orders as
    visitors who bought in their visit; purchases and revenue include the replenishments."""
    env = Environment(BASE.replace(replenish_rate=1.0, history_days=0), seed=9)
    cat = env.catalog
    _due_today(env, [cat.items_of_type(t)[0] for t in np.flatnonzero(cat.consumable)])
    env.stock.units[:] = 10**6
    env.recording = True
    env.requests()
    k = env.advance_day()
    p, repl = replenishments(env.events())
    assert k.replenishments == repl.sum() > 2000
    assert k.replenishment_revenue == pytest.approx(cat.price[p.item[repl]].sum())
    assert k.purchases == len(p) and k.revenue == pytest.approx(cat.price[p.item].sum())
    assert k.orders == len(np.unique(p.customer[~repl]))
    assert k.aov == pytest.approx(cat.price[p.item[~repl]].sum() / k.orders)
