"""Negative feedback and the global block list in the engine and the log (docs/feedback.md):
hidden and blocked items never reach a decision, the logged propensities are the policy's own
over what remains, the block list reaches a second engine on the same file without a restart,
and migration 0009 keeps what an older log holds."""

from __future__ import annotations

import numpy as np
import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import ItemItemCF
from banditrec.engine import Engine, ItemTable
from banditrec.errors import NotFoundError, ValidationError
from banditrec.policies import make
from banditrec.store import DecisionLog
from banditrec.store.migrations import migrations
from banditrec.types import Reward
from studies.coverage import policy_env

SPEC = "linucb:alpha=1.0,epsilon=0.1"
CTX = [0.2, -0.1, 0.3, 0.0]


class Clock:
    """A settable clock: the engine reads the time from it (``Engine(clock=...)``)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def typed_engine(shop, clock, *, seed=3, log=None, spec=SPEC, **kw) -> Engine:
    """The small simulated shop's engine, with its items' product types (``kw``: more of
    :class:`Engine`'s arguments)."""
    items = ItemTable(ids=tuple(shop.catalog.item_ids), features=shop.catalog.features, types=shop.catalog.product_type)
    cf = ItemItemCF(n_neighbors=50).fit(shop.history)
    return Engine(
        items=items,
        policy=make(spec, **policy_env(shop, cf)),
        log=log if log is not None else DecisionLog(":memory:"),
        candidate_generator=cf,
        user_items=shop.history,
        user_index={u: i for i, u in enumerate(shop.customers.user_ids)},
        context_dim=shop.config.dim,
        n_candidates=20,
        seed=seed,
        clock=clock,
        **kw,
    )


def assert_policy_propensities(engine: Engine, decision, candidates: list[str]) -> None:
    """The logged propensities are those of the policy's distribution recomputed from scratch
    over ``candidates`` (what should remain): each slot's conditional distribution sums to 1
    over the candidates not yet shown, and the logged value is that of the chosen item."""
    assert list(decision.candidates) == candidates
    idx = engine.items.index_of(candidates, "candidates")
    policy_slots = [s for s in decision.slots if s.source != "pinned"]
    dist = engine.policy.distribution(engine.request(np.asarray(CTX), idx), len(policy_slots), engine.min_epsilon)
    pos = {c: j for j, c in enumerate(candidates)}
    chosen = np.array([pos[s.item_id] for s in policy_slots])
    np.testing.assert_allclose([s.propensity for s in policy_slots], dist.conditionals(chosen), rtol=1e-12)
    for k in range(len(chosen)):
        rest = [j for j in range(len(candidates)) if j not in chosen[:k]]
        total = sum(dist.conditionals(np.r_[chosen[:k], j])[k] for j in rest)
        assert total == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(dist.marginals().sum(axis=0), 1.0, atol=1e-12)


# ---- hides --------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    ttl=st.floats(1.0, 1e6),
    hide_at=st.floats(0.0, 1e5),
    probes=st.lists(st.floats(0.0, 0.999), min_size=1, max_size=4),
    scope=st.sampled_from(["item", "type"]),
    kind=st.sampled_from(["hide", "not_interested"]),
)
def test_a_hidden_item_never_reappears_within_its_window_and_returns_after(
    small_shop, seed, ttl, hide_at, probes, scope, kind
):
    """20 request candidates; the user hides one (scope item or type) at ``hide_at`` for
    ``ttl`` seconds. Every decision inside the window leaves out exactly what the test computes
    from the catalog (the item, or every item of its type), with the policy's own propensities
    over the rest; another user still gets it; after the window it is a candidate again."""
    clock = Clock(hide_at)
    engine = typed_engine(small_shop, clock, seed=seed)
    rng = np.random.default_rng(seed)
    ids = list(small_shop.catalog.item_ids)
    cands = [ids[j] for j in rng.choice(len(ids), size=20, replace=False)]
    target = cands[int(rng.integers(20))]
    types = small_shop.catalog.product_type
    if scope == "item":
        hidden = {target}
    else:
        hidden = {i for i in cands if types[ids.index(i)] == types[ids.index(target)]}
    remaining = [c for c in cands if c not in hidden]
    engine.log.write_hide("u1", target, kind=kind, scope=scope, ts=hide_at, ttl_s=ttl)
    n_slots = min(4, len(remaining))
    for p in [0.0, *probes]:
        clock.t = hide_at + p * ttl
        if clock.t >= hide_at + ttl:  # rounding at the window's edge
            continue
        d = engine.decide("u1", n_slots, context=CTX, candidates=cands)
        assert not hidden & {s.item_id for s in d.slots}
        assert_policy_propensities(engine, d, remaining)
        generated = engine.decide("u1", 5, context=CTX)  # the generator's candidates, with backfill
        assert not hidden & set(generated.candidates)
        other = engine.decide("u2", n_slots, context=CTX, candidates=cands)
        assert list(other.candidates) == cands
    clock.t = hide_at + ttl  # the window is [ts, ts + ttl)
    assert list(engine.decide("u1", n_slots, context=CTX, candidates=cands).candidates) == cands


def test_a_type_hide_covers_generated_candidates_and_the_whole_type(small_shop):
    """Over many generated carousels, no item of the hidden type shows; without the hide the
    same requests show some (so the check can fail)."""
    clock = Clock()
    engine = typed_engine(small_shop, clock)
    types = small_shop.catalog.product_type
    before = [engine.decide("u7", 5, context=CTX) for _ in range(20)]
    shown = [engine.items.index_of([s.item_id for s in d.slots], "x") for d in before]
    common = np.bincount(np.concatenate(shown), minlength=len(types))
    target = int(np.argmax(common))  # an item these carousels do show
    hidden_type = types[target]
    engine.log.write_hide("u7", engine.items.ids[target], scope="type", ts=clock.t, ttl_s=60)
    for _ in range(20):
        d = engine.decide("u7", 5, context=CTX)
        idx = engine.items.index_of(list(d.candidates), "x")
        assert not (types[idx] == hidden_type).any()
    assert any((types[s] == hidden_type).any() for s in shown)


def test_a_hidden_or_blocked_pinned_item_is_dropped_and_its_slot_goes_to_the_policy(small_shop):
    clock = Clock()
    engine = typed_engine(small_shop, clock)
    cands = [f"i{j}" for j in range(10, 20)]
    engine.log.write_hide("u1", "i3", ts=clock.t, ttl_s=60)
    engine.log.block(["i4"], reason="recall", actor="test")
    d = engine.decide("u1", 4, context=CTX, candidates=cands, pinned=["i3", "i5", "i4"])
    assert [s.item_id for s in d.slots[:1]] == ["i5"] and d.slots[0].source == "pinned"
    assert [s.source for s in d.slots[1:]] == ["request"] * 3
    assert_policy_propensities(engine, d, cands)
    # another user: i3 is not hidden for them, i4 is blocked for everyone
    d2 = engine.decide("u2", 4, context=CTX, candidates=cands, pinned=["i3", "i5", "i4"])
    assert [s.item_id for s in d2.slots[:2]] == ["i3", "i5"]


def test_too_few_candidates_left_names_the_suppression(small_shop):
    clock = Clock()
    engine = typed_engine(small_shop, clock)
    engine.log.write_hide("u1", "i1", ts=clock.t, ttl_s=60)
    with pytest.raises(ValidationError, match="left after blocked and hidden items") as err:
        engine.decide("u1", 3, context=CTX, candidates=["i1", "i2", "i3"])
    assert err.value.field == "slots"


def test_hides_are_not_interactions(small_shop):
    """A hide does not seed the session, join events(), or reach the interactions export."""
    clock = Clock()
    engine = typed_engine(small_shop, clock)
    engine.log.write_event("u1", "i2", "view", ts=clock.t)
    engine.log.write_hide("u1", "i3", ts=clock.t, ttl_s=60)
    assert engine.log.events().item_id.tolist() == ["i2"]
    assert engine.log.recent_events("u1", since_ts=0) == (["i2"], ["view"], [clock.t])
    assert engine.session("u1").viewed.tolist() == [2]


def test_write_hide_refuses_bad_input_and_writes_nothing(log):
    for kw, field in (
        ({"scope": "brand"}, "scope"),
        ({"ttl_s": -1.0}, "ttl_s"),
        ({"ttl_s": 0.0}, "ttl_s"),
        ({"kind": "view"}, "kind"),
    ):
        with pytest.raises(ValidationError) as err:
            log.write_hide("u", "i1", ts=1.0, **{"ttl_s": 5.0, **kw})
        assert err.value.field == field
    with pytest.raises(NotFoundError):
        log.write_hide("u", "i1", ts=1.0, ttl_s=5.0, event_id="nope")
    assert log.count("events") == 0


# ---- negative reward --------------------------------------------------------------------------
def test_a_hide_records_its_reward_in_its_transaction_and_keeps_an_existing_one(engine):
    d = engine.decide("u1", 3, context=CTX)
    item = d.slots[1].item_id
    got = engine.log.write_hide(
        "u1", item, ts=5.0, ttl_s=60, event_id=d.event_id, reward=Reward(d.event_id, -1.0, 1, "click", 5.0)
    )
    assert got.reward_status == "recorded"
    rows = engine.log.db.execute("SELECT position, kind, reward FROM rewards").fetchall()
    assert rows == [(1, "click", -1.0)]
    engine.reward(d.event_id, 1.0, position=2)
    again = engine.log.write_hide(
        "u1",
        d.slots[2].item_id,
        ts=6.0,
        ttl_s=60,
        event_id=d.event_id,
        reward=Reward(d.event_id, -1.0, 2, "click", 6.0),
    )
    assert again.reward_status == "kept_existing"
    assert engine.log.db.execute("SELECT reward FROM rewards WHERE position = 2").fetchone() == (1.0,)
    assert engine.log.count("events") == 2  # both hides are logged
    # a reward the join refuses (position out of range) takes its hide with it: nothing half-written
    with pytest.raises(ValidationError):
        engine.log.write_hide(
            "u1", item, ts=7.0, ttl_s=60, event_id=d.event_id, reward=Reward(d.event_id, -1.0, 9, "click", 7.0)
        )
    assert engine.log.count("events") == 2


# ---- the block list ----------------------------------------------------------------------------
def test_a_blocked_item_never_appears_and_a_second_engine_sees_it_without_restart(small_shop, tmp_path):
    path = str(tmp_path / "log.db")
    clock = Clock()
    a = typed_engine(small_shop, clock, log=DecisionLog(path), seed=1)
    b = typed_engine(small_shop, clock, log=DecisionLog(path), seed=2)  # another serving process
    popular = [a.decide(f"w{u}", 5, context=CTX) for u in range(30)]
    counts: dict[str, int] = {}
    for d in popular:
        for s in d.slots:
            counts[s.item_id] = counts.get(s.item_id, 0) + 1
    blocked = sorted(counts, key=lambda i: -counts[i])[:3]  # items these users are shown
    cands = [*blocked, *[f"i{j}" for j in range(100, 120) if f"i{j}" not in blocked][:10]]
    b.decide("x", 3, context=CTX)  # b has read the (empty) block list: its cache is warm
    assert a.log.block(blocked, reason="recall 42", actor="legal") == ["blocked"] * 3
    for eng in (a, b):
        for u in range(30):
            for d in (
                eng.decide(f"w{u}", 5, context=CTX),
                eng.decide(f"w{u}", 3, context=CTX, candidates=cands, pinned=[blocked[0]]),
            ):
                assert not set(blocked) & {s.item_id for s in d.slots}
                assert not set(blocked) & set(d.candidates)
        assert_policy_propensities(
            eng, eng.decide("w0", 3, context=CTX, candidates=cands), [c for c in cands if c not in blocked]
        )
    b.log.unblock(blocked[0], actor="legal", reason="cleared")
    assert a.log.blocked_ids() == frozenset(blocked[1:])
    assert blocked[0] in a.decide("w0", 3, context=CTX, candidates=cands).candidates
    audit = a.log.audit_rows()
    assert [(r.action, r.subject, r.actor) for r in audit] == [
        *[("block", i, "legal") for i in blocked],
        ("unblock", blocked[0], "legal"),
    ]
    assert audit[0].detail == {"reason": "recall 42"} and audit[-1].detail["reason"] == "cleared"
    a.log.close()
    b.log.close()


def test_blocked_ids_follow_other_connections_and_cost_one_pragma_while_unchanged(tmp_path):
    path = str(tmp_path / "log.db")
    a, b = DecisionLog(path), DecisionLog(path)
    ids = a.blocked_ids()
    b.write_event("u", "i1", "view", ts=1.0)  # any commit elsewhere moves data_version ...
    assert a.blocked_ids() is ids  # ... but the generation did not move: the same object
    b.block(["i1"], reason="r", actor="t")
    assert a.blocked_ids() == {"i1"}
    b.unblock("i1", actor="t")
    assert a.blocked_ids() == frozenset()
    a.close()
    b.close()


def test_block_refuses_bad_input_and_writes_nothing(log):
    for args, field in ((([],), "item_ids"), (("i1",), "item_ids"), ((["i1", "i1"],), "item_ids")):
        with pytest.raises(ValidationError) as err:
            log.block(*args, reason="r", actor="a")
        assert err.value.field == field
    with pytest.raises(ValidationError):
        log.block(["i1"], reason="", actor="a")
    with pytest.raises(NotFoundError):
        log.unblock("i1", actor="a")
    assert log.count("blocklist") == 0 and log.count("audit") == 0


def test_audit_is_a_generic_trail(log):
    seq = log.audit("serving_mode", "home", {"from": "apprentice", "to": "live"}, actor="ops", ts=3.0)
    log.audit("serving_mode", "cart", actor="ops", ts=4.0)
    rows = log.audit_rows(action="serving_mode", subject="home")
    assert [(r.seq, r.ts, r.detail) for r in rows] == [(seq, 3.0, {"from": "apprentice", "to": "live"})]
    assert len(log.audit_rows(after_seq=seq)) == 1
    with pytest.raises(ValidationError):
        log.audit("x", "y", {"bad": float("nan")}, actor="ops")


# ---- migration 0009 ---------------------------------------------------------------------------
def test_0009_widens_an_existing_log_in_place_and_keeps_its_events(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0009_negative_feedback_blocklist")
    db.execute("INSERT INTO events (ts, user_id, item_id, kind) VALUES (1.0, 'u', 'i1', 'cart')")
    db.conn.commit()
    with pytest.raises(Exception, match="CHECK"):
        db.execute("INSERT INTO events (ts, user_id, item_id, kind) VALUES (1.0, 'u', 'i1', 'hide')")
    db.close()
    log = DecisionLog(path)
    assert log.events().kind.tolist() == ["cart"]
    log.write_hide("u", "i2", ts=2.0, ttl_s=10.0, scope="type")
    assert log.hidden_items("u", 5.0)[0][:2] == ("i2", "type")
    with pytest.raises(Exception, match="CHECK"):
        log.db.execute("INSERT INTO events (ts, user_id, item_id, kind) VALUES (1.0, 'u', 'i1', 'bogus')")
    assert log.integrity_ok()
    log.close()


def test_0009_rebuilds_an_events_table_whose_check_it_does_not_recognise(tmp_path):
    """The fallback path: the rows, their seq and the seq counter survive; the check is the wider one."""
    path = tmp_path / "odd.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0009_negative_feedback_blocklist")
    db.executescript(
        """
        DROP INDEX events_user_ts; DROP TABLE events;
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user_id TEXT NOT NULL,
            item_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind = 'view' OR kind = 'cart' OR kind = 'purchase'),
            event_id TEXT NULL REFERENCES decisions(event_id));
        CREATE INDEX events_user_ts ON events (user_id, ts);
        INSERT INTO events (ts, user_id, item_id, kind) VALUES (1.0, 'u', 'i1', 'view'), (2.0, 'u', 'i2', 'cart');
        DELETE FROM events WHERE seq = 2;
        """
    )
    db.close()
    log = DecisionLog(path)
    assert log.events().item_id.tolist() == ["i1"]
    assert log.write_hide("u", "i3", ts=3.0, ttl_s=5.0).seq == 3  # the counter went on past the deleted row
    assert [h.item_id for h in log.hidden_items("u", 4.0)] == ["i3"]
    with pytest.raises(Exception, match="CHECK"):
        log.db.execute("INSERT INTO events (ts, user_id, item_id, kind) VALUES (1.0, 'u', 'i1', 'bogus')")
    indexes = {r[0] for r in log.db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'events'")}
    assert {"events_user_ts", "events_hidden"} <= indexes and log.integrity_ok()
    log.close()


def test_promoted_and_baseline_items_do_not_bring_a_blocked_or_hidden_item_back(small_shop):
    """Apprentice mode serves the request's baseline, and promoted items join the candidates:
    neither may show what the block list or the user's hides leave out."""
    clock = Clock()
    engine = typed_engine(small_shop, clock)
    cands = [f"i{j}" for j in range(10, 20)]
    engine.log.write_hide("u1", "i3", ts=clock.t, ttl_s=60)
    engine.log.block(["i4"], reason="recall", actor="test")
    d = engine.decide("u1", 3, context=CTX, candidates=cands, promoted=["i3", "i4", "i5"])
    assert "i5" in d.candidates and not {"i3", "i4"} & set(d.candidates)
    apprentice = typed_engine(small_shop, clock, log=engine.log, mode="apprentice", seed=4)
    d = apprentice.decide("u1", 3, context=CTX, candidates=cands, baseline=["i3", "i4", "i6", "i7", "i8"])
    assert d.served == "baseline" and [s.item_id for s in d.slots] == ["i6", "i7", "i8"]
