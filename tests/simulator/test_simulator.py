"""The simulated shop: exact expected rewards against Monte Carlo, seeding, validation."""

from __future__ import annotations

import numpy as np
import pytest

from banditrec.errors import ValidationError
from simulator import Shop, ShopConfig


def test_expected_reward_matches_monte_carlo_clicks(small_shop):
    """200,000 simulated impressions of 4 slates: click frequency in every slot within 4
    binomial standard errors of the exact probability; their sum is expected_reward."""
    customers = np.array([0, 1, 2, 3])
    slates = np.array([[5, 6, 7], [10, 3, 8], [0, 1, 2], [50, 60, 70]])
    reps = 50_000
    c = np.repeat(customers, reps)
    s = np.repeat(slates, reps, axis=0)
    clicks = small_shop.model.sample_clicks(c, s, np.random.default_rng(1)).reshape(4, reps, 3)
    p = small_shop.model.click_probabilities(customers, slates)
    freq = clicks.mean(axis=1)
    assert (np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / reps)).all()
    np.testing.assert_allclose(small_shop.expected_reward(customers, slates), p.sum(axis=1))
    # the closed form, written out
    pref, lat = small_shop.customers.preference, small_shop.catalog.latent
    logit = small_shop.config.base_logit + small_shop.catalog.bias[50] + pref[3] @ lat[50]
    assert p[3, 0] == pytest.approx(1 / (1 + np.exp(-logit)))
    assert p[0, 2] / small_shop.model.attraction(np.array([0]), np.array([7]))[0] == pytest.approx(1 / 3)


def test_distribution_value_equals_slate_value_for_a_deterministic_slate(small_shop):
    items = np.array([4, 9, 11, 20])
    marg = np.zeros((4, 2))
    marg[2, 0] = marg[0, 1] = 1.0
    v = small_shop.model.expected_reward_of_distribution(7, items, marg)
    assert v == pytest.approx(small_shop.expected_reward(np.array([7]), np.array([[11, 4]]))[0])


def test_history_is_distinct_purchases_that_follow_preferences(small_shop):
    h = small_shop.history
    assert (h.getnnz(axis=1) == small_shop.config.history_purchases).all()
    assert h.data.max() == 1.0
    m = small_shop.model
    bought = m.attraction(np.repeat(np.arange(400), 6), h.indices).mean()
    everything = m.attraction(np.repeat(np.arange(400), 200), np.tile(np.arange(200), 400)).mean()
    assert bought > 1.5 * everything


def test_same_seed_same_world_and_different_seed_different_world():
    cfg = ShopConfig(n_items=50, n_customers=30, dim=3)
    a, b, c = Shop(cfg, seed=4), Shop(cfg, seed=4), Shop(cfg, seed=5)
    np.testing.assert_array_equal(a.catalog.latent, b.catalog.latent)
    np.testing.assert_array_equal(a.customers.observed, b.customers.observed)
    assert (a.history != b.history).nnz == 0
    assert not np.array_equal(a.catalog.latent, c.catalog.latent)
    ra = a.requests(10, np.random.default_rng(0))
    rb = b.requests(10, np.random.default_rng(0))
    np.testing.assert_array_equal(ra.customer, rb.customer)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_items=0), "ShopConfig.n_items must be a positive integer, got 0"),
        (dict(dim=2.5), "ShopConfig.dim must be a positive integer, got 2.5"),
        (dict(n_types=True), "ShopConfig.n_types must be a positive integer, got True"),
        (dict(eta=float("nan")), "ShopConfig.eta must be a finite number, got nan"),
        (dict(context_noise=-1.0), "context_noise and eta must be >= 0"),
        (dict(n_items=5, history_purchases=6), r"history_purchases \(6\) exceeds n_items \(5\)"),
    ],
)
def test_config_errors_name_the_field_and_value(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        ShopConfig(**kwargs)


def test_the_same_seed_sequence_object_builds_the_same_world_twice():
    cfg = ShopConfig(n_items=30, n_customers=10, dim=2)
    seq = np.random.SeedSequence(99)
    a, b = Shop(cfg, seed=seq), Shop(cfg, seed=seq)
    np.testing.assert_array_equal(a.catalog.latent, b.catalog.latent)
    assert seq.n_children_spawned == 0  # the caller's object is untouched
