"""The brains comparison: its metrics against hand counts, the temporal split against a loop,
the ranking of the brains on planted structure, and the command on a shop's exported files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from banditrec.candidates.signals import DAY_S
from studies.brains import BRAINS, ShopData, compare, metrics, temporal_split
from studies.cli import brains


def test_metrics_equal_hand_counts():
    targets = sp.csr_matrix(np.array([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=float))
    ids = np.array([[1, 2], [0, 1], [2, 0]])
    got = metrics(ids, targets, 6, ks=(1, 2))
    d2 = 1 / np.log2(3)
    assert got["hit@1"] == pytest.approx(1 / 3) and got["hit@2"] == pytest.approx(2 / 3)
    assert got["ndcg@1"] == pytest.approx(1 / 3)
    # row 0: hit at rank 1 of 2 targets -> 1 / (1 + d2); row 2: hit at rank 2 of 1 -> d2
    assert got["ndcg@2"] == pytest.approx((1 / (1 + d2) + d2) / 3)
    assert got["coverage@1"] == pytest.approx(3 / 6) and got["coverage@2"] == pytest.approx(3 / 6)
    padded = metrics(np.array([[-1, -1]]), targets[:1], 6, ks=(2,))
    assert padded == {"hit@2": 0.0, "ndcg@2": 0.0, "coverage@2": 0.0}


def test_temporal_split_equals_a_loop():
    rng = np.random.default_rng(5)
    n = 400
    data = ShopData(
        rng.integers(0, 20, n), rng.integers(0, 15, n), rng.integers(0, 3, n), rng.random(n) * 10, 20, 15, "random"
    )
    split = temporal_split(data, 5.0, end=8.0)
    train = np.zeros((20, 15))
    seen = set()
    for u, i, k, t in zip(data.user, data.item, data.kind, data.ts):
        if t < 5.0:
            train[u, i] += (1.0, 2.0, 4.0)[k]
            seen.add((u, i))
    want = {(u, i) for u, i, k, t in zip(data.user, data.item, data.kind, data.ts) if k == 2 and 5 <= t < 8}
    want -= seen
    np.testing.assert_allclose(split.train.toarray(), train)
    assert set(zip(*split.targets.nonzero())) == want
    assert (split.targets.data == 1).all()
    assert split.users.tolist() == sorted({u for u, _ in want})


def planted_shop(seed: int = 0, n_users: int = 600, n_items: int = 200, per_user: int = 14) -> ShopData:
    """Users in 4 taste clusters draw items of their cluster (a few of any); their last picks
    come after the cut as purchases. Nothing is popular beyond its cluster."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 4, n_users)
    item_cluster = np.arange(n_items) % 4
    P = np.where(item_cluster[None, :] == cluster[:, None], 1.0, 0.03)
    picks = np.argsort(-(np.log(P) + rng.gumbel(size=P.shape)), axis=1)[:, :per_user]
    user = np.repeat(np.arange(n_users), per_user)
    step = np.tile(np.arange(per_user), n_users)
    ts = (step + rng.random(user.size)) * DAY_S  # one pick a day, the last 3 after day 11
    kind = np.where(step >= per_user - 3, 2, rng.integers(0, 3, user.size))
    return ShopData(user, picks.ravel(), kind, ts, n_users, n_items, "planted")


def test_learned_brains_beat_popularity_on_planted_clusters():
    res = compare(planted_shop(), test_days=3, val_days=2, tune=False, threads=1)
    assert res.users > 500
    assert list(res.rows) == [b.name for b in BRAINS]
    pop = res.rows["popularity"]
    for name in ("item-item CF (ItemItemCF)", "CandidateGenerator (defaults)", "ALS (implicit)", "BPR (implicit)"):
        r = res.rows[name]
        # in-cluster items are 1/4 of the catalogue and carry ~ 90% of the picks
        assert r["hit@10"] > 2 * pop["hit@10"] and r["ndcg@10"] > 2 * pop["ndcg@10"], (name, r, pop)
        assert all(0 <= v <= 1 for v in r.values())
    table = res.table()
    assert table.count("\n") == len(BRAINS) + 1 and "| ALS (implicit) |" in table


def test_tuning_picks_from_the_grid_on_validation_only(monkeypatch):
    seen = []

    def spy(data, split, params, threads):
        seen.append((split.train.nnz, dict(params)))
        return BRAINS[0].fit(data, split, params, threads)

    from studies import brains as module

    monkeypatch.setattr(module, "BRAINS", (module.Brain("spy", spy, ({"a": 1}, {"a": 2})),))
    data = planted_shop(1, n_users=200)
    res = compare(data, test_days=3, val_days=2, tune=True, threads=1)
    val_nnz = temporal_split(data, data.ts.max() - 5 * DAY_S).train.nnz
    test_nnz = temporal_split(data, data.ts.max() - 3 * DAY_S).train.nnz
    assert [s[0] for s in seen] == [val_nnz, val_nnz, test_nnz]  # both candidates on validation, then one refit
    assert res.chosen["spy"] in ({"a": 1}, {"a": 2})
    # validation targets end at the test cut
    end = data.ts.max() - 3 * DAY_S
    assert res.validation_users == len(temporal_split(data, end - 2 * DAY_S, end=end).users)
    assert res.validation_users < len(temporal_split(data, end - 2 * DAY_S).users)


def test_command_reads_a_shops_exported_files(tmp_path):
    from simulator.config import SimConfig
    from simulator.environment import Environment
    from simulator.export import export_shop

    env = Environment(SimConfig(n_items=150, n_customers=800).replace(history_days=40), seed=3)
    export_shop(env, env.warm_up(), tmp_path)
    out = CliRunner().invoke(
        brains, ["--shop-files", str(tmp_path), "--no-tune", "--test-days", "10", "--threads", "1"]
    )
    assert out.exit_code == 0, out.output
    assert str(tmp_path) in out.output and "| BPR (implicit) |" in out.output
    assert out.output.count("\n| ") == len(BRAINS) + 1  # header and one row each (the separator starts "|-")
