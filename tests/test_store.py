"""The decision log: schema constraints, atomic writes, joins, migrations, events, models, items."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import numpy as np
import pytest
import sqlite_utils
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from banditrec.demo import build_engine
from banditrec.errors import ConflictError, NotFoundError, ValidationError
from banditrec.store import DecisionLog
from banditrec.store.log import INSERT_DECISION, INSERT_SLOT, decision_rows
from banditrec.store.migrations import migrations
from banditrec.types import Decision, Reward, Slot
from conftest import make_engine


def decision(event_id="e1", props=(0.5, 0.25), margs=(0.5, 0.3), items=("a", "b")):
    slots = tuple(
        Slot(position=k, item_id=items[k], propensity=props[k], marginal=margs[k], source="cf")
        for k in range(len(props))
    )
    return Decision(event_id=event_id, user_id="u1", slots=slots, joint_propensity=float(np.prod(props)),
                    log_joint_propensity=float(np.log(props).sum()) if min(props) > 0 else 0.0,
                    policy="test", model_version="test-0", candidates=("a", "b", "c"), ts=1.0)


def write(log, d, context=(0.1, 0.2)):
    log.write_decision(d, policy_params={"epsilon": 0.1}, candidate_index=[0, 1, 2],
                       slot_index=[0, 1][: len(d.slots)], context=context)


def test_round_trip_into_arrays_at_full_precision():
    log = DecisionLog()
    p = 1 / 3 + 1e-15
    write(log, decision(props=(p, 0.25), margs=(p, 0.3)), context=(np.pi, -1e-300))
    write(log, decision("e2"))
    log.record_reward(Reward("e1", 1.0, position=1))
    got = log.decisions()
    assert got.event_id == ["e1", "e2"]
    np.testing.assert_array_equal(got.context[0], [np.pi, -1e-300])
    assert got.row_pscore[0] == p  # bit-exact
    np.testing.assert_array_equal(got.row_decision, [0, 0, 1, 1])
    np.testing.assert_array_equal(got.row_slot, [0, 1, 0, 1])
    np.testing.assert_array_equal(got.row_action, [0, 1, 0, 1])
    np.testing.assert_array_equal(got.row_reward, [0.0, 1.0, 0.0, 0.0])
    assert log.decisions(default_reward=-1.0).row_reward.tolist() == [-1.0, 1.0, -1.0, -1.0]
    assert log.decisions(kind="purchase").row_reward.tolist() == [0.0] * 4
    assert log.decisions(after_seq=1).event_id == ["e2"]
    row = log.db.execute("SELECT policy_params, candidates FROM decisions WHERE event_id='e1'").fetchone()
    assert json.loads(row[0]) == {"epsilon": 0.1} and json.loads(row[1]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO slots VALUES ('e1', 5, 'x', 0, 0.0, 0.5, 0, 'cf')",
        "INSERT INTO slots VALUES ('e1', 5, 'x', 0, 0.5, 1.5, 0, 'cf')",
        "INSERT INTO slots VALUES ('e1', -1, 'x', 0, 0.5, 0.5, 0, 'cf')",
        "INSERT INTO slots VALUES ('nope', 5, 'x', 0, 0.5, 0.5, 0, 'cf')",
        "UPDATE decisions SET joint_propensity = -0.5",
        "UPDATE decisions SET log_joint_propensity = 0.1",
        "INSERT INTO rewards (event_id, position, kind, reward, ts) VALUES ('e1', -2, 'click', 1.0, 0)",
        "INSERT INTO rewards (event_id, position, kind, reward, ts, late) VALUES ('e1', 0, 'click', 1.0, 0, 2)",
        "INSERT INTO events (ts, user_id, item_id, kind) VALUES (0, 'u1', 'a', 'click')",
        "INSERT INTO events (ts, user_id, item_id, kind, event_id) VALUES (0, 'u1', 'a', 'view', 'nope')",
        "INSERT INTO items VALUES (-1, 'a', '[1.0]', '{}')",
        "INSERT INTO items VALUES (0, 'a', '{\"x\": 1}', '{}')",
        "INSERT INTO items VALUES (0, 'a', '[1.0]', '[]')",
        "INSERT INTO model_versions VALUES ('v1', 'linucb', '[]', 0, NULL, NULL, 0, 0)",
        "INSERT INTO model_versions VALUES ('v1', 'linucb', '{}', 0, NULL, 'abc', 0, 0)",
    ],
)
def test_schema_constraints_refuse_bad_rows(sql):
    log = DecisionLog()
    write(log, decision())
    with pytest.raises(sqlite3.IntegrityError):
        log.db.execute(sql)


def test_a_decision_with_a_bad_slot_leaves_nothing_behind():
    log = DecisionLog()
    write(log, decision())
    with pytest.raises(sqlite3.IntegrityError):
        write(log, decision("e2", props=(0.5, 0.0)))
    with pytest.raises(sqlite3.IntegrityError):
        write(log, decision("e1"))  # duplicate event id
    assert log.count("decisions") == 1 and log.count("slots") == 2


def test_file_log_uses_wal_and_migrates_once(tmp_path):
    path = tmp_path / "log.db"
    log = DecisionLog(path)
    write(log, decision())
    assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.close()
    again = DecisionLog(path)
    assert [m.name for m in migrations.applied(again.db)] == [
        "0001_decisions_slots_rewards", "0002_late_rewards_events_models_items"]
    assert again.count("decisions") == 1
    assert again.integrity_ok()


def _open_and_write(args):
    path, i = args
    log = DecisionLog(path)
    write(log, decision(f"e{i}"))
    log.close()
    return i


def test_processes_opening_a_new_log_together_migrate_once(tmp_path):
    """Six processes open the same new file at once (as gunicorn workers do) and each writes."""
    import multiprocessing as mp

    path = str(tmp_path / "shared.db")
    with mp.get_context("spawn").Pool(6) as pool:
        assert sorted(pool.map(_open_and_write, [(path, i) for i in range(6)])) == list(range(6))
    log = DecisionLog(path)
    assert log.count("decisions") == 6
    assert len(migrations.applied(log.db)) == 2
    assert log.integrity_ok()


def _post_rewards(args):
    path, events, worker = args
    log = DecisionLog(path)
    statuses = []
    for e in events:
        for position in (0, 1):
            statuses.append(log.record_reward(Reward(e, 1.0, position=position, kind=f"k{worker % 2}")))
    log.close()
    return statuses


def test_processes_posting_rewards_together_never_see_a_locked_database(tmp_path):
    """Four processes post 2,000 rewards each into one file, two of them duplicating the other
    two: no 'database is locked', exactly 4,000 rows, every duplicate recognised."""
    import multiprocessing as mp

    path = str(tmp_path / "shared.db")
    log = DecisionLog(path)
    events = [f"e{i}" for i in range(1000)]
    for e in events:
        write(log, decision(e))
    log.close()
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_post_rewards, [(path, events, w) for w in range(4)])
    statuses = [s for r in results for s in r]
    assert statuses.count("recorded") == 4000 and statuses.count("duplicate") == 4000
    assert DecisionLog(path).count("rewards") == 4000


def test_rewards_out_of_range_are_refused():
    log = DecisionLog()
    write(log, decision())
    for bad in (float("nan"), float("inf"), 1.7e308, -2e12):
        with pytest.raises(ValidationError, match="reward must be a finite number within"):
            log.record_reward(Reward("e1", bad, position=0))
    assert log.count("rewards") == 0


# ---- interaction events, model versions, items ------------------------------------------------
def test_events_round_trip_into_arrays():
    log = DecisionLog()
    write(log, decision())
    assert log.write_event("u1", "a", "view", ts=1.5) == 1
    assert log.write_event("u2", "b", "cart", ts=2.0, event_id="e1") == 2
    assert log.write_event("u1", "b", "purchase", ts=2.5) == 3
    got = log.events()
    assert len(got) == 3 and got.seq.tolist() == [1, 2, 3] and got.seq.dtype == np.int64
    assert got.ts.tolist() == [1.5, 2.0, 2.5]
    assert got.user_id.tolist() == ["u1", "u2", "u1"] and got.item_id.tolist() == ["a", "b", "b"]
    assert got.kind.tolist() == ["view", "cart", "purchase"] and got.event_id.tolist() == [None, "e1", None]
    assert log.events(after_seq=1, user_id="u1").seq.tolist() == [3]
    assert len(log.events(user_id="nobody")) == 0 and log.events(user_id="nobody").ts.dtype == float
    before = time.time()
    log.write_event("u3", "c", "view")
    assert before <= log.events(after_seq=3).ts[0] <= time.time()


@pytest.mark.parametrize("args, error, match", [
    (("u1", "a", "click"), ValidationError, "kind must be one of view, cart, purchase, got 'click'"),
    (("", "a", "view"), ValidationError, "user_id must be a non-empty string"),
    (("u1", None, "view"), ValidationError, "item_id must be a non-empty string"),
    (("u1", "a", "view", float("nan")), ValidationError, "ts must be finite"),
    (("u1", "a", "view", 1.0, "nope"), NotFoundError, "no decision with event_id 'nope'"),
])
def test_bad_events_are_refused_clearly(args, error, match):
    log = DecisionLog()
    with pytest.raises(error, match=match):
        log.write_event(*args)
    assert log.count("events") == 0


def test_model_versions_register_once_and_list_in_order():
    log = DecisionLog()
    digest = hashlib.sha256(b"model").hexdigest()
    assert log.register_model("linucb-1", "linucb", {"alpha": 1.0}, path="m/1.npz", sha256=digest,
                              n_updates=500, trained_until_seq=500) == "recorded"
    assert log.register_model("linucb-0", "linucb", {"alpha": 1.0}) == "recorded"
    assert log.register_model("linucb-1", "linucb", {"alpha": 1.0}, path="m/1.npz", sha256=digest,
                              n_updates=500, trained_until_seq=500) == "duplicate"
    with pytest.raises(ConflictError, match="'linucb-1' is already registered"):
        log.register_model("linucb-1", "linucb", {"alpha": 2.0}, path="m/1.npz", sha256=digest)
    got = log.model_versions()
    assert [m["version"] for m in got] == ["linucb-1", "linucb-0"]
    assert got[0] == {"version": "linucb-1", "policy": "linucb", "params": {"alpha": 1.0},
                      "created_ts": got[0]["created_ts"], "path": "m/1.npz", "sha256": digest,
                      "n_updates": 500, "trained_until_seq": 500}
    assert got[1]["path"] is None and got[1]["n_updates"] == 0
    for bad, match in [(dict(sha256="abc"), "sha256 must be 64"), (dict(n_updates=-1), "n_updates"),
                       (dict(params={"x": float("nan")}), "params must be JSON"), (dict(params=[1]), "params must be a dict")]:
        with pytest.raises(ValidationError, match=match):
            log.register_model("v", "p", **{"params": {}, **bad})
    assert log.count("model_versions") == 2


def test_items_round_trip_and_rewrite_idempotently():
    log = DecisionLog()
    feats = np.array([[0.1, -1e-300], [np.pi, 5e-324], [-0.0, 1e308]])
    attrs = [{"price": 9.99, "type": "shoe"}, {}, {"stock": 0, "tags": ["a", "b"]}]
    assert log.write_items(["a", "b", "c"], feats, attrs) == 3
    ids, got, got_attrs = log.items()
    assert ids == ["a", "b", "c"] and got.tobytes() == feats.tobytes() and got_attrs == attrs
    assert log.write_items(["a", "b", "c"], feats, attrs) == 0  # same content: nothing to do
    assert log.write_items(["a", "b", "c", "d"], np.vstack([feats, [[1.0, 2.0]]]), [*attrs, {}]) == 1
    assert log.items()[0] == ["a", "b", "c", "d"] and log.count("items") == 4
    with pytest.raises(ConflictError, match="item index 1 already holds item 'b', not this 'x'"):
        log.write_items(["a", "x"], feats[:2], attrs[:2])
    with pytest.raises(ConflictError, match="item index 0 already holds other content, not this 'a'"):
        log.write_items(["a"], [[0.1, 0.0]], attrs[:1])
    with pytest.raises(ConflictError, match="item index 0 already holds other content"):
        log.write_items(["a"], feats[:1], [{"price": 10.0, "type": "shoe"}])
    with pytest.raises(ConflictError, match="logged items have 2 features, these have 3"):
        log.write_items(["a"], np.zeros((1, 3)))
    log.db.execute("INSERT INTO items VALUES (9, 'z', '[0.0, 0.0]', '{}')")
    with pytest.raises(ConflictError, match="already logged at another index"):
        log.write_items([*"abcd", "z"], np.vstack([feats, [[1.0, 2.0], [0.0, 0.0]]]), [*attrs, {}, {}])
    assert log.count("items") == 5  # a refused write leaves nothing behind


@pytest.mark.parametrize("args, match", [
    ((["a", "a"], np.zeros((2, 1))), "item ids must be unique"),
    ((["a"], np.zeros((2, 1))), r"features must have shape \(1, d\)"),
    ((["a"], [[float("inf")]]), "features must be finite"),
    ((["a"], [[1.0]], [{"x": object()}]), r"attrs\[0\] must be JSON"),
    ((["a"], [[1.0]], [{}, {}]), "one dict per item"),
])
def test_bad_items_are_refused_clearly(args, match):
    with pytest.raises(ValidationError, match=match):
        DecisionLog().write_items(*args)


FEATURES = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=5),
                      elements=st.floats(allow_nan=False, allow_infinity=False))
ATTRS = st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                                                       st.floats(allow_nan=False, allow_infinity=False)), max_size=3)


@given(features=FEATURES, data=st.data())
@settings(max_examples=150, deadline=None)
def test_items_round_trip_at_full_precision(features, data):
    """Any finite features (subnormals, -0.0, the largest double) come back bit for bit."""
    n = len(features)
    ids = data.draw(st.lists(st.text(min_size=1, max_size=8), min_size=n, max_size=n, unique=True))
    attrs = data.draw(st.lists(ATTRS, min_size=n, max_size=n))
    log = DecisionLog()
    log.write_items(ids, features, attrs)
    got_ids, got, got_attrs = log.items()
    assert got_ids == ids and got_attrs == attrs
    if n:
        assert got.shape == features.shape and got.tobytes() == features.tobytes()
    assert log.write_items(ids, features, attrs) == 0


def test_an_engine_writes_its_items_to_a_log_that_has_none(small_shop):
    eng = make_engine(small_shop)
    ids, feats, attrs = eng.log.items()
    assert ids == list(eng.items.ids) and feats.tobytes() == eng.items.features.tobytes()
    assert attrs == [{}] * len(ids)
    log = DecisionLog()
    log.write_items(["x"], [[1.0, 2.0]])
    build_engine(small_shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=1)
    assert log.items()[0] == ["x"]  # a log that has items keeps them


# ---- migrations -----------------------------------------------------------------------------
def test_a_log_made_by_the_first_migration_only_is_migrated_with_its_data(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0002_late_rewards_events_models_items")
    assert [m.name for m in migrations.applied(db)] == ["0001_decisions_slots_rewards"]
    assert "events" not in db.table_names()
    row, slot_rows = decision_rows(decision(), {"epsilon": 0.1}, [0, 1, 2], [0, 1], (0.25, -0.5))
    with db.atomic():
        db.execute(INSERT_DECISION, row)
        db.conn.executemany(INSERT_SLOT, slot_rows)
        db.execute("INSERT INTO rewards VALUES ('e1', 1, 'click', 1.0, 5.0)")  # the 0001 layout: 5 columns
    db.close()

    log = DecisionLog(path, reward_window_s=10.0)
    assert [m.name for m in migrations.applied(log.db)] == [
        "0001_decisions_slots_rewards", "0002_late_rewards_events_models_items"]
    assert log.db.execute("SELECT event_id, position, reward, ts, late FROM rewards").fetchall() == [
        ("e1", 1, 1.0, 5.0, 0)]
    got = log.decisions()
    assert got.event_id == ["e1"] and got.context.tolist() == [[0.25, -0.5]]
    assert got.row_reward.tolist() == [0.0, 1.0] and got.row_pscore.tolist() == [0.5, 0.3]
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=100.0)) == "late"
    log.write_event("u1", "a", "view", ts=1.0, event_id="e1")
    assert log.count("events") == 1 and log.integrity_ok()
