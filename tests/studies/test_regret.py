"""The regret harness: its oracle is the best slate (brute force), and learning beats uniform."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from simulator import Shop
from studies.regret import regret_run, regret_study, regret_table
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
        brute = max(
            shop.expected_reward(np.array([c]), items[list(s)][None, :])[0] for s in itertools.permutations(range(7), 3)
        )
        assert oracle == pytest.approx(brute, rel=1e-12)


@pytest.mark.slow
def test_regret_is_non_decreasing_and_learning_beats_uniform():
    """3 seeds x 3,000 decisions on the small shop: every increment >= 0, and LinUCB's final
    regret is below uniform's on every seed (the same worlds: common random numbers)."""
    kw = dict(shop_config=SMALL, n_decisions=3000, n_slots=3, n_candidates=20, batch=250)
    for seed in range(3):
        lin = regret_run("linucb:alpha=1.0,epsilon=0.1", seed, **kw)
        uni = regret_run("uniform", seed, **kw)
        assert (np.diff(lin.cumulative) >= -1e-12).all() and (np.diff(uni.cumulative) >= -1e-12).all()
        assert lin.oracle == uni.oracle  # same customers, same candidates
        assert lin.cumulative[-1] < uni.cumulative[-1]


def test_study_table_and_cli(tmp_path):
    rows = regret_study(
        ["uniform", "popularity:epsilon=0.2"],
        [0, 1],
        shop_config=SMALL,
        n_decisions=400,
        n_slots=2,
        n_candidates=10,
        batch=200,
    )
    table = regret_table(rows)
    assert "mean over 2 seeds" in table and table.index("popularity") < table.index("uniform")
    res = CliRunner().invoke(
        main, ["regret", "--policy", "nope", "--seeds", "1", "--decisions", "10", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "unknown policy 'nope'" in res.output


def test_sensitivity_table_trades_relevance_for_the_business_column():
    from studies.regret import sensitivity_study, sensitivity_table

    rows = sensitivity_study(
        "linucb:alpha=1.0,epsilon=0.1",
        "price",
        shop_config=SMALL,
        n_train=1500,
        n_test=600,
        k=3,
        n_candidates=15,
        batch=250,
    )
    assert [r.sensitivity for r in rows] == ["off", "low", "medium", "high"]
    price = [r.metrics["price_in_top_k"] for r in rows]
    assert price == sorted(price) and price[-1] > price[0]
    assert rows[-1].metrics["precision_at_k"] < rows[0].metrics["precision_at_k"]
    table = sensitivity_table(rows, 3, "price")
    assert "price in top 3" in table and "royalty in top 3" in table
    res = CliRunner().invoke(main, ["sensitivity", "--objective", "margin", "--train", "10", "--test", "10"])
    assert res.exit_code == 2
    assert "objective 'margin' is not an item column of the shop; known: net, price, royalty" in res.output


# ---- the royalty column of the static shop's catalog ----------------------------------------
def test_royalty_is_a_share_of_the_price_between_5_and_35_percent_reproducible_per_seed():
    for seed in range(4):
        catalog = Shop(SMALL, seed=seed).catalog
        share = catalog.royalty / catalog.price
        assert catalog.royalty.shape == catalog.price.shape and (catalog.price > 0).all()
        assert ((share > 0.05) & (share < 0.35)).all(), (seed, share.min(), share.max())
        assert share.std() > 0.05  # a spread of shares (U(0.05, 0.35) has sd 0.087), not a constant
    again = Shop(SMALL, seed=3).catalog
    np.testing.assert_array_equal(again.royalty, Shop(SMALL, seed=3).catalog.royalty)
    assert not np.array_equal(again.royalty, Shop(SMALL, seed=4).catalog.royalty)


def test_adding_the_royalty_left_every_other_number_of_the_shop_unchanged():
    """Regression guard: the royalty shares are drawn after every other draw of the catalog's
    generator, so the demo shop (seed 0) has the prices, types, features, customers, pre-period
    purchases and clicks it had before the royalty existed (values recorded from that code)."""
    import hashlib

    shop = Shop(seed=0)
    c = shop.catalog
    assert c.price[:5].tolist() == [5.18, 4.87, 39.55, 4.53, 12.71]
    assert round(float(c.price.sum()), 2) == 27628.47
    digest = hashlib.sha256()
    for a in (
        c.price,
        c.product_type.astype(np.int64),
        shop.history.indptr.astype(np.int64),
        shop.history.indices.astype(np.int64),
    ):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert digest.hexdigest() == "d72c500f510a5779e7f6d60a4d2cc05aecb7c6d21bf5625b011e8dfdfe17df8f"
    np.testing.assert_allclose(
        c.latent[0],
        [
            0.8878168558794796,
            -0.6219959592729907,
            1.3082882502371451,
            -0.4788561517190258,
            0.07818554219660216,
            -0.3412116429746097,
        ],
        rtol=1e-12,
    )
    np.testing.assert_allclose(c.bias[:3], [-0.543310962365478, -0.513206230048083, -0.5579949761303986], rtol=1e-12)
    np.testing.assert_allclose(
        shop.customers.observed[0],
        [
            -1.069744279806066,
            -0.8042974304984074,
            0.41046706339599737,
            0.44650443292548736,
            -0.433580648561649,
            0.41883635798556124,
        ],
        rtol=1e-12,
    )
    req = shop.requests(2000, np.random.default_rng(1))
    slates = np.random.default_rng(2).choice(c.n_items, size=(2000, 5))
    assert req.customer[:5].tolist() == [2365, 2559, 3775, 4752, 174]
    assert int(shop.respond(req, slates, np.random.default_rng(3)).sum()) == 475


def test_policy_env_publishes_price_royalty_and_net(small_shop):
    from banditrec.candidates import ItemItemCF
    from studies.coverage import policy_env

    columns = policy_env(small_shop, ItemItemCF(n_neighbors=10).fit(small_shop.history))["item_columns"]
    assert set(columns) == {"price", "royalty", "net"}
    c = small_shop.catalog
    np.testing.assert_array_equal(columns["price"], c.price)
    np.testing.assert_array_equal(columns["royalty"], c.royalty)
    np.testing.assert_allclose(columns["net"], c.price - c.royalty, rtol=0, atol=1e-12)
    assert (columns["net"] > 0.65 * c.price - 1e-12).all()  # the shop keeps more than 65% of each price


def test_sensitivity_on_net_raises_what_the_shop_keeps_and_reports_the_royalty_paid():
    """With fixed learned scores, raising the weight w of a linear blend can only swap an item
    of the greedy top k for one with a higher objective value, so the top k's total of net =
    price - royalty is non-decreasing in the sensitivity, request by request and so on average."""
    from studies.regret import sensitivity_study, sensitivity_table

    rows = sensitivity_study(
        "linucb:alpha=1.0,epsilon=0.1",
        "net",
        shop_config=SMALL,
        seed=1,
        n_train=1500,
        n_test=600,
        k=3,
        n_candidates=15,
        batch=250,
    )
    net = [r.metrics["net_in_top_k"] for r in rows]
    assert all(b >= a - 1e-9 for a, b in zip(net, net[1:])), net
    assert net[-1] > net[0], net
    for r in rows:
        m = r.metrics
        assert m["net_in_top_k"] == pytest.approx(m["price_in_top_k"] - m["royalty_in_top_k"], rel=1e-12)
        assert 0.05 * m["price_in_top_k"] < m["royalty_in_top_k"] < 0.35 * m["price_in_top_k"]
    assert rows[-1].metrics["precision_at_k"] < rows[0].metrics["precision_at_k"]
    table = sensitivity_table(rows, 3, "net").splitlines()
    assert table[0].split()[-8:] == ["net", "in", "top", "3", "royalty", "in", "top", "3"]
    assert table[2].split()[-2:] == [f"{net[0]:.2f}", f"{rows[0].metrics['royalty_in_top_k']:.2f}"]


def test_sensitivity_cli_takes_the_net_column():
    res = CliRunner().invoke(main, ["sensitivity", "--objective", "net", "--train", "20", "--test", "20"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "net in top 5" in lines[0] and "royalty in top 5" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["off", "low", "medium", "high"]


def test_paired_differences_from_egreedy_are_the_t_interval_of_per_seed_differences():
    """The table's paired block: each policy's final regret minus egreedy's, seed by seed, with
    a t interval computed here by hand (scipy's t quantile, numpy's sd)."""
    from scipy import stats

    rows = regret_study(
        ["egreedy", "uniform"], [0, 1, 2], shop_config=SMALL, n_decisions=300, n_slots=2, n_candidates=10, batch=150
    )
    eg, uni = rows
    d = np.array([u.cumulative[-1] - e.cumulative[-1] for u, e in zip(uni.runs, eg.runs)])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    mean, lo, hi = uni.paired(eg)
    assert mean == pytest.approx(d.mean(), rel=1e-12) and (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    table = regret_table(rows)
    assert "paired difference from egreedy" in table
    assert f"{d.mean():+,.1f}" in table.split("paired difference", 1)[1]
    assert "paired difference" not in regret_table([uni])
