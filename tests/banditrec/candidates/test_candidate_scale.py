"""The sparse request path of candidate generation against the dense reference, saving and
loading without pickle, growing catalogs, the rules' pool form, and the scale-related caps."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import (
    AlreadyBought,
    CandidateGenerator,
    ExcludeCategories,
    Filters,
    Interactions,
    MetadataIndex,
    OutOfStock,
    UserState,
)
from banditrec.candidates.generator import segment_popularity
from banditrec.candidates.keys import distinct
from banditrec.candidates.signals import DAY_S
from banditrec.errors import ValidationError
from tests.reference import reference_candidates, reference_diversify

WORDS = ["acme", "bolt", "lamp", "shade", "cable", "plug", "drill"]


def small_world(seed: int, *, n_items=None, metadata=True, active_share=0.9):
    """A random shop: items of a few types (some without events), users in segments, events,
    rules, and a generator with small lists so that every cut is exercised."""
    g = np.random.default_rng(seed)
    n = int(n_items or g.integers(4, 40))
    n_types = int(g.integers(1, 6))
    types = g.integers(0, n_types, n)
    n_users = int(g.integers(2, 15))
    E = int(g.integers(0, 160))
    warm = g.random(n) < 0.8
    pool = np.flatnonzero(warm) if warm.any() else np.arange(n)
    user = g.integers(0, n_users, E)
    item = g.choice(pool, E)
    ts = np.round(g.uniform(0, 20 * DAY_S, E), -3)
    kind = g.choice([0, 0, 0, 1, 2, 2], size=E)
    events = Interactions.from_arrays(user, item, ts, kind, n_users=n_users, n_items=n, session_gap_s=2 * DAY_S)
    seg = g.integers(0, int(g.integers(1, 4)), n_users)
    active = g.random(n) < active_share
    rules = Filters(
        [
            OutOfStock(g.random(n) < 0.9),
            AlreadyBought(types, g.random(n_types + 1) < 0.5),
            ExcludeCategories(g.integers(0, 4, n), {int(g.integers(0, 4))}),
        ]
    )
    meta = None
    if metadata:
        titles = [" ".join(g.choice(WORDS, size=g.integers(0, 3))) + f" m{g.integers(1, 4)}" for _ in range(n)]
        meta = MetadataIndex(n_neighbors=int(g.integers(1, 6)), numeric_weight=0.3).fit(
            titles, fields={"type": types}, numeric=g.lognormal(3.0, 1.0, n)
        )
    gen = CandidateGenerator(
        n_neighbors=int(g.integers(1, 7)),
        max_per_type=int(g.integers(1, 4)),
        type_decay=float(g.choice([1.0, 0.7, 0.5])),
        min_new=int(g.integers(0, 3)),
        n_popular=int(g.integers(1, 12)),
        n_backoff=int(g.integers(1, 6)),
        filters=rules,
        metadata=meta,
        weights={"similar": float(g.choice([0.3, 1.0]))},
    )
    gen.fit(events, types, user_segments=seg, active=active)
    now = float(events.ts.max()) if len(events) else 0.0
    popularity = segment_popularity(
        events, gen._segments(seg, n_users), half_life_s=gen.half_life_s, now=now, active=active
    )
    return g, gen, events, popularity


def random_states(g, n, k):
    out = []
    for _ in range(k):
        viewed = g.integers(0, n, g.integers(0, 6))
        out.append(
            UserState(
                cart=g.integers(0, n, g.integers(0, 4)),
                purchased=g.integers(0, n, g.integers(0, 5)),
                viewed=viewed,
                view_age_s=g.uniform(0, 40 * DAY_S, len(viewed)) if g.random() < 0.5 else None,
                segment=[None, 0, 1, 2, 7][int(g.integers(0, 5))],
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 15), metadata=st.booleans(), head=st.sampled_from([4, 1]))
def test_sparse_candidates_equal_the_dense_reference(seed, N, metadata, head):
    """Same candidates, scores (bit for bit), sources and order as the dense computation over
    the whole catalog, for a batch of users scored together and in chunks of one. ``head=1``
    spreads types over a short head of each row first, so that rows often need the second pass
    over all their entries."""
    g, gen, _, popularity = small_world(seed, metadata=metadata)
    gen.head = head
    states = random_states(g, gen.n_items, 6)
    exclude = g.integers(0, gen.n_items, g.integers(0, 3))
    assert_batch_is_the_reference(gen, states, N, popularity, exclude, chunk=int(g.integers(1, 7)))


def assert_batch_is_the_reference(gen, states, N, popularity, exclude, *, chunk, one_at_a_time=False):
    """``candidates_batch`` (in chunks of ``chunk`` users), row by row, equals
    :func:`reference_candidates`: ids, -1 padding, scores bit for bit, sources; with
    ``one_at_a_time``, ``candidates`` of each state too."""
    ids, scores, source = gen.candidates_batch(states, N, exclude=exclude, chunk=chunk)
    for r, state in enumerate(states):
        want_ids, want_scores, want_source = reference_candidates(gen, state, N, popularity=popularity, exclude=exclude)
        k = len(want_ids)
        assert ids[r, :k].tolist() == want_ids.tolist()
        assert (ids[r, k:] == -1).all()
        np.testing.assert_array_equal(scores[r, :k], want_scores)
        assert source[r, :k].tolist() == want_source.tolist()
        if one_at_a_time:
            one = gen.candidates(state, N, exclude=exclude)
            assert one[0].tolist() == want_ids.tolist() and one[2].tolist() == want_source.tolist()


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    N=st.integers(1, 3),
    cap=st.integers(1, 2),
    head=st.sampled_from([1, 2]),
    decay=st.sampled_from([0.7, 0.3]),
    m=st.integers(1, 4),
)
def test_spreading_a_head_of_each_row_first_gives_the_spread_over_the_whole_row(seed, N, cap, head, decay, m):
    """The request path spreads types over the best head x N x cap entries of a row, then
    checks the result against the best score left out; it must pick what the cap and spread
    over all of the row's entries pick. Few types, small N and strong decay make rows where
    the head's N-th pick scores below an entry left out (a few rows in a hundred)."""
    g = np.random.default_rng(seed)
    n = 60
    gen = CandidateGenerator(max_per_type=cap, type_decay=decay)
    gen.types = g.integers(0, int(g.integers(2, 4)), n)  # few types: long runs of one type
    gen.head = head
    k = int(g.integers(10, 50)) * m
    key = distinct(g.integers(0, m * n, k))
    prow, pitem = key // n, key % n
    score = np.round(g.random(len(key)), 1)  # ties on purpose
    ok = np.flatnonzero(g.random(len(key)) < 0.9)
    pick = gen._diversified(ok, prow, pitem, score, N, m)
    for r in range(m):
        mine = ok[prow[ok] == r]
        items = pitem[mine]
        order = np.lexsort((items, -score[mine]))
        want = mine[order][
            reference_diversify(items[order], score[mine][order], gen.types, N, max_per_type=cap, type_decay=decay)
        ]
        assert pick[prow[pick] == r].tolist() == want.tolist()


def test_a_defined_cut_the_back_off_reaches_each_seed_types_best_items_only():
    """The type back-off of a seed type spreads over its n_backoff best items, not over every
    item of the complementary types (the one change from an unbounded dense back-off)."""
    # item 0 (type 0) was bought before items 1 and 2 (type 1); items 1..6 are type 1, bought by
    # one user each beside; nothing of type 1 is a direct complement of item 7 (type 0)
    user = [0, 0, 1, 1, 2, 3, 4, 5, 6]
    item = [0, 1, 0, 2, 3, 4, 5, 6, 1]
    ts = [0.0, 60.0, 0.0, 60.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    ev = Interactions.from_arrays(user, item, ts, [2] * 9, n_users=7, n_items=8)
    types = np.array([0, 1, 1, 1, 1, 1, 1, 0])
    gen = CandidateGenerator(n_backoff=2, max_per_type=5, weights={"popular": 0.0}).fit(ev, types)
    ids, _, source = gen.candidates(UserState(cart=[7]), 5)
    # buyers: item 1 twice, the others once: item 1 then the lowest index among the ties (2)
    assert ids.tolist() == [1, 2] and set(source) == {"complement"}


# ---- saving and loading -------------------------------------------------------------------


def _npz_round_trip(arrays: dict, meta: dict):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    return np.load(buf, allow_pickle=False), json.loads(json.dumps(meta))


@pytest.mark.parametrize("metadata", [True, False])
def test_saved_and_loaded_generator_gives_identical_candidates(metadata):
    g, gen, _, _ = small_world(11, n_items=40, metadata=metadata)
    arrays, meta = gen.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    z, meta = _npz_round_trip(arrays, meta)
    back = CandidateGenerator.from_arrays(z, meta, filters=gen.filters)
    states = random_states(g, gen.n_items, 30)
    for a, b in zip(gen.candidates_batch(states, 10, exclude=[3]), back.candidates_batch(states, 10, exclude=[3])):
        np.testing.assert_array_equal(a, b)
    items = np.arange(gen.n_items)
    for a, b in zip(
        gen.similar_items(items, 5) + gen.complements(items, 5),
        back.similar_items(items, 5) + back.complements(items, 5),
    ):
        np.testing.assert_array_equal(a, b)
    assert back.params == gen.params


def test_loading_names_the_array_that_does_not_fit():
    _, gen, _, _ = small_world(12, n_items=30)
    arrays, meta = gen.to_arrays()
    cases = [
        ("cf.similarity.indices", lambda a: a + 10_000, "cf.similarity.indices must be in"),
        ("types", lambda a: a[:-1], "array 'types' must have shape (30,)"),
        ("substitutes.data", lambda a: np.where(np.arange(len(a)) == 0, np.nan, a), "must be finite"),
        ("popular.indptr", lambda a: a[::-1].copy(), "popular.indptr must rise"),
        ("cold", lambda a: a.astype(np.float64), "must have dtype kind 'b'"),
    ]
    for key, change, message in cases:
        bad = dict(arrays, **{key: change(arrays[key])})
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            CandidateGenerator.from_arrays(bad, meta)
        assert info.value.field.startswith(key.split(".")[0])
    missing = {k: v for k, v in arrays.items() if k != "complements.item_share"}
    with pytest.raises(ValidationError, match="array 'complements.item_share' is missing"):
        CandidateGenerator.from_arrays(missing, meta)
    with pytest.raises(ValidationError, match="expected 'banditrec.CandidateGenerator'"):
        CandidateGenerator.from_arrays(arrays, dict(meta, format="pickle"))
    with pytest.raises(ValidationError, match="version 9 is not supported"):
        CandidateGenerator.from_arrays(arrays, dict(meta, version=9))


# ---- growing catalogs -----------------------------------------------------------------------


def test_a_rebuild_that_adds_and_removes_items_never_serves_a_removed_one():
    """Items appended by a rebuild keep the old indices stable; removed items stay in the index
    space as inactive: never a candidate, neighbour or popular item, even for users whose
    history holds them; new items without events reach users through metadata."""
    g, gen, events, _ = small_world(21, n_items=30)
    n_old, n_new = gen.n_items, gen.n_items + 6
    titles = [f"{WORDS[j % len(WORDS)]} m{j % 3}" for j in range(n_new)]
    types = np.r_[gen.types, gen.types[:6]]
    grown = Interactions.from_arrays(
        events.user, events.item, events.ts, events.kind, session=events.session, n_users=events.n_users, n_items=n_new
    )
    meta = MetadataIndex(n_neighbors=5).fit(titles, fields={"type": types})
    everything = CandidateGenerator(metadata=meta, min_new=2).fit(grown, types)
    tables = lambda G: {
        "substitutes": G.substitutes,
        "complements": G.complement_model.scores,  # noqa: E731
        "new": G.meta_new,
        "popular": G.popular,
        "cf": G.cf.similarity,
        "backoff": G.complement_model.backoff_items,
    }
    # remove the items most often a neighbour or a popular item, and the most co-viewed ones
    held = sum(np.bincount(t.indices, minlength=n_new) for t in tables(everything).values())
    viewed = np.bincount(everything.signals.substitutes.indices, minlength=n_new)
    removed = np.union1d(np.argsort(-held[:n_old], kind="stable")[:3], np.argsort(-viewed[:n_old], kind="stable")[:2])
    for name, table in tables(everything).items():
        if name != "new":  # removed items have events: they are never new items
            assert np.isin(table.indices, removed).any(), name  # so the check below means something
    active = np.ones(n_new, bool)
    active[removed] = False
    rebuilt = CandidateGenerator(metadata=meta, min_new=2).fit(grown, types, active=active)
    states = [UserState(cart=removed[:2], purchased=removed[1:], viewed=removed)] + random_states(g, n_new, 40)
    ids, _, _ = rebuilt.candidates_batch(states, 12)
    assert not np.isin(ids, removed).any()
    assert np.isin(ids, np.arange(n_old, n_new)).any()  # appended items are served
    for name, table in tables(rebuilt).items():
        assert not np.isin(table.indices, removed).any(), name
    sim, _ = rebuilt.similar_items(np.arange(n_new), 5)
    comp, _ = rebuilt.complements(np.arange(n_new), 5)
    assert not np.isin(sim, removed).any() and not np.isin(comp, removed).any()


def test_segment_popularity_is_the_recency_weighted_purchases_per_segment():
    ev = Interactions.from_arrays(
        [0, 0, 1, 2], [1, 2, 1, 0], [0.0, 10 * DAY_S, 10 * DAY_S, 10 * DAY_S], [2, 0, 2, 2], n_users=3, n_items=3
    )
    seg = np.array([0, 1, 1])
    pop = segment_popularity(ev, seg, half_life_s=10 * DAY_S, now=10 * DAY_S, active=np.ones(3, bool))
    # segment 0: item 1 bought 10 days ago (0.5 + 1e-3 x 0.5), item 2 viewed now (1e-3)
    np.testing.assert_allclose(pop[0], [0.0, 1.0, 1e-3 / (0.5 * 1.001)])
    # segment 1: item 1 bought now by user 1, item 0 by user 2 (as much)
    np.testing.assert_allclose(pop[1], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(pop[2], [1.001 / 1.5015, 1.0, 1e-3 / 1.5015])
    inactive = segment_popularity(ev, seg, half_life_s=10 * DAY_S, now=10 * DAY_S, active=np.array([True, False, True]))
    np.testing.assert_allclose(inactive[0], [0.0, 0.0, 1.0])  # the best active item scores 1


def test_progress_reports_every_step_in_order():
    _, gen, events, _ = small_world(3, n_items=25)
    calls = []
    gen.fit(events, gen.types, progress=lambda step, done, total: calls.append((step, done, total)))
    steps = [c[0] for c in calls]
    assert list(dict.fromkeys(steps)) == ["signals", "cf", "complements", "substitutes", "metadata", "popularity"]
    for step in set(steps):
        mine = [(d, t) for s, d, t in calls if s == step]
        assert mine[0][0] == 0 and mine[-1][0] == mine[-1][1] >= 1
        assert all(b[0] >= a[0] for a, b in zip(mine, mine[1:]))
