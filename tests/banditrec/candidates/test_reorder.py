"""The reorder model: recovery of known cycles, shrinkage towards the population, due
probabilities against Monte Carlo, candidates, round trip, bad inputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates.reorder import ReorderModel
from banditrec.candidates.signals import DAY_S, Interactions
from banditrec.errors import ValidationError

ITEMS_PER_TYPE = 5
CONSUMABLE = np.array([True, True, False, True])
TYPE_CYCLE = np.array([20.0, 40.0, 1.0, 10.0])  # median days; type 2 is not consumable
TAU, SIGMA = 0.3, 0.4  # between-customer and within-customer sd of log intervals
TYPES = np.repeat(np.arange(len(CONSUMABLE)), ITEMS_PER_TYPE)
HORIZON_DAYS = 365.0


def renewal_events(n_users: int, seed: int, loyalty: float = 0.7, lapse: float = 0.0):
    """Purchases of a known lognormal renewal process: customer c's median cycle of type t is
    ``TYPE_CYCLE[t] exp(TAU z)``, each interval that times ``exp(SIGMA z')``; the process started
    before the window (a random phase); after each purchase the customer stops buying the type
    with probability ``lapse``. Returns (events, true cycles (n_users, T))."""
    rng = np.random.default_rng(seed)
    T = len(CONSUMABLE)
    true = TYPE_CYCLE[None, :] * np.exp(TAU * rng.normal(size=(n_users, T)))
    users, items, ts = [], [], []
    for t in np.flatnonzero(CONSUMABLE):
        k = int(4 * HORIZON_DAYS / TYPE_CYCLE[t]) + 5
        iv = true[:, t : t + 1] * np.exp(SIGMA * rng.normal(size=(n_users, k)))
        times = np.cumsum(iv, axis=1) - rng.uniform(0, 1, size=(n_users, 1)) * iv[:, :1]
        stopped = np.cumsum(rng.random((n_users, k)) < lapse, axis=1)
        inside = (times < HORIZON_DAYS) & (np.c_[np.zeros((n_users, 1)), stopped[:, :-1]] == 0)
        favourite = rng.integers(0, ITEMS_PER_TYPE, size=(n_users, 1))
        pick = np.where(
            rng.random((n_users, k)) < loyalty, favourite, rng.integers(0, ITEMS_PER_TYPE, size=(n_users, k))
        )
        users.append(np.repeat(np.arange(n_users)[:, None], k, axis=1)[inside])
        items.append((t * ITEMS_PER_TYPE + pick)[inside])
        ts.append(times[inside] * DAY_S)
    u, i, s = np.concatenate(users), np.concatenate(items), np.concatenate(ts)
    ev = Interactions.from_arrays(u, i, s, np.full(len(u), 2), n_users=n_users, n_items=len(TYPES))
    return ev, true


LAPSE = 0.1


@pytest.fixture(scope="module")
def fitted():
    ev, true = renewal_events(3000, seed=1, lapse=LAPSE)
    return ReorderModel().fit(ev, TYPES, CONSUMABLE, now=HORIZON_DAYS * DAY_S), ev, true


def test_population_parameters_recovered(fitted):
    """3,000 customers: the type's median cycle within 3%, the sds within 0.05."""
    model, _, _ = fitted
    cons = np.flatnonzero(CONSUMABLE)
    np.testing.assert_allclose(np.exp(model.pop_mean[cons]), TYPE_CYCLE[cons], rtol=0.03)
    np.testing.assert_allclose(np.sqrt(model.between_var[cons]), TAU, atol=0.05)
    np.testing.assert_allclose(np.sqrt(model.noise_var[cons]), SIGMA, atol=0.05)
    np.testing.assert_allclose(model.lapse[cons], LAPSE, atol=0.03)
    assert model.lapse[2] == 0.0


def test_no_lapses_estimated_where_there_are_none():
    ev, _ = renewal_events(1000, seed=4)
    model = ReorderModel().fit(ev, TYPES, CONSUMABLE, now=HORIZON_DAYS * DAY_S)
    assert (model.lapse[CONSUMABLE] < 0.01).all()


def test_customer_cycles_recovered_and_calibrated(fitted):
    """Customers with >= 8 intervals: posterior log cycle within 0.25 of the truth for 95% of
    them, half as far as the population's on average; their 95% intervals cover the truth
    90-99% of the time."""
    model, _, true = fitted
    U = true.shape[0]
    for t in np.flatnonzero(CONSUMABLE):
        post = model.posterior(np.arange(U), np.full(U, t))
        many = post.n_intervals >= 8
        assert many.sum() > 200
        err = np.abs(post.mean - np.log(true[:, t]))[many]
        pop_err = np.abs(model.pop_mean[t] - np.log(true[:, t]))[many]
        assert np.quantile(err, 0.95) < 0.25
        assert err.mean() < pop_err.mean() / 2
        cover = (err < 1.96 * post.sd[many]).mean()
        assert 0.90 < cover < 0.99


def _with_probe(k: int, days: float, seed: int = 2):
    """The background population plus probe user 0, whose k + 1 purchases of type 0 are
    ``days`` apart."""
    ev, _ = renewal_events(600, seed=seed)
    ts = np.arange(k + 1) * days * DAY_S
    e = Interactions.from_arrays(
        np.r_[ev.user + 1, np.zeros(k + 1, np.int64)],
        np.r_[ev.item, np.zeros(k + 1, np.int64)],
        np.r_[ev.ts, ts],
        np.full(len(ev) + k + 1, 2),
        n_users=ev.n_users + 1,
        n_items=ev.n_items,
    )
    return ReorderModel().fit(e, TYPES, CONSUMABLE)


@settings(max_examples=15, deadline=None)
@given(days=st.floats(3.0, 120.0), seed=st.integers(0, 3))
def test_shrinkage_towards_the_population(days, seed):
    """One interval: the posterior lies between it and the population, closer to the
    population (the noise sd exceeds the between-customer sd). More identical intervals: the
    weight on the customer's own mean rises, and the posterior mean equals the
    precision-weighted average of the two."""
    if abs(np.log(days / TYPE_CYCLE[0])) < 0.1:
        days *= 2.0
    weights = []
    for k in (0, 1, 2, 4, 8):
        m = _with_probe(k, days, seed)
        post = m.posterior([0], [0])
        own, pop = np.log(days), m.pop_mean[0]
        tau2, s2 = m.between_var[0], m.noise_var[0]
        ref = (pop / tau2 + k * own / s2) / (1 / tau2 + k / s2)
        assert post.mean[0] == pytest.approx(ref, abs=1e-9)
        w = (post.mean[0] - pop) / (own - pop)
        assert post.weight[0] == pytest.approx(w, abs=1e-9)
        weights.append(w)
        if k == 0:
            assert w == pytest.approx(0.0, abs=1e-12)
        if k == 1:
            assert 0.0 < w < 0.5
    assert all(b > a for a, b in zip(weights, weights[1:]))
    assert weights[-1] > 0.7


def test_posterior_sd_shrinks_with_the_count(fitted):
    model, _, _ = fitted
    post = model.posterior(np.arange(3000), np.zeros(3000, np.int64))
    n, sd = post.n_intervals, post.sd
    means = [sd[n == k].mean() for k in range(0, 12) if (n == k).any()]
    assert len(means) >= 8
    assert all(b < a for a, b in zip(means, means[1:]))


def _mc_due(model, user, t, now, h, n=400_000, seed=0):
    """Monte Carlo: a lapse (never again) with the type's lapse share, else a log cycle from the
    posterior and an interval around it; the share of intervals longer than the age that end
    within the horizon, and its standard error."""
    rng = np.random.default_rng(seed)
    post = model.posterior([user], [t])
    p = model._pair_index(np.array([user]), np.array([t]))[0]
    mu = rng.normal(post.mean[0], post.sd[0], n)
    x = np.exp(mu + np.sqrt(model.noise_var[t]) * rng.normal(size=n)) * DAY_S
    x[rng.random(n) < model.lapse[t]] = np.inf
    age = now - model.last_ts[p]
    alive = x > age
    frac = ((x <= age + h) & alive).sum() / alive.sum()
    return frac, np.sqrt(frac * (1 - frac) / alive.sum())


@pytest.mark.parametrize("age_days", [0.0, 5.0, 18.0, 35.0, 60.0])
def test_due_matches_monte_carlo(fitted, age_days):
    """400,000 draws of the predictive interval; within 4 standard errors (+1e-4)."""
    model, _, _ = fitted
    user, t = 7, 0
    p = model._pair_index(np.array([user]), np.array([t]))[0]
    now = model.last_ts[p] + age_days * DAY_S
    h = 7 * DAY_S
    got = model.due([user], now, h)[0, t]
    ref, se = _mc_due(model, user, t, now, h)
    assert abs(got - ref) < 4 * se + 1e-4


def test_due_table_shape_and_unknown_users(fitted):
    model, ev, _ = fitted
    users = np.array([3, -1, 5, 10_000])
    D = model.due(users, HORIZON_DAYS * DAY_S)
    assert D.shape == (4, len(CONSUMABLE))
    assert D[1].nnz == 0 and D[3].nnz == 0
    bought = set(model.types[ev.item[ev.user == 3]].tolist())
    assert set(D[0].indices.tolist()) == bought
    assert ((D.data >= 0) & (D.data <= 1)).all()
    f = model.context_features(users, HORIZON_DAYS * DAY_S)
    assert f[0] == pytest.approx(D[0].toarray().max()) and f[1] == 0.0 and f[3] == 0.0
    assert model.context_feature(10_000, 0.0) == 0.0
    # long overdue: a lapse is the likelier story, so the type is hardly due
    p = model._pair_index(np.array([3]), np.array([3]))[0]
    assert model.due([3], model.last_ts[p] + 200 * DAY_S)[0, 3] < 0.01
    # a longer horizon is at least as likely
    assert (model.due(users, HORIZON_DAYS * DAY_S, 14 * DAY_S).data >= D.data - 1e-12).all()


def _hand_model(**kw):
    """User 0: type 0 item 1 every 20 days (last 20 days ago: due), type 1 item 7 bought 1 day
    ago (not due), type 3 item 16 three times on one day (one occasion). Background users make
    the population."""
    ev, _ = renewal_events(300, seed=3)
    now = 400 * DAY_S
    u0_ts = np.r_[300, 320, 340, 360, 380, 399, 390.0, 390.2, 390.4] * DAY_S
    u0_it = np.r_[1, 1, 1, 1, 1, 7, 16, 16, 16]
    e = Interactions.from_arrays(
        np.r_[ev.user + 1, np.zeros(len(u0_ts), np.int64)],
        np.r_[ev.item, u0_it],
        np.r_[ev.ts, u0_ts],
        np.full(len(ev) + len(u0_ts), 2),
        n_users=ev.n_users + 1,
        n_items=ev.n_items,
    )
    return ReorderModel(**kw).fit(e, TYPES, CONSUMABLE, now=now), now


def test_occasions_collapse_purchases_within_a_day():
    model, _ = _hand_model()
    post = model.posterior([0, 0, 0], [0, 1, 3])
    assert post.n_intervals.tolist() == [4, 0, 0]


def test_candidates_only_due_types_and_not_session_types():
    model, now = _hand_model(min_due=0.2, backups=1)
    D = model.due([0], now)[0].toarray()[0]
    assert D[0] >= 0.2 and D[1] < 0.2
    ids, scores = model.candidates(0, now, 10)
    types = model.types[ids]
    first0 = [i for i in ids.tolist() if model.types[i] == 0][0]
    assert first0 == 1  # the last item bought comes before the type's other items
    assert set(types.tolist()) <= {t for t in range(4) if D[t] >= 0.2}
    assert 1 not in types.tolist()
    assert np.all(np.diff(scores) <= 0) and np.all(scores <= D[types] + 1e-12)
    # a type bought in the session is not due
    ids2, _ = model.candidates(0, now, 10, session_purchased=np.array([3]))  # item 3 is of type 0
    assert 0 not in model.types[ids2].tolist()
    # excluded items never come back
    ids3, _ = model.candidates(0, now, 10, exclude=np.array([1]))
    assert 1 not in ids3.tolist()
    # inactive items are never candidates
    model.active[1] = False
    assert 1 not in model.candidates(0, now, 10)[0].tolist()


def test_batch_equals_single(fitted):
    model, _, _ = fitted
    users = np.arange(40)
    now = HORIZON_DAYS * DAY_S
    excl = [np.array([u % 20]) for u in users]
    sess = [np.array([(3 * u) % 20]) for u in users]
    ids, scores = model.candidates_batch(users, now, 6, exclude=excl, session_purchased=sess)
    assert ids.shape == scores.shape == (40, 6)
    for r, u in enumerate(users):
        i1, s1 = model.candidates(int(u), now, 6, exclude=excl[r], session_purchased=sess[r])
        k = len(i1)
        np.testing.assert_array_equal(ids[r, :k], i1)
        np.testing.assert_allclose(scores[r, :k], s1)
        assert (np.diff(s1) <= 0).all()
        assert (ids[r, k:] == -1).all()
        assert len(set(i1.tolist())) == k


def test_round_trip_through_npz_and_json(fitted):
    model, _, _ = fitted
    arrays, meta = model.to_arrays()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    loaded = ReorderModel.from_arrays(dict(np.load(buf)), json.loads(json.dumps(meta)))
    users, now = np.arange(200), HORIZON_DAYS * DAY_S
    np.testing.assert_allclose(loaded.due(users, now).toarray(), model.due(users, now).toarray())
    a, b = loaded.candidates_batch(users, now, 8), model.candidates_batch(users, now, 8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert loaded.params == model.params


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda a, m: a.pop("last_ts"), "last_ts"),
        (lambda a, m: a.__setitem__("pair_type", a["pair_type"].astype(float)), "pair_type"),
        (lambda a, m: a.__setitem__("pair_type", np.where(a["pair_type"] == 3, 2, a["pair_type"])), "pair_type"),
        (lambda a, m: a.__setitem__("user_start", a["user_start"][::-1].copy()), "user_start"),
        (lambda a, m: a.__setitem__("noise_var", -a["noise_var"]), "noise_var"),
        (lambda a, m: a.__setitem__("mean_log", np.r_[a["mean_log"][:-1], np.nan]), "mean_log"),
        (lambda a, m: a.__setitem__("last_item", a["last_item"] + 10_000), "last_item"),
        (lambda a, m: m.__setitem__("format", "banditrec.ItemItemCF"), "meta.format"),
        (lambda a, m: m.__setitem__("n_pairs", -1), "meta.n_pairs"),
        (lambda a, m: m["params"].__setitem__("bogus", 1), "meta.params"),
    ],
)
def test_bad_arrays_name_the_field(fitted, change, field):
    model, _, _ = fitted
    arrays, meta = model.to_arrays()
    arrays, meta = dict(arrays), json.loads(json.dumps(meta))
    change(arrays, meta)
    with pytest.raises(ValidationError) as exc:
        ReorderModel.from_arrays(arrays, meta)
    assert exc.value.field == field


def test_bad_inputs(fitted):
    model, ev, _ = fitted
    with pytest.raises(ValidationError, match="types") as e:
        ReorderModel().fit(ev, TYPES[:-1], CONSUMABLE)
    assert e.value.field == "types"
    with pytest.raises(ValidationError) as e:
        ReorderModel().fit(ev, TYPES + 10, CONSUMABLE)
    assert e.value.field == "types"
    with pytest.raises(ValidationError) as e:
        ReorderModel().fit(ev, TYPES, CONSUMABLE.astype(int))
    assert e.value.field == "consumable"
    with pytest.raises(ValidationError) as e:
        ReorderModel().fit(ev, TYPES, CONSUMABLE, active=np.ones(3, bool))
    assert e.value.field == "active"
    with pytest.raises(ValidationError) as e:
        ReorderModel().fit(ev, TYPES, CONSUMABLE, now=float("nan"))
    assert e.value.field == "now"
    with pytest.raises(ValidationError) as e:
        ReorderModel().fit((ev.user, ev.item), TYPES, CONSUMABLE)
    assert e.value.field == "events"
    for kw, field in [
        (dict(min_due=1.5), "min_due"),
        (dict(backups=-1), "backups"),
        (dict(horizon_s=0), "horizon_s"),
        (dict(pool_strength=float("nan")), "pool_strength"),
    ]:
        with pytest.raises(ValidationError) as e:
            ReorderModel(**kw)
        assert e.value.field == field
    for call, field in [
        (lambda: model.due(np.array([0.5]), 0.0), "users"),
        (lambda: model.due([0], float("inf")), "now"),
        (lambda: model.due([0, 1], np.zeros(3)), "now"),
        (lambda: model.due([0], 0.0, horizon_s=-1.0), "horizon_s"),
        (lambda: model.candidates(0, 0.0, -1), "N"),
        (lambda: model.candidates_batch([0, 1], 0.0, 3, exclude=[np.array([1])]), "exclude"),
        (lambda: model.candidates(0, 0.0, 3, session_purchased=np.array([99])), "session_purchased"),
        (lambda: model.posterior([0], [2]), "types"),
        (lambda: ReorderModel().due([0], 0.0), "model"),
    ]:
        with pytest.raises(ValidationError) as e:
            call()
        assert e.value.field == field


def test_no_purchases_at_all():
    ev = Interactions.from_arrays([0, 1], [0, 11], [0.0, 5.0], [0, 1], n_users=3, n_items=len(TYPES))
    model = ReorderModel(default_cycle_days=25.0).fit(ev, TYPES, CONSUMABLE)
    assert model.due([0, 1, 2], 10.0).nnz == 0
    assert model.candidates(0, 10.0, 5)[0].size == 0
    assert np.exp(model.pop_mean[0]) == pytest.approx(25.0)
    arrays, meta = model.to_arrays()
    assert ReorderModel.from_arrays(arrays, meta).due([0], 1.0).nnz == 0


def test_recovers_the_simulated_shops_customer_cycles():
    """The simulator's own truth: 300 days of a shop whose customers replenish every consumable
    (cycles spread 0.4 around the type's); customers with >= 5 intervals of a type get a
    posterior log cycle nearer their true cycle than the type's population cycle is, on average
    by more than a third, and for most of them."""
    from simulator import Environment, SimConfig
    from simulator.history import event_times

    cfg = SimConfig(
        n_items=400,
        n_types=20,
        n_categories=4,
        n_customers=6000,
        history_days=300,
        consumable_share=0.5,
        replenish_rate=1.0,
        reorder_customer_spread=0.4,
        churn_hazard=0.001,
        organic_purchase=0.04,
    )
    env = Environment(cfg, seed=5)
    h = env.warm_up()
    cat = env.catalog
    ev = Interactions.from_arrays(
        h.customer,
        h.item,
        event_times(h, cfg.history_days * DAY_S),
        h.kind,
        n_users=cfg.n_customers,
        n_items=cfg.n_items,
    )
    model = ReorderModel().fit(ev, cat.product_type, cat.consumable)
    users = np.repeat(np.arange(cfg.n_customers), cat.consumable.sum())
    types = np.tile(np.flatnonzero(cat.consumable), cfg.n_customers)
    post = model.posterior(users, types)
    many = post.n_intervals >= 5
    truth = np.log(env.population.reorder_cycle[users, cat.consumable_column[types]])
    err = np.abs(post.mean - truth)[many]
    pop_err = np.abs(model.pop_mean[types] - truth)[many]
    assert many.sum() > 500
    assert err.mean() < 0.65 * pop_err.mean()
    assert (err < pop_err).mean() > 0.65


def test_loads_from_prefixed_arrays_and_names_the_prefixed_array(fitted):
    from banditrec.candidates.arrays import Prefixed

    model, _, _ = fitted
    arrays, meta = model.to_arrays()
    shop = {f"reorder.{k}": v for k, v in arrays.items()}
    loaded = ReorderModel.from_arrays(Prefixed(shop, "reorder."), meta)
    np.testing.assert_array_equal(loaded.last_item, model.last_item)
    shop["reorder.user_start"] = shop["reorder.user_start"][::-1].copy()
    with pytest.raises(ValidationError) as exc:
        ReorderModel.from_arrays(Prefixed(shop, "reorder."), meta)
    assert exc.value.field == "reorder.user_start"
