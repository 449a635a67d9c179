"""The decision log: schema constraints, atomic writes, joins, migrations."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.store import DecisionLog
from banditrec.store.migrations import migrations
from banditrec.types import Decision, Reward, Slot


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
        "INSERT INTO rewards VALUES ('e1', -2, 'click', 1.0, 0)",
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
    assert [m.name for m in migrations.applied(again.db)] == ["0001_decisions_slots_rewards"]
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
    assert len(migrations.applied(log.db)) == 1
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
