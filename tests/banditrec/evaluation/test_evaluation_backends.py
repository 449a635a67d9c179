"""``evaluate --db`` and ``evaluate --parquet`` are one pipeline over two readers of the log: on
the same log, exported by day, both give the same estimates -- also when decisions pin slots
or were observed at one position of their carousel only (an imported round, as the Open
Bandit Dataset's rows), where the Parquet reader used to renumber the observed slot to 0 and
lose the carousel's length (disjoint-linucb's IPS 0.7700 against 0.7433 on the log below)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from banditrec.evaluation import evaluate_log, evaluate_parquet
from banditrec.evaluation.pipeline import check_request, evaluate
from banditrec.evaluation.sqlite import SQLiteBackend
from banditrec.store import DecisionLog
from banditrec.store.partitioned import (
    PartitionError,
    export_partitioned,
    open_dataset,
    partition_decisions,
    read_partition,
)
from banditrec.types import Decision, LoggedDecisions, Reward, Slot

N_ITEMS, N_SLOTS, N_DECISIONS, DAYS = 8, 3, 600, 3
SPECS = ["disjoint-linucb", "linucb:alpha=1.0,epsilon=0.1", "egreedy:epsilon=0.1"]  # disjoint, shared, egreedy
ESTIMATORS = ("IPS", "SNIPS", "DR", "SNDR")
TOL = 1e-9  # the order of floating-point sums; the readers' old disagreement was 1e-2


def write_log(path, *, partial: bool, pinned: bool, seed: int = 0) -> None:
    """A uniformly random logger over 8 items, 3-slot carousels, 2 context features, over 3
    days; each decision fully observed, or (``partial``) observed at one random position of
    its 3, or (``pinned``) with its first slot pinned and 2 chosen by the policy. Clicks
    depend on the context, the item and the slot."""
    rng = np.random.default_rng(seed)
    log = DecisionLog(str(path))
    ids = [f"i{j}" for j in range(N_ITEMS)]
    log.write_items(ids, rng.normal(size=(N_ITEMS, 3)))
    theta = rng.normal(size=(N_ITEMS, 2))
    kinds = [0] + [1] * partial + [2] * pinned
    rewards = []
    for t in range(N_DECISIONS):
        ctx = rng.normal(size=2)
        kind = kinds[int(rng.integers(len(kinds)))]
        pins = [int(rng.integers(N_ITEMS))] if kind == 2 else []
        pool = [j for j in range(N_ITEMS) if j not in pins]
        shown = pins + [int(j) for j in rng.permutation(pool)[: N_SLOTS - len(pins)]]
        slots = [
            Slot(k, ids[j], 1.0, 1.0, source="pinned")
            if k < len(pins)
            else Slot(k, ids[j], 1.0 / (len(pool) - k + len(pins)), 1.0 / len(pool))
            for k, j in enumerate(shown)
        ]
        n_slots = None
        if kind == 1:
            k = int(rng.integers(N_SLOTS))
            slots, shown, n_slots = [slots[k]], [shown[k]], N_SLOTS
        log_joint = sum(math.log(s.propensity) for s in slots)
        event = f"e{t}"
        ts = 86400.0 * 40 + t * DAYS * 86400.0 / N_DECISIONS
        log.write_decision(
            Decision(
                event,
                f"u{t % 50}",
                tuple(slots),
                math.exp(log_joint),
                log_joint,
                "uniform",
                "v0",
                tuple(ids),
                ts,
                n_slots=n_slots,
            ),
            policy_params={},
            candidate_index=np.arange(N_ITEMS),
            slot_index=shown,
            context=ctx.tolist(),
        )
        for s, j in zip(slots, shown):
            if rng.random() < 1 / (1 + math.exp(1.0 + 0.3 * s.position - theta[j] @ ctx)):
                rewards.append(Reward(event, 1.0, position=s.position, ts=ts + 1))
    log.record_rewards(rewards)
    log.close()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """(db, parquet dir) of a log with partly observed and pinned decisions, and of one with
    pinned decisions only."""
    root = tmp_path_factory.mktemp("backends")
    out = {}
    for name, partial in (("mixed", True), ("pinned", False)):
        db = root / f"{name}.db"
        write_log(db, partial=partial, pinned=True)
        log = DecisionLog(str(db))
        try:
            export_partitioned(log, root / f"{name}-pq")
        finally:
            log.close()
        out[name] = (db, root / f"{name}-pq")
    return out


def test_the_parquet_reader_returns_what_the_log_reader_returns(make_log, logs):
    db, pq_dir = logs["mixed"]
    log = make_log(str(db))
    try:
        ref = log.decisions()
    finally:
        log.close()
    got = LoggedDecisions.concat([partition_decisions(read_partition(p)) for p in open_dataset(pq_dir).partitions])
    assert set(ref.n_slots.tolist()) == {2, 3} and (ref.slots_per_decision() > np.bincount(ref.row_decision)).any()
    for name in (
        "seq",
        "context",
        "row_decision",
        "row_slot",
        "row_action",
        "row_pscore",
        "row_reward",
        "decision_reward",
        "row_propensity",
        "n_slots",
    ):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    assert got.event_id == ref.event_id
    assert all(np.array_equal(a, b) for a, b in zip(got.candidates, ref.candidates))


@pytest.mark.parametrize("which, reward_model", [("mixed", "logistic"), ("mixed", "ridge"), ("pinned", "logistic")])
def test_both_backends_give_the_same_estimates(logs, which, reward_model):
    db, pq_dir = logs[which]
    ref = evaluate_log(str(db), SPECS, estimators=ESTIMATORS, reward_model=reward_model)
    got = evaluate_parquet(pq_dir, SPECS, estimators=ESTIMATORS, reward_model=reward_model)
    assert (got.n_train, got.n_eval, got.n_rows) == (ref.n_train, ref.n_eval, ref.n_rows)
    assert got.logging.value == pytest.approx(ref.logging.value, abs=TOL)
    for g, r in zip(got.candidates, ref.candidates):
        assert (g.spec, g.safe) == (r.spec, r.safe)
        for name in ESTIMATORS:
            a, b = g.estimates[name], r.estimates[name]
            assert (a.value, a.lower, a.upper) == pytest.approx((b.value, b.lower, b.upper), abs=TOL), (g.spec, name)
            assert a.unsupported == pytest.approx(b.unsupported, abs=TOL)


def test_a_partition_without_carousel_lengths_asks_for_a_re_export(make_log, logs, tmp_path):
    """A file written before the n_slots column cannot say a partly observed decision's
    carousel: reading it refuses, and the next export rewrites it."""
    import shutil

    db, src = logs["mixed"]
    pq_dir = tmp_path / "pq"
    shutil.copytree(src, pq_dir)
    part = open_dataset(pq_dir).partitions[0]
    table = pq.read_table(part.path)
    pq.write_table(table.drop_columns(["n_slots"]).replace_schema_metadata(table.schema.metadata), part.path)
    with pytest.raises(PartitionError, match="partly observed decisions but no n_slots column"):
        partition_decisions(read_partition(part))
    log = make_log(str(db))
    try:
        again = export_partitioned(log, pq_dir)
    finally:
        log.close()
    assert again.written == [part.day]
    assert "n_slots" in pq.read_schema(part.path).names


@pytest.mark.parametrize("which, reward_model", [("mixed", "logistic"), ("mixed", "ridge"), ("pinned", "logistic")])
def test_the_log_read_in_chunks_gives_the_estimates_of_the_whole_log(logs, which, reward_model):
    """``evaluate --db`` streams the log a chunk of seqs at a time, the candidates' training
    share as well as the evaluated decisions: at 37 decisions a chunk (9 chunks of each here),
    every estimate and interval is the one-chunk result's, up to the order of floating-point
    sums (the importance weights of the training rows are scaled over the whole share)."""
    db, _ = logs[which]
    request = check_request(SPECS, estimators=ESTIMATORS, reward_model=reward_model)
    whole_log = SQLiteBackend(db, chunk_decisions=None)
    streamed = SQLiteBackend(db, chunk_decisions=37)
    n_train = N_DECISIONS // 2
    whole_split, split = whole_log.split(n_train), streamed.split(n_train)
    assert len(whole_split.chunks) == 1 and len(split.chunks) == 9
    assert len(whole_split.train) == 1 and len(split.train) == 9
    assert split.n_slots == 1 + int(whole_split.chunks[0].load().row_slot.max())
    ref, got = evaluate(whole_log, request), evaluate(streamed, request)
    whole_log.close()
    streamed.close()
    assert (
        (got.n_train, got.n_eval, got.n_rows) == (ref.n_train, ref.n_eval, ref.n_rows) == (n_train, n_train, ref.n_rows)
    )
    assert got.logging.value == pytest.approx(ref.logging.value, rel=1e-9)
    assert [c.spec for c in got.candidates] == SPECS
    for g, r in zip(got.candidates, ref.candidates):
        assert (g.spec, g.safe) == (r.spec, r.safe)
        for name in ESTIMATORS:
            a, b = g.estimates[name], r.estimates[name]
            assert (a.value, a.lower, a.upper, a.se) == pytest.approx((b.value, b.lower, b.upper, b.se), rel=1e-9), (
                g.spec,
                name,
            )
            assert (a.n, a.n_rows, a.ess) == (b.n, b.n_rows, pytest.approx(b.ess, rel=1e-9))
            assert a.unsupported == pytest.approx(b.unsupported, rel=1e-9, abs=1e-15)
