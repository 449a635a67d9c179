"""Shared policy-layer features: business objective, per-slot budget, diversity cap, pinned
items, snapshots -- checked through the policies and the engine."""

from __future__ import annotations

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.policies import SENSITIVITY, Request, load, make
from banditrec.policies.sampling import SequentialSlate
from banditrec.policies.slate import EpsilonGreedySlate
from tests.conftest import make_engine


def request(rng, n=12, dc=3, di=2):
    return Request(context=rng.normal(size=dc), items=np.arange(n), item_features=rng.normal(size=(n, di)))


@pytest.mark.parametrize("level", ["low", "medium", "high"])
def test_objective_blend_is_the_documented_formula(rng, level):
    margin = rng.uniform(1, 50, size=12)
    env = dict(context_dim=3, item_dim=2, item_columns={"margin": margin})
    plain = make("linucb:alpha=0.5,epsilon=0.1", **env)
    blended = make(f"linucb:alpha=0.5,epsilon=0.1,objective=margin,sensitivity={level}", **env)
    for p in (plain, blended):  # same learned state
        p.update(np.ones((40, 3)), np.ones((40, 2)), np.ones(40))
    req = request(rng)
    s = plain.scores(req)
    w = SENSITIVITY[level]
    expected = (1 - w) * (s - s.min()) / (s.max() - s.min()) + w * (margin - margin.min()) / (
        margin.max() - margin.min()
    )
    got = blended.distribution(req, 3).scores
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # off leaves the policy's own scores untouched
    np.testing.assert_array_equal(plain.distribution(req, 3).scores, s)


def test_higher_sensitivity_shows_more_of_the_business_column(rng):
    """Top-3 greedy slates over 200 random requests: the summed margin grows with sensitivity."""
    margin = rng.uniform(0, 1, size=40)
    totals = []
    for level in ("off", "low", "medium", "high"):
        p = make(
            f"popularity:epsilon=0.0,objective=margin,sensitivity={level}"
            if level != "off"
            else "popularity:epsilon=0.0",
            popularity=np.arange(40.0),
            item_columns={"margin": margin},
        )
        total = 0.0
        r = np.random.default_rng(1)
        for _ in range(200):
            items = r.choice(40, size=15, replace=False)
            req = Request(context=np.zeros(1), items=items, item_features=np.zeros((15, 1)))
            idx = p.distribution(req, 3).sample(r).index
            total += margin[items[idx]].sum()
        totals.append(total)
    assert totals == sorted(totals) and totals[-1] > totals[0]


def test_objective_errors_name_the_problem():
    with pytest.raises(ValidationError, match="objective 'royalty' is not an item column; known: margin"):
        make("popularity:objective=royalty,sensitivity=low", item_columns={"margin": np.ones(3)}, popularity=np.ones(3))
    with pytest.raises(ValidationError, match="sensitivity must be one of off, low, medium, high"):
        make(
            "popularity:objective=margin,sensitivity=extreme",
            item_columns={"margin": np.ones(3)},
            popularity=np.ones(3),
        )
    with pytest.raises(ValidationError, match="sensitivity=low needs an objective column"):
        make("popularity:sensitivity=low", popularity=np.ones(3))
    with pytest.raises(ValidationError, match="uniform serves uniformly random slates"):
        make("uniform:objective=margin,sensitivity=low", item_columns={"margin": np.ones(3)})


def test_explore_from_keeps_early_slots_greedy_and_the_floor_still_applies(rng):
    p = make("linucb:alpha=1,epsilon=0.3,explore_from=2", context_dim=3, item_dim=2)
    assert p.epsilon_per_slot(4).tolist() == [0.0, 0.0, 0.3, 0.3]
    dist = p.distribution(request(rng), 4, min_epsilon=0.02)
    assert dist.epsilon.tolist() == [0.02, 0.02, 0.3, 0.3]
    assert (dist.marginals() > 0).all()
    assert "explore_from=2" in make("linucb:explore_from=2", context_dim=3, item_dim=2).spec


def test_diversity_cap_switches_to_the_monte_carlo_filler(rng):
    types = np.repeat(np.arange(4), 3)
    p = make("popularity:epsilon=0.1,max_per_type=1", popularity=np.arange(12.0), item_types=types)
    dist = p.distribution(request(rng), 4)
    assert isinstance(dist, SequentialSlate) and dist.marginal_draws == p.mc_draws
    for _ in range(200):
        s = dist.sample(rng)
        assert sorted(types[s.index].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValidationError, match="max_per_type needs each item's product type"):
        make("popularity:max_per_type=1", popularity=np.ones(3))
    assert isinstance(make("popularity", popularity=np.ones(12)).distribution(request(rng), 3), EpsilonGreedySlate)


def test_pinned_items_are_logged_with_propensity_one_and_left_out_of_learning(small_shop):
    engine = make_engine(small_shop)
    ids = engine.items.ids
    d = engine.decide("u1", 4, pinned=[ids[5], ids[9]])
    assert [s.item_id for s in d.slots[:2]] == [ids[5], ids[9]]
    assert [(s.propensity, s.marginal, s.source) for s in d.slots[:2]] == [(1.0, 1.0, "pinned")] * 2
    assert all(s.source != "pinned" and 0 < s.marginal < 1 for s in d.slots[2:])
    assert ids[5] not in d.candidates and ids[9] not in d.candidates
    # the policy's two slots carry the joint probability; pinned ones multiply by 1
    assert d.log_joint_propensity == pytest.approx(np.log([s.propensity for s in d.slots[2:]]).sum())
    logged = engine.log.decisions()
    assert logged.row_slot.tolist() == [0, 1]  # the policy's slots, positions 2 and 3
    assert logged.row_action.tolist() == [engine.items.index_of([s.item_id], "x")[0] for s in d.slots[2:]]
    all_pinned = engine.decide("u2", 2, pinned=[ids[1], ids[2]])
    assert [s.source for s in all_pinned.slots] == ["pinned", "pinned"] and all_pinned.joint_propensity == 1.0
    with pytest.raises(ValidationError, match="3 pinned items do not fit in 2 slots"):
        engine.decide("u1", 2, pinned=ids[:3])
    with pytest.raises(ValidationError, match="pinned lists an item twice"):
        engine.decide("u1", 3, pinned=[ids[1], ids[1]])
    engine.log.close()


def test_snapshot_round_trip_and_refusal(tmp_path, rng):
    env = dict(context_dim=3, item_dim=2)
    p = make("linucb:alpha=0.7,epsilon=0.05", **env)
    p.update(rng.normal(size=(30, 3)), rng.normal(size=(30, 2)), rng.normal(size=30))
    manifest = p.save(tmp_path / "m")
    q = load(manifest, **env)
    req = request(rng)
    np.testing.assert_array_equal(q.scores(req), p.scores(req))
    assert q.model_version == p.model_version and q.params == p.params
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "m.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationError, match="truncated or corrupt"):
        load(manifest, **env)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load(manifest, **env)


def test_importance_weighted_retraining_passes_the_documented_weights(small_shop):
    from banditrec.offline import importance_weights, train_from_log

    engine = make_engine(small_shop, "popularity:epsilon=0.3")
    for u in range(60):
        d = engine.decide(f"c{u}", 3)
        if u % 3 == 0:
            engine.reward(d.event_id, 1.0, position=u % 2)
    logged = engine.log.decisions()
    got = {}

    class Spy:
        needs = frozenset()

        def update(self, context, item_features, reward, *, items=None, weight=None, **rest):
            got.update(context=context, items=items, weight=weight)

    assert train_from_log(Spy(), logged, engine.items.features) == 180
    inv = 1.0 / logged.row_pscore
    w = np.minimum(inv, 10.0 * np.median(inv))
    np.testing.assert_allclose(got["weight"], w / w.mean(), rtol=1e-12)
    np.testing.assert_array_equal(got["items"], logged.row_action)
    assert got["context"].shape == (180, small_shop.config.dim)
    np.testing.assert_allclose(importance_weights(np.full(5, 0.2)), np.ones(5))
    with pytest.raises(ValidationError, match=r"pscore must be a non-empty 1-D array in \(0, 1\]"):
        importance_weights(np.array([0.5, 0.0]))
    # a weighted fit on the log changes the learned model compared with an unweighted one
    a = make("linucb", context_dim=small_shop.config.dim, item_dim=small_shop.config.dim)
    b = make("linucb", context_dim=small_shop.config.dim, item_dim=small_shop.config.dim)
    train_from_log(a, logged, engine.items.features)
    train_from_log(b, logged, engine.items.features, importance=False)
    assert not np.allclose(a.theta, b.theta)
    engine.log.close()


def test_fully_pinned_decisions_learn_nothing_and_do_not_stop_learning(small_shop):
    engine = make_engine(small_shop)
    ids = engine.items.ids
    d = engine.decide("u1", 2, pinned=[ids[1], ids[2]])
    assert d.candidates == ()  # no candidate generation for a policy that picks nothing
    assert engine.learn() == 0
    e = engine.decide("u2", 3, pinned=[ids[4]])
    engine.reward(e.event_id, 1.0, position=1)
    assert engine.learn() == 2  # the pinned decision before it did not block the cursor
    logged = engine.log.decisions()
    assert logged.row_slot.tolist() == [0, 1]
    np.testing.assert_allclose(logged.row_propensity, [s.propensity for s in e.slots[1:]])
    engine.log.close()


def test_a_pinned_slot_after_a_policy_slot_is_refused():
    from banditrec.store.codecs import decision_rows
    from banditrec.types import Decision, Slot

    slots = (Slot(0, "a", 0.5, 0.5, "cf"), Slot(1, "b", 1.0, 1.0, "pinned"))
    d = Decision("e", "u", slots, 0.5, float(np.log(0.5)), "p", "p-0", ("a", "c"), 1.0)
    with pytest.raises(ValidationError, match="pinned slots must come first"):
        decision_rows(d, {}, [0, 2], [0, 1], [0.0])
    slots = (Slot(0, "b", 0.9, 1.0, "pinned"),)
    d = Decision("e", "u", slots, 0.9, float(np.log(0.9)), "p", "p-0", (), 1.0)
    with pytest.raises(ValidationError, match="propensity and marginal must be 1"):
        decision_rows(d, {}, [], [1], [0.0])
