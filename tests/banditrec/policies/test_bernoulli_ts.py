"""Bernoulli Thompson sampling (the Open Bandit Dataset's BTS policy) against independent
references: the posterior as counted by a plain loop, first-slot marginals as the exact
probability that an item's Beta draw is the largest (numerical integration), the prior read
from item columns, and snapshots that restore the counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from banditrec.errors import ValidationError
from banditrec.policies import Request, load, make


def req(items, dc=2):
    items = np.asarray(items)
    return Request(context=np.zeros(dc), items=items, item_features=np.zeros((len(items), 1)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([0.0, 1.0, 0.25]), st.floats(0.0, 3.0)), min_size=1, max_size=30
    )
)
def test_posterior_is_the_prior_plus_weighted_hits_and_misses(rows):
    items = np.array([r[0] for r in rows])
    reward = np.array([r[1] for r in rows])
    weight = np.array([r[2] for r in rows])
    cols = {"a": np.linspace(1, 2, 6), "b": np.linspace(5, 3, 6)}
    p = make("bernoulli-ts:prior_alpha=a,prior_beta=b", item_columns=cols, context_dim=2)
    p.update(np.zeros((len(rows), 2)), np.zeros((len(rows), 1)), reward, items=items, weight=weight)
    a, b = p.posterior(np.arange(6))
    want_a, want_b = cols["a"].copy(), cols["b"].copy()
    for i, r, w in rows:  # the loop the vectorised counts replace
        want_a[i] += w * r
        want_b[i] += w * (1 - r)
    np.testing.assert_allclose(a, want_a, rtol=1e-12)
    np.testing.assert_allclose(b, want_b, rtol=1e-12)


def p_largest(params, j):
    """P(draw j is the largest of independent Beta(a_i, b_i) draws), by integration."""

    def f(x):
        out = stats.beta.pdf(x, *params[j])
        for i, ab in enumerate(params):
            if i != j:
                out *= stats.beta.cdf(x, *ab)
        return out

    return integrate.quad(f, 0, 1, limit=200)[0]


def test_first_slot_marginals_are_the_probability_of_the_largest_draw():
    p = make("bernoulli-ts:epsilon=0", n_items=3, context_dim=2, mc_draws=4096)
    p.update(
        np.zeros((9, 2)),
        np.zeros((9, 1)),
        np.array([1, 1, 0, 1, 0, 0, 0, 0, 1.0]),
        items=np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]),
    )
    dist = p.distribution(req([0, 1, 2]), 2)
    M = np.asarray(dist.marginals())
    params = [(3, 2), (2, 3), (2, 3)]  # Beta(1 + hits, 1 + misses)
    want = np.array([p_largest(params, j) for j in range(3)])
    se = np.sqrt(want * (1 - want) / 4096)
    assert np.all(np.abs(M[:, 0] - want) <= 5 * se + 1e-9), (M[:, 0], want)
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-9)
    assert M[0, 0] > M[1, 0]  # more clicks, more first places


def test_the_prior_comes_from_item_columns_and_items_added_since_start_flat():
    cols = {"a": np.array([10.0, 1.0]), "b": np.array([1.0, 10.0])}
    p = make("bernoulli-ts:prior_alpha=a,prior_beta=b", item_columns=cols, context_dim=2)
    np.testing.assert_allclose(p.scores(req([0, 1, 2])), [10 / 11, 1 / 11, 0.5])
    with pytest.raises(ValidationError, match="both prior_alpha and prior_beta"):
        make("bernoulli-ts:prior_alpha=a", item_columns=cols)
    with pytest.raises(ValidationError, match="finite and > 0"):
        make("bernoulli-ts:prior_alpha=a,prior_beta=b", item_columns={"a": np.array([1.0, 0.0]), "b": np.ones(2)})
    with pytest.raises(ValidationError, match="items"):
        p.update(np.zeros((1, 2)), np.zeros((1, 1)), np.array([1.0]))


def test_a_snapshot_restores_the_counts(tmp_path):
    p = make("bernoulli-ts", n_items=4, context_dim=2)
    p.update(np.zeros((3, 2)), np.zeros((3, 1)), np.array([1.0, 0.0, 1.0]), items=np.array([3, 3, 1]))
    p.save(tmp_path / "bts")
    q = load(tmp_path / "bts", n_items=4, context_dim=2)
    np.testing.assert_array_equal(q.posterior(np.arange(4))[0], p.posterior(np.arange(4))[0])
    np.testing.assert_array_equal(q.posterior(np.arange(4))[1], p.posterior(np.arange(4))[1])
    r = req([0, 1, 3])
    np.testing.assert_array_equal(q.distribution(r, 2).marginals(), p.distribution(r, 2).marginals())
