"""Deferred Monte-Carlo propensities: a serving engine logs a slate with what is exact and cheap
and completes the rest later; the completed log equals an eagerly logged one, row for row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.policies import REGISTRY
from banditrec.policies.sampling import SequentialSlate, from_recipe
from banditrec.store import DecisionLog
from tests.helpers import make_engine

CTX = [0.1, -0.2, 0.3, 0.05]
SPECS = {
    "uniform": "uniform",
    "popularity": "popularity",
    "egreedy": "egreedy",
    "softmax": "softmax",
    "linucb": "linucb:alpha=1.0,epsilon=0.1",
    "disjoint-linucb": "disjoint-linucb",
    "hybrid-linucb": "hybrid-linucb",
    "lints": "lints",
    "bernoulli-ts": "bernoulli-ts",
    "vw-cb": "vw-cb",
    "vw-ccb": "vw-ccb:epsilon=0.1",
}
MC = {"softmax", "lints", "bernoulli-ts", "vw-cb", "vw-ccb"}  # policies with Monte-Carlo propensities


def _rows(log: DecisionLog):
    dec = log.db.execute(
        "SELECT event_id, model_version, candidate_index, joint_propensity, log_joint_propensity FROM decisions "
        "ORDER BY seq"
    ).fetchall()
    slots = log.db.execute("SELECT * FROM slots ORDER BY event_id, position").fetchall()
    return dec, slots


def _serve(eng, rng_seed: int = 5):
    """Decisions one by one and in a batch, with a pin, and learning in between."""
    rng = np.random.default_rng(rng_seed)
    for step in range(3):
        for u in range(4):
            pinned = [eng.items.ids[0]] if u == 1 else None
            d = eng.decide(f"u{step}-{u}", 3, context=rng.normal(size=4).tolist(), pinned=pinned)
            eng.reward(d.event_id, 1.0, position=u % 3)
        eng.decide_batch(
            [{"user_id": f"b{step}-{j}", "n_slots": 2, "context": rng.normal(size=4).tolist()} for j in range(3)]
        )
        eng.learn()


def test_every_registered_policy_is_covered():
    assert set(SPECS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_deferred_propensities_equal_decision_time_ones_for_every_policy(small_shop, name):
    """Two engines with the same seed serve the same requests, learning between rounds; one
    computes every propensity at decision time, the other defers the Monte-Carlo ones. Once the
    log settles, both logs hold the same rows, bit for bit."""
    eager, deferred = make_engine(small_shop, SPECS[name]), make_engine(small_shop, SPECS[name])
    deferred.defer_marginals = True
    _serve(eager)
    _serve(deferred)
    assert deferred.log.settle_pending() == 0
    assert _rows(deferred.log) == _rows(eager.log)
    assert deferred.log.count("pending") == 0


@pytest.mark.parametrize("name", sorted(MC))
def test_a_deferred_decision_leaves_its_monte_carlo_values_for_later(small_shop, name):
    eng = make_engine(small_shop, SPECS[name])
    eng.defer_marginals = True
    d = eng.decide("u1", 3, context=CTX)
    assert all(np.isnan(s.marginal) for s in d.slots)
    assert eng.log.count("pending") == 1
    null = eng.log.db.execute("SELECT count(*) FROM slots WHERE marginal IS NULL").fetchone()[0]
    assert null == 3
    assert eng.complete_pending() == 1
    assert eng.log.count("pending") == 0
    assert eng.log.db.execute("SELECT count(*) FROM slots WHERE marginal IS NULL").fetchone()[0] == 0


@pytest.mark.parametrize("name", ["egreedy", "linucb", "uniform"])
def test_exact_marginals_are_still_logged_at_decision_time(small_shop, name):
    eng = make_engine(small_shop, SPECS[name])
    eng.defer_marginals = True
    d = eng.decide("u1", 3, context=CTX)
    assert not any(np.isnan(s.marginal) for s in d.slots)
    assert eng.log.count("pending") == 0


@pytest.mark.parametrize("name", ["softmax", "vw-cb"])
def test_a_self_contained_recipe_completes_from_the_log_alone(small_shop, tmp_path, name):
    """A serving process dies with decisions pending (its queue lost): any process that opens
    the log completes sequential-filling decisions from their logged recipes, to the values
    the eager engine logged."""
    db = tmp_path / "log.db"
    eager, deferred = make_engine(small_shop, SPECS[name]), make_engine(small_shop, SPECS[name], db=db)
    deferred.defer_marginals = True
    for eng in (eager, deferred):
        for u in range(5):
            eng.decide(f"u{u}", 3, context=CTX)
    deferred._pending.clear()  # the crash: nothing in memory survives
    deferred.log.close()
    other = DecisionLog(db)
    assert other.count("pending") == 5
    assert other.settle_pending() == 0
    assert _rows(other) == _rows(eager.log)


def test_a_decision_that_needs_its_model_stays_pending_and_readers_leave_it_out(small_shop, tmp_path):
    db = tmp_path / "log.db"
    eng = make_engine(small_shop, "lints", db=db)
    eng.defer_marginals = True
    lost = eng.decide("u1", 3, context=CTX)
    eng._pending.clear()  # the crash
    kept = eng.decide("u2", 3, context=CTX)
    eng.log.close()
    other = DecisionLog(db)
    assert other.settle_pending() == 2  # nothing here can complete Thompson sampling's values
    assert other.decisions().n_decisions == 0
    assert other.count("decisions") == 2  # nothing logged is lost
    assert {lost.event_id, kept.event_id} == {r[0] for r in other.db.execute("SELECT event_id FROM pending")}


def test_readers_and_exports_leave_pending_decisions_out(small_shop, tmp_path):
    from banditrec.store.export import export_csv

    eng = make_engine(small_shop, "lints")
    eng.defer_marginals = True
    eng.decide("u1", 2, context=CTX)
    eng._pending.clear()
    done = make_engine(small_shop, "linucb")
    assert eng.log.decisions().n_decisions == 0
    result = export_csv(eng.log, tmp_path / "out.csv")
    assert result.rows == 0
    done.decide("u1", 2, context=CTX)
    assert done.log.decisions().n_decisions == 1


def test_a_nan_propensity_is_refused_unless_the_decision_is_pending(small_shop):
    eng = make_engine(small_shop, "softmax")
    eng.defer_marginals = True
    record, _ = eng._prepare("u1", 2, context=CTX)
    assert record.pending
    with pytest.raises(ValidationError, match="NaN"):
        eng.log.write_decisions([record._replace(pending=False)])
    assert eng.log.count("decisions") == 0


def test_completing_twice_changes_nothing(small_shop):
    eng = make_engine(small_shop, "softmax")
    eng.defer_marginals = True
    eng.decide("u1", 3, context=CTX)
    queued = list(eng._pending)
    assert eng.complete_pending() == 1
    before = _rows(eng.log)
    eng._pending.extend(queued)
    assert eng.complete_pending() == 0
    assert _rows(eng.log) == before


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    capped=st.booleans(),
    kind=st.sampled_from(["weights", "greedy"]),
)
def test_a_recipe_rebuilds_the_same_distribution(n, k, seed, capped, kind):
    rng = np.random.default_rng(seed)
    k = min(k, n)
    values = rng.exponential(size=n) if kind == "weights" else rng.normal(size=n)
    types = rng.integers(0, 3, size=n) if capped else None
    cap = 0
    if capped:  # the smallest cap that can still fill k slots
        counts = np.bincount(types)
        cap = next(c for c in range(1, k + 1) if np.minimum(counts, c).sum() >= k)
    dist = SequentialSlate(values, rng.uniform(0, 1, size=k), kind=kind, types=types, max_per_type=cap, draws=16)
    again = from_recipe(dist.recipe())
    assert again.seed == dist.seed
    np.testing.assert_array_equal(again.marginals(), dist.marginals())
    index = dist.sample(np.random.default_rng(1)).index
    np.testing.assert_array_equal(again.conditionals(index), dist.conditionals(index))


def test_a_recipe_that_is_not_one_is_refused():
    with pytest.raises(ValidationError, match="recipe"):
        from_recipe(b"garbage")


def test_a_failed_completion_keeps_the_queue_for_the_next_try(small_shop, monkeypatch):
    eng = make_engine(small_shop, "lints")
    eng.defer_marginals = True
    eng.decide("u1", 3, context=CTX)
    real = eng.log.complete_pending

    def locked(done):
        raise TimeoutError("database is locked")

    monkeypatch.setattr(eng.log, "complete_pending", locked)
    with pytest.raises(TimeoutError):
        eng.complete_pending()
    monkeypatch.setattr(eng.log, "complete_pending", real)
    assert eng.complete_pending() == 1
    assert eng.log.count("pending") == 0
