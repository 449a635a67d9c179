"""Compaction of log shards into the day-partitioned dataset: the same decisions logged by one
node or split over three give the same dataset rows and the same estimates; a run adds only
what closed since the last; a run killed midway loses nothing, and its rerun duplicates
nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from banditrec.errors import ConflictError, ValidationError
from banditrec.evaluation import evaluate_log, evaluate_parquet
from banditrec.store import DecisionLog
from banditrec.store import compaction as compaction_module
from banditrec.store.compaction import compact
from banditrec.store.partitioned import (
    MANIFEST,
    PartitionError,
    export_partitioned,
    open_dataset,
    partition_decisions,
    read_partition,
)
from banditrec.store.shards import shard_of
from banditrec.types import LoggedDecisions, Reward
from studies.coverage import build_engine

DAY = 86_400.0
N_SHARDS, N_DECISIONS, N_SLOTS, WINDOW = 3, 240, 3, 600.0
STEP = 3 * DAY / N_DECISIONS  # three days of decisions
SPECS = ["linucb:alpha=1.0,epsilon=0.1", "egreedy:epsilon=0.1"]
ESTIMATORS = ("IPS", "SNIPS", "DR")
TOL = 1e-9
END = 40 * DAY + N_DECISIONS * STEP + 10 * WINDOW  # every window closed


def seeded_run(shop, nodes: list[DecisionLog], *, seed: int = 3) -> list[tuple[str, float, int]]:
    """N_DECISIONS decisions of one seeded engine, decision i logged to ``nodes[i % n]`` (a
    round-robin balancer), each click posted to a random node; contexts, clicks and nodes drawn
    from streams of their own. Returns (event id, decision ts, n clicks) per decision."""
    t = [0.0]

    def clock():
        return t[0]

    engine = build_engine(shop, "linucb:alpha=1.0,epsilon=0.1", nodes[0], seed=seed, n_candidates=12, clock=clock)
    ctx_rng, click_rng, node_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    out = []
    for i in range(N_DECISIONS):
        engine.log = nodes[i % len(nodes)]  # the node the balancer sent the request to
        t[0] = 40 * DAY + i * STEP
        d = engine.decide(f"u{i % 31}", N_SLOTS, context=ctx_rng.normal(size=shop.config.dim))
        clicks = [s.position for s in d.slots if click_rng.random() < 0.2 + 0.15 * (s.position == 0)]
        for pos in clicks:
            reward = Reward(d.event_id, 1.0, position=pos, ts=d.ts + 1.0)
            nodes[int(node_rng.integers(N_SHARDS)) % len(nodes)].record_reward(reward)
        out.append((d.event_id, d.ts, len(clicks)))
    return out


@pytest.fixture(scope="module")
def cluster(small_shop, tmp_path_factory):
    """One node's log and three shard logs of the same seeded decisions and clicks."""
    root = tmp_path_factory.mktemp("shards")
    single = DecisionLog(root / "single.db")
    nodes = [DecisionLog(root / f"shard{k}.db", shard=k) for k in range(N_SHARDS)]
    one = seeded_run(small_shop, [single])
    many = seeded_run(small_shop, nodes)
    for log in (single, *nodes):
        log.close()
    return root, one, many


def shard_paths(root):
    return [root / f"shard{k}.db" for k in range(N_SHARDS)]


def dataset_decisions(root) -> LoggedDecisions:
    return LoggedDecisions.concat([partition_decisions(read_partition(p)) for p in open_dataset(root).partitions])


def test_the_shards_hold_the_one_nodes_decisions(cluster):
    root, one, many = cluster
    assert [(ts, n) for _, ts, n in one] == [(ts, n) for _, ts, n in many]
    assert [shard_of(e) for e, _, _ in many] == [i % N_SHARDS for i in range(N_DECISIONS)]
    assert [e[16:] for e, _, _ in one] == [e[16:] for e, _, _ in many]  # the same stream, another shard field
    routed = 0
    for k in range(N_SHARDS):
        log = DecisionLog(root / f"shard{k}.db")
        try:
            assert log.shard == k
            routed += log.count("routed_rewards")
        finally:
            log.close()
    assert routed > 0


def test_n_nodes_give_the_one_nodes_rows_and_estimates(cluster, tmp_path):
    root, one, _ = cluster
    result = compact(shard_paths(root), tmp_path / "many", reward_window_s=WINDOW, now=END)
    assert result.decisions == N_DECISIONS and result.rewards == sum(n for _, _, n in one)
    assert len(result.parts) == 3  # days 40, 41, 42
    single = DecisionLog(root / "single.db")
    try:
        ref = single.decisions()
    finally:
        single.close()
    got = dataset_decisions(tmp_path / "many")
    for name in ("context", "row_decision", "row_slot", "row_action", "row_pscore", "row_reward", "n_slots"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(got.seq, np.arange(1, N_DECISIONS + 1))

    a = evaluate_log(str(root / "single.db"), SPECS, estimators=ESTIMATORS)
    b = evaluate_parquet(tmp_path / "many", SPECS, estimators=ESTIMATORS)
    assert (a.n_train, a.n_eval, a.n_rows) == (b.n_train, b.n_eval, b.n_rows)
    for x, y in zip(a.candidates, b.candidates):
        for name in ESTIMATORS:
            ex, ey = x.estimates[name], y.estimates[name]
            assert (ey.value, ey.lower, ey.upper) == pytest.approx((ex.value, ex.lower, ex.upper), abs=TOL)


def read_all(root) -> list:
    return [read_partition(p) for p in open_dataset(root).partitions]


def files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".compact.lock"}


def test_runs_add_only_what_closed_and_a_killed_run_loses_and_duplicates_nothing(cluster, tmp_path, monkeypatch):
    root, _, _ = cluster
    shards = shard_paths(root)
    mid = 40 * DAY + 1.5 * DAY + WINDOW + 60  # about half the decisions closed (the grace is 60 s)
    # the reference: two clean runs
    first = compact(shards, tmp_path / "clean", reward_window_s=WINDOW, now=mid)
    second = compact(shards, tmp_path / "clean", reward_window_s=WINDOW, now=END)
    assert 0 < first.decisions < N_DECISIONS and first.decisions + second.decisions == N_DECISIONS
    assert len(second.parts) >= 2
    # the same, with the second run killed after its first part file
    compact(shards, tmp_path / "ds", reward_window_s=WINDOW, now=mid)
    manifest = (tmp_path / "ds" / MANIFEST).read_bytes()
    real, calls = compaction_module._write_part, []

    def dies_after_one_part(table, path):
        calls.append(path)
        if len(calls) == 2:  # killed while writing the second: its temporary file stays
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".{path.name}.0123456789ab.part").write_bytes(b"PAR1 half a file")
            raise RuntimeError("killed")
        real(table, path)

    monkeypatch.setattr(compaction_module, "_write_part", dies_after_one_part)
    with pytest.raises(RuntimeError, match="killed"):
        compact(shards, tmp_path / "ds", reward_window_s=WINDOW, now=END)
    monkeypatch.undo()
    assert (tmp_path / "ds" / MANIFEST).read_bytes() == manifest  # the dataset is as it was
    assert dataset_decisions(tmp_path / "ds").n_decisions == first.decisions
    again = compact(shards, tmp_path / "ds", reward_window_s=WINDOW, now=END)
    assert (again.decisions, again.rows, again.parts) == (second.decisions, second.rows, second.parts)
    assert files(tmp_path / "ds") == files(tmp_path / "clean")  # no stray part of the killed run
    for x, y in zip(read_all(tmp_path / "ds"), read_all(tmp_path / "clean")):
        assert x.equals(y)
    got = dataset_decisions(tmp_path / "ds")
    np.testing.assert_array_equal(got.seq, np.arange(1, N_DECISIONS + 1))
    assert len(set(got.event_id)) == N_DECISIONS
    # idempotent: nothing newly closed, nothing written
    manifest = (tmp_path / "ds" / MANIFEST).read_bytes()
    third = compact(shards, tmp_path / "ds", reward_window_s=WINDOW, now=END + DAY)
    assert (third.decisions, third.parts) == (0, ())
    assert (tmp_path / "ds" / MANIFEST).read_bytes() == manifest


def test_a_routed_reward_waits_for_its_decision_and_a_late_one_is_flagged(tmp_path):
    nodes = [DecisionLog(tmp_path / f"n{k}.db", shard=k) for k in range(2)]
    try:
        from banditrec.types import Decision, Slot

        def decide(k, i, ts):
            event = f"{int(ts * 1000):012x}{k:04x}{i:016x}"
            nodes[k].write_decision(
                Decision(
                    event,
                    "u",
                    (Slot(0, "a", 0.5, 0.5), Slot(1, "b", 0.5, 0.5)),
                    0.25,
                    np.log(0.25),
                    "p",
                    "v",
                    ("a", "b"),
                    ts,
                ),
                policy_params={},
                candidate_index=[0, 1],
                slot_index=[0, 1],
                context=[1.0],
            )
            return event

        early, later = decide(0, 1, 1000.0), decide(0, 2, 5000.0)
        assert nodes[1].record_reward(Reward(early, 1.0, position=0, ts=1010.0)) == "routed"
        assert nodes[1].record_reward(Reward(early, 1.0, position=1, ts=1000.0 + WINDOW + 1)) == "routed"  # late
        assert nodes[1].record_reward(Reward(early, 1.0, position=5, ts=1010.0)) == "routed"  # no such slot
        assert nodes[1].record_reward(Reward(later, 3.0, position=1, ts=5010.0)) == "routed"
        paths = [n.path for n in nodes]
        first = compact(paths, tmp_path / "ds", reward_window_s=WINDOW, now=3000.0)
        assert (first.decisions, first.rewards, first.late, first.dropped, first.pending) == (1, 2, 1, 1, 1)
        logged = dataset_decisions(tmp_path / "ds")
        np.testing.assert_array_equal(logged.row_reward, [1.0, 0.0])  # the late click is not learned from
        assert nodes[1].record_reward(Reward(early, 1.0, position=None, ts=3100.0)) == "routed"  # after compaction
        second = compact(paths, tmp_path / "ds", reward_window_s=WINDOW, now=9000.0)
        assert (second.decisions, second.rewards, second.pending, second.earlier) == (
            1,
            1,
            0,
            4,
        )  # 3 joined by the first run
        np.testing.assert_array_equal(dataset_decisions(tmp_path / "ds").row_reward, [1.0, 0.0, 0.0, 3.0])
    finally:
        for n in nodes:
            n.close()


def test_compaction_refuses_inputs_it_cannot_join_safely(cluster, tmp_path):
    root, _, _ = cluster
    shards = shard_paths(root)
    with pytest.raises(ValidationError, match="does not exist"):
        compact([root / "nope.db"], tmp_path / "a", reward_window_s=WINDOW)
    with pytest.raises(ValidationError, match="both shard 0"):
        compact([shards[0], shards[0]], tmp_path / "a", reward_window_s=WINDOW)
    compact(shards, tmp_path / "a", reward_window_s=WINDOW, now=40 * DAY + DAY)
    with pytest.raises(ConflictError, match="reward window"):
        compact(shards, tmp_path / "a", reward_window_s=WINDOW * 2)
    other = DecisionLog(tmp_path / "other.db", shard=1)  # a new file claiming a compacted shard
    other.close()
    with pytest.raises(ConflictError, match="another log file"):
        compact([shards[0], tmp_path / "other.db"], tmp_path / "a", reward_window_s=WINDOW)
    single = DecisionLog(root / "single.db")
    try:
        export_partitioned(single, tmp_path / "export")
    finally:
        single.close()
    with pytest.raises(PartitionError, match="written by `banditrec export`"):
        compact(shards, tmp_path / "export", reward_window_s=WINDOW)
    with pytest.raises(PartitionError, match="compacted dataset"):
        single = DecisionLog(root / "single.db")
        try:
            export_partitioned(single, tmp_path / "a")
        finally:
            single.close()
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["compaction"]["runs"] == 1
    import fcntl
    import os

    fd = os.open(tmp_path / "a" / ".compact.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another compaction holds the dataset
        with pytest.raises(ConflictError, match="another compaction is running"):
            compact(shards, tmp_path / "a", reward_window_s=WINDOW)
    finally:
        os.close(fd)


def test_a_log_keeps_its_shard(tmp_path):
    log = DecisionLog(tmp_path / "s.db", shard=4)
    log.close()
    again = DecisionLog(tmp_path / "s.db")
    try:
        assert again.shard == 4
    finally:
        again.close()
    with pytest.raises(ConflictError, match="is shard 4, not shard 5"):
        DecisionLog(tmp_path / "s.db", shard=5)
    with pytest.raises(ValidationError, match="shard must be in"):
        DecisionLog(tmp_path / "t.db", shard=70000)


def test_a_learner_of_the_dataset_learns_what_a_learner_of_one_log_learns(cluster, small_shop, tmp_path):
    root, _, _ = cluster
    compact(shard_paths(root), tmp_path / "ds", reward_window_s=WINDOW, now=END)
    features = small_shop.catalog.features

    def fresh_policy():
        return build_engine(small_shop, "linucb:alpha=1.0,epsilon=0.1", DecisionLog(), seed=0).policy

    from banditrec.learner import DatasetLearner, Learner
    from banditrec.offline import target_pscore

    many = DatasetLearner(tmp_path / "ds", fresh_policy(), features, tmp_path / "snap-many", partitions=2)
    assert many.run(interval_s=0, steps=3) == 2  # 3 day partitions, 2 a step; the third step finds nothing
    assert many.learned_seq == N_DECISIONS
    single = DecisionLog(root / "single.db", reward_window_s=WINDOW)
    try:
        one = Learner(single, fresh_policy(), features, tmp_path / "snap-one", clock=lambda: END)
        assert one.run(interval_s=0, steps=1) == 1
        ref = single.decisions()
    finally:
        single.close()
    np.testing.assert_allclose(
        target_pscore(many.policy, ref, features), target_pscore(one.policy, ref, features), rtol=0, atol=TOL
    )
    assert many.policy.n_updates == one.policy.n_updates + 1  # the same rows, in two updates


def test_the_compact_command(cluster, tmp_path):
    from click.testing import CliRunner

    from banditrec.cli import main

    root, _, _ = cluster
    args = ["compact", *(a for p in shard_paths(root) for a in ("--shard", str(p)))]
    args += ["--out", str(tmp_path / "ds"), "--reward-window", str(WINDOW)]
    runner = CliRunner()
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert f"compacted {N_DECISIONS} decisions" in first.output and "conflicts 0" in first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "compacted 0 decisions" in again.output
    missing = runner.invoke(main, ["compact", "--shard", str(tmp_path / "nope.db"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.slow
def test_evaluate_and_learn_read_the_dataset_on_dask(cluster, small_shop, tmp_path):
    """`evaluate --parquet` on a LocalCluster gives the in-process estimates; a learner reading
    the partitions on Dask learns what it learns reading them here."""
    from click.testing import CliRunner

    from banditrec.cli import main
    from banditrec.evaluation import dask_client
    from banditrec.learner import DatasetLearner
    from banditrec.offline import target_pscore

    root, _, _ = cluster
    compact(shard_paths(root), tmp_path / "ds", reward_window_s=WINDOW, now=END)
    out = CliRunner().invoke(main, ["evaluate", "--parquet", str(tmp_path / "ds"), "--policy", SPECS[1], "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["n_train_decisions"] + report["n_eval_decisions"] == N_DECISIONS
    here = evaluate_parquet(tmp_path / "ds", SPECS[1:], estimators=("IPS", "SNIPS", "DR"))
    got = {c["policy"]: c for c in report["candidates"]}[SPECS[1]]
    for name in ("IPS", "SNIPS", "DR"):
        assert got["estimates"][name]["value"] == pytest.approx(here.candidates[0].estimates[name].value, abs=TOL)

    features = small_shop.catalog.features
    learners = []
    with dask_client(n_workers=2) as client:
        for c in (client, None):
            policy = build_engine(small_shop, SPECS[0], DecisionLog(), seed=0).policy
            learner = DatasetLearner(tmp_path / "ds", policy, features, tmp_path / f"snap-{c is None}", client=c)
            learner.run(interval_s=0, steps=1)
            learners.append(learner)
    logged = dataset_decisions(tmp_path / "ds")
    a, b = (target_pscore(x.policy, logged, features) for x in learners)
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def counts(paths, table) -> int:
    total = 0
    for p in paths:
        log = DecisionLog(p)
        try:
            total += log.count(table)
        finally:
            log.close()
    return total


def test_prune_deletes_only_what_the_dataset_holds_and_finishes_after_a_kill(cluster, tmp_path, monkeypatch):
    root, _, _ = cluster
    copies = []
    for p in shard_paths(root):
        shutil.copy(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
    mid = 40 * DAY + 1.5 * DAY + WINDOW + 60
    compact(shard_paths(root), tmp_path / "ref", reward_window_s=WINDOW, now=mid)
    compact(shard_paths(root), tmp_path / "ref", reward_window_s=WINDOW, now=END)
    routed = counts(copies, "routed_rewards")

    first = compact(copies, tmp_path / "ds", reward_window_s=WINDOW, now=mid, prune=True)
    assert first.pruned == first.decisions and 0 < first.pruned_routed < routed
    assert counts(copies, "decisions") == N_DECISIONS - first.decisions
    assert counts(copies, "routed_rewards") == routed - first.pruned_routed == first.pending

    real, calls = DecisionLog.prune, []

    def dies_on_the_second_shard(self, *args):
        calls.append(self.shard)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, *args)

    monkeypatch.setattr(DecisionLog, "prune", dies_on_the_second_shard)
    with pytest.raises(RuntimeError, match="killed"):
        compact(copies, tmp_path / "ds", reward_window_s=WINDOW, now=END, prune=True)
    monkeypatch.undo()
    assert open_dataset(tmp_path / "ds").n_decisions == N_DECISIONS  # the manifest was written first
    last = compact(copies, tmp_path / "ds", reward_window_s=WINDOW, now=END, prune=True)
    assert last.decisions == 0 and last.pruned > 0
    assert counts(copies, "decisions") == counts(copies, "routed_rewards") == counts(copies, "slots") == 0
    assert files(tmp_path / "ds") == files(tmp_path / "ref")
    for x, y in zip(read_all(tmp_path / "ds"), read_all(tmp_path / "ref")):
        assert x.equals(y)


def test_a_decision_whose_propensities_never_completed_is_left_out_and_reported(small_shop, tmp_path):
    """Thompson sampling's deferred propensities need the serving process's model: a decision
    whose process stopped first stays pending, and compaction leaves it out as readers do."""
    t = [1000.0]
    log = DecisionLog(tmp_path / "s.db", shard=0)
    engine = build_engine(small_shop, "lints", log, seed=1, n_candidates=10, clock=lambda: t[0])
    engine.defer_marginals = True
    ctx = np.zeros(small_shop.config.dim)
    lost = engine.decide("u1", 2, context=ctx)
    engine._pending.clear()  # the crash
    t[0] += 1
    kept = engine.decide("u2", 2, context=ctx)
    engine.complete_pending()
    log.close()
    result = compact([tmp_path / "s.db"], tmp_path / "ds", reward_window_s=WINDOW, now=5000.0, prune=True)
    assert (result.decisions, result.unsettled, result.pruned) == (1, 1, 1)
    assert "left out: 1 closed decisions" in result.summary()
    assert dataset_decisions(tmp_path / "ds").event_id == [kept.event_id]
    left = DecisionLog(tmp_path / "s.db")
    try:
        assert [r[0] for r in left.db.execute("SELECT event_id FROM decisions")] == [lost.event_id]
    finally:
        left.close()
