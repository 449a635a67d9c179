"""LoggedDecisions' own operations (take, between, concat, from_slates) against brute-force
references built decision by decision, and between against the log's own reader."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.store import DecisionLog
from banditrec.types import Decision, LoggedDecisions, Reward, Slot

ROW_FIELDS = ("row_slot", "row_action", "row_pscore", "row_reward", "row_propensity")


def assert_same(got: LoggedDecisions, want: LoggedDecisions) -> None:
    """Every field equal, arrays with the same dtype and shape, bit for bit."""
    assert list(got.event_id) == list(want.event_id)
    assert len(got.candidates) == len(want.candidates)
    for a, b in zip(got.candidates, want.candidates):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for name in ("seq", "context", "row_decision", *ROW_FIELDS, "decision_reward", "n_slots"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        a = np.asarray(a)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (name, a, b)


@st.composite
def records(draw) -> LoggedDecisions:
    """0-7 decisions of 0-3 logged slots, seq increasing with gaps, context width 0-2;
    ``row_propensity`` and ``n_slots`` present or None."""
    n = draw(st.integers(0, 7))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    slots = gen.integers(0, 4, size=n)
    row_decision = np.repeat(np.arange(n), slots)
    n_rows = len(row_decision)
    return LoggedDecisions(
        event_id=[f"e{i}" for i in range(n)],
        seq=np.cumsum(gen.integers(1, 4, size=n)),
        context=gen.normal(size=(n, draw(st.integers(0, 2)))),
        candidates=[gen.integers(0, 50, size=gen.integers(0, 5)) for _ in range(n)],
        row_decision=row_decision,
        row_slot=np.concatenate([np.arange(s) for s in slots]).astype(np.int64) if n else np.zeros(0, np.int64),
        row_action=gen.integers(0, 50, size=n_rows),
        row_pscore=gen.uniform(0.01, 1, size=n_rows),
        row_reward=gen.integers(0, 2, size=n_rows).astype(float),
        decision_reward=gen.normal(size=n),
        row_propensity=gen.uniform(0.01, 1, size=n_rows) if draw(st.booleans()) else None,
        n_slots=slots + gen.integers(0, 2, size=n) if draw(st.booleans()) else None,
    )


def unpacked(logged: LoggedDecisions) -> list[dict]:
    """The record as one dict per decision, its rows found by scanning every row."""
    out = []
    for d in range(logged.n_decisions):
        rows = [r for r in range(len(logged.row_decision)) if logged.row_decision[r] == d]
        out.append(
            {
                "event_id": logged.event_id[d],
                "seq": logged.seq[d],
                "context": logged.context[d],
                "candidates": logged.candidates[d],
                "decision_reward": logged.decision_reward[d],
                "n_slots": None if logged.n_slots is None else logged.n_slots[d],
                "filled": len(rows),
                "rows": {
                    name: [getattr(logged, name)[r] for r in rows]
                    for name in ROW_FIELDS
                    if getattr(logged, name) is not None
                },
            }
        )
    return out


def packed(decisions: list[dict], like: LoggedDecisions) -> LoggedDecisions:
    """The reference record of ``decisions`` (dicts of :func:`unpacked`), dtypes as in ``like``."""

    def rows(name):
        return np.array([v for d in decisions for v in d["rows"][name]], dtype=getattr(like, name).dtype)

    has_n_slots = like.n_slots is not None
    return LoggedDecisions(
        event_id=[d["event_id"] for d in decisions],
        seq=np.array([d["seq"] for d in decisions], like.seq.dtype),
        context=np.array([d["context"] for d in decisions], float).reshape(len(decisions), like.context.shape[1]),
        candidates=[d["candidates"] for d in decisions],
        row_decision=np.array(
            [i for i, d in enumerate(decisions) for _ in range(d["filled"])], like.row_decision.dtype
        ),
        row_slot=rows("row_slot"),
        row_action=rows("row_action"),
        row_pscore=rows("row_pscore"),
        row_reward=rows("row_reward"),
        decision_reward=np.array([d["decision_reward"] for d in decisions], float),
        row_propensity=None if like.row_propensity is None else rows("row_propensity"),
        n_slots=np.array([d["filled"] if d["n_slots"] is None else d["n_slots"] for d in decisions], np.int64)
        if has_n_slots
        else None,
    )


@settings(max_examples=150, deadline=None)
@given(records(), st.data())
def test_take_is_the_decisions_lo_to_hi_with_their_rows(logged, data):
    lo = data.draw(st.integers(0, logged.n_decisions))
    hi = data.draw(st.integers(lo, logged.n_decisions))
    assert_same(logged.take(lo, hi), packed(unpacked(logged)[lo:hi], logged))


@settings(max_examples=150, deadline=None)
@given(records(), st.integers(-1, 25), st.one_of(st.none(), st.integers(-1, 25)))
def test_between_is_a_mask_on_seq(logged, after, until):
    keep = [after < s and (until is None or s <= until) for s in logged.seq.tolist()]
    want = [d for d, k in zip(unpacked(logged), keep) if k]
    assert_same(logged.between(after, until), packed(want, logged))


@settings(max_examples=150, deadline=None)
@given(records(), st.data())
def test_concat_of_consecutive_takes_is_the_whole(logged, data):
    n = logged.n_decisions
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    bounds = [0, *cuts, n]
    parts = [logged.take(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    assert_same(LoggedDecisions.concat(parts), logged)


@settings(max_examples=100, deadline=None)
@given(st.lists(records(), min_size=1, max_size=3))
def test_concat_of_any_records_matches_the_reference(parts):
    parts = [p for p in parts if p.context.shape[1] == parts[0].context.shape[1]]
    # row_propensity only when every part has it; n_slots when any has it (the others' from their rows)
    like = replace(
        parts[0],
        row_propensity=None if any(p.row_propensity is None for p in parts) else parts[0].row_propensity,
        n_slots=None if all(p.n_slots is None for p in parts) else [],
    )
    assert_same(LoggedDecisions.concat(parts), packed([d for p in parts for d in unpacked(p)], like))


def test_take_and_concat_refuse_what_they_cannot_do():
    logged = LoggedDecisions.from_slates(
        np.zeros((2, 1)),
        [np.arange(3)] * 2,
        np.array([[0, 1], [2, 0]]),
        marginal=np.full(4, 0.5),
        propensity=np.full(4, 0.5),
        reward=np.zeros(4),
    )
    for lo, hi in ((-1, 1), (1, 0), (0, 3)):
        with pytest.raises(ValidationError, match="take needs"):
            logged.take(lo, hi)
    with pytest.raises(ValidationError, match="at least one part"):
        LoggedDecisions.concat([])
    with pytest.raises(ValidationError, match="marginal"):
        LoggedDecisions.from_slates(
            np.zeros((2, 1)),
            [np.arange(3)] * 2,
            np.array([[0, 1], [2, 0]]),
            marginal=np.full(3, 0.5),
            propensity=np.full(4, 0.5),
            reward=np.zeros(4),
        )


def regret_by_hand(context, cand_lists, slates, clicked, marg_rows, cond_rows) -> LoggedDecisions:
    """What studies/regret.py's ``learn`` built before ``from_slates``."""
    size, n_slots = slates.shape
    return LoggedDecisions(
        event_id=[str(i) for i in range(size)],
        seq=np.arange(1, size + 1),
        context=context,
        candidates=cand_lists,
        row_decision=np.repeat(np.arange(size), n_slots),
        row_slot=np.tile(np.arange(n_slots), size),
        row_action=slates.ravel(),
        row_pscore=np.concatenate(marg_rows),
        row_reward=clicked.ravel().astype(float),
        decision_reward=np.zeros(size),
        row_propensity=np.concatenate(cond_rows),
    )


def abtest_by_hand(context, candidates, slates, response) -> LoggedDecisions:
    """What simulator/abtest.py's ``_LoggedDay.decisions`` built before ``from_slates``."""
    m, k = slates.shape
    n = (candidates >= 0).sum(axis=1)
    rows, slot = np.repeat(np.arange(m), k), np.tile(np.arange(k), m)
    return LoggedDecisions(
        event_id=[""] * m,
        seq=np.arange(m),
        context=context,
        candidates=[c[c >= 0] for c in candidates],
        row_decision=rows,
        row_slot=slot,
        row_action=slates.ravel(),
        row_pscore=(1.0 / n)[rows],
        row_reward=response.ravel().astype(float),
        decision_reward=np.zeros(m),
        row_propensity=1.0 / (n[rows] - slot),
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_from_slates_is_the_record_regret_built_by_hand(m, k, width, seed):
    gen = np.random.default_rng(seed)
    context = gen.normal(size=(m, width))
    cand_lists = [gen.permutation(20)[: k + int(gen.integers(0, 4))] for _ in range(m)]
    slates = np.array([c[:k] for c in cand_lists], dtype=np.int64).reshape(m, k)
    clicked = gen.random((m, k)) < 0.3
    marg_rows = [gen.uniform(0.01, 1, size=k) for _ in range(m)]
    cond_rows = [gen.uniform(0.01, 1, size=k) for _ in range(m)]
    got = LoggedDecisions.from_slates(
        context, cand_lists, slates, marginal=marg_rows, propensity=cond_rows, reward=clicked
    )
    assert_same(got, regret_by_hand(context, cand_lists, slates, clicked, marg_rows, cond_rows))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_from_slates_is_the_record_the_ab_test_built_by_hand(m, k, seed):
    gen = np.random.default_rng(seed)
    width = k + 4
    candidates = np.array(
        [np.r_[gen.permutation(30)[: k + n_pad], [-1] * (4 - n_pad)] for n_pad in gen.integers(0, 5, size=m)],
        dtype=np.int64,
    ).reshape(m, width)
    slates = candidates[:, :k].copy()
    context = gen.normal(size=(m, 2))
    response = gen.integers(0, 2, size=(m, k))
    n = (candidates >= 0).sum(axis=1)
    got = LoggedDecisions.from_slates(
        context,
        [c[c >= 0] for c in candidates],
        slates,
        marginal=np.repeat(1.0 / n, k),
        propensity=1.0 / (n[:, None] - np.arange(k)),
        reward=response,
        event_id=[""] * m,
        seq=np.arange(m),
    )
    assert_same(got, abtest_by_hand(context, candidates, slates, response))


@pytest.fixture(scope="module")
def small_log():
    """30 decisions of 1-3 slots (the first of some pinned), a random third of the slots clicked."""
    gen = np.random.default_rng(5)
    log = DecisionLog()
    for i in range(30):
        k = int(gen.integers(1, 4))
        pinned = k > 1 and gen.random() < 0.3
        slots = tuple(
            Slot(
                j,
                f"i{j}",
                1.0 if pinned and j == 0 else 0.5,
                1.0 if pinned and j == 0 else 0.5,
                source="pinned" if pinned and j == 0 else "candidates",
            )
            for j in range(k)
        )
        d = Decision(
            f"e{i}", "u", slots, 0.5, float(np.log(0.5)), "p", "m0", tuple(f"i{j}" for j in range(4)), ts=float(i)
        )
        log.write_decision(
            d, policy_params={}, candidate_index=np.arange(4), slot_index=np.arange(k), context=gen.normal(size=2)
        )
        for j in range(k):
            if gen.random() < 0.3:
                log.record_reward(Reward(d.event_id, 1.0, position=j, ts=float(i)))
    yield log
    log.close()


@settings(max_examples=60, deadline=None)
@given(st.integers(-1, 32), st.integers(-1, 32))
def test_between_selects_as_the_log_reader_does(small_log, after, until):
    got, want = small_log.decisions().between(after, until), small_log.decisions(after_seq=after, until_seq=until)
    if want.n_decisions:
        assert_same(got, want)
    else:  # (an empty read cannot know the contexts' width)
        assert got.n_decisions == 0 and len(got.row_decision) == 0
