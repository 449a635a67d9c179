"""The decision path's edges: learning cursors, late and whole-decision rewards, long slates,
partial writes, out-of-range contexts, event ids."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.store.codecs import json_strings
from tests.helpers import make_engine

CTX = [0.1, -0.2, 0.3, 0.4]


def test_learning_with_nothing_new_is_a_no_op(engine):
    assert engine.learn() == 0
    engine.decide("u1", 3, context=CTX)
    assert engine.learn() == 3
    version = engine.policy.model_version
    assert engine.learn() == 0
    assert engine.policy.model_version == version


def test_learning_uses_rewards_in_by_then_and_keeps_late_ones(engine):
    d1 = engine.decide("u1", 2, context=CTX)
    engine.reward(d1.event_id, 1.0, position=0)
    engine.learn()
    A_after_first = engine.policy.A.copy()
    engine.reward(d1.event_id, 1.0, position=1)  # late: d1 was already learned from
    assert engine.learn() == 0
    np.testing.assert_array_equal(engine.policy.A, A_after_first)
    logged = engine.log.decisions()
    np.testing.assert_array_equal(logged.row_reward, [1.0, 1.0])  # but it is in the log


def test_theta_after_learning_equals_ridge_on_the_joined_rows(engine):
    from banditrec.features import joint_features

    for u in range(20):
        d = engine.decide(f"u{u}", 3, context=CTX)
        engine.reward(d.event_id, 1.0, position=u % 3)
    engine.learn()
    logged = engine.log.decisions()
    X = joint_features(logged.context[logged.row_decision], engine.items.features[logged.row_action])
    A = np.eye(X.shape[1]) + X.T @ X
    np.testing.assert_allclose(engine.policy.theta, np.linalg.solve(A, X.T @ logged.row_reward), atol=1e-10)
    assert logged.row_reward.sum() == 20


def test_a_slate_whose_joint_probability_underflows_is_logged_with_its_log(small_shop):
    eng = make_engine(small_shop, "uniform")
    items = [f"i{i}" for i in range(199)]
    d = eng.decide("u1", 190, context=CTX, candidates=items)
    expected_log = -(math.lgamma(200) - math.lgamma(10))  # log of 1/(199 * 198 * ... * 10)
    assert d.joint_propensity == 0.0
    assert d.log_joint_propensity == pytest.approx(expected_log, rel=1e-12)
    stored = eng.log.db.execute("SELECT joint_propensity, log_joint_propensity FROM decisions").fetchone()
    assert stored == (0.0, d.log_joint_propensity)


def test_whole_decision_rewards_are_read_separately(engine):
    d1 = engine.decide("u1", 2, context=CTX)
    d2 = engine.decide("u2", 2, context=CTX)
    engine.reward(d2.event_id, 9.5, kind="purchase")
    logged = engine.log.decisions(kind="purchase", default_reward=-1.0)
    np.testing.assert_array_equal(logged.decision_reward, [-1.0, 9.5])
    np.testing.assert_array_equal(logged.row_reward, [-1.0] * 4)  # no slot got a purchase
    assert [d1.event_id, d2.event_id] == logged.event_id


def test_a_decision_with_missing_slot_indices_is_refused_whole(log, engine):
    d = engine.decide("u1", 3, context=CTX)
    other = d.__class__(**{**d.__dict__, "event_id": "x"})
    with pytest.raises(ValidationError, match="needs as many indices, got 1 and"):
        log.write_decision(
            other, policy_params={}, candidate_index=range(len(d.candidates)), slot_index=[0], context=CTX
        )
    assert log.count("decisions") == 0 and log.count("slots") == 0


def test_an_overflowing_context_is_a_context_error(engine):
    with pytest.raises(ValidationError, match="scores are not finite") as err:
        engine.decide("u1", 2, context=[1e200, 0, 0, 1e200])
    assert err.value.field == "context"
    assert engine.log.count("decisions") == 0


def test_unseeded_engines_take_event_ids_from_the_os(small_shop):
    a, b = make_engine(small_shop, seed=None), make_engine(small_shop, seed=None)
    ids = {a.decide("u1", 2, context=CTX).event_id for _ in range(50)} | {
        b.decide("u1", 2, context=CTX).event_id for _ in range(50)
    }
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


def test_unseeded_event_ids_start_with_the_wall_clock_in_milliseconds(small_shop):
    """Time-ordered ids (the log's event_id index then grows at its end): the first 12 hex
    digits are the millisecond clock at decision time, the other 20 differ between ids."""
    engine = make_engine(small_shop, seed=None)
    before = time.time_ns() // 1_000_000
    ids = [engine.decide("u1", 2, context=CTX).event_id for _ in range(30)]
    after = time.time_ns() // 1_000_000
    stamps = [int(i[:12], 16) for i in ids]
    assert all(before <= t <= after for t in stamps) and stamps == sorted(stamps)
    assert len({i[12:] for i in ids}) == 30 and all(int(i, 16) >= 0 for i in ids)
    # a seeded engine still draws its ids from its own stream: the same seed, the same ids
    seeded = [
        [make_engine(small_shop, seed=5).decide("u1", 2, context=CTX).event_id for _ in range(1)][0] for _ in range(2)
    ]
    assert seeded[0] == seeded[1] and abs(int(seeded[0][:12], 16) - before) > 10**9


def test_served_exploration_floor_is_logged_with_the_policy_params(small_shop):
    import json

    eng = make_engine(small_shop, "linucb:epsilon=0.0", min_epsilon=0.05)
    d = eng.decide("u1", 3, context=CTX)
    params = json.loads(eng.log.db.execute("SELECT policy_params FROM decisions").fetchone()[0])
    # every param of the policy's config, plus the floor; the ones this spec sets, by value
    assert params == {**eng.policy.params, "min_epsilon": 0.05}
    expected = {
        "epsilon": 0.0,
        "explore_from": 0,
        "objective": "",
        "sensitivity": "off",
        "max_per_type": 0,
        "alpha": 1.0,
        "reg": 1.0,
        "gamma": 1.0,
        "min_epsilon": 0.05,
    }
    assert {k: params.get(k) for k in expected} == expected
    n = len(d.candidates)
    assert min(s.marginal for s in d.slots) > 0
    # every logged conditional is at least the floor's share
    assert all(s.propensity >= 0.05 / (n - s.position) - 1e-15 for s in d.slots)


def test_threads_deciding_while_a_learner_runs_lose_and_double_nothing(small_shop, tmp_path):
    """4 threads x 100 decisions with a learner thread looping: every decision is logged once,
    every slot is learned from exactly once, and the file passes an integrity check."""
    import threading

    eng = make_engine(small_shop, db=str(tmp_path / "log.db"), seed=None)
    errors, learned = [], []
    done = threading.Event()

    def serve(t):
        try:
            for i in range(100):
                d = eng.decide(f"u{t * 100 + i}", 3, context=CTX)
                eng.reward(d.event_id, 1.0, position=i % 3)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def learner():
        while not done.is_set():
            learned.append(eng.learn())

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(4)]
    lt = threading.Thread(target=learner)
    lt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    lt.join()
    learned.append(eng.learn())
    assert errors == []
    assert eng.log.count("decisions") == 400 and eng.log.count("rewards") == 400
    assert sum(learned) == 1200  # each logged slot learned from once
    assert eng.log.integrity_ok()


def test_exclude_ignores_ids_the_catalog_does_not_know(engine):
    cands = [f"i{i}" for i in range(10)]
    for _ in range(20):
        d = engine.decide("u1", 5, context=CTX, candidates=cands, exclude=["gone-item", "i3", "i7"])
        assert not {"i3", "i7"} & {s.item_id for s in d.slots}
        assert len(d.candidates) == 8
    with pytest.raises(ValidationError, match=r"candidates\[1\]: unknown item id 'gone-item'"):
        engine.decide("u1", 2, context=CTX, candidates=["i1", "gone-item"])


def _batch_requests(shop, rng):
    ids = list(shop.catalog.item_ids)
    reqs = []
    for i in range(12):
        req = {"user_id": f"u{i}", "n_slots": int(rng.integers(1, 5)), "context": rng.normal(size=4).tolist()}
        if i % 3 != 2:  # request candidates (some with an exclusion); else the generator's
            req["candidates"] = [ids[j] for j in rng.choice(len(ids), 15, replace=False)]
            if i % 3 == 1:
                req["exclude"] = req["candidates"][:2]
        if i == 4:
            req["pinned"] = [ids[0]]
        reqs.append(req)
    reqs.append({"user_id": "u-pins", "n_slots": 1, "context": CTX, "pinned": [ids[1]]})  # pins only
    return reqs


def _logged(eng):
    rows = eng.log.db.execute(
        "SELECT event_id, candidates, candidate_index, context, policy_params, joint_propensity, "
        "log_joint_propensity FROM decisions ORDER BY seq"
    ).fetchall()
    slots = eng.log.db.execute("SELECT * FROM slots ORDER BY event_id, position").fetchall()
    return rows, slots


@pytest.mark.parametrize("policy", ["linucb:alpha=1.0,epsilon=0.1", "disjoint-linucb", "egreedy"])
def test_a_batch_serves_and_logs_what_one_at_a_time_would(small_shop, policy):
    """Two engines with the same seed and learned state: 13 requests (request and generated
    candidates, exclusions, pins, one all-pinned) decided one by one, and as one batch. Same
    event ids, slates, sources, candidates; propensities and marginals equal to 1e-12; the
    same rows in the log."""
    one, many = make_engine(small_shop, policy), make_engine(small_shop, policy)
    for eng in (one, many):  # learn from a few decisions, so that scores are not all equal
        for u in range(10):
            d = eng.decide(f"t{u}", 3, context=CTX)
            eng.reward(d.event_id, 1.0, position=u % 3)
        eng.learn()
    reqs = _batch_requests(small_shop, np.random.default_rng(3))
    singles = [one.decide(r.pop("user_id"), r.pop("n_slots"), **r) for r in [dict(r) for r in reqs]]
    batch = many.decide_batch(reqs)
    assert len(batch) == len(singles) == 13
    for a, b in zip(singles, batch):
        assert (a.event_id, a.candidates, a.model_version, a.policy) == (
            b.event_id,
            b.candidates,
            b.model_version,
            b.policy,
        )
        assert [(s.position, s.item_id, s.source, s.marginal_draws) for s in a.slots] == [
            (s.position, s.item_id, s.source, s.marginal_draws) for s in b.slots
        ]
        np.testing.assert_allclose([s.propensity for s in a.slots], [s.propensity for s in b.slots], rtol=0, atol=1e-12)
        np.testing.assert_allclose([s.marginal for s in a.slots], [s.marginal for s in b.slots], rtol=0, atol=1e-12)
        assert a.log_joint_propensity == pytest.approx(b.log_joint_propensity, abs=1e-12)
    assert any(s.source == "pinned" for s in batch[4].slots) and batch[-1].slots[0].source == "pinned"
    rows_one, slots_one = _logged(one)
    rows_many, slots_many = _logged(many)
    assert [r[:5] for r in rows_one] == [r[:5] for r in rows_many]
    np.testing.assert_allclose([r[5:] for r in rows_one], [r[5:] for r in rows_many], rtol=0, atol=1e-12)
    assert [s[:4] + s[6:] for s in slots_one] == [s[:4] + s[6:] for s in slots_many]
    np.testing.assert_allclose([s[4:6] for s in slots_one], [s[4:6] for s in slots_many], rtol=0, atol=1e-12)


def test_a_batch_with_an_overflowing_context_names_its_request_and_logs_nothing(engine, small_shop):
    reqs = _batch_requests(small_shop, np.random.default_rng(4))
    reqs[5]["context"] = [1e200, 0, 0, 1e200]
    with pytest.raises(ValidationError, match="scores are not finite") as err:
        engine.decide_batch(reqs)
    assert err.value.field == "context" and err.value.index == 5
    assert engine.log.count("decisions") == 0


def test_a_serving_log_checkpoints_the_wal_from_its_own_thread(make_log, small_shop, tmp_path):
    """With checkpoint_interval_s the writers' automatic checkpoint is only a backstop (8000
    pages, far above what 30 decisions write), yet the decisions reach the database file: the
    background thread copied them. It stops on close, and the file is intact."""
    import os
    import time

    from banditrec.store.log import CHECKPOINT_BACKSTOP_PAGES

    path = tmp_path / "log.db"
    log = make_log(path, checkpoint_interval_s=0.02)
    assert log.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == CHECKPOINT_BACKSTOP_PAGES
    eng = make_engine(small_shop, db=str(path))
    eng.log.close()
    eng.log = log
    size0 = os.path.getsize(path)
    for u in range(30):
        eng.decide(f"u{u}", 3, context=CTX)
    deadline = time.monotonic() + 5
    while os.path.getsize(path) == size0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.path.getsize(path) > size0
    thread = log._checkpointer._thread
    log.close()
    assert not thread.is_alive()
    assert make_log(path).integrity_ok()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True)), max_size=12))
def test_the_logged_candidate_list_is_exactly_what_json_dumps_writes(ids):
    """The log writes candidate ids with a join when nothing needs escaping; the text must be
    json.dumps's, character for character, for any strings (quotes, backslashes, control
    characters, non-ASCII fall back to json.dumps)."""
    assert json_strings(tuple(ids)) == json.dumps(ids)
    assert json.loads(json_strings(ids)) == ids


def test_a_candidate_generator_is_a_candidate_source_or_is_refused(small_shop):
    """The engine asks its generator for ``candidates_for_session`` and nothing else: an object
    without it is refused when the engine is built, naming the protocol; item-to-item CF is a
    source whose candidates are its own seeded by the history, then the session's seeds."""
    from banditrec.candidates import CandidateSource, ItemItemCF
    from banditrec.engine import Engine, ItemTable, Session

    class OnlyCandidates:
        def candidates(self, seeds, N, exclude=None):  # the old fallback's method: not enough
            raise AssertionError("never called")

    items = ItemTable(ids=tuple(small_shop.catalog.item_ids), features=small_shop.catalog.features)
    with pytest.raises(ValidationError, match="OnlyCandidates.*not a CandidateSource") as err:
        Engine(
            items=items,
            policy=make_engine(small_shop).policy,
            log=None,
            candidate_generator=OnlyCandidates(),
            user_items=small_shop.history,
            user_index={},
            context_dim=4,
        )
    assert err.value.field == "candidate_generator"
    cf = ItemItemCF(n_neighbors=20).fit(small_shop.history)
    assert isinstance(cf, CandidateSource)
    session = Session(cart=np.array([3]), purchased=np.array([7, 1]), viewed=np.array([9]))
    history = np.array([2, 11])
    got = cf.candidates_for_session(history, session, 15, exclude=np.array([5]), segment=4)
    want = cf.candidates(np.concatenate([history, session.seeds()]), 15, exclude=np.array([5]))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_building_an_engine_leaves_its_log_unchanged_and_the_first_decision_logs_the_catalog(
    make_log, small_shop, tmp_path
):
    """The constructor writes nothing; the catalog reaches the log's items table with the first
    logged decision (one by one or in a batch), or earlier through ``log_items()``, once; a log
    that already holds items keeps them."""
    from banditrec.store.reader import TABLES
    from studies.coverage import build_engine

    ids = list(small_shop.catalog.item_ids)
    for how in ("decide", "batch", "explicit"):
        log = make_log(tmp_path / f"{how}.db")
        before = ({t: log.count(t) for t in TABLES}, log.db.conn.total_changes)
        eng = build_engine(small_shop, "egreedy", log, seed=1)
        assert ({t: log.count(t) for t in TABLES}, log.db.conn.total_changes) == before
        if how == "explicit":
            assert eng.log_items() == len(ids)
        if how == "batch":
            eng.decide_batch([{"user_id": "u1", "n_slots": 2, "context": CTX}])
        else:
            eng.decide("u1", 2, context=CTX)
        assert log.items()[0] == ids
        np.testing.assert_array_equal(log.items()[1], small_shop.catalog.features)
        assert eng.log_items() == 0
        eng.decide("u2", 2, context=CTX)
        assert log.count("items") == len(ids)
        log.close()
    log = make_log(tmp_path / "kept.db")
    log.write_items(["x"], [[1.0, 2.0, 3.0, 4.0]])
    eng = build_engine(small_shop, "egreedy", log, seed=1)
    eng.decide("u1", 2, context=CTX)
    assert log.items()[0] == ["x"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["i0", "i3", "i7", "x", "i9"]), max_size=6))
def test_item_indices_agree_with_a_dict_lookup_one_id_at_a_time(ids):
    """``ItemTable.index_of`` (its fast path looks every id up in one call) against the obvious
    loop: the same indices, and an unknown id refused by its position; ``skip_unknown`` drops it."""
    from banditrec.engine import ItemTable

    table = ItemTable(ids=tuple(f"i{j}" for j in range(10)), features=np.zeros((10, 2)))
    want = [int(item[1:]) if item != "x" else -1 for item in ids]
    assert table.index_of(ids, "candidates", skip_unknown=True).tolist() == [i for i in want if i >= 0]
    if -1 in want:
        with pytest.raises(ValidationError, match=rf"candidates\[{want.index(-1)}\]: unknown item id 'x'"):
            table.index_of(ids, "candidates")
    else:
        got = table.index_of(ids, "candidates")
        assert got.dtype == np.int64 and got.tolist() == want
