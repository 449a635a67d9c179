"""Estimators: vectorised code against plain loops, exact unbiasedness by enumeration, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.ope import ESTIMATORS, IPS, SNIPS, LoggedBandit
from banditrec.policies import EpsilonGreedySlate


def random_log(rng, n_dec=300, n_slots=3, n_actions=20):
    rows = n_dec * n_slots
    data = LoggedBandit(
        reward=rng.binomial(1, 0.3, size=rows).astype(float),
        action=rng.integers(0, n_actions, size=rows),
        slot=np.tile(np.arange(n_slots), n_dec),
        pscore=rng.uniform(0.05, 1.0, size=rows),
        decision=np.repeat(np.arange(n_dec) * 7 + 3, n_slots),  # arbitrary ids, compacted
        n_actions=n_actions,
        n_slots=n_slots,
    )
    return data, rng.uniform(0.0, 1.0, size=rows)


def loop_ips(data, pi):
    per = {}
    for i in range(data.n_rows):
        per.setdefault(int(data.decision[i]), 0.0)
        per[int(data.decision[i])] += pi[i] / data.pscore[i] * data.reward[i]
    vals = list(per.values())
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return mean, sd / math.sqrt(len(vals))


def loop_snips(data, pi):
    num = sum(pi[i] / data.pscore[i] * data.reward[i] for i in range(data.n_rows))
    den = sum(pi[i] / data.pscore[i] for i in range(data.n_rows))
    return num / den * data.n_rows / data.n_decisions


def test_ips_matches_a_plain_loop(rng):
    data, pi = random_log(rng)
    est = IPS().estimate(data, target_pscore=pi)
    value, se = loop_ips(data, pi)
    assert est.value == pytest.approx(value, rel=1e-12)
    assert est.se == pytest.approx(se, rel=1e-10)
    assert est.upper - est.value == pytest.approx(1.959963984540054 * se, rel=1e-9)
    assert est.n == 300 and est.n_rows == 900
    w = pi / data.pscore
    assert est.ess == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert est.max_weight == pytest.approx(w.max())


def test_snips_matches_a_plain_loop_and_its_interval_a_delta_method_bootstrap_check(rng):
    data, pi = random_log(rng)
    est = SNIPS().estimate(data, target_pscore=pi)
    assert est.value == pytest.approx(loop_snips(data, pi), rel=1e-12)
    # the delta-method standard error agrees with a bootstrap over decisions within 10%
    boot = np.random.default_rng(0)
    D = data.n_decisions
    w = pi / data.pscore
    a = np.bincount(data.decision, weights=w * data.reward)
    b = np.bincount(data.decision, weights=w)
    idx = boot.integers(0, D, size=(4000, D))
    reps = a[idx].sum(axis=1) / b[idx].sum(axis=1) * data.n_rows / D
    assert est.se == pytest.approx(reps.std(), rel=0.1)


def test_action_dist_and_compact_target_agree(rng):
    data, pi = random_log(rng, n_dec=40, n_actions=6)
    dist = rng.uniform(size=(data.n_rows, 6, 3))
    dist /= dist.sum(axis=1, keepdims=True)
    compact = dist[np.arange(data.n_rows), data.action, data.slot]
    for est in (IPS(), SNIPS()):
        assert est.estimate(data, dist).value == est.estimate(data, target_pscore=compact).value


def test_logging_policy_weights_are_one(rng):
    data, _ = random_log(rng)
    est = IPS().estimate(data, target_pscore=data.pscore)
    per_decision = np.bincount(data.decision, weights=data.reward)
    assert est.value == pytest.approx(per_decision.mean())
    assert est.ess == pytest.approx(data.n_rows)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 5),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    eps_log=st.floats(0.05, 1.0),
    eps_target=st.floats(0.0, 1.0),
)
def test_ips_is_exactly_unbiased_by_enumeration(n, k, seed, eps_log, eps_target):
    """E_mu[IPS] over every possible logged slate equals the target's value, exactly.

    Slot k's reward depends only on the item in slot k (position-based), the logger is
    epsilon-greedy (uniform when eps_log = 1) and the target any other epsilon-greedy ranking.
    Each enumerated slate is one logged decision; the estimator's own per-row terms are
    averaged with the slate's probability.
    """
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, size=(n, k))  # expected reward of item a in slot k
    mu = EpsilonGreedySlate(rng.normal(size=n), [eps_log] * k)
    pi = EpsilonGreedySlate(rng.normal(size=n), [eps_target] * k)
    mu_m, pi_m = mu.marginals(), pi.marginals()
    truth = float((pi_m * q).sum())
    ips = IPS()
    expected = 0.0
    for slate in itertools.permutations(range(n), k):
        p = float(np.prod(mu.conditionals(slate)))
        if p == 0:
            continue
        slots = np.arange(k)
        data = LoggedBandit(
            reward=q[list(slate), slots],
            action=list(slate),
            slot=slots,
            pscore=mu_m[list(slate), slots],
            n_actions=n,
            n_slots=k,
            decision=np.zeros(k, int),
        )
        from banditrec.ope.estimators import RowInputs

        inputs = RowInputs(pi=pi_m[list(slate), slots])
        expected += p * ips.terms(data, inputs, ips.weights(data, inputs)).plain.sum()
    assert expected == pytest.approx(truth, rel=1e-9, abs=1e-12)


def test_per_slot_estimates_add_up_to_the_whole(rng):
    data, pi = random_log(rng)
    whole = IPS().estimate(data, target_pscore=pi)
    parts = [IPS().estimate(data, target_pscore=pi, slot=k) for k in range(3)]
    assert sum(p.value for p in parts) == pytest.approx(whole.value, rel=1e-12)
    k1 = data.slot == 1
    assert parts[1].value == pytest.approx((pi[k1] / data.pscore[k1] * data.reward[k1]).mean())
    assert all(p.n_rows == 300 for p in parts)
    with pytest.raises(ValidationError, match=r"slot must be an integer in \[0, 3\), got 3"):
        IPS().estimate(data, target_pscore=pi, slot=3)


def test_an_interval_needs_two_decisions():
    data = LoggedBandit(
        reward=[1.0, 0.0], action=[0, 1], slot=[0, 1], pscore=[0.5, 0.5], decision=[4, 4], n_actions=2, n_slots=2
    )
    with pytest.raises(ValidationError, match="at least 2 decisions, got 1"):
        IPS().estimate(data, target_pscore=[0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reward=[1.0, 0.0], pscore=[0.5]), "reward and pscore must have the same length, got 2 and 1"),
        (dict(pscore=[0.5, 0.0]), r"pscore must be in \(0, 1\], found 0.0 at row 1"),
        (dict(pscore=[0.5, 1.2]), r"pscore must be in \(0, 1\], found 1.2 at row 1"),
        (dict(reward=[np.nan, 0.0]), "reward must be finite, found nan at index 0"),
        (dict(action=[0, 7]), r"action must be in \[0, 5\), found 7 at row 1"),
        (dict(slot=[0, 2]), r"slot must be in \[0, 2\), found 2 at row 1"),
        (dict(action=[0.5, 1.0]), "action must hold integers"),
        (dict(n_slots=0), "n_slots must be a positive integer, got 0"),
        (dict(reward=[], action=[], slot=[], pscore=[]), "at least one row"),
        (dict(context=np.zeros((3, 2))), r"context must have shape \(n, d\) with n=2"),
    ],
)
def test_logged_bandit_validation_shows_what_was_found(kwargs, match):
    base = dict(reward=[1.0, 0.0], action=[0, 1], slot=[0, 1], pscore=[0.5, 0.5], n_actions=5, n_slots=2)
    base.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        LoggedBandit(**base)


def test_logged_bandit_copies_and_freezes_inputs():
    reward = np.array([1.0, 0.0])
    data = LoggedBandit(reward=reward, action=[0, 1], slot=[0, 0], pscore=[0.5, 0.5], n_actions=2, n_slots=1)
    reward[0] = 5.0
    assert data.reward[0] == 1.0
    with pytest.raises(ValueError):
        data.reward[0] = 2.0


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_target_input_validation(name, rng):
    data, pi = random_log(rng, n_dec=10)
    est = ESTIMATORS[name]()
    with pytest.raises(ValidationError, match="exactly one of"):
        est.estimate(data)
    with pytest.raises(ValidationError, match="one entry per logged row"):
        est.estimate(data, target_pscore=pi[:-1])
    with pytest.raises(ValidationError, match=r"action_dist must have shape \(30, 20, 3\)"):
        est.estimate(data, np.ones((30, 20, 2)))
    bad = pi.copy()
    bad[4] = 1.5
    with pytest.raises(ValidationError, match=r"target_pscore must be in \[0, 1\], found 1.5 at row 4"):
        est.estimate(data, target_pscore=bad)
    with pytest.raises(ValidationError, match="level"):
        ESTIMATORS[name](level=1.0)


def test_snips_with_no_support_says_so(rng):
    data, pi = random_log(rng, n_dec=10)
    with pytest.raises(ValidationError, match="probability 0 to every logged action"):
        SNIPS().estimate(data, target_pscore=np.zeros_like(pi))


def test_row_order_does_not_change_estimates(rng):
    """Decision ids compact the same way whether rows come grouped (fast path) or shuffled."""
    data, pi = random_log(rng, n_dec=50)
    perm = rng.permutation(data.n_rows)
    shuffled = LoggedBandit(
        reward=data.reward[perm],
        action=data.action[perm],
        slot=data.slot[perm],
        pscore=data.pscore[perm],
        decision=data.decision[perm],
        n_actions=data.n_actions,
        n_slots=data.n_slots,
    )
    for est in (IPS(), SNIPS()):
        a, b = est.estimate(data, target_pscore=pi), est.estimate(shuffled, target_pscore=pi[perm])
        assert a.value == pytest.approx(b.value, rel=1e-12)
        assert a.se == pytest.approx(b.se, rel=1e-9)


def test_logged_bandit_is_keyword_only_and_not_compared_by_value():
    with pytest.raises(TypeError):
        LoggedBandit([1.0], [0], [0], [0.5], 1, 1)
    a = LoggedBandit(reward=[1.0], action=[0], slot=[0], pscore=[0.5], n_actions=1, n_slots=1)
    assert a == a and a != LoggedBandit(reward=[1.0], action=[0], slot=[0], pscore=[0.5], n_actions=1, n_slots=1)
    assert isinstance(hash(a), int)
