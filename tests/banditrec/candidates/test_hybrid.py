"""The hybrid generator: latent factors, reorder timing and accessories merged with the other
sources under source-aware quotas, against the dense reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import CandidateGenerator, UserState
from banditrec.candidates.signals import DAY_S
from banditrec.errors import ValidationError
from tests.banditrec.candidates.test_candidate_scale import assert_batch_is_the_reference, random_states, small_world
from tests.reference import reference_candidates


class FakeFactors:
    """``recommend``: the items scoring highest against the sum of the seen items' random
    factors, seen items left out (the shape of LatentFactors.recommend)."""

    def __init__(self, g, n, k=3):
        self.Y = g.normal(size=(n, k))

    def recommend(self, items, weights=None, N=10, exclude=None):
        items = np.unique(np.asarray(items, dtype=np.int64))  # weights left out: one summation order
        u = self.Y[items].sum(axis=0)
        score = self.Y @ u
        score[items] = -np.inf
        order = np.lexsort((np.arange(len(score)), -score))[:N]
        order = order[np.isfinite(score[order])]
        return order, score[order]

    def recommend_batch(self, histories, N=10, exclude=None):
        ids, scores = np.full((histories.shape[0], N), -1), np.full((histories.shape[0], N), -np.inf)
        for r in range(histories.shape[0]):
            row = histories.getrow(r)
            i, s = self.recommend(row.indices, row.data, N)
            ids[r, : len(i)], scores[r, : len(i)] = i, s
        return ids, scores


class FakeReorder:
    """``candidates``: a fixed random list per user, scaled by how late ``now`` is, less the
    items of the session's purchases."""

    def __init__(self, g, n, n_users):
        self.table = {
            u: (g.choice(n, size=min(n, 3), replace=False), g.uniform(0.1, 1, min(n, 3))) for u in range(n_users)
        }

    def candidates(self, user, now, N, exclude=None, session_purchased=None):
        ids, sc = self.table[user]
        keep = ~np.isin(ids, np.asarray(session_purchased if session_purchased is not None else [], dtype=np.int64))
        return ids[keep][:N], sc[keep][:N] * (1 + now / DAY_S)

    def candidates_batch(self, users, now, N, exclude=None, session_purchased=None):
        ids, scores = np.full((len(users), N), -1), np.zeros((len(users), N))
        for r, u in enumerate(users):
            i, s = self.candidates(u, now[r], N, session_purchased=session_purchased[r])
            ids[r, : len(i)], scores[r, : len(i)] = i, s
        return ids, scores


def hybrid(seed, quotas):
    g, gen, events, popularity = small_world(seed)
    n = gen.n_items
    gen.factors = FakeFactors(g, n)
    gen.reorder = FakeReorder(g, n, events.n_users)
    A = sp.random(n, n, density=0.1, random_state=int(g.integers(2**31)), format="csr")
    A.setdiag(0)
    A.eliminate_zeros()
    gen.accessory = A
    gen.quotas = quotas
    gen.n_source = int(g.integers(1, 6))
    states = [
        UserState(
            cart=s.cart,
            purchased=s.purchased,
            viewed=s.viewed,
            view_age_s=s.view_age_s,
            segment=s.segment,
            user=int(g.integers(0, events.n_users)) if g.random() < 0.8 else None,
            now=float(g.uniform(0, 5 * DAY_S)),
            session_purchased=s.purchased[:1],
        )
        for s in random_states(g, n, 6)
    ]
    return g, gen, popularity, states


quota_sets = st.dictionaries(
    st.sampled_from(["factors", "reorder", "accessory", "complement", "popular"]), st.integers(0, 4), max_size=3
)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 12), quotas=quota_sets)
def test_hybrid_candidates_equal_the_dense_reference(seed, N, quotas):
    """Same candidates, scores, sources and order as the dense computation, one request at a
    time and a batch in chunks, with every source on and random quotas."""
    g, gen, popularity, states = hybrid(seed, {k: v for k, v in quotas.items() if v})
    exclude = g.integers(0, gen.n_items, g.integers(0, 3))
    assert_batch_is_the_reference(gen, states, N, popularity, exclude, chunk=int(g.integers(1, 7)), one_at_a_time=True)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(3, 12), q=st.integers(1, 3))
def test_a_quota_keeps_its_source_in_every_row_that_can_hold_it(seed, N, q):
    """With one quota, no new-item slots and no type cap, every row holds min(q, what the
    source proposes among allowed items) of the source's items."""
    g, gen, popularity, states = hybrid(seed, {"factors": q})
    gen.min_new, gen.max_per_type = 0, 100  # no new-item slots, no type cap
    ids, _, source = gen.candidates_batch(states, N)
    for r, state in enumerate(states):
        row = ids[r][ids[r] >= 0]
        # what the source proposes, eligible: the reference's factor component on allowed items
        want_ids, *_ = reference_candidates(gen, state, N, popularity=popularity)
        assert row.tolist() == want_ids.tolist()
        seen = np.r_[state.cart, state.purchased, state.viewed]
        if len(seen) == 0:
            continue
        w = np.r_[np.ones(len(state.cart)), 0.7 ** np.arange(len(state.purchased)), gen._view_weights(state)]
        prop, sc = gen.factors.recommend(seen, weights=w, N=gen.n_source)
        banned = gen.filters.banned(state, gen.n_items) | ~gen.active
        banned[state.cart] = True
        eligible = [j for j, s in zip(prop.tolist(), sc.tolist()) if s > 0 and not banned[j]]
        if not eligible:
            continue
        got = int(np.isin(row, eligible).sum())  # proposed by the source, whatever label won
        assert got >= min(q, len(eligible), N)


def test_quotas_and_sources_are_checked():
    with pytest.raises(ValidationError, match="quotas: unknown source 'new'"):
        CandidateGenerator(quotas={"new": 1})
    with pytest.raises(ValidationError, match="quotas.factors must be an integer >= 0"):
        CandidateGenerator(quotas={"factors": -1})
    with pytest.raises(ValidationError, match="unknown component"):
        CandidateGenerator(weights={"factor": 1.0})


def test_a_hybrid_generator_saves_and_loads_its_accessory_table():
    _, gen, popularity, states = hybrid(3, {"accessory": 2})
    gen.factors = gen.reorder = None  # their own round trips are their modules' tests
    arrays, meta = gen.to_arrays()
    back = CandidateGenerator.from_arrays(arrays, meta, filters=gen.filters)
    assert back.quotas == {"accessory": 2}
    for state in states:
        a, b = gen.candidates(state, 5), back.candidates(state, 5)
        assert a[0].tolist() == b[0].tolist() and a[2].tolist() == b[2].tolist()
