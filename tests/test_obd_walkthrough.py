"""The README's Open Bandit Dataset walk-through on a fixture in the dataset's exact layout:
import the random log, export its clicks as interactions, build a shop directory with
docs/obd.toml, evaluate bernoulli-ts with an item-column prior on the log. No network."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from tests.banditrec.store.test_exchange import obd_csv
from tests.helpers import ROOT_DIR

ROOT = ROOT_DIR
N_ITEMS = 6
CTR = np.array([0.02, 0.02, 0.02, 0.02, 0.02, 0.4])  # item 5 is the one to show


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_obd_fixture_through_import_build_and_evaluate(tmp_path):
    rng = np.random.default_rng(7)
    rows = []
    for k in range(1500):  # rounds of a uniform logger: one observed position each
        item = int(rng.integers(N_ITEMS))
        ts = f"2019-11-24 {k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}.5+00:00"
        rows.append((ts, item, 1 + k % 3, int(rng.random() < CTR[item]), 1 / N_ITEMS, k % 3))
    (tmp_path / "all.csv").write_text(obd_csv(rows, N_ITEMS))
    with open(tmp_path / "items.csv", "w", newline="") as fh:  # bench/obd_items.py's layout
        w = csv.writer(fh)
        w.writerow(
            ["item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3", "bts_alpha", "bts_beta"]
        )
        for i in range(N_ITEMS):
            w.writerow([i, 0.1 * i, f"c{i % 2}", f"d{i % 3}", "e", 40.0 if i == 5 else 1.0, 60.0])
    db, shop = tmp_path / "random.db", tmp_path / "shop"
    out = run("import", tmp_path / "all.csv", "--format", "obd", "--db", db, "--n-items", N_ITEMS)
    encoding = next(tmp_path.glob("random.db.context-*.json"))
    assert "1500 decisions" in out
    run("export", "--db", db, "--format", "interactions", "--out", tmp_path / "clicks.csv")
    n_clicks = sum(r[3] for r in rows)
    with open(tmp_path / "clicks.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == n_clicks
    out = run(
        "build",
        "--items",
        tmp_path / "items.csv",
        "--interactions",
        tmp_path / "clicks.csv",
        "--config",
        ROOT / "docs" / "obd.toml",
        "--context-encoding",
        encoding,
        "--out",
        shop,
    )
    assert f"{N_ITEMS} items" in out
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--db",
            str(db),
            "--shop",
            str(shop),
            "--json",
            "--out",
            str(tmp_path / "eval"),
            "--policy",
            "bernoulli-ts:prior_alpha=bts_alpha,prior_beta=bts_beta",
            "--policy",
            "uniform",
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    # the logging policy's on-policy value: the evaluated half's clicks per round
    half = [r[3] for r in rows[750:]]
    assert got["logging"]["value"] == pytest.approx(np.mean(half), rel=1e-12)
    est = {c["policy"].split(":")[0]: c["estimates"]["IPS"] for c in got["candidates"]}
    # uniform is the logger: IPS reweights by 1 and equals the on-policy mean
    assert abs(est["uniform"]["value"] - np.mean(half)) < 1e-12
    # the prior (Beta(40, 60) for item 5, Beta(1, 60) for the rest) puts item 5 first in every
    # draw that matters, so the policy's value per round (a uniformly random observed position)
    # is (CTR[5] + 2 x CTR[other]) / 3, against uniform's mean CTR
    truth = (CTR[5] + 2 * CTR[0]) / 3
    bts = est["bernoulli-ts"]
    assert abs(bts["value"] - truth) <= 4 * bts["se"], (bts, truth)
    assert bts["value"] > est["uniform"]["value"]
