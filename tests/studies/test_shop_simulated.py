"""The simulator as a client of the public path: its exported files, built by `banditrec build`,
give exactly the candidates the simulator's in-process shop computes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.candidates import UserState
from banditrec.cli import main
from banditrec.shop import Shop
from simulator import SimConfig
from simulator.environment import Environment
from studies.simulate import DAY_S, ShopCandidates, history_interactions


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 8])
def test_the_exported_shop_gives_the_in_process_shops_candidates(tmp_path, seed):
    config = SimConfig(n_items=600, n_customers=1500, n_types=30, history_days=20)
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--export-shop",
            str(tmp_path / "files"),
            "--items",
            "600",
            "--customers",
            "1500",
            "--seed",
            str(seed),
            "--config",
            str(_toml(tmp_path)),
        ],
    )
    assert res.exit_code == 0, res.output
    files = tmp_path / "files"
    res = CliRunner().invoke(
        main,
        [
            "build",
            "--items",
            str(files / "items.csv"),
            "--interactions",
            str(files / "interactions.csv"),
            "--users",
            str(files / "users.csv"),
            "--config",
            str(files / "build.toml"),
            "--out",
            str(tmp_path / "shop"),
        ],
    )
    assert res.exit_code == 0, res.output
    shop = Shop(tmp_path / "shop")
    # the same world in process, as `banditrec simulate` runs it
    env = Environment(config, seed=seed)
    env.recording = True
    history = env.warm_up()
    in_process = ShopCandidates(env, history_interactions(history, config.history_days * DAY_S))
    assert shop.n_items == config.n_items and len(shop.user_ids) == config.n_customers
    req = env.requests()
    states = [
        UserState(cart=r["cart"], purchased=r["purchases"], viewed=r["views"], segment=int(req.segment[i]))
        for i, r in ((i, req.recent(i)) for i in range(len(req)))
    ]
    assert len(states) > 100 and sum(s.known for s in states) > 50
    in_process.stock_rule.available = shop.stock.available.copy()  # the stock the files were exported with
    gen = shop.generator  # the signal-based sources: the other brains start from other user orders and seeds
    gen.factors = gen.reorder = gen.accessory = None
    gen.quotas = {}
    ours = gen.candidates_batch(states, 30)
    theirs = in_process.generator.candidates_batch(states, 30)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    assert (ours[0] >= 0).sum() > 20 * len(states)


def _toml(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text("n_types = 30\nhistory_days = 20\n")
    return path
