"""Holdout users never reach training: the engine's online learning, the learner of a log, the
learner of a compacted dataset and ``evaluate``'s training share all leave them out.

The reference is independent of :class:`banditrec.apprentice.Arms`: each user's arm is
recomputed from :func:`banditrec.experiment.hash_unit` and the shares, and what each path
learned from (the rows handed to ``learn_from_log``) is mapped back to users.
"""

from __future__ import annotations

import numpy as np
import pytest

import banditrec.engine as engine_module
import banditrec.learner as learner_module
from banditrec.apprentice import Arms
from banditrec.experiment import hash_unit
from banditrec.store import DecisionLog
from banditrec.store.compaction import compact
from banditrec.store.partitioned import open_dataset, partition_decisions, read_partition
from tests.helpers import make_engine

HOLDOUT, CONTROL, SALT = 0.3, 0.2, "holdout-test"
WINDOW = 10.0
N_SLOTS = 3
ROUNDS = 2  # decisions per user


def reference_arms(users: list[str]) -> dict[str, str]:
    """Each user's arm from the hash alone: holdout below 0.3, control below 0.5, else main."""
    u = hash_unit(users, SALT)
    arm = np.where(u < HOLDOUT, "holdout", np.where(u < HOLDOUT + CONTROL, "control", "main"))
    return dict(zip(users, arm.tolist()))


@pytest.fixture(scope="module")
def served(small_shop, tmp_path_factory):
    """A file log of 400 users x 2 decisions of 3 slots under Arms(0.3, 0.2), one click in
    about a third of the decisions; its path, the engine and each event's user."""
    path = tmp_path_factory.mktemp("holdout") / "log.db"
    engine = make_engine(small_shop, db=path)
    engine.arms = Arms(holdout=HOLDOUT, control=CONTROL, salt=SALT)
    rng = np.random.default_rng(24)
    users = [str(u) for u in small_shop.customers.user_ids]
    user_of = {}
    for _ in range(ROUNDS):
        for user in users:
            d = engine.decide(user, N_SLOTS)
            user_of[d.event_id] = user
            if rng.random() < 0.35:
                engine.reward(d.event_id, 1.0, position=int(rng.integers(N_SLOTS)))
    yield path, engine, user_of
    engine.log.close()


def learned_users(event_ids, user_of) -> set[str]:
    return {user_of[e] for e in event_ids}


def spy(monkeypatch, module) -> list[list[str]]:
    """Record the event ids of every ``learn_from_log`` call made through ``module``."""
    calls: list[list[str]] = []
    real = module.learn_from_log

    def learn(policy, logged, *args, **kw):
        calls.append(list(logged.event_id))
        return real(policy, logged, *args, **kw)

    monkeypatch.setattr(module, "learn_from_log", learn)
    return calls


def test_every_user_is_logged_in_the_arm_its_hash_gives(served):
    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    rows = engine.log.db.execute("SELECT user_id, arm, served FROM decisions").fetchall()
    assert len(rows) == len(user_of)
    assert all(arm == ref[user] for user, arm, _ in rows)
    # the shares hold: 400 users, each arm within 4 binomial standard errors of its share
    counts = {a: sum(1 for v in ref.values() if v == a) for a in ("holdout", "control", "main")}
    for arm, share in (("holdout", HOLDOUT), ("control", CONTROL), ("main", 1 - HOLDOUT - CONTROL)):
        assert abs(counts[arm] - 400 * share) < 4 * np.sqrt(400 * share * (1 - share))
    # control users are served the baseline, the others the policy
    assert all((served_by == "baseline") == (arm == "control") for _, arm, served_by in rows)


def test_the_log_read_for_training_has_no_holdout_user(served):
    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    everyone = engine.log.decisions()
    training = engine.log.decisions(training=True)
    assert {ref[u] for u in learned_users(everyone.event_id, user_of)} == {"holdout", "control", "main"}
    assert all(ref[u] != "holdout" for u in learned_users(training.event_id, user_of))
    expected = [e for e in everyone.event_id if ref[user_of[e]] != "holdout"]
    assert list(training.event_id) == expected


def test_online_learning_skips_the_holdout(served, monkeypatch):
    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    calls = spy(monkeypatch, engine_module)
    before = engine.policy.n_updates
    rows = engine.learn()
    learned = [e for call in calls for e in call]
    assert learned and all(ref[user_of[e]] != "holdout" for e in learned)
    assert sorted(learned) == sorted(e for e, u in user_of.items() if ref[u] != "holdout")
    assert engine.policy.n_updates > before
    n_slots = engine.log.db.execute(
        "SELECT count(*) FROM slots s JOIN decisions d ON d.event_id = s.event_id "
        "WHERE d.arm != 'holdout' AND s.source != 'pinned'"
    ).fetchone()[0]
    assert rows == n_slots


def test_the_learner_of_a_log_skips_the_holdout(served, small_shop, tmp_path, monkeypatch):
    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    calls = spy(monkeypatch, learner_module)
    log = DecisionLog(path, reward_window_s=WINDOW)
    try:
        fresh = make_engine(small_shop).policy
        learner = learner_module.Learner(log, fresh, small_shop.catalog.features, tmp_path / "snap", clock=lambda: 1e9)
        published = learner.step()
    finally:
        log.close()
    learned = [e for call in calls for e in call]
    assert published is not None
    assert sorted(learned) == sorted(e for e, u in user_of.items() if ref[u] != "holdout")


def test_the_learner_of_a_compacted_dataset_skips_the_holdout(served, small_shop, tmp_path, monkeypatch):
    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    result = compact([path], tmp_path / "ds", reward_window_s=WINDOW, now=1e9)
    assert result.decisions == len(user_of)
    ds = open_dataset(tmp_path / "ds")
    # the dataset holds the holdout, with its arm
    table = read_partition(ds.partitions[0])
    arms = dict(zip(table.column("event_id").to_pylist(), table.column("arm").to_pylist()))
    assert all(arms[e] == ref[u] for e, u in user_of.items())
    everyone = partition_decisions(table)
    assert any(ref[user_of[e]] == "holdout" for e in everyone.event_id)

    calls = spy(monkeypatch, learner_module)
    fresh = make_engine(small_shop).policy
    learner = learner_module.DatasetLearner(tmp_path / "ds", fresh, small_shop.catalog.features, tmp_path / "snap")
    assert learner.step() is not None
    learned = [e for call in calls for e in call]
    assert sorted(learned) == sorted(e for e, u in user_of.items() if ref[u] != "holdout")
    assert learner.learned_seq == len(user_of)  # past the holdout's decisions too


def test_an_old_partition_without_the_arm_reads_as_main(served, tmp_path):
    path, engine, user_of = served
    compact([path], tmp_path / "ds", reward_window_s=WINDOW, now=1e9)
    table = read_partition(open_dataset(tmp_path / "ds").partitions[0])
    old = table.drop_columns(["arm", "served"])
    assert partition_decisions(old, training=True).event_id == partition_decisions(table).event_id


@pytest.mark.parametrize("backend", ["db", "parquet"])
def test_evaluates_training_share_skips_the_holdout_and_its_evaluated_share_keeps_it(served, tmp_path, backend):
    from banditrec.evaluation.parquet import ParquetBackend
    from banditrec.evaluation.sqlite import SQLiteBackend

    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    if backend == "db":
        b = SQLiteBackend(path, chunk_decisions=150)
    else:
        compact([path], tmp_path / "ds", reward_window_s=WINDOW, now=1e9)
        b = ParquetBackend(tmp_path / "ds")
    n_train = 500
    split = b.split(n_train)
    train = [e for c in split.train for e in c.load().event_id]
    evaluated = [e for c in split.chunks for e in c.load().event_id]
    if backend == "db":
        b.close()
    order = [e for (e,) in engine.log.db.execute("SELECT event_id FROM decisions ORDER BY seq")]
    assert train == [e for e in order[:n_train] if ref[user_of[e]] != "holdout"]
    assert evaluated == order[n_train:]
    assert any(ref[user_of[e]] == "holdout" for e in evaluated)


def test_the_ablation_target_trains_without_the_holdout(served, monkeypatch):
    import banditrec.evaluation.ablation as ablation_module

    path, engine, user_of = served
    ref = reference_arms(sorted(set(user_of.values())))
    calls: list[list[str]] = []
    real = ablation_module.train_from_log

    def train(policy, logged, *args, **kw):
        calls.append(list(logged.event_id))
        return real(policy, logged, *args, **kw)

    monkeypatch.setattr(ablation_module, "train_from_log", train)
    result = ablation_module.ablation_log(path, policy="linucb:alpha=1.0,epsilon=0.1", estimator="IPS")
    order = [e for (e,) in engine.log.db.execute("SELECT event_id FROM decisions ORDER BY seq")]
    (trained,) = calls
    assert trained == [e for e in order[: result.n_train] if ref[user_of[e]] != "holdout"]


def test_a_re_export_rewrites_a_day_written_before_the_arm_column(served, tmp_path):
    import pyarrow.parquet as pq

    from banditrec.store.partitioned import export_partitioned

    path, engine, user_of = served
    first = export_partitioned(engine.log, tmp_path / "export")
    part = first.partitions[0]
    old = read_partition(part).drop_columns(["arm", "served"])
    pq.write_table(old, part.path)  # as an older banditrec wrote it: same rows, no arm
    again = export_partitioned(engine.log, tmp_path / "export")
    assert again.written == [part.day]
    table = read_partition(again.partitions[0])
    assert "holdout" in set(table.column("arm").to_pylist())
    assert again.compaction is None and not again.kept
