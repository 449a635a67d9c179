"""The decision log: schema constraints, atomic writes, joins, migrations, events, models, items."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import time

import numpy as np
import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from banditrec.errors import ConflictError, NotFoundError, ValidationError
from banditrec.store import DecisionLog
from banditrec.store.codecs import decision_rows
from banditrec.store.migrations import migrations
from banditrec.store.writer import DECISION_COLUMNS, SLOT_COLUMNS, insert_sql
from banditrec.types import Decision, Reward, Slot
from studies.coverage import build_engine
from tests.helpers import make_engine

SLOTS_0001 = (
    "INSERT INTO slots (event_id, position, item_id, item_index, propensity, marginal, marginal_draws, source) VALUES "
)


def decision(event_id="e1", props=(0.5, 0.25), margs=(0.5, 0.3), items=("a", "b")):
    slots = tuple(
        Slot(position=k, item_id=items[k], propensity=props[k], marginal=margs[k], source="cf")
        for k in range(len(props))
    )
    return Decision(
        event_id=event_id,
        user_id="u1",
        slots=slots,
        joint_propensity=float(np.prod(props)),
        log_joint_propensity=float(np.log(props).sum()) if min(props) > 0 else 0.0,
        policy="test",
        model_version="test-0",
        candidates=("a", "b", "c"),
        ts=1.0,
    )


def write(log, d, context=(0.1, 0.2)):
    log.write_decision(
        d, policy_params={"epsilon": 0.1}, candidate_index=[0, 1, 2], slot_index=[0, 1][: len(d.slots)], context=context
    )


def test_round_trip_into_arrays_at_full_precision(log):
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


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(allow_nan=False, allow_infinity=False)),
    st.lists(st.integers(0, 2**62), min_size=3, max_size=3),
    st.booleans(),
)
@pytest.mark.slow
def test_logged_context_and_indices_are_json_that_reads_back_bit_exact(context, index, as_array):
    """The row's text (orjson) read by the standard library gives the same doubles and ints."""
    index = np.asarray(index, dtype=np.int64) if as_array else index
    row, _ = decision_rows(decision(), {"epsilon": 0.1}, index, [0, 1], context)
    back = np.asarray(json.loads(row[10]), dtype=float)
    assert back.view(np.int64).tolist() == context.view(np.int64).tolist()  # -0.0, subnormals too
    assert json.loads(row[9]) == [int(i) for i in index]
    # the log's own reader too
    log = DecisionLog()
    write(log, decision(), context=context)
    np.testing.assert_array_equal(log.decisions().context[0].view(np.int64), context.view(np.int64))


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_candidate_indices_of_any_integer_dtype_are_logged_exactly(dtype):
    top = np.iinfo(dtype).max
    index = np.array([0, 1, top], dtype=dtype)
    row, _ = decision_rows(decision(), {"epsilon": 0.1}, index, [0, 1], (0.5,))
    assert json.loads(row[9]) == [0, 1, int(top)]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_context_is_refused_by_name(log, bad):
    with pytest.raises(ValidationError, match="finite") as info:
        write(log, decision(), context=(0.1, bad))
    assert info.value.field == "context" and log.count("decisions") == 0


@pytest.mark.parametrize(
    "sql",
    [
        SLOTS_0001 + "('e1', 5, 'x', 0, 0.0, 0.5, 0, 'cf')",
        SLOTS_0001 + "('e1', 5, 'x', 0, 0.5, 1.5, 0, 'cf')",
        SLOTS_0001 + "('e1', -1, 'x', 0, 0.5, 0.5, 0, 'cf')",
        SLOTS_0001 + "('nope', 5, 'x', 0, 0.5, 0.5, 0, 'cf')",
        "UPDATE decisions SET joint_propensity = -0.5",
        "UPDATE decisions SET log_joint_propensity = 0.1",
        "INSERT INTO rewards (event_id, position, kind, reward, ts) VALUES ('e1', -2, 'click', 1.0, 0)",
        "INSERT INTO rewards (event_id, position, kind, reward, ts, late) VALUES ('e1', 0, 'click', 1.0, 0, 2)",
        "INSERT INTO events (ts, user_id, item_id, kind) VALUES (0, 'u1', 'a', 'click')",
        "INSERT INTO events (ts, user_id, item_id, kind, event_id) VALUES (0, 'u1', 'a', 'view', 'nope')",
        "INSERT INTO items VALUES (-1, 'a', '[1.0]', '{}')",
        "INSERT INTO items VALUES (0, 'a', '{\"x\": 1}', '{}')",
        "INSERT INTO items VALUES (0, 'a', '[1.0]', '[]')",
        "INSERT INTO model_versions VALUES ('v1', 'disjoint-linucb', '[]', 0, NULL, NULL, 0, 0)",
        "INSERT INTO model_versions VALUES ('v1', 'disjoint-linucb', '{}', 0, NULL, 'abc', 0, 0)",
    ],
)
def test_schema_constraints_refuse_bad_rows(log, sql):
    write(log, decision())
    with pytest.raises(sqlite3.IntegrityError):
        log.db.execute(sql)


def test_a_decision_with_a_bad_slot_leaves_nothing_behind(log):
    write(log, decision())
    with pytest.raises(ValidationError, match="the log's schema refused the decision: CHECK constraint"):
        write(log, decision("e2", props=(0.5, 0.0)))
    with pytest.raises(ConflictError, match="event id 'e1' is already in the log"):
        write(log, decision("e1"))  # duplicate event id
    assert log.count("decisions") == 1 and log.count("slots") == 2


def test_file_log_uses_wal_and_migrates_once(make_log, tmp_path):
    path = tmp_path / "log.db"
    log = make_log(path)
    write(log, decision())
    assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.close()
    again = make_log(path)
    assert [m.name for m in migrations.applied(again.db)] == [
        "0001_decisions_slots_rewards",
        "0002_late_rewards_events_models_items",
        "0003_decisions_shop_build",
        "0004_policy_names",
        "0005_pending_propensities",
        "0006_log_meta_routed_rewards",
        "0007_candidate_sources",
        "0008_arms_baseline_modes",
        "0009_negative_feedback_blocklist",
    ]
    assert again.count("decisions") == 1
    assert again.integrity_ok()


def _open_and_write(args):
    path, i = args
    log = DecisionLog(path)
    write(log, decision(f"e{i}"))
    log.close()
    return i


@pytest.mark.slow
def test_processes_opening_a_new_log_together_migrate_once(make_log, tmp_path):
    """Six processes open the same new file at once (as gunicorn workers do) and each writes."""
    import multiprocessing as mp

    path = str(tmp_path / "shared.db")
    with mp.get_context("spawn").Pool(6) as pool:
        assert sorted(pool.map(_open_and_write, [(path, i) for i in range(6)])) == list(range(6))
    log = make_log(path)
    assert log.count("decisions") == 6
    assert len(migrations.applied(log.db)) == len(migrations._migrations)
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


@pytest.mark.slow
def test_processes_posting_rewards_together_never_see_a_locked_database(make_log, tmp_path):
    """Four processes post 2,000 rewards each into one file, two of them duplicating the other
    two: no 'database is locked', exactly 4,000 rows, every duplicate recognised."""
    import multiprocessing as mp

    path = str(tmp_path / "shared.db")
    log = make_log(path)
    events = [f"e{i}" for i in range(1000)]
    for e in events:
        write(log, decision(e))
    log.close()
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_post_rewards, [(path, events, w) for w in range(4)])
    statuses = [s for r in results for s in r]
    assert statuses.count("recorded") == 4000 and statuses.count("duplicate") == 4000
    assert make_log(path).count("rewards") == 4000


def test_rewards_out_of_range_are_refused(log):
    write(log, decision())
    for bad in (float("nan"), float("inf"), 1.7e308, -2e12):
        with pytest.raises(ValidationError, match="reward must be a finite number within"):
            log.record_reward(Reward("e1", bad, position=0))
    assert log.count("rewards") == 0


# ---- interaction events, model versions, items ------------------------------------------------
def test_events_round_trip_into_arrays(log):
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


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("u1", "a", "click"), ValidationError, "kind must be one of view, cart, purchase, got 'click'"),
        (("", "a", "view"), ValidationError, "user_id must be a non-empty string"),
        (("u1", None, "view"), ValidationError, "item_id must be a non-empty string"),
        (("u1", "a", "view", float("nan")), ValidationError, "ts must be finite"),
        (("u1", "a", "view", 1.0, "nope"), NotFoundError, "no decision with event_id 'nope'"),
    ],
)
def test_bad_events_are_refused_clearly(log, args, error, match):
    with pytest.raises(error, match=match):
        log.write_event(*args)
    assert log.count("events") == 0


def test_model_versions_register_once_and_list_in_order(log):
    digest = hashlib.sha256(b"model").hexdigest()
    assert (
        log.register_model(
            "disjoint-linucb-1",
            "disjoint-linucb",
            {"alpha": 1.0},
            path="m/1.npz",
            sha256=digest,
            n_updates=500,
            trained_until_seq=500,
        )
        == "recorded"
    )
    assert log.register_model("disjoint-linucb-0", "disjoint-linucb", {"alpha": 1.0}) == "recorded"
    assert (
        log.register_model(
            "disjoint-linucb-1",
            "disjoint-linucb",
            {"alpha": 1.0},
            path="m/1.npz",
            sha256=digest,
            n_updates=500,
            trained_until_seq=500,
        )
        == "duplicate"
    )
    with pytest.raises(ConflictError, match="'disjoint-linucb-1' is already registered"):
        log.register_model("disjoint-linucb-1", "disjoint-linucb", {"alpha": 2.0}, path="m/1.npz", sha256=digest)
    got = log.model_versions()
    assert [m["version"] for m in got] == ["disjoint-linucb-1", "disjoint-linucb-0"]
    assert got[0] == {
        "version": "disjoint-linucb-1",
        "policy": "disjoint-linucb",
        "params": {"alpha": 1.0},
        "created_ts": got[0]["created_ts"],
        "path": "m/1.npz",
        "sha256": digest,
        "n_updates": 500,
        "trained_until_seq": 500,
    }
    assert got[1]["path"] is None and got[1]["n_updates"] == 0
    for bad, match in [
        (dict(sha256="abc"), "sha256 must be 64"),
        (dict(n_updates=-1), "n_updates"),
        (dict(params={"x": float("nan")}), "params must be JSON"),
        (dict(params=[1]), "params must be a dict"),
    ]:
        with pytest.raises(ValidationError, match=match):
            log.register_model("v", "p", **{"params": {}, **bad})
    assert log.count("model_versions") == 2


def test_items_round_trip_and_rewrite_idempotently(log):
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


@pytest.mark.parametrize(
    "args, match",
    [
        ((["a", "a"], np.zeros((2, 1))), "item ids must be unique"),
        ((["a"], np.zeros((2, 1))), r"features must have shape \(1, d\)"),
        ((["a"], [[float("inf")]]), "features must be finite"),
        ((["a"], [[1.0]], [{"x": object()}]), r"attrs\[0\] must be JSON"),
        ((["a"], [[1.0]], [{}, {}]), "one dict per item"),
    ],
)
def test_bad_items_are_refused_clearly(make_log, args, match):
    with pytest.raises(ValidationError, match=match):
        make_log().write_items(*args)


FEATURES = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=5),
    elements=st.floats(allow_nan=False, allow_infinity=False),
)
ATTRS = st.dictionaries(
    st.text(max_size=5),
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)
    ),
    max_size=3,
)


@pytest.mark.slow
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


def test_an_engine_writes_its_items_to_a_log_that_has_none(log, small_shop):
    """With its first decision (building the engine writes nothing)."""
    eng = make_engine(small_shop)
    assert eng.log.count("items") == 0
    eng.decide("u1", 2)
    ids, feats, attrs = eng.log.items()
    assert ids == list(eng.items.ids) and feats.tobytes() == eng.items.features.tobytes()
    assert attrs == [{}] * len(ids)
    log.write_items(["x"], [[1.0, 2.0]])
    build_engine(small_shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=1).decide("u1", 2)
    assert log.items()[0] == ["x"]  # a log that has items keeps them


# ---- migrations -----------------------------------------------------------------------------
def test_a_log_written_under_the_old_policy_names_is_renamed_with_a_warning(make_log, tmp_path):
    """Before 0004, ``linucb`` was the per-item model and ``shared-linucb`` the shared one."""
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0004_policy_names")
    names = {"e1": "linucb", "e2": "shared-linucb", "e3": "egreedy"}
    with db.atomic():
        for event_id, name in names.items():
            row, slot_rows = decision_rows(
                dataclasses.replace(decision(event_id), policy=name), {"epsilon": 0.1}, [0, 1, 2], [0, 1], (0.25, -0.5)
            )
            db.execute(insert_sql("decisions", DECISION_COLUMNS[:14]), row[:14])  # pre-0007
            db.conn.executemany(insert_sql("slots", SLOT_COLUMNS[:8]), [r[:8] for r in slot_rows])  # pre-0008
        db.execute("INSERT INTO model_versions (version, policy, params, created_ts) VALUES ('v1', 'linucb', '{}', 1)")
    db.close()
    with pytest.warns(DeprecationWarning, match="3 logged rows"):
        log = make_log(path)
    assert dict(log.db.execute("SELECT event_id, policy FROM decisions").fetchall()) == {
        "e1": "disjoint-linucb",
        "e2": "linucb",
        "e3": "egreedy",
    }
    assert [v["policy"] for v in log.model_versions()] == ["disjoint-linucb"]
    log.close()


def test_a_log_made_by_the_first_migration_only_is_migrated_with_its_data(make_log, tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0002_late_rewards_events_models_items")
    assert [m.name for m in migrations.applied(db)] == ["0001_decisions_slots_rewards"]
    assert "events" not in db.table_names()
    row, slot_rows = decision_rows(decision(), {"epsilon": 0.1}, [0, 1, 2], [0, 1], (0.25, -0.5))
    # 0003 added shop_build, 0007 candidate_sources, 0008 the arm, what served and the policy's marginal
    with db.atomic():
        db.execute(insert_sql("decisions", DECISION_COLUMNS[:13]), row[:13])
        db.conn.executemany(insert_sql("slots", SLOT_COLUMNS[:8]), [r[:8] for r in slot_rows])
        db.execute("INSERT INTO rewards VALUES ('e1', 1, 'click', 1.0, 5.0)")  # the 0001 layout: 5 columns
    db.close()

    log = make_log(path, reward_window_s=10.0)
    assert [m.name for m in migrations.applied(log.db)] == [
        "0001_decisions_slots_rewards",
        "0002_late_rewards_events_models_items",
        "0003_decisions_shop_build",
        "0004_policy_names",
        "0005_pending_propensities",
        "0006_log_meta_routed_rewards",
        "0007_candidate_sources",
        "0008_arms_baseline_modes",
        "0009_negative_feedback_blocklist",
    ]
    assert log.db.execute("SELECT event_id, position, reward, ts, late FROM rewards").fetchall() == [
        ("e1", 1, 1.0, 5.0, 0)
    ]
    got = log.decisions()
    assert got.event_id == ["e1"] and got.context.tolist() == [[0.25, -0.5]]
    assert got.row_reward.tolist() == [0.0, 1.0] and got.row_pscore.tolist() == [0.5, 0.3]
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=100.0)) == "late"
    log.write_event("u1", "a", "view", ts=1.0, event_id="e1")
    assert log.count("events") == 1 and log.integrity_ok()
    # 0005 rebuilt decisions and slots: seq goes on after the logged one, never reused
    log.write_decision(
        decision("e2"), policy_params={}, candidate_index=[0, 1, 2], slot_index=[0, 1], context=(0.0, 0.0)
    )
    assert log.db.execute("SELECT event_id, seq FROM decisions ORDER BY seq").fetchall() == [("e1", 1), ("e2", 2)]
    assert log.db.execute("PRAGMA foreign_key_check").fetchall() == []


# ---- batch writes ---------------------------------------------------------------------------
def _tables(log) -> list[list[tuple]]:
    """Every row of every table, floats as hex so that -0.0 and last bits count."""

    def cell(v):
        return float(v).hex() if isinstance(v, float) else v

    return [
        [tuple(cell(v) for v in row) for row in log.db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()]
        for t in ("decisions", "slots", "rewards", "sqlite_sequence")
    ]


def _random_batch(seed: int):
    """60 decisions of 1-4 slots with awkward numbers (subnormal and -0.0 contexts, propensities
    a last bit from 1, out-of-order times, unicode ids, surfaces, params), and ~150 rewards of
    two kinds on them: some repeated with the same value (duplicates), some at or past a 10 s
    window's edge (late), some for the decision as a whole."""
    gen = np.random.default_rng(seed)
    items, rewards = [], []
    extremes = [np.pi, -1e-300, 5e-324, -0.0, 1.7976931348623157e308, 0.1 + 0.2]
    for i in range(60):
        k = int(gen.integers(1, 5))
        props = [float(np.nextafter(1.0, 0)) if gen.random() < 0.2 else float(gen.uniform(1e-9, 1)) for _ in range(k)]
        margs = [float(gen.uniform(5e-324, 1)) for _ in range(k)]
        slots = tuple(
            Slot(
                position=j,
                item_id=f"é{j}\t{i}",
                propensity=props[j],
                marginal=margs[j],
                source=["cf", "explore"][j % 2],
                marginal_draws=int(gen.integers(0, 1000)),
            )
            for j in range(k)
        )
        ts = float(gen.uniform(0, 100))
        d = Decision(
            event_id=f"e{i}/{seed}",
            user_id=f"u{int(gen.integers(5))}",
            slots=slots,
            joint_propensity=float(np.prod(props)),
            log_joint_propensity=float(np.log(props).sum()),
            policy="linucb:alpha=1.0",
            model_version=f"v{i % 3}",
            candidates=tuple(f"c{j}" for j in range(k + 2)),
            ts=ts,
        )
        context = gen.choice(extremes, size=3) if gen.random() < 0.3 else gen.normal(size=3)
        items.append(
            (
                d,
                {"alpha": float(gen.normal()), "name": "ü"},
                gen.integers(0, 99, size=k + 2),
                gen.integers(0, 99, size=k),
                context,
                ["home", "cart"][i % 2],
            )
        )
        for position in [None, *range(k)]:
            for kind in ("click", "purchase"):
                if gen.random() < 0.35:
                    delay = [0.0, 10.0, float(np.nextafter(10.0, np.inf)), float(gen.uniform(0, 20))][
                        int(gen.integers(4))
                    ]
                    r = Reward(d.event_id, float(gen.integers(0, 3)), position=position, kind=kind, ts=ts + delay)
                    rewards.append(r)
                    if gen.random() < 0.2:  # posted again, the same value: a duplicate
                        rewards.append(Reward(r.event_id, r.value, r.position, r.kind, ts=r.ts + 30.0))
    order = gen.permutation(len(rewards))
    return items, [rewards[j] for j in order]


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_writes_exactly_what_single_writes_write(make_log, seed):
    """60 random decisions and ~150 rewards (duplicates and late ones among them), written one
    call each and as one batch: every table equal bit for bit, every reward status equal."""
    items, rewards = _random_batch(seed)
    one = make_log(reward_window_s=10.0)
    for d, params, cand, chosen, ctx, surface in items:
        one.write_decision(
            d, policy_params=params, candidate_index=cand, slot_index=chosen, context=ctx, surface=surface
        )
    single = [one.record_reward(r) for r in rewards]
    assert {"recorded", "late", "duplicate"} <= set(single)
    together = make_log(reward_window_s=10.0)
    assert together.write_decisions(items, rewards=rewards) == single
    assert _tables(together) == _tables(one)
    # decisions in one batch, rewards in another
    apart = make_log(reward_window_s=10.0)
    assert apart.write_decisions(iter(items)) == []
    assert apart.record_rewards(rewards) == single
    assert _tables(apart) == _tables(one)


def test_a_batch_is_one_transaction(make_log):
    items, rewards = _random_batch(0)
    log = make_log(reward_window_s=10.0)
    statements = []
    log.db.conn.set_trace_callback(statements.append)
    log.write_decisions(items, rewards=rewards)
    log.record_rewards(rewards)
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"] * 2


def _good_items(n=4, first=0):
    return [(decision(f"b{i}"), {"epsilon": 0.1}, [0, 1, 2], [0, 1], (0.1, 0.2)) for i in range(first, first + n)]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ((decision("b2", props=(0.5, 0.0)), {}, [0, 1, 2], [0, 1], ()), ValidationError, "CHECK constraint failed"),
        ((decision("b2", margs=(0.5, 1.5)), {}, [0, 1, 2], [0, 1], ()), ValidationError, "CHECK constraint failed"),
        ((decision("b2"), {}, [0, 1, 2], [0], ()), ValidationError, "needs as many indices, got 1 and 3"),
        ((decision("b2"), {"x": object()}, [0, 1, 2], [0, 1], ()), ValidationError, "not JSON serializable"),
        ((decision("b0"), {}, [0, 1, 2], [0, 1], ()), ConflictError, r"event id 'b0' is also items\[0\] of this batch"),
        ((decision("e1"), {}, [0, 1, 2], [0, 1], ()), ConflictError, "event id 'e1' is already in the log"),
    ],
)
def test_a_bad_decision_leaves_the_log_unchanged_and_is_named(log, bad, error, match):
    write(log, decision())
    log.record_reward(Reward("e1", 1.0, position=0))
    before = _tables(log)
    items = _good_items()
    items[2] = bad
    with pytest.raises(error, match=match) as err:
        log.write_decisions(items, rewards=[Reward("b0", 1.0, position=0)])
    assert err.value.batch == "items" and err.value.index == 2
    assert str(err.value).startswith(f"items[2] (event {bad[0].event_id!r}): ") and err.value.reason in str(err.value)
    assert _tables(log) == before
    assert log.write_decisions(_good_items(), rewards=[Reward("b0", 1.0, position=0)]) == ["recorded"]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (Reward("nope", 1.0, position=0), NotFoundError, "no decision with event_id 'nope'"),
        (Reward("b1", 1.0, position=2), ValidationError, r"position must be in \[0, 2\) for this decision, got 2"),
        (Reward("b1", float("nan"), position=0), ValidationError, "reward must be a finite number"),
        (Reward("b1", 1.0, position=0, ts=float("inf")), ValidationError, "ts must be finite"),
        (
            Reward("b0", 0.0, position=0),
            ConflictError,
            r"a click reward of 1.0 is already recorded for event 'b0' \(position 0\)",
        ),
        (Reward("e1", 2.0), ConflictError, r"a click reward of 3.0 is already recorded for event 'e1' \(the decision"),
    ],
)
def test_a_bad_reward_leaves_the_log_unchanged_and_is_named(log, bad, error, match):
    """The reward at index 3 of 5 is bad: neither the batch's decisions nor the rewards before
    it are written, whether they come with decisions or alone."""
    write(log, decision())
    log.record_reward(Reward("e1", 3.0))
    log.write_decisions(_good_items(2, first=100))
    before = _tables(log)
    rewards = [
        Reward("b0", 1.0, position=0),
        Reward("b1", 0.0, position=1),
        Reward("b100", 1.0),
        bad,
        Reward("b101", 1.0, position=0),
    ]
    with pytest.raises(error, match=match) as err:
        log.write_decisions(_good_items(), rewards=rewards)
    assert (err.value.batch, err.value.index) == ("rewards", 3)
    assert str(err.value).startswith(f"rewards[3] (event {bad.event_id!r}): ")
    assert _tables(log) == before
    log.write_decisions(_good_items())
    before = _tables(log)
    with pytest.raises(error, match=match) as err:
        log.record_rewards(rewards)
    assert (err.value.batch, err.value.index) == ("rewards", 3) and _tables(log) == before


def test_statuses_in_a_batch_say_recorded_late_or_duplicate_per_reward(make_log):
    log = make_log(reward_window_s=10.0)
    log.write_decision(decision(), policy_params={}, candidate_index=[0, 1, 2], slot_index=[0, 1], context=())
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=2.0)) == "recorded"
    statuses = log.write_decisions(
        [(dataclasses.replace(decision("e2"), ts=100.0), {}, [0, 1, 2], [0, 1], ())],
        rewards=[
            Reward("e1", 1.0, position=0, ts=50.0),  # logged before the batch, same value
            Reward("e2", 1.0, position=0, ts=110.0),  # at the window's edge: on time
            Reward("e2", 0.0, position=1, ts=110.5),  # past it
            Reward("e2", 0.0, position=1, ts=111.0),  # again in the same batch
            Reward("e2", 1.0, position=0, ts=200.0),  # again, late this time: still the same reward
            Reward("e2", 4.0, kind="buy", ts=99.0),  # the decision as a whole
            Reward("e1", 1.0, position=1, ts=13.0),  # an earlier decision, late
        ],
    )
    assert statuses == ["duplicate", "recorded", "late", "duplicate", "duplicate", "recorded", "late"]
    assert log.db.execute("SELECT event_id, position, kind, late FROM rewards ORDER BY rowid").fetchall() == [
        ("e1", 0, "click", 0),
        ("e2", 0, "click", 0),
        ("e2", 1, "click", 1),
        ("e2", -1, "buy", 0),
        ("e1", 1, "click", 1),
    ]
    assert log.record_rewards([Reward("e2", 0.0, position=1), Reward("e1", 5.0, position=1, kind="buy", ts=1.0)]) == [
        "duplicate",
        "recorded",
    ]
    with pytest.raises(ConflictError, match=r"rewards\[1\] \(event 'e2'\): a buy reward of 7.0 is already recorded"):
        log.record_rewards([Reward("e2", 7.0, position=0, kind="buy"), Reward("e2", 8.0, position=0, kind="buy")])
    assert log.count("rewards") == 6  # the conflict took the first reward of its batch with it


def test_an_empty_batch_writes_nothing(log):
    assert log.write_decisions([]) == [] and log.record_rewards([]) == []
    assert log.count("decisions") == 0


def test_a_snapshot_is_read_only_and_consistent(make_log, tmp_path):
    mem = make_log()
    write(mem, decision())
    with mem.snapshot() as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM slots")
    write(mem, decision("e2"))  # the refused write left no transaction open behind it
    assert mem.count("decisions") == 2 and mem.count("slots") == 4
    log = make_log(tmp_path / "log.db")
    write(log, decision())
    with log.snapshot() as conn:
        write(log, decision("e2"))  # a writer commits meanwhile: the snapshot does not see it
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (1,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM slots")
    assert log.count("decisions") == 2
