"""Signals, directional complements, rules, diversity and the candidate generator."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import (
    AlreadyBought,
    CandidateGenerator,
    ComplementModel,
    ExcludeCategories,
    Filters,
    Interactions,
    OutOfStock,
    UserState,
    diversify,
    pair_signals,
)
from banditrec.candidates.signals import DAY_S, PURCHASE, VIEW
from banditrec.errors import ValidationError


def random_log(gen, n_users=12, n_items=9, n_events=120):
    user = gen.integers(0, n_users, n_events)
    item = gen.integers(0, n_items, n_events)
    ts = np.round(gen.uniform(0, 10 * DAY_S, n_events), -2)
    kind = gen.choice([0, 0, 1, 2, 2], size=n_events)
    return Interactions.from_arrays(user, item, ts, kind, n_users=n_users, n_items=n_items, session_gap_s=DAY_S)


def brute_signals(e: Interactions, window_s):
    """The three signals counted with plain loops over each user's events."""
    n = e.n_items
    V, VB, P = (np.zeros((n, n)) for _ in range(3))
    for u in range(e.n_users):
        mine = np.flatnonzero(e.user == u)  # in time order (from_arrays sorts by user, ts, input order)
        cv, vb, cp = set(), set(), set()
        for x, y in itertools.combinations(mine, 2):  # x before y
            a, b = e.item[x], e.item[y]
            if a == b:
                continue
            same = e.session[x] == e.session[y]
            if same and e.kind[x] == VIEW and e.kind[y] == VIEW:
                cv.add((min(a, b), max(a, b)))
            if same and e.kind[x] == VIEW and e.kind[y] == PURCHASE:
                in_session = [z for z in mine if e.session[z] == e.session[x]]
                bought_a = any(e.kind[z] == PURCHASE and e.item[z] == a for z in in_session)
                viewed_b = any(e.kind[z] == VIEW and e.item[z] == b for z in in_session)
                if not bought_a and viewed_b:
                    vb.add((a, b))
            if e.kind[x] == PURCHASE and e.kind[y] == PURCHASE and e.ts[y] - e.ts[x] <= window_s:
                cp.add((a, b))
        for a, b in cv:
            V[a, b] += 1
            V[b, a] += 1
        for a, b in vb:
            VB[a, b] += 1
        for a, b in cp:
            P[a, b] += 1
    return V, VB, P


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_pair_signals_count_distinct_users_as_written_out(seed):
    e = random_log(np.random.default_rng(seed))
    sig = pair_signals(e, window_s=3 * DAY_S)
    V, VB, P = brute_signals(e, 3 * DAY_S)
    np.testing.assert_array_equal(sig.co_view.toarray(), V)
    np.testing.assert_array_equal(sig.view_then_buy.toarray(), VB)
    np.testing.assert_array_equal(sig.co_purchase.toarray(), P)
    only = sig.co_purchase_only().toarray()
    blocked = (V + VB + VB.T) > 0
    np.testing.assert_array_equal(only, np.where(blocked, 0.0, P))


def test_sessions_are_inferred_from_gaps_and_kinds_from_names():
    e = Interactions.from_arrays(
        [0, 0, 0, 1], [1, 2, 3, 1], [0.0, 100.0, 5000.0, 50.0], ["view", "purchase", "view", "cart"], session_gap_s=1800
    )
    assert e.session.tolist() == [0, 0, 1, 2] and e.kind.tolist() == [0, 2, 0, 1]
    with pytest.raises(ValidationError, match="kind must be one of view, cart, purchase; got 'click'"):
        Interactions.from_arrays([0], [1], [0.0], ["click"])
    with pytest.raises(ValidationError, match="user and ts must have the same length"):
        Interactions.from_arrays([0, 1], [1, 2], [0.0], [0, 0])
    X = Interactions.from_arrays([0, 0], [1, 1], [0.0, 10 * DAY_S], [2, 2]).user_items(half_life_s=10 * DAY_S)
    assert X[0, 1] == pytest.approx(1.5)  # the newer event counts 1, the 10-day-old one 0.5


def test_directional_scores_follow_the_formula_and_prefer_the_one_way_direction():
    # camera (0) -> card (1) bought by 6 users, card -> camera by 1; tripod (2) after camera by 2
    n = 4
    C = np.zeros((n, n))
    C[0, 1], C[1, 0], C[0, 2] = 6, 1, 2
    buyers = np.array([10, 8, 3, 1])
    sig = _signals(C, buyers)
    model = ComplementModel(kappa=5.0).fit(sig, item_types=[0, 1, 2, 3])
    S = model.scores.toarray()
    assert S[0, 1] == pytest.approx(6 / 15 * 7 / 9)
    assert S[1, 0] == pytest.approx(1 / 13 * 2 / 9)
    assert S[0, 2] == pytest.approx(2 / 15 * 3 / 4)
    ids, scores, direct = model.complements([0, 1], 3, use_types=False)
    assert ids[0].tolist() == [1, 2, -1] and direct[0].tolist() == [True, True, False]
    assert ids[1].tolist() == [0, -1, -1]
    T = model.type_transition
    assert T[0, 1] == pytest.approx(6 / 8 * 7 / 9) and T[1, 0] == pytest.approx(1.0 * 2 / 9)


def _signals(C, buyers):
    from banditrec.candidates import PairSignals

    n = len(buyers)
    z = sp.csr_matrix((n, n))
    return PairSignals(co_view=z, view_then_buy=z, co_purchase=sp.csr_matrix(C), purchases=np.asarray(buyers))


def test_type_backoff_fills_with_the_most_bought_items_of_complementary_types():
    # types: items 0,1 type 0 (cameras); 2,3,4 type 1 (cards); 5 type 2 (bags). Only item 0 has pairs.
    C = np.zeros((6, 6))
    C[0, 2] = 4
    C[0, 5] = 1
    buyers = np.array([5, 3, 4, 9, 1, 2])
    model = ComplementModel(kappa=0.0).fit(_signals(C, buyers), item_types=[0, 0, 1, 1, 1, 2])
    ids, scores, direct = model.complements([1], 4)  # item 1 was never bought with anything
    assert not direct.any()
    # T_dir[camera, card] = 4/5 x 5/6, T_dir[camera, bag] = 1/5 x 2/3; items by their type's share
    # of purchases: cards 9/14, 4/14, 1/14, the only bag 2/2
    t_card, t_bag = 4 / 5 * 5 / 6, 1 / 5 * 2 / 3
    assert ids[0].tolist() == [3, 2, 5, 4]
    np.testing.assert_allclose(scores[0], 0.5 * np.array([t_card * 9 / 14, t_card * 4 / 14, t_bag, t_card / 14]))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.01, 10)), min_size=0, max_size=40),
    st.integers(1, 10),
    st.integers(1, 4),
    st.sampled_from([1.0, 0.7, 0.3]),
)
def test_diversify_caps_types_and_keeps_the_best(items, N, cap, decay):
    types = np.array([t for t, _ in items] + [0])
    ids = np.arange(len(items))
    scores = np.array([s for _, s in items])
    pos = diversify(ids, scores, types, N, max_per_type=cap, type_decay=decay)
    chosen = ids[pos]
    assert len(set(chosen.tolist())) == len(chosen)
    counts = np.bincount(types[chosen], minlength=6)
    assert counts.max(initial=0) <= cap
    feasible = sum(min(cap, int((types[:-1] == t).sum())) for t in range(6))
    assert len(chosen) == min(N, feasible)
    if decay == 1.0:  # pure cap: exactly the greedy walk down the scores, skipping full types
        greedy, seen = [], np.zeros(6, int)
        for j in sorted(ids.tolist(), key=lambda j: (-scores[j], j)):
            if seen[types[j]] < cap and len(greedy) < N:
                greedy.append(j)
                seen[types[j]] += 1
        assert chosen.tolist() == greedy


def test_rules_compose():
    types = np.array([0, 0, 1, 1, 2])
    cats = np.array(["a", "a", "b", "b", "c"])
    avail = np.array([True, True, True, False, True])
    f = Filters(
        [OutOfStock(avail), AlreadyBought(types, consumable_types=[False, True, False]), ExcludeCategories(cats, {"c"})]
    )
    state = UserState(purchased=[1, 2])
    assert f.banned(state, 5).tolist() == [True, True, False, True, True]
    avail[3] = True  # stock came back: the rule sees the array it was given
    assert f.banned(state, 5).tolist() == [True, True, False, False, True]
    assert f.banned_among(state, [4, 3, 2]).tolist() == [True, False, False]


def test_rules_answer_for_the_pool_as_for_the_whole_catalog():
    g = np.random.default_rng(5)
    n = 50
    types = g.integers(0, 7, n)
    rules = [
        OutOfStock(g.random(n) < 0.8),
        AlreadyBought(types, g.random(7) < 0.4),
        ExcludeCategories(g.integers(0, 5, n), {1, 3}),
    ]
    states = [
        UserState(
            cart=g.integers(0, n, g.integers(0, 4)),
            purchased=g.integers(0, n, g.integers(0, 5)),
            viewed=g.integers(0, n, g.integers(0, 6)),
        )
        for _ in range(12)
    ]
    rows = g.integers(0, len(states), 200)
    items = g.integers(0, n, 200)
    for rule in rules + [Filters(rules)]:
        want = np.array([rule.banned(states[r], n)[j] for r, j in zip(rows, items)])
        np.testing.assert_array_equal(rule.banned_among_batch(states, rows, items), want)
        for s in states[:3]:
            np.testing.assert_array_equal(rule.banned_among(s, items), rule.banned(s, n)[items])


def test_filters_take_rules_only():
    with pytest.raises(ValidationError, match=r"rules\[0\] is a object, not a banditrec.candidates.Rule"):
        Filters([object()])


def brute_coview(e: Interactions, max_distance):
    n = e.n_items
    V = np.zeros((n, n))
    for u in range(e.n_users):
        seen = set()
        for s in np.unique(e.session[e.user == u]):
            pos = np.flatnonzero(e.session == s)
            pos = pos[np.lexsort((pos, e.ts[pos]))]
            for x in range(len(pos)):
                for y in range(x + 1, min(len(pos), x + max_distance + 1)):
                    a, b = e.item[pos[x]], e.item[pos[y]]
                    if a != b and e.kind[pos[x]] == 0 and e.kind[pos[y]] == 0:
                        seen.add((min(a, b), max(a, b)))
        for a, b in seen:
            V[a, b] += 1
            V[b, a] += 1
    return V


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cap=st.integers(1, 4))
def test_pair_cap_counts_only_events_at_most_the_cap_apart(seed, cap):
    g = np.random.default_rng(seed)
    E = 60
    e = Interactions.from_arrays(
        g.integers(0, 4, E),
        g.integers(0, 8, E),
        np.round(g.uniform(0, DAY_S, E), -2),
        g.choice([0, 0, 2], E),
        n_users=4,
        n_items=8,
        session_gap_s=DAY_S / 4,
    )
    np.testing.assert_array_equal(pair_signals(e, max_pair_distance=cap).co_view.toarray(), brute_coview(e, cap))
    np.testing.assert_array_equal(pair_signals(e, max_pair_distance=None).co_view.toarray(), brute_coview(e, E))


@pytest.fixture(scope="module")
def shop_generator():
    from simulator import Environment, SimConfig

    env = Environment(SimConfig(n_items=1500, n_types=40, n_categories=6, n_customers=6000, history_days=40), seed=5)
    h = env.warm_up()
    events = Interactions.from_arrays(
        h.customer,
        h.item,
        h.day * DAY_S,
        h.kind,
        session=h.session,
        n_users=env.config.n_customers,
        n_items=env.config.n_items,
    )
    cat = env.catalog
    filters = Filters([OutOfStock(env.stock.available), AlreadyBought(cat.product_type, cat.consumable)])
    gen = CandidateGenerator(filters=filters, max_per_type=2).fit(
        events, cat.product_type, user_segments=env.population.segment
    )
    return env, gen


def test_generator_batch_equals_one_at_a_time_and_obeys_its_rules(shop_generator):
    env, gen = shop_generator
    req = env.requests()
    states = [
        UserState(cart=r["cart"], purchased=r["purchases"], viewed=r["views"], segment=int(req.segment[i]))
        for i, r in ((i, req.recent(i)) for i in range(60))
    ]
    ids, scores, source = gen.candidates_batch(states, 30, exclude=[3, 4], chunk=7)
    types = env.catalog.product_type
    for r, state in enumerate(states):
        one = gen.candidates(state, 30, exclude=[3, 4])
        np.testing.assert_array_equal(one[0], ids[r][ids[r] >= 0])
        np.testing.assert_allclose(one[1], scores[r][ids[r] >= 0])
        got = ids[r][ids[r] >= 0]
        assert not np.isin(got, np.r_[state.cart, 3, 4]).any()
        assert not gen.filters.banned(state, gen.n_items)[got].any()
        assert np.bincount(types[got]).max() <= 2
        assert set(source[r][ids[r] >= 0]) <= {"complement", "similar", "new", "popular"}
    assert (source == "complement").any() and (source == "similar").any()


def test_generator_candidates_are_better_than_popular_items_by_the_shops_truth(shop_generator):
    """Exact expected clicks of a 5-slot carousel of the first 5 candidates versus the 5 most
    popular items, for the same visitors (the simulator's choice model, no sampling)."""
    env, gen = shop_generator
    req = env.requests() if env._requested_day != env.day else None
    if req is None:
        env.advance_day()
        req = env.requests()
    states = [
        UserState(cart=r["cart"], purchased=r["purchases"], viewed=r["views"], segment=int(req.segment[i]))
        for i, r in ((i, req.recent(i)) for i in range(len(req)))
    ]
    ids, _, _ = gen.candidates_batch(states, 10)
    everyone = gen.popular[-1]
    popular = np.tile(everyone.indices[np.lexsort((everyone.indices, -everyone.data))][:5], (len(req), 1))
    ours = env.expected_reward(req, ids[:, :5], "click").mean()
    theirs = env.expected_reward(req, popular, "click").mean()
    assert ours > 1.15 * theirs


def test_unknown_users_get_their_segments_popular_items(shop_generator):
    env, gen = shop_generator
    ids, _, source = gen.candidates_batch([UserState(segment=1), UserState()], 5)
    assert (source == "popular").all()
    seg = gen.popular[1]
    seg_top = seg.indices[np.lexsort((seg.indices, -seg.data))]
    assert set(ids[0]) <= set(seg_top[:15].tolist())  # the segment's head (the type cap may skip a few)
    with pytest.raises(ValidationError, match="N must be a positive integer"):
        gen.candidates(UserState(), 0)
    with pytest.raises(ValidationError, match="cart holds item indices outside"):
        gen.candidates(UserState(cart=[10**6]), 5)


def test_bad_item_ids_and_sizes_are_named_errors(shop_generator):
    _, gen = shop_generator
    for call, field in (
        (lambda: gen.similar_items([10**6], 3), "item_ids"),
        (lambda: gen.similar_items([-1], 3), "item_ids"),
        (lambda: gen.complements([1], 0), "N"),
        (lambda: gen.candidates(UserState(), 5, exclude=[-1]), "exclude"),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == field
