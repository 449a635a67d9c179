"""The reward window (late rewards, closed windows) and the fast reader against a slow one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from banditrec.errors import ConflictError, ValidationError
from banditrec.service import create_app
from banditrec.store import DecisionLog
from banditrec.store import reader as store_reader
from banditrec.store.codecs import number_lists, read_params
from banditrec.store.reader import READ_REWARDS, READ_REWARDS_SCAN
from banditrec.types import Decision, Reward, Slot
from studies.coverage import build_engine

WINDOW = 10.0


def decision(event_id: str, ts: float, n_slots: int = 2, n_candidates: int = 3) -> Decision:
    slots = tuple(Slot(position=k, item_id=f"i{k}", propensity=0.5, marginal=0.25, source="cf") for k in range(n_slots))
    return Decision(
        event_id=event_id,
        user_id="u1",
        slots=slots,
        joint_propensity=0.5**n_slots,
        log_joint_propensity=n_slots * float(np.log(0.5)),
        policy="test",
        model_version="test-0",
        candidates=tuple(f"i{j}" for j in range(n_candidates)),
        ts=ts,
    )


def write(log: DecisionLog, event_id: str, ts: float, n_slots: int = 2) -> None:
    log.write_decision(
        decision(event_id, ts, n_slots),
        policy_params={},
        candidate_index=[0, 1, 2],
        slot_index=list(range(n_slots)),
        context=[0.5, -0.5],
    )


def late_flags(log: DecisionLog) -> list:
    return log.db.execute("SELECT event_id, position, late FROM rewards ORDER BY event_id, position").fetchall()


# ---- 1. the window ------------------------------------------------------------------------
def test_a_reward_exactly_at_the_window_is_on_time_and_just_after_it_is_late(make_log):
    log = make_log(reward_window_s=WINDOW)
    write(log, "e1", ts=100.0)
    edge = 100.0 + WINDOW
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=edge)) == "recorded"
    assert log.record_reward(Reward("e1", 1.0, position=1, ts=float(np.nextafter(edge, np.inf)))) == "late"
    assert log.record_reward(Reward("e1", 3.0, ts=edge)) == "recorded"  # the decision as a whole
    assert late_flags(log) == [("e1", -1, 0), ("e1", 0, 0), ("e1", 1, 1)]


def test_without_a_window_no_reward_is_late(log):
    write(log, "e1", ts=0.0)
    assert log.record_reward(Reward("e1", 1.0, position=1, ts=1e12)) == "recorded"
    assert late_flags(log) == [("e1", 1, 0)]


def test_a_late_reward_is_kept_but_not_read_unless_asked(make_log):
    log = make_log(reward_window_s=WINDOW)
    write(log, "e1", ts=0.0)
    write(log, "e2", ts=5.0)
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=3.0)) == "recorded"
    assert log.record_reward(Reward("e1", 1.0, position=1, ts=30.0)) == "late"
    assert log.record_reward(Reward("e2", 7.0, ts=16.0)) == "late"  # whole decision
    assert log.count("rewards") == 3
    got = log.decisions(default_reward=-1.0)
    assert got.row_reward.tolist() == [1.0, -1.0, -1.0, -1.0]
    assert got.decision_reward.tolist() == [-1.0, -1.0]
    everything = log.decisions(default_reward=-1.0, include_late=True)
    assert everything.row_reward.tolist() == [1.0, 1.0, -1.0, -1.0]
    assert everything.decision_reward.tolist() == [-1.0, 7.0]


def test_a_duplicate_late_reward_is_a_duplicate_and_a_different_value_conflicts(make_log):
    log = make_log(reward_window_s=WINDOW)
    write(log, "e1", ts=0.0)
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=50.0)) == "late"
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=60.0)) == "duplicate"
    assert log.record_reward(Reward("e1", 1.0, position=0, ts=1.0)) == "duplicate"  # on time, still the same
    with pytest.raises(ConflictError, match="already recorded"):
        log.record_reward(Reward("e1", 0.0, position=0, ts=70.0))
    assert late_flags(log) == [("e1", 0, 1)] and log.count("rewards") == 1


def test_a_log_with_a_window_also_leaves_out_rewards_stamped_after_it_that_were_not_flagged(log):
    """A service without a window recorded every reward as on time; a learner that opens the
    same file with a window must not learn from the ones that came after it."""
    write(log, "e1", ts=0.0)
    log.record_reward(Reward("e1", 1.0, position=0, ts=WINDOW))
    log.record_reward(Reward("e1", 1.0, position=1, ts=WINDOW + 1.0))
    assert log.decisions().row_reward.tolist() == [1.0, 1.0]
    log.reward_window_s = WINDOW
    assert log.decisions().row_reward.tolist() == [1.0, 0.0]
    assert log.decisions(include_late=True).row_reward.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "soon"])
def test_a_bad_window_is_refused(make_log, bad):
    with pytest.raises(ValidationError, match="reward_window_s"):
        make_log(reward_window_s=bad)


# ---- 2. closed windows ----------------------------------------------------------------------
def test_closed_before_reads_only_decisions_whose_window_has_closed(make_log):
    log = make_log(reward_window_s=WINDOW)
    for i, ts in enumerate([0.0, 5.0, 20.0, 3.0]):  # times need not grow with seq
        write(log, f"e{i}", ts=ts)
    log.record_reward(Reward("e1", 1.0, position=1, ts=6.0))
    log.record_reward(Reward("e2", 1.0, position=0, ts=21.0))
    assert log.decisions(closed_before=9.99).event_id == []
    assert log.decisions(closed_before=10.0).event_id == ["e0"]  # 0 + 10 <= 10: closed
    got = log.decisions(closed_before=15.0)
    assert got.event_id == ["e0", "e1", "e3"] and got.seq.tolist() == [1, 2, 4]
    assert got.row_decision.tolist() == [0, 0, 1, 1, 2, 2]
    assert got.row_reward.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert got.context.shape == (3, 2) and len(got.candidates) == 3
    assert log.decisions(closed_before=15.0, after_seq=1, until_seq=3).event_id == ["e1"]
    assert log.decisions(closed_before=30.0).row_reward.tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert log.decisions().event_id == ["e0", "e1", "e2", "e3"]  # without closed_before: all


def test_closed_before_needs_a_window(log):
    write(log, "e1", ts=0.0)
    with pytest.raises(ValidationError, match="closed_before needs a log with a reward window"):
        log.decisions(closed_before=100.0)


# ---- 3. the service -------------------------------------------------------------------------
def test_the_reward_endpoint_answers_late_then_duplicate(make_log, small_shop):
    now = [0.0]
    log = make_log(reward_window_s=WINDOW)
    client = create_app(
        build_engine(small_shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=3, n_candidates=10, clock=lambda: now[0])
    ).test_client()
    event_id = client.post("/v1/decide", json={"user_id": "u3", "slots": 2}).get_json()["event_id"]
    body = {"event_id": event_id, "position": 1, "reward": 1}
    now[0] = WINDOW
    assert client.post("/v1/reward", json={**body, "position": 0}).get_json()["status"] == "recorded"
    now[0] = WINDOW + 0.5
    resp = client.post("/v1/reward", json=body)
    assert resp.status_code == 200
    assert resp.get_json() == {"event_id": event_id, "position": 1, "kind": "click", "status": "late"}
    assert client.post("/v1/reward", json=body).get_json()["status"] == "duplicate"
    assert client.post("/v1/reward", json={**body, "reward": 0}).status_code == 409
    assert log.decisions().row_reward.tolist() == [1.0, 0.0]
    assert log.decisions(include_late=True).row_reward.tolist() == [1.0, 1.0]


# ---- 4. the fast reader against a slow obvious one -----------------------------------------
def slow_decisions(
    log: DecisionLog,
    *,
    after_seq=0,
    until_seq=None,
    kind="click",
    default_reward=0.0,
    closed_before=None,
    include_late=False,
) -> dict:
    """One query per decision, per slot and per reward, in plain Python."""
    window = log.reward_window_s
    out = {
        k: []
        for k in (
            "event_id",
            "seq",
            "context",
            "candidates",
            "row_decision",
            "row_slot",
            "row_action",
            "row_pscore",
            "row_reward",
            "decision_reward",
        )
    }
    db = log.db.conn

    def reward_of(event_id, position, decision_ts):
        row = db.execute(
            "SELECT reward, ts, late FROM rewards WHERE event_id = ? AND position = ? AND kind = ?",
            (event_id, position, kind),
        ).fetchone()
        if row is None:
            return default_reward
        value, ts, late = row
        is_late = late == 1 or (window is not None and ts > decision_ts + window)
        return default_reward if is_late and not include_late else value

    for seq, event_id, ts, context, cands in db.execute(
        "SELECT seq, event_id, ts, context, candidate_index FROM decisions ORDER BY seq"
    ).fetchall():
        if seq <= after_seq or (until_seq is not None and seq > until_seq):
            continue
        if closed_before is not None and not ts + window <= closed_before:
            continue
        d = len(out["seq"])
        out["event_id"].append(event_id)
        out["seq"].append(seq)
        out["context"].append(json.loads(context))
        out["candidates"].append(np.array(json.loads(cands), dtype=np.int64))
        out["decision_reward"].append(reward_of(event_id, -1, ts))
        for position, item, marginal in db.execute(
            "SELECT position, item_index, marginal FROM slots WHERE event_id = ? ORDER BY position", (event_id,)
        ):
            out["row_decision"].append(d)
            out["row_slot"].append(position)
            out["row_action"].append(item)
            out["row_pscore"].append(marginal)
            out["row_reward"].append(reward_of(event_id, position, ts))
    return out


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


EXTREMES = [np.pi, -1e-300, 5e-324, -0.0, 1.7976931348623157e308, 0.1 + 0.2, 1 / 3]


def random_log(seed: int) -> DecisionLog:
    """40-80 decisions of 1-4 slots (1-6 candidates; in one log of two, 10% have none, and in
    one of five the candidate lists are written compactly, '[1,2]'), contexts of width 0-3
    with extreme values, decision times out of order; rewards of two kinds on a random ~40% of
    the (decision, position) keys, half of them after a 10 s window, some exactly at its edge;
    written by a log whose window is 8, 10 or none."""
    gen = np.random.default_rng(seed)
    log = DecisionLog(reward_window_s=[8.0, WINDOW, None][seed % 3])
    width = int(gen.integers(0, 4))
    for i in range(int(gen.integers(40, 81))):
        n_slots = int(gen.integers(1, 5))
        n_cand = 0 if seed % 2 and gen.random() < 0.1 else int(gen.integers(n_slots, 7))
        ts = float(gen.uniform(0, 100))
        d = decision(f"e{i}", ts, n_slots, n_cand)
        context = gen.choice(EXTREMES, size=width) if gen.random() < 0.3 else gen.normal(size=width)
        log.write_decision(
            d,
            policy_params={},
            candidate_index=gen.integers(0, 50, size=n_cand),
            slot_index=gen.integers(0, 50, size=n_slots),
            context=context,
        )
        for position in range(-1, n_slots):
            for kind in ("click", "purchase"):
                if gen.random() < 0.4:
                    delay = [0.0, WINDOW, float(np.nextafter(WINDOW, np.inf)), gen.uniform(0, 2 * WINDOW)][
                        int(gen.integers(0, 4))
                    ]
                    log.record_reward(
                        Reward(d.event_id, float(gen.integers(0, 3)), position=position, kind=kind, ts=ts + delay)
                    )
    if seed % 5 == 0:
        log.db.execute("UPDATE decisions SET candidate_index = replace(candidate_index, ' ', '')")
    log.reward_window_s = WINDOW  # read with a 10 s window, whatever the writer's was
    return log


@pytest.mark.parametrize("scan_ratio", [0.0, np.inf])  # each plan for the rewards
@pytest.mark.parametrize("seed", range(12))
def test_the_fast_reader_equals_a_row_by_row_reader_on_random_logs(seed, scan_ratio, monkeypatch):
    """12 random logs x 8 random reads each, once with each query plan for the rewards: every
    array equal bit for bit."""
    monkeypatch.setattr(store_reader, "REWARD_SCAN_RATIO", scan_ratio)
    log = random_log(seed)
    gen = np.random.default_rng(1000 + seed)
    n = log.max_seq()
    for _ in range(8):
        args = dict(
            after_seq=int(gen.integers(0, n)),
            kind=["click", "purchase"][int(gen.integers(0, 2))],
            default_reward=float(gen.choice([0.0, -1.0, 0.5])),
            include_late=bool(gen.random() < 0.5),
        )
        if gen.random() < 0.5:
            args["until_seq"] = int(gen.integers(args["after_seq"], n + 2))
        if gen.random() < 0.5:
            args["closed_before"] = float(gen.uniform(0, 120))
        fast, slow = log.decisions(**args), slow_decisions(log, **args)
        assert fast.event_id == slow["event_id"], args
        assert fast.seq.tolist() == slow["seq"]
        width = fast.context.shape[1] if fast.n_decisions else 0
        assert same_bits(fast.context, np.array(slow["context"], dtype=float).reshape(len(slow["seq"]), width))
        assert len(fast.candidates) == len(slow["candidates"])
        assert all(same_bits(a, b) for a, b in zip(fast.candidates, slow["candidates"]))
        for name in ("row_decision", "row_slot", "row_action"):
            assert same_bits(getattr(fast, name), np.array(slow[name], dtype=np.int64)), (name, args)
        for name in ("row_pscore", "row_reward", "decision_reward"):
            assert same_bits(getattr(fast, name), np.array(slow[name], dtype=float)), (name, args)


@pytest.mark.parametrize("seed", range(6))
def test_both_reward_query_plans_give_the_same_rows(seed):
    log = random_log(seed)
    gen = np.random.default_rng(2000 + seed)
    for _ in range(8):
        params = read_params(
            after_seq=int(gen.integers(0, 30)),
            until_seq=int(gen.integers(30, 90)),
            kind="click",
            window=WINDOW,
            closed_before=[None, 60.0][int(gen.integers(0, 2))],
            include_late=bool(gen.random() < 0.5),
        )
        rows = [sorted(log.db.execute(q, params).fetchall()) for q in (READ_REWARDS, READ_REWARDS_SCAN)]
        assert rows[0] == rows[1] and rows[0]


@pytest.mark.parametrize(
    "texts",
    [
        ["[1, 2, 3]", "[4]", "[5, 6]"],
        ["[]", "[1, 2]"],
        ["[1, 2]", "[]"],
        ["[]"],
        ["[]", "[]"],
        ["[ ]", "[1]"],
        ["[ ]"],
        [],  # empty lists
        ["[1,2]", "[ 3 ,4 ]"],
        ["[\n1,\n2\n]", "[3]"],
        ["[1, 2]", "[3 ]"],  # other JSON spacing
        [" []", "[1]"],
        ["[1]", "[] "],
        [" [1]", "[2] "],
        ["[]\n"],
        ["[1]", "\t[]"],  # outside the brackets
        ["[1.0, 2.5]"],
        ["[1e3, -0.0]"],
        ["[0.1, 5e-324, 1.7976931348623157e308]"],
        ["[NaN, 1]", "[1]"],
    ],
)
@pytest.mark.parametrize("dtype", [np.int64, float])
def test_number_lists_parse_like_json(texts, dtype):
    """The one-parse fast path for candidate lists and contexts never reads a list differently
    from json.loads (whitespace-only fields, which numpy reads as 0 or -1, included), and fails
    where it fails (1.8e308 is no int64)."""
    try:
        expected = [np.asarray(json.loads(t), dtype=dtype) for t in texts]
    except (ValueError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            number_lists(texts, dtype)
        return
    flat, offsets = number_lists(texts, dtype)
    got = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    assert len(got) == len(expected) and all(same_bits(a, b) for a, b in zip(got, expected)), (got, expected)


def test_nested_or_ragged_lists_are_refused(log):
    with pytest.raises(ValidationError, match="flat lists"):
        number_lists(["[[1, 2]]"], np.int64)
    write(log, "e1", ts=0.0)
    write(log, "e2", ts=0.0)
    log.db.execute("UPDATE decisions SET context = '[1.0, 2.0, 3.0]' WHERE event_id = 'e2'")
    with pytest.raises(ValidationError, match="different lengths"):
        log.decisions()
