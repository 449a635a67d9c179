"""Event ids carry the shard of the log that logged them, keep their time order, and a node's
shard setting is checked where it is read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banditrec.engine import time_ordered_id
from banditrec.errors import ValidationError
from banditrec.service import ServiceConfig
from banditrec.store import DecisionLog
from banditrec.store.shards import MAX_SHARD, shard_of, with_shard
from studies.coverage import build_engine

HEX = "0123456789abcdef"


@given(
    ms=st.lists(st.integers(0, 16**12 - 1), min_size=2, max_size=2, unique=True),
    shards=st.lists(st.integers(0, MAX_SHARD), min_size=2, max_size=2),
    tails=st.lists(st.text(HEX, min_size=20, max_size=20), min_size=2, max_size=2),
)
def test_a_shard_id_round_trips_and_sorts_by_time_first(ms, shards, tails):
    ids = [with_shard(f"{m:012x}{t}", k) for m, k, t in zip(ms, shards, tails)]
    assert [shard_of(e) for e in ids] == shards
    assert all(len(e) == 32 for e in ids)
    assert sorted(ids) == [e for _, e in sorted(zip(ms, ids))]  # time order, whatever the shards


@pytest.mark.parametrize("bad", ["", "e17", "0" * 31, "0" * 33, "G" * 32, "A" * 32, 17, None])
def test_an_id_without_a_shard_is_refused_naming_the_field(bad):
    with pytest.raises(ValidationError, match="does not carry a shard") as err:
        shard_of(bad)
    assert err.value.field == "event_id"


@pytest.mark.parametrize("seed", [None, 3])
def test_an_engine_stamps_its_logs_shard(small_shop, seed):
    log = DecisionLog(shard=513)
    try:
        engine = build_engine(small_shop, "linucb", log, seed=seed, n_candidates=10)
        ids = [engine.decide(f"u{i}", 2).event_id for i in range(5)]
        assert {shard_of(e) for e in ids} == {513} and len(set(ids)) == 5
        if seed is None:  # the clock's 12 digits lead, as in an unsharded id
            assert ids[0][:8] == time_ordered_id()[:8]
    finally:
        log.close()


def test_a_sharded_log_takes_only_its_own_shards_decisions(small_shop):
    mine, other = DecisionLog(shard=1), DecisionLog(shard=2)
    try:
        engine = build_engine(small_shop, "linucb", mine, seed=0, n_candidates=10)
        engine.decide("u", 2)
        with pytest.raises(ValidationError, match="carries shard 1; this log is shard 2"):
            args, kwargs = _record_of(mine)
            other.write_decision(*args, **kwargs)
    finally:
        mine.close()
        other.close()


def _record_of(log):
    """The first decision of ``log`` as write_decision arguments (a copy for another log)."""
    from banditrec.types import Decision, Slot

    row = log.db.execute("SELECT event_id, ts FROM decisions").fetchone()
    d = Decision(row[0], "u", (Slot(0, "a", 1.0, 1.0),), 1.0, 0.0, "p", "v", ("a",), row[1])
    return (d,), {"policy_params": {}, "candidate_index": [0], "slot_index": [0], "context": []}


def test_the_shard_setting_is_checked_where_it_is_read():
    assert ServiceConfig.from_env({"BANDITREC_SHARD": "7"}).shard == 7
    assert ServiceConfig.from_env({"BANDITREC_SHARD": ""}).shard is None
    assert ServiceConfig.from_env({}).shard is None
    for raw, message in (("x", "must be an integer"), ("-1", "must be >= 0"), ("65536", "must be <= 65535")):
        with pytest.raises(ValidationError, match=message) as err:
            ServiceConfig.from_env({"BANDITREC_SHARD": raw})
        assert err.value.field == "BANDITREC_SHARD"
    with pytest.raises(ValidationError, match="shard must be"):
        ServiceConfig(shard=-3)
