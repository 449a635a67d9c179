"""Reward models (ridge, logistic, gbt): fits against independent references, cross-fitting,
the target term against brute force, and the default's direct-method error against a correctly
specified logistic regression on a world whose truth is logistic (exact, no sampling)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import expit

from banditrec.errors import ValidationError
from banditrec.ope import DM, LoggedBandit
from banditrec.ope.reward_model import (
    DEFAULT_REWARD_MODEL,
    REWARD_MODELS,
    GBTRewardModel,
    LogisticRewardModel,
    RidgeRewardModel,
    decision_folds,
    make_reward_model,
)
from banditrec.policies import EpsilonGreedySlate

MODELS = {
    "ridge": RidgeRewardModel(),
    "logistic": LogisticRewardModel(),
    "logistic pooled": LogisticRewardModel(per_slot=False),
    "gbt": GBTRewardModel(max_iter=20),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20)


def binary_log(rng, n_dec=300, K=3, m=8, d=2) -> LoggedBandit:
    """Uniform slates of K of m items, a context per decision, clicks from a logistic model."""
    items = np.argsort(rng.random((n_dec, m)), axis=1)[:, :K]
    ctx = rng.normal(size=(n_dec, d))
    logit = -1.0 + rng.normal(size=m)[items] + (ctx @ rng.normal(size=d))[:, None] - 0.4 * np.arange(K)
    reward = (rng.random((n_dec, K)) < expit(logit)).astype(float)
    return LoggedBandit(
        reward=reward.ravel(),
        action=items.ravel(),
        slot=np.tile(np.arange(K), n_dec),
        pscore=np.full(n_dec * K, 1 / m),
        decision=np.repeat(np.arange(n_dec), K),
        context=np.repeat(ctx, K, axis=0),
        n_actions=m,
        n_slots=K,
    )


def newton_logistic(x: np.ndarray, y: np.ndarray, C: float, iters: int = 50) -> np.ndarray:
    """Minimise C * sum(log loss) + |w|^2 / 2 (intercept unpenalised, last column) by Newton's method."""
    w = np.zeros(x.shape[1])
    pen = np.eye(x.shape[1])
    pen[-1, -1] = 0.0
    for _ in range(iters):
        p = expit(x @ w)
        grad = C * x.T @ (p - y) + pen @ w
        hess = C * (x * (p * (1 - p))[:, None]).T @ x + pen
        w -= np.linalg.solve(hess, grad)
    return w


def test_logistic_fit_equals_newtons_method_on_the_dense_design(rng):
    """Per slot: features [one-hot item, context], penalty 1/C, intercept free; predictions of the
    fitted model equal sigmoid(X w) of a plain Newton solve."""
    data = binary_log(rng)
    model = LogisticRewardModel(C=0.5)
    fitted = model.fit(data)
    rows = np.arange(data.n_rows)
    got = model.q(fitted, data, rows, data.action)
    want = np.empty(data.n_rows)
    for k in range(data.n_slots):
        sel = rows[data.slot == k]
        x = np.hstack([np.eye(data.n_actions)[data.action[sel]], data.context[sel], np.ones((len(sel), 1))])
        want[sel] = expit(x @ newton_logistic(x, data.reward[sel], 0.5))
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_fractional_rewards_fit_the_fractional_logit(rng):
    """Rewards in [0, 1]: the quasi-likelihood optimum, which Newton's method on the same loss
    with fractional targets reaches (pooled model: [one-hot slot, one-hot item, context])."""
    data = binary_log(rng)
    frac = LoggedBandit(
        reward=np.clip(data.reward * 0.7 + 0.3 * rng.random(data.n_rows), 0, 1),
        action=data.action,
        slot=data.slot,
        pscore=data.pscore,
        decision=data.decision,
        context=data.context,
        n_actions=data.n_actions,
        n_slots=data.n_slots,
    )
    model = LogisticRewardModel(C=2.0, per_slot=False)
    got = model.q(model.fit(frac), frac, np.arange(frac.n_rows), frac.action)
    x = np.hstack([np.eye(3)[frac.slot], np.eye(frac.n_actions)[frac.action], frac.context, np.ones((frac.n_rows, 1))])
    np.testing.assert_allclose(got, expit(x @ newton_logistic(x, frac.reward, 2.0)), atol=2e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_target_term_equals_the_brute_force_sum_over_items(name, rng):
    """predict's ``sum_a pi(a | x_i, k_i) q(x_i, a, k_i)`` (over a target's nonzeros, dense or
    sparse) against q of every item, one item at a time."""
    import scipy.sparse as sp

    data = binary_log(rng, n_dec=120)
    model = MODELS[name]
    fitted = model.fit(data)
    target = rng.dirichlet(np.ones(data.n_actions), size=data.n_rows)
    target[target < 0.05] = 0.0  # some zeros, so that only nonzeros are visited
    rows = np.arange(data.n_rows)
    every = np.column_stack([model.q(fitted, data, rows, np.full(data.n_rows, a)) for a in range(data.n_actions)])
    logged, dense = model.predict(fitted, data, rows, target)
    _, sparse = model.predict(fitted, data, rows, sp.csr_matrix(target))
    np.testing.assert_allclose(dense, (target * every).sum(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse, dense, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(logged, every[rows, data.action], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cross_fitting_never_lets_a_decision_see_its_own_reward(name, rng):
    """Flipping one decision's rewards leaves that decision's own cross-fitted predictions
    exactly unchanged (the other fold's model moves)."""
    data = binary_log(rng, n_dec=200)
    target = rng.dirichlet(np.ones(data.n_actions), size=data.n_rows)
    model = MODELS[name]
    base = model.cross_fit(data, target, n_folds=2, rng=np.random.default_rng(4))
    own = data.decision == 17
    flipped = LoggedBandit(
        reward=np.where(own, 1 - data.reward, data.reward),
        action=data.action,
        slot=data.slot,
        pscore=data.pscore,
        decision=data.decision,
        context=data.context,
        n_actions=data.n_actions,
        n_slots=data.n_slots,
    )
    moved = model.cross_fit(flipped, target, n_folds=2, rng=np.random.default_rng(4))
    for a, b in zip(base, moved):
        np.testing.assert_array_equal(a[own], b[own])
        assert (np.abs(a - b) > 1e-12).any()


def test_logistic_on_a_rewards_range_is_the_binary_fit_rescaled(rng):
    """Rewards of 0 or 3 (a margin): the fractional logit on r / 3 is the binary fit, so the
    predictions are exactly 3 times the click model's; a range below 0 shifts them likewise."""
    data = binary_log(rng)
    rows = np.arange(data.n_rows)
    model = LogisticRewardModel()
    clicks = model.q(model.fit(data), data, rows, data.action)
    for scale, shift in ((3.0, 0.0), (2.0, -1.0)):
        moved = LoggedBandit(
            reward=scale * data.reward + shift,
            action=data.action,
            slot=data.slot,
            pscore=data.pscore,
            decision=data.decision,
            context=data.context,
            n_actions=data.n_actions,
            n_slots=data.n_slots,
        )
        got = model.q(model.fit(moved), moved, rows, moved.action)
        np.testing.assert_allclose(got, scale * clicks + shift, rtol=1e-9, atol=1e-12)


def test_gbt_is_reproducible_and_regresses_non_binary_rewards(rng):
    data = binary_log(rng, n_dec=200)
    m = GBTRewardModel(max_iter=15)
    rows = np.arange(data.n_rows)
    a = m.q(m.fit(data), data, rows, data.action)
    b = m.q(m.fit(data), data, rows, data.action)
    np.testing.assert_array_equal(a, b)
    assert ((a > 0) & (a < 1)).all()  # probabilities of a click
    scaled = LoggedBandit(
        reward=3.0 * data.reward,
        action=data.action,
        slot=data.slot,
        pscore=data.pscore,
        decision=data.decision,
        context=data.context,
        n_actions=data.n_actions,
        n_slots=3,
    )
    r = m.q(m.fit(scaled), scaled, rows, scaled.action)
    assert r.max() > 1.0  # a regressor on the reward's own scale
    assert abs(r.mean() - scaled.reward.mean()) < 0.05


def test_constant_rewards_give_a_constant_model(rng):
    data = binary_log(rng, n_dec=50)
    zero = LoggedBandit(
        reward=np.zeros(data.n_rows),
        action=data.action,
        slot=data.slot,
        pscore=data.pscore,
        decision=data.decision,
        context=data.context,
        n_actions=data.n_actions,
        n_slots=3,
    )
    rows = np.arange(data.n_rows)
    for model in MODELS.values():
        q = model.q(model.fit(zero), zero, rows, zero.action)
        np.testing.assert_allclose(q, 0.0, atol=1e-12)


def test_bad_inputs_are_named(rng):
    data = binary_log(rng, n_dec=30)
    with pytest.raises(ValidationError, match="C must be a positive number, got 0"):
        LogisticRewardModel(C=0)
    with pytest.raises(ValidationError, match="learning_rate must be in"):
        GBTRewardModel(learning_rate=2.0)
    with pytest.raises(ValidationError, match=r"item_features must be finite, found nan at item 1, column 0"):
        GBTRewardModel(item_features=np.array([[0.0], [np.nan]]))
    with pytest.raises(ValidationError, match="item_features describe 3 items but the log has 8"):
        LogisticRewardModel(item_features=np.zeros((3, 2))).fit(data)
    with pytest.raises(ValidationError, match="unknown reward model 'forest'; known: gbt, logistic, ridge"):
        make_reward_model("forest")
    with pytest.raises(ValidationError, match="reward_model must be a RewardModel"):
        DM(reward_model="ridge")
    big = LoggedBandit(
        reward=data.reward,
        action=data.action,
        slot=data.slot,
        pscore=data.pscore,
        decision=data.decision,
        context=data.context,
        n_actions=300,
        n_slots=3,
    )
    with pytest.raises(ValidationError, match="takes items as categories up to 255 items; the log has 300"):
        GBTRewardModel().fit(big)
    features = rng.normal(size=(300, 2))
    GBTRewardModel(max_iter=5, item_features=features).fit(big)  # with item features it can
    with pytest.raises(ValidationError, match="all 4 decisions fell in fold 0"):
        RidgeRewardModel().fit_folds(data.subset(data.decision < 4), n_folds=2, fold=np.zeros(12, dtype=int))


def test_the_callers_item_features_are_not_frozen_or_aliased():
    f = np.ones((4, 2))
    m = GBTRewardModel(item_features=f)
    f[0, 0] = 5.0  # still writable, and the model kept its own copy
    assert m.item_features[0, 0] == 1.0 and not m.item_features.flags.writeable


def test_decision_folds_are_stable_balanced_and_seeded():
    keys = np.arange(10_000, 30_000)
    fold = decision_folds(keys, 3, 0)
    np.testing.assert_array_equal(decision_folds(keys[5000:7000], 3, 0), fold[5000:7000])  # any partition
    counts = np.bincount(fold, minlength=3)
    # each fold's share is Binomial(20,000, 1/3): within 4 standard errors (sd about 67)
    assert np.abs(counts - len(keys) / 3).max() < 4 * np.sqrt(len(keys) * (1 / 3) * (2 / 3))
    assert (decision_folds(keys, 3, 1) != fold).mean() > 0.5  # another seed, other folds
    with pytest.raises(ValidationError, match="n_folds must be an integer >= 2, got 1"):
        decision_folds(keys, 1, 0)


# ---- the default against a correctly specified logistic regression ---------------------------
@dataclass(frozen=True)
class LogisticWorld:
    """Customers with contexts, items, slots: ``P(click) = sigmoid(b_k + b_a + x_c . theta)``.

    Exact truth: ``V = mean_c sum_jk pi_c(j at k) sigmoid(...)`` over the population. The target
    is personalised, epsilon-greedy (0.3 per slot) on ``(x_c . u) * b_a``: customers on one side
    of ``u`` get the items the world favours, the others the items it does not, so the target's
    customers and items are not the logger's mix, where a model's errors stop averaging out.
    """

    context: np.ndarray  # (C, d)
    b_slot: np.ndarray
    b_item: np.ndarray
    theta: np.ndarray
    target: np.ndarray  # (C, m, K) target marginals
    logger: EpsilonGreedySlate

    @property
    def q(self) -> np.ndarray:
        """(C, m, K) exact click probabilities."""
        z = self.b_slot[None, None, :] + self.b_item[None, :, None] + (self.context @ self.theta)[:, None, None]
        return expit(z)

    @functools.cached_property
    def truth(self) -> float:
        return float((self.target * self.q).sum(axis=(1, 2)).mean())

    @property
    def true_model(self) -> LogisticRewardModel:
        """The correctly specified model: one logistic regression on [slot, item, context]."""
        return LogisticRewardModel(per_slot=False, C=100.0)


@functools.cache
def logistic_world(n_customers=300, m=12, K=3, d=3, seed=5) -> LogisticWorld:
    gen = np.random.default_rng(seed)
    context = gen.normal(size=(n_customers, d))
    theta = np.array([1.5, -1.0, 0.8])[:d]
    b_item = gen.normal(-1.5, 1.2, size=m)
    b_slot = np.array([0.0, -0.5, -1.0])[:K]
    u = gen.normal(size=d)
    target = np.stack([EpsilonGreedySlate(float(x @ u) * b_item, [0.3] * K).marginals() for x in context])
    return LogisticWorld(context, b_slot, b_item, theta, target, EpsilonGreedySlate(np.zeros(m), [1.0] * K))


def logistic_log(world: LogisticWorld, n_decisions: int, seed) -> tuple[LoggedBandit, np.ndarray]:
    """A uniformly logged log of the world and the target's action_dist per row."""
    traffic, slates_rng, clicks_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    C, m, K = world.target.shape
    customer = traffic.integers(0, C, size=n_decisions)
    shown = [world.logger.sample(slates_rng) for _ in range(n_decisions)]
    slates = np.array([s.index for s in shown])
    p = world.q[customer[:, None], slates, np.arange(K)[None, :]]
    clicks = (clicks_rng.random(p.shape) < p).astype(float)
    row_customer = np.repeat(customer, K)
    data = LoggedBandit(
        reward=clicks.ravel(),
        action=slates.ravel(),
        slot=np.tile(np.arange(K), n_decisions),
        pscore=np.concatenate([s.marginal for s in shown]),
        decision=np.repeat(np.arange(n_decisions), K),
        context=world.context[row_customer],
        n_actions=m,
        n_slots=K,
    )
    return data, world.target[row_customer]


def test_the_default_models_dm_error_is_no_worse_than_a_correctly_specified_logistic():
    """12 seeds x 1,500 uniformly logged decisions of the logistic world: the paired difference of
    squared DM errors (default minus correctly specified logistic) is not significantly positive
    (mean below 2 of its standard errors), and the default's DM is unbiased (|t| < 3)."""
    world = logistic_world()
    default, true = [], []
    for seed in range(12):
        data, dist = logistic_log(world, 1500, 100 + seed)
        default.append(DM(seed=seed).estimate(data, dist).value - world.truth)
        true.append(DM(reward_model=world.true_model, seed=seed).estimate(data, dist).value - world.truth)
    default, true = np.array(default), np.array(true)
    diff = default**2 - true**2
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() < 2 * se, (DEFAULT_REWARD_MODEL, np.sqrt((default**2).mean()), np.sqrt((true**2).mean()))
    t = default.mean() / (default.std(ddof=1) / np.sqrt(len(default)))
    assert abs(t) < 3, (default.mean(), t)


def test_every_registered_model_is_built_by_name():
    for name, cls in REWARD_MODELS.items():
        assert isinstance(make_reward_model(name), cls)
    assert type(make_reward_model()) is REWARD_MODELS[DEFAULT_REWARD_MODEL]
