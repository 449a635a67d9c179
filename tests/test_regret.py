"""The regret harness: its oracle is the best slate (brute force), and learning beats uniform."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.regret import regret_run, regret_study, regret_table
from simulator import Shop
from tests.conftest import SMALL


def test_sorted_attraction_is_the_best_slate_by_brute_force():
    """The oracle the harness uses (K most attractive items, in order) equals the maximum over
    every ordered K-slate of 7 candidates, for 30 random customers."""
    shop = Shop(SMALL, seed=5)
    rng = np.random.default_rng(0)
    theta = shop.model.examination(3)
    for _ in range(30):
        c = int(rng.integers(SMALL.n_customers))
        items = rng.choice(SMALL.n_items, size=7, replace=False)
        attraction = shop.model.attraction(np.full(7, c), items)
        oracle = theta @ np.sort(attraction)[::-1][:3]
        brute = max(shop.expected_reward(np.array([c]), items[list(s)][None, :])[0]
                    for s in itertools.permutations(range(7), 3))
        assert oracle == pytest.approx(brute, rel=1e-12)


def test_regret_is_non_decreasing_and_learning_beats_uniform():
    """3 seeds x 3,000 decisions on the small shop: every increment >= 0, and LinUCB's final
    regret is below uniform's on every seed (the same worlds: common random numbers)."""
    kw = dict(shop_config=SMALL, n_decisions=3000, n_slots=3, n_candidates=20, batch=250)
    for seed in range(3):
        lin = regret_run("shared-linucb:alpha=1.0,epsilon=0.1", seed, **kw)
        uni = regret_run("uniform", seed, **kw)
        assert (np.diff(lin.cumulative) >= -1e-12).all() and (np.diff(uni.cumulative) >= -1e-12).all()
        assert lin.oracle == uni.oracle  # same customers, same candidates
        assert lin.cumulative[-1] < uni.cumulative[-1]


def test_study_table_and_cli(tmp_path):
    rows = regret_study(["uniform", "popularity:epsilon=0.2"], [0, 1], shop_config=SMALL, n_decisions=400,
                        n_slots=2, n_candidates=10, batch=200)
    table = regret_table(rows)
    assert "mean over 2 seeds" in table and table.index("popularity") < table.index("uniform")
    res = CliRunner().invoke(main, ["regret", "--policy", "nope", "--seeds", "1", "--decisions", "10",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown policy 'nope'" in res.output


def test_sensitivity_table_trades_relevance_for_the_business_column():
    from banditrec.regret import sensitivity_study, sensitivity_table

    rows = sensitivity_study("shared-linucb:alpha=1.0,epsilon=0.1", "price", shop_config=SMALL, n_train=1500,
                             n_test=600, k=3, n_candidates=15, batch=250)
    assert [r.sensitivity for r in rows] == ["off", "low", "medium", "high"]
    price = [r.metrics["price_in_top_k"] for r in rows]
    assert price == sorted(price) and price[-1] > price[0]
    assert rows[-1].metrics["precision_at_k"] < rows[0].metrics["precision_at_k"]
    assert "price in top 3" in sensitivity_table(rows, 3, "price")
    res = CliRunner().invoke(main, ["sensitivity", "--objective", "royalty", "--train", "10", "--test", "10"])
    assert res.exit_code == 2 and "objective 'royalty' is not an item column of the shop; known: price" in res.output
