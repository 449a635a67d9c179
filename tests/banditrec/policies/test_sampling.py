"""Monte-Carlo slate distributions against brute-force enumeration and exact references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.policies import EpsilonGreedySlate
from banditrec.policies.sampling import PlackettLuceSlate, SampledRankingSlate, SequentialSlate
from banditrec.policies.slate import sample_slates


def enumerate_slates(dist, n, k):
    """Exact (n, k) marginals by summing the product of exact conditionals over every slate."""
    marg = np.zeros((n, k))
    total = 0.0
    for slate in itertools.permutations(range(n), k):
        try:
            p = float(np.prod(dist.conditionals(np.array(slate))))
        except ValidationError:  # a slate the type cap forbids
            continue
        total += p
        marg[list(slate), np.arange(k)] += p
    return marg, total


def brute_pmf(weights, eps, shown, k, types=None, cap=0):
    elig = [
        a for a in range(len(weights)) if a not in shown and (not cap or sum(types[s] == types[a] for s in shown) < cap)
    ]
    w = {a: weights[a] for a in elig}
    tot = sum(w.values())
    return {a: (1 - eps[k]) * (w[a] / tot if tot > 0 else 1 / len(elig)) + eps[k] / len(elig) for a in elig}


def test_plackett_luce_conditionals_match_a_hand_computation(rng):
    w = rng.uniform(0.1, 2.0, size=6)
    eps = np.array([0.0, 0.2, 0.5])
    dist = PlackettLuceSlate(w, eps)
    slate = np.array([4, 1, 5])
    expected = []
    for k, a in enumerate(slate.tolist()):
        expected.append(brute_pmf(w, eps, slate[:k].tolist(), k)[a])
    np.testing.assert_allclose(dist.conditionals(slate), expected, rtol=1e-12)


@pytest.mark.parametrize("eps", [[0.0, 0.0, 0.0], [0.1, 0.3, 0.05]])
def test_rao_blackwellised_marginals_agree_with_enumeration(rng, eps):
    """n=6, K=3, 4,000 prefixes: every cell within 4 standard errors (+1e-12) of the exact
    marginal; slot 0 is exact; columns sum to 1."""
    w = rng.uniform(0.05, 3.0, size=6)
    dist = PlackettLuceSlate(w, eps, draws=4000)
    exact, total = enumerate_slates(dist, 6, 3)
    assert total == pytest.approx(1.0, abs=1e-12)
    m, se = dist.marginals(), dist.marginal_se()
    np.testing.assert_allclose(m[:, 0], exact[:, 0], rtol=1e-12)
    assert (np.abs(m - exact) <= 4 * se + 1e-12).all()
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-12)
    assert (m > 0).all() and dist.marginal_draws == 4000


def test_greedy_kind_without_caps_estimates_the_exact_dp(rng):
    scores = rng.normal(size=12)
    eps = [0.1, 0.2, 0.3, 0.1]
    mc = SequentialSlate(scores, eps, kind="greedy", draws=3000)
    exact = EpsilonGreedySlate(scores, eps).marginals()
    np.testing.assert_allclose(mc.marginals()[:, 0], exact[:, 0], rtol=1e-12)
    assert (np.abs(mc.marginals() - exact) <= 4 * mc.marginal_se() + 1e-12).all()


def test_type_cap_is_respected_and_marginals_match_enumeration(rng):
    types = np.array([0, 0, 0, 1, 1, 2])
    w = rng.uniform(0.2, 2.0, size=6)
    dist = PlackettLuceSlate(w, [0.1, 0.1, 0.1], types=types, max_per_type=1, draws=4000)
    for _ in range(300):
        s = dist.sample(rng)
        assert len(set(types[s.index].tolist())) == 3
        np.testing.assert_allclose(s.propensity, dist.conditionals(s.index), rtol=1e-12)
    exact, total = enumerate_slates(dist, 6, 3)
    assert total == pytest.approx(1.0, abs=1e-12)
    assert (np.abs(dist.marginals() - exact) <= 4 * dist.marginal_se() + 1e-12).all()
    with pytest.raises(ValidationError, match="at most 1 per product type from 3 types"):
        PlackettLuceSlate(w, [0.1] * 4, types=types, max_per_type=1)


def test_sampled_frequencies_match_the_marginals(rng):
    """20,000 slates: slot-k frequencies within 4 binomial standard errors of the marginals."""
    w = rng.uniform(0.1, 1.0, size=8)
    dist = PlackettLuceSlate(w, [0.05, 0.2], draws=8000)
    counts = np.zeros((8, 2))
    n = 20_000
    for _ in range(n):
        counts[dist.sample(rng).index, [0, 1]] += 1
    m = dist.marginals()
    tol = 4 * np.sqrt(m * (1 - m) / n) + 4 * dist.marginal_se()
    assert (np.abs(counts / n - m) <= tol).all()


def test_marginals_are_reproducible_from_the_inputs(rng):
    w = rng.uniform(size=10)
    a, b = PlackettLuceSlate(w, [0.1] * 3), PlackettLuceSlate(w.copy(), [0.1] * 3)
    np.testing.assert_array_equal(a.marginals(), b.marginals())
    c = PlackettLuceSlate(w * 1.0001, [0.1] * 3)
    assert not np.array_equal(a.marginals()[:, 1:], c.marginals()[:, 1:])


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.data())
def test_marginal_bounds_are_below_the_enumerated_marginals(n, data):
    """For weights with zeros, ties and one dominant item, and for the greedy kind: every
    bound is at most the exact marginal (enumeration), slot 0's is the exact marginal, and a
    slate that explores in every slot gets a positive bound in every cell."""
    K = data.draw(st.integers(2, min(n, 3)))
    w = np.array(data.draw(st.lists(st.sampled_from([0.0, 1e-4, 0.02, 0.5, 1.0, 7.0]), min_size=n, max_size=n)))
    eps = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.3, 1.0]), min_size=K, max_size=K)))
    for kind in ("weights", "greedy"):
        dist = SequentialSlate(w, eps, kind=kind, draws=2)
        exact, _ = enumerate_slates(dist, n, K)
        bound = dist.marginal_bounds()
        assert (bound <= exact + 1e-12).all(), (kind, bound - exact)
        np.testing.assert_allclose(bound[:, 0], exact[:, 0], rtol=1e-12, atol=1e-15)
        if kind == "weights":  # its per-slot extremes are attained: exactly the definition
            np.testing.assert_allclose(bound, _brute_bounds(w, eps, exact[:, 0]), rtol=1e-9, atol=1e-15)
        if (eps > 0).all():
            assert (bound > 0).all()


def _brute_bounds(w, eps, first):
    """:meth:`SequentialSlate.marginal_bounds` of weights from its definition, with the
    extremes of the slot-t probability of j taken over every prefix of t other items."""
    n, K = len(w), len(eps)

    def p(j, shown, t):
        return brute_pmf(w, eps, list(shown), t)[j]

    out = np.zeros((n, K))
    out[:, 0] = first
    for j in range(n):
        others = [a for a in range(n) if a != j]
        absent = 1.0 - first[j]
        for k in range(1, K):
            probs = [p(j, s, k) for s in itertools.permutations(others, k)]
            out[j, k] = absent * min(probs)
            absent *= 1.0 - max(probs)
    return out


def test_an_item_in_every_sampled_prefix_keeps_a_positive_marginal():
    """The softmax request of the policy contract's floor test: item 0 takes slot 0 or 1 with
    probability 0.981, so 64 sampled prefixes all hold it with probability 0.981^64 = 0.29 per
    stream, and then its plain Rao-Blackwellised slot-2 marginal is 0, though exploration makes
    the true one 0.0176 (enumeration). Over 40 streams every cell is
    positive and at least its bound, and every column still sums to 1."""
    w = np.array([1.0, 0.0, 0.0, 1e-4, 4e-4, 0.1053])
    eps = [0.1] * 3
    exact, _ = enumerate_slates(PlackettLuceSlate(w, eps), 6, 3)
    assert 0.017 < exact[0, 2] < 0.018
    lifted = 0
    for seed in range(40):
        dist = PlackettLuceSlate(w, eps, draws=64, seed=seed)
        m, bound = dist.marginals(), dist.marginal_bounds()
        assert (m[:, 1:] >= bound[:, 1:]).all() and (m > 0).all(), (seed, m)
        np.testing.assert_allclose(m[:, 0], bound[:, 0], rtol=1e-12)  # slot 0: both exact, to rounding
        np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-12)
        lifted += bool((m == bound)[:, 1:].any())
    assert lifted >= 5  # the case arises: about 11 of 40 streams from the all-prefixes case alone


def test_columns_above_their_bounds_are_the_plain_average_bit_for_bit(rng):
    """Lifting touches only a column with a cell below its bound; the others are returned as
    the average computed them (no rescaling rounding)."""
    from banditrec.policies.sampling import _lift_onto

    mean = np.array([[0.5, 0.2], [0.3, 0.0], [0.2, 0.8]])
    bound = np.array([[0.1, 0.05], [0.1, 0.1], [0.1, 0.05]])
    out = _lift_onto(mean, bound)
    np.testing.assert_array_equal(out[:, 0], mean[:, 0])
    assert out[1, 1] == 0.1 and (out[:, 1] >= bound[:, 1]).all()
    np.testing.assert_allclose(out[:, 1].sum(), 1.0, atol=1e-15)
    # the excess over the bounds shrinks in proportion: (0.15, 0.75) -> (0.15, 0.75) * 0.8 / 0.9
    np.testing.assert_allclose(out[[0, 2], 1], [0.05 + 0.15 * 0.8 / 0.9, 0.05 + 0.75 * 0.8 / 0.9], rtol=1e-12)
    same = rng.dirichlet(np.ones(4), size=3).T
    assert _lift_onto(same, np.zeros_like(same)) is same


def test_weights_a_few_ulps_apart_draw_the_same_monte_carlo_stream(rng):
    """What another CPU's BLAS or exp would compute (the same weights but for their last bits)
    seeds the same stream, so the marginals agree to rounding; weights 1e-6 apart seed another.
    Deterministic on every machine: the weights come from a Generator and the moves are exact."""
    w = rng.uniform(0.01, 1.0, size=30)
    w[3] = 1.0  # as softmax weights: the largest is exp(0)
    base = PlackettLuceSlate(w, [0.1] * 4, draws=64)
    moved = w.copy()
    for _ in range(4):
        moved = np.nextafter(moved, np.inf)
        d = PlackettLuceSlate(moved, [0.1] * 4, draws=64)
        assert d.seed == base.seed
        np.testing.assert_allclose(d.marginals(), base.marginals(), rtol=1e-12, atol=1e-15)
    assert PlackettLuceSlate(w * (1 + 1e-6), [0.1] * 4, draws=64).seed != base.seed


def test_zero_weights_get_only_the_floor_and_all_zero_falls_back_to_uniform():
    dist = PlackettLuceSlate([1.0, 0.0, 0.0, 0.0], [0.2, 0.2])
    p0 = dist.marginals()[:, 0]
    np.testing.assert_allclose(p0, [0.8 + 0.05, 0.05, 0.05, 0.05])
    # after item 0 is shown the remaining weights are all 0: the greedy part is uniform
    np.testing.assert_allclose(dist.conditionals(np.array([0, 2])), [0.85, 1 / 3])


def test_thompson_slate_with_a_point_posterior_is_the_epsilon_greedy_slate(rng):
    scores = rng.normal(size=9)
    eps = [0.1, 0.2, 0.3]
    ts = SampledRankingSlate(lambda r, size: np.repeat(scores[None, :], size, axis=0), eps, n_candidates=9, draws=16)
    eg = EpsilonGreedySlate(scores, eps)
    np.testing.assert_allclose(ts.marginals(), eg.marginals(), rtol=1e-12)
    s = ts.sample(rng)
    np.testing.assert_allclose(s.propensity, eg.conditionals(s.index), rtol=1e-12)
    np.testing.assert_allclose(s.marginal, eg.marginals()[s.index, np.arange(3)], rtol=1e-12)


def test_thompson_slate_with_tied_draws_splits_ties_as_its_sampler_and_conditionals_do(rng):
    """Draws with exact ties (a blended objective makes them: the objective's item at the
    bottom of a draw ties with that draw's best at ``w``): the marginals are those of the
    epsilon-greedy slates of the draws, tie groups averaged, which is what enumerating slates
    through the conditionals (ties split evenly) gives; not the ranks of a stable sort."""
    tied = np.array([[1.0, 0.5, 0.5, 0.2, 1.0], [0.3, 0.3, 0.3, 0.9, 0.0]])
    eps = [0.1, 0.2, 0.3]
    ts = SampledRankingSlate(lambda r, size: np.tile(tied, (size // 2, 1)), eps, n_candidates=5, draws=16)
    want = (EpsilonGreedySlate(tied[0], eps).marginals() + EpsilonGreedySlate(tied[1], eps).marginals()) / 2
    np.testing.assert_allclose(ts.marginals(), want, rtol=1e-12)
    exact, total = enumerate_slates(ts, 5, 3)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    np.testing.assert_allclose(ts.marginals(), exact, rtol=1e-12, atol=1e-15)
    assert ts.marginals()[0, 0] == ts.marginals()[4, 0]  # tied in draw 0, behind 3 in draw 1


def test_thompson_slate_mixture_of_two_rankings_is_exact_in_expectation(rng):
    """A posterior with two equally likely score vectors: the exact marginals are the mean of
    the two epsilon-greedy tables; 4,000 draws land within 4 standard errors."""
    s1, s2 = rng.normal(size=7), rng.normal(size=7)
    eps = [0.1, 0.1, 0.1]

    def draw(r, size):
        pick = r.random(size) < 0.5
        return np.where(pick[:, None], s1[None, :], s2[None, :])

    ts = SampledRankingSlate(draw, eps, n_candidates=7, draws=4000, seed=3)
    exact = (EpsilonGreedySlate(s1, eps).marginals() + EpsilonGreedySlate(s2, eps).marginals()) / 2
    assert (np.abs(ts.marginals() - exact) <= 4 * ts.marginal_se() + 1e-12).all()
    # conditionals of a slate: ratios of the mixture's joint probabilities
    slate = np.array([0, 3, 5])
    c1, c2 = EpsilonGreedySlate(s1, eps).conditionals(slate), EpsilonGreedySlate(s2, eps).conditionals(slate)
    joint = (np.cumprod(c1) + np.cumprod(c2)) / 2
    np.testing.assert_allclose(ts.conditionals(slate), joint / np.r_[1.0, joint[:-1]], rtol=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(values=[1.0, -1.0], epsilon=[0.1]), r"weights must be >= 0, found -1.0 at candidate 1"),
        (dict(values=[1.0, np.nan], epsilon=[0.1]), "must be finite"),
        (dict(values=[1.0, 2.0], epsilon=[0.1, 0.1, 0.1]), "cannot fill 3 slots from 2 candidates"),
        (dict(values=[1.0, 2.0], epsilon=[1.5]), r"epsilon must be a 1-D array in \[0, 1\]"),
        (dict(values=[1.0, 2.0], epsilon=[0.1], draws=1), "draws must be an integer >= 2"),
        (dict(values=[1.0, 2.0], epsilon=[0.1], max_per_type=1), "needs each candidate's product type"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        SequentialSlate(**kwargs)


@pytest.mark.parametrize(
    "n,eps",
    [
        (200, [0.1] * 10),
        (5, [0.0, 1.0, 0.5, 0.3, 1.0]),
        (12, [0.9, 0.0, 0.01, 0.7]),
        (1, [0.4]),
        (30, np.linspace(0.0, 1.0, 30)),
    ],
)
def test_untied_fast_sampler_equals_the_general_sampler_draw_for_draw(n, eps):
    """EpsilonGreedySlate.sample takes a shorter path when no scores tie; on the same stream
    it must serve what the tie-aware loop serves: same slate, propensities and marginals bit
    for bit, and leave the stream in the same state. Checked over many draws, with the
    general loop as the reference and each propensity against slot_pmf."""
    gen = np.random.default_rng(n)
    for trial in range(40):
        scores = gen.normal(size=n)
        dist = EpsilonGreedySlate(scores, eps)
        assert len(np.unique(scores)) == n
        a, b = np.random.default_rng(trial), np.random.default_rng(trial)
        fast = dist.sample(a)
        ref = dist._sample_general(b.random(len(eps)).tolist(), *dist._ranking())
        np.testing.assert_array_equal(fast.index, ref.index)
        assert fast.propensity.tolist() == ref.propensity.tolist()
        assert fast.marginal.tolist() == ref.marginal.tolist()
        assert (fast.joint, fast.log_joint) == (ref.joint, ref.log_joint)
        assert a.random() == b.random()
        assert len(set(fast.index.tolist())) == len(eps)
        np.testing.assert_allclose(fast.propensity, dist.conditionals(fast.index), rtol=1e-12)
        np.testing.assert_allclose(fast.marginal, dist.marginals()[fast.index, np.arange(len(eps))], rtol=0)


def test_tied_scores_still_take_the_tie_aware_sampler():
    """With ties the greedy share splits within the best tie group (slot_pmf is the reference)."""
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    dist = EpsilonGreedySlate(scores, [0.2, 0.2, 0.2])
    seen = set()
    for seed in range(60):
        s = dist.sample(np.random.default_rng(seed))
        np.testing.assert_allclose(s.propensity, dist.conditionals(s.index), rtol=1e-12)
        seen.add(int(s.index[0]))
    assert {1, 2, 4} <= seen  # each tied best item leads some slates


def _same_samples(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.index.tolist() == r.index.tolist()
        assert g.propensity.tolist() == r.propensity.tolist()
        assert g.marginal.tolist() == r.marginal.tolist()
        assert (g.joint, g.log_joint, g.marginal_draws) == (r.joint, r.log_joint, r.marginal_draws)


def test_a_batch_of_slates_samples_what_one_at_a_time_would():
    """sample_slates over a batch mixing shapes (n, K, epsilon), tied and untied scores and
    repeated shapes (the vectorised groups) gives what d.sample(rng) gives in list order, bit
    for bit, and leaves the stream where the loop leaves it."""
    gen = np.random.default_rng(7)
    dists = []
    for j in range(120):
        n = int(gen.choice([12, 40, 200]))
        k = int(gen.choice([1, 3, 10]))
        eps = [0.1] * k if j % 3 else gen.choice([0.0, 0.05, 0.5, 1.0], size=k)
        scores = gen.normal(size=n) if j % 7 else gen.integers(0, 4, size=n).astype(float)  # ties
        dists.append(EpsilonGreedySlate(scores, eps))
    assert any(d.tied for d in dists) and sum(not d.tied for d in dists) > 50
    for seed in range(5):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        _same_samples(sample_slates(dists, a), [d.sample(b) for d in dists])
        assert a.random() == b.random()
        for s in sample_slates(dists, a):  # each is a valid slate of its distribution
            assert len(set(s.index.tolist())) == len(s.index)


def test_a_batch_with_other_slate_kinds_is_sampled_one_by_one_in_order():
    gen = np.random.default_rng(3)
    dists = [
        EpsilonGreedySlate(gen.normal(size=20), [0.2] * 4),
        PlackettLuceSlate(gen.uniform(0.1, 1.0, size=20), [0.1] * 3, draws=16),
        EpsilonGreedySlate(gen.normal(size=20), [0.2] * 4),
    ]
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    _same_samples(sample_slates(dists, a), [d.sample(b) for d in dists])
    assert sample_slates([], a) == []


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), zeros=st.floats(0, 1), all_zero=st.booleans())
def test_one_path_of_weights_is_the_general_samplers_path_bit_for_bit(seed, n, zeros, all_zero):
    """The request path's one-slate sampler of uncapped weights (``_draw_weights``) takes the
    same slate and conditionals from the same draws as the general N-path sampler."""
    g = np.random.default_rng(seed)
    k = int(g.integers(1, n + 1))
    w = g.exponential(size=n) * (g.random(n) >= zeros) * (not all_zero)
    dist = SequentialSlate(w, g.uniform(0, 1, k) * (g.random(k) < 0.7))
    index, cond = dist._draw_weights(np.random.default_rng(seed + 1))
    paths, conds, _, _ = dist._run(np.random.default_rng(seed + 1), 1, collect=False)
    np.testing.assert_array_equal(index, paths[0])
    np.testing.assert_array_equal(cond, conds[0])
