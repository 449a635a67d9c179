"""Slot filling: propensities recomputed independently, exact marginals against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.policies import EpsilonGreedySlate, rank_slot_marginals
from tests.reference import reference_slot_pmf


def brute_force_marginals(scores, eps):
    """Enumerate every ordered slate: (n, K) marginals and the total probability."""
    n, K = len(scores), len(eps)
    M, total = np.zeros((n, K)), 0.0
    for slate in itertools.permutations(range(n), K):
        p, shown = 1.0, []
        for k, j in enumerate(slate):
            p *= reference_slot_pmf(scores, eps[k], shown)[j]
            shown.append(j)
        total += p
        for k, j in enumerate(slate):
            M[j, k] += p
    return M, total


scores_st = st.integers(2, 6).flatmap(
    lambda n: st.tuples(
        st.one_of(
            st.lists(st.integers(0, 2).map(float), min_size=n, max_size=n),  # many ties
            st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n),
        ),
        st.integers(1, n),
    )
)


@settings(max_examples=150, deadline=None)
@given(scores_st, st.data())
def test_exact_marginals_equal_brute_force_enumeration(sk, data):
    scores, K = sk
    eps = data.draw(st.lists(st.floats(0, 1), min_size=K, max_size=K))
    M_bf, total = brute_force_marginals(scores, eps)
    assert total == pytest.approx(1.0, abs=1e-12)
    M = EpsilonGreedySlate(scores, eps).marginals()
    np.testing.assert_allclose(M, M_bf, atol=1e-12)
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-12)  # each slot shows one item
    assert (M.sum(axis=1) <= 1 + 1e-12).all()  # an item is shown at most once


@settings(max_examples=100, deadline=None)
@given(scores_st, st.data())
def test_sampled_propensities_match_independent_recomputation(sk, data):
    scores, K = sk
    eps = data.draw(st.lists(st.floats(0.01, 1), min_size=K, max_size=K))
    seed = data.draw(st.integers(0, 2**32 - 1))
    dist = EpsilonGreedySlate(scores, eps)
    draw = dist.sample(np.random.default_rng(seed))
    assert len(set(draw.index.tolist())) == K  # without replacement
    shown = []
    for k, j in enumerate(draw.index):
        pmf = reference_slot_pmf(scores, eps[k], shown)
        assert draw.propensity[k] == pytest.approx(pmf[j], abs=1e-15)
        # the code's own slot distribution: sums to 1, equals the reference, keeps the floor
        mask = np.zeros(len(scores), dtype=bool)
        mask[shown] = True
        code_pmf = dist.slot_pmf(mask, k)
        assert code_pmf.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(code_pmf, pmf, atol=1e-15)
        remaining = [i for i in range(len(scores)) if i not in shown]
        assert code_pmf[remaining].min() >= eps[k] / len(remaining) - 1e-15
        shown.append(j)
    assert draw.joint == pytest.approx(np.prod(draw.propensity), rel=1e-12)
    np.testing.assert_allclose(draw.marginal, dist.marginals()[draw.index, np.arange(K)], atol=0)


def test_sampling_frequencies_match_exact_marginals():
    """40,000 draws of a 4-slot slate from 8 candidates (with a tie): every item-slot frequency
    is within 4 binomial standard errors of the exact marginal."""
    scores = np.array([3.0, 1.0, 2.0, 2.0, -1.0, 0.5, 0.0, 0.5])
    eps = [0.2, 0.4, 0.6, 0.3]
    dist = EpsilonGreedySlate(scores, eps)
    rng = np.random.default_rng(5)
    n_draws = 40_000
    counts = np.zeros((8, 4))
    for _ in range(n_draws):
        counts[dist.sample(rng).index, np.arange(4)] += 1
    M = dist.marginals()
    se = np.sqrt(M * (1 - M) / n_draws)
    assert (np.abs(counts / n_draws - M) <= 4 * se + 1e-9).all()


def test_uniform_marginals_are_one_over_n():
    M = rank_slot_marginals(30, np.ones(5))
    np.testing.assert_allclose(M, 1 / 30, atol=1e-15)


def test_greedy_without_exploration_is_deterministic():
    M = EpsilonGreedySlate([0.1, 0.9, 0.5], [0.0, 0.0]).marginals()
    np.testing.assert_array_equal(M, [[0, 0], [1, 0], [0, 1]])


def test_rank_marginals_are_cached_and_read_only():
    a = rank_slot_marginals(50, [0.1] * 5)
    assert a is rank_slot_marginals(50, [0.1] * 5)
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


@pytest.mark.parametrize(
    "scores, eps, match",
    [
        ([1.0, 2.0], [0.1, 0.1, 0.1], "cannot fill 3 slots from 2 candidates"),
        ([1.0, np.nan], [0.1], "finite"),
        ([1.0, 2.0], [1.5], r"epsilon must be in \[0, 1\]"),
        ([1.0, 2.0], [-0.1], r"epsilon must be in \[0, 1\]"),
    ],
)
def test_invalid_inputs_raise_naming_the_problem(scores, eps, match):
    with pytest.raises(ValidationError, match=match):
        EpsilonGreedySlate(scores, eps)


def test_inputs_are_not_mutated():
    scores = np.array([0.3, 0.1, 0.2])
    eps = np.array([0.5, 0.5])
    EpsilonGreedySlate(scores, eps).sample(np.random.default_rng(0))
    np.testing.assert_array_equal(scores, [0.3, 0.1, 0.2])
    np.testing.assert_array_equal(eps, [0.5, 0.5])
