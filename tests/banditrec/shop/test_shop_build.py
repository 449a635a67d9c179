"""Shop directories: what a build holds, rebuilds that keep the index, checksums, serving a build
and swapping a rebuilt one in while the learned policy carries over."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.policies import make
from banditrec.shop import BuildConfig, Shop, ShopWatcher, build_shop, engine_for_shop
from banditrec.shop.directory import ShopDirError, read_pointer

TYPES = ("camera", "card", "bag", "tripod")


def catalog(path, ids, *, stock=None, price=None):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "type", "price", "in_stock"])
        for i in ids:
            k = int(i[1:]) if i[1:].isdigit() else len(i)  # attributes follow the id, not the file's order
            w.writerow(
                [
                    i,
                    f"{TYPES[k % 4]} {i}",
                    TYPES[k % 4],
                    price.get(i, 10 + k) if price else 10 + k,
                    "no" if stock and i in stock else "yes",
                ]
            )
    return path


def interactions(path, ids, n=600, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "event_type", "timestamp"])
        for k in range(n):
            w.writerow(
                [
                    f"u{rng.integers(30)}",
                    ids[rng.integers(len(ids))],
                    ("view", "cart", "purchase")[k % 3],
                    1_700_000_000 + 30 * k,
                ]
            )
    return path


@pytest.fixture
def shop_dir(tmp_path):
    ids = [f"i{k}" for k in range(40)]
    build_shop(catalog(tmp_path / "items.csv", ids), interactions(tmp_path / "ev.csv", ids), out=tmp_path / "shop")
    return tmp_path / "shop"


def test_a_build_loads_with_what_serving_needs(shop_dir):
    shop = Shop(shop_dir)
    assert shop.n_items == 40 and shop.active.all() and not shop.cold[:10].any()
    assert shop.items.features.shape == (40, shop.item_dim) and np.isfinite(shop.items.features).all()
    env = shop.policy_env()
    assert env["n_items"] == 40 and set(env["item_columns"]) == {"price"} and len(env["item_types"]) == 40
    # popularity counts purchases (+1): recompute from the file
    rows = list(csv.DictReader(open(shop_dir.parent / "ev.csv")))
    bought = np.bincount([int(r["item_id"][1:]) for r in rows if r["event_type"] == "purchase"], minlength=40)
    assert np.array_equal(shop.popularity, 1 + bought)


def test_a_rebuild_keeps_indices_appends_new_items_and_deactivates_removed_ones(shop_dir, tmp_path):
    old = Shop(shop_dir)
    ids = [f"i{k}" for k in range(40) if k not in (3, 7)] + ["new-a", "new-b"]
    ids = ids[::-1]  # the file's order does not matter
    result = build_shop(
        catalog(tmp_path / "items2.csv", ids), interactions(tmp_path / "ev2.csv", ids[2:], seed=1), out=shop_dir
    )
    assert (result.n_new_items, result.n_removed, result.previous) == (2, 2, old.build)
    new = Shop(shop_dir)
    assert new.items.ids[:40] == old.items.ids and new.items.ids[40:] == ("new-b", "new-a")
    assert not new.active[[3, 7]].any() and new.active[[0, 1, 40, 41]].all()
    assert new.cold[40] and new.cold[41]
    # the feature space is the first build's: an unchanged item keeps its vector
    assert np.allclose(new.items.features[0], old.items.features[0])
    # a removed item is never a candidate, whoever asks
    from banditrec.candidates import UserState

    ids_, _, _ = new.generator.candidates_batch([UserState(purchased=np.array([k])) for k in range(40)], 30)
    assert not np.isin(ids_, [3, 7]).any()


def test_a_damaged_build_is_refused(shop_dir):
    shop = Shop(shop_dir)
    arrays = shop.files.root / "arrays" / "items.features.npy"
    data = bytearray(arrays.read_bytes())
    data[-3] ^= 0x10
    arrays.write_bytes(bytes(data))
    with pytest.raises(ShopDirError, match="items.features.npy does not match its checksum"):
        Shop(shop_dir)
    manifest = shop.files.root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    with pytest.raises(ShopDirError, match="does not match the pointer's checksum"):
        Shop(shop_dir)
    (shop_dir / "CURRENT.json").write_text("{")
    with pytest.raises(ShopDirError, match="CURRENT.json is damaged"):
        read_pointer(shop_dir)


def test_a_failed_rebuild_publishes_nothing(shop_dir, tmp_path):
    before = read_pointer(shop_dir)
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,price\ni1,12\ni1,13\n")
    with pytest.raises(ValidationError, match="duplicate item id"):
        build_shop(bad, shop_dir.parent / "ev.csv", out=shop_dir)
    assert read_pointer(shop_dir) == before


def test_a_running_engine_takes_a_rebuild_and_its_learned_state_carries_over(log, shop_dir, tmp_path):
    shop = Shop(shop_dir)
    engine = engine_for_shop(shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=3, clock=lambda: 1_700_100_000.0)
    rng = np.random.default_rng(0)
    for k in range(60):
        d = engine.decide(f"u{k % 30}", 3)
        engine.reward(d.event_id, float(rng.random() < 0.5), position=0)
    engine.learn()
    theta = engine.policy.theta.copy()
    assert engine.build == shop.build and np.abs(theta).sum() > 0
    watcher = ShopWatcher(shop_dir, engine, shop)
    assert watcher.check() == "unchanged"
    ids = [f"i{k}" for k in range(40) if k != 5] + ["fresh"]
    build_shop(
        catalog(tmp_path / "items2.csv", ids, stock={"i6"}),
        interactions(tmp_path / "ev2.csv", ids, seed=2),
        out=shop_dir,
    )
    assert watcher.check() == "loaded"
    assert engine.build == read_pointer(shop_dir).build != shop.build
    assert np.array_equal(engine.policy.theta, theta), "the learned model was reset by the rebuild"
    shown = set()
    for k in range(200):
        d = engine.decide(f"u{k % 30}", 3)
        assert d.build == engine.build
        shown.update(s.item_id for s in d.slots)
    assert "i5" not in shown and "i6" not in shown  # removed; out of stock
    logged = log.decisions()
    builds = [r[0] for r in log.db.execute("SELECT DISTINCT shop_build FROM decisions ORDER BY seq")]
    assert builds == [shop.build, engine.build] and logged.n_decisions == 260


def test_a_rebuild_with_another_feature_space_is_refused_while_serving(make_log, shop_dir, tmp_path):
    shop = Shop(shop_dir)
    engine = engine_for_shop(shop, "linucb", make_log(), seed=0)
    watcher = ShopWatcher(shop_dir, engine, shop)
    build_shop(
        shop_dir.parent / "items.csv",
        shop_dir.parent / "ev.csv",
        out=shop_dir,
        refit_features=True,
        config=BuildConfig(embedding_dim=BuildConfig().embedding_dim - 2),
    )
    assert Shop(shop_dir).item_dim == shop.item_dim - 2
    assert watcher.check() == "refused" and "cannot carry over" in watcher.last_error
    assert engine.build == shop.build


def test_the_context_featurizer_is_what_the_manifest_lists(shop_dir):
    shop = Shop(shop_dir)
    names = shop.context.names
    assert len(names) == shop.context_dim and "device=mobile" in names and "hour_sin" in names
    v = shop.context.vector(
        shop.user_index["u1"], np.empty(0, dtype=np.int64), None, 0.0, {"device": "mobile"}, shop.items.features
    )
    assert v[names.index("device=mobile")] == 1.0 and v[names.index("device=app")] == 0.0
    assert v[names.index("hour_cos")] == 1.0  # midnight
    with pytest.raises(ValidationError, match="context.device must be one of desktop, mobile, app; got 'tv'"):
        shop.context.vector(-1, np.empty(0, dtype=np.int64), None, 0.0, {"device": "tv"}, shop.items.features)
    with pytest.raises(ValidationError, match="context has no field 'colour'"):
        shop.context.vector(-1, np.empty(0, dtype=np.int64), None, 0.0, {"colour": "red"}, shop.items.features)
    # taste: the mean item vector of what the user bought or carted
    row = shop.user_index["u1"]
    taste = [names.index(f"taste{j}") for j in range(shop.item_dim)]
    rows = list(csv.DictReader(open(shop_dir.parent / "ev.csv")))
    held = sorted({int(r["item_id"][1:]) for r in rows if r["user_id"] == "u1" and r["event_type"] != "view"})
    assert np.allclose(
        v[taste] * 0
        + shop.context.vector(row, np.empty(0, dtype=np.int64), None, 0.0, None, shop.items.features)[taste],
        shop.items.features[held].mean(axis=0),
        atol=1e-5,
    )


def test_policies_are_made_for_the_shop(shop_dir):
    shop = Shop(shop_dir)
    policy = shop.policy("linucb:objective=price,sensitivity=high")
    assert policy.context_dim == shop.context_dim and policy.item_dim == shop.item_dim
    with pytest.raises(ValidationError, match="'margin' is not an item column; known: price"):
        make("egreedy:objective=margin", **shop.policy_env())
    pointer = json.loads((shop_dir / "CURRENT.json").read_text())
    assert pointer["build"] == shop.build


def test_sensitivity_and_recommend_on_a_shop(make_log, shop_dir, tmp_path):
    from click.testing import CliRunner

    from banditrec.cli import main
    from banditrec.evaluation import objective_sensitivity

    shop = Shop(shop_dir)
    log = make_log(tmp_path / "log.db")
    engine = engine_for_shop(shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=5, clock=lambda: 1_700_100_000.0)
    rng = np.random.default_rng(1)
    for k in range(300):
        d = engine.decide(f"u{k % 30}", 3)
        for s in d.slots:
            if rng.random() < 0.2:
                engine.reward(d.event_id, 1.0, position=s.position)
    log.close()
    out = objective_sensitivity(shop, str(tmp_path / "log.db"), "linucb:epsilon=0", "price")
    assert [r.level for r in out.rows] == ["off", "low", "medium", "high"]
    # greedy top-k of a linear blend: the objective per carousel cannot fall as its weight rises
    values = [r.objective for r in out.rows]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:])) and values[-1] > values[0]
    # the logging policy's: the prices of what it showed, per evaluated carousel
    logged = make_log(tmp_path / "log.db").decisions()
    half = logged.n_decisions - 150
    price = shop.columns["price"]
    assert out.logging_objective == pytest.approx(price[logged.row_action[logged.row_decision >= half]].sum() / 150)
    res = CliRunner().invoke(
        main, ["sensitivity", "--shop", str(shop_dir), "--db", str(tmp_path / "log.db"), "--objective", "weight"]
    )
    assert res.exit_code == 2 and "objective 'weight' is not a business column of the shop; known: price" in res.output
    res = CliRunner().invoke(
        main,
        [
            "recommend",
            "--shop",
            str(shop_dir),
            "--user",
            "u3",
            "--cart",
            "i2",
            "--slots",
            "4",
            "--context",
            "device=app",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("u3 (known user); shop build ") and len(lines) == 3 + 4
    assert all(
        any(why in line for why in ("goes with the cart", "like an item viewed", "popular", "new, like"))
        for line in lines[3:]
    )
    res = CliRunner().invoke(main, ["recommend", "--shop", str(shop_dir), "--user", "u3", "--cart", "nope"])
    assert res.exit_code == 2 and "item 'nope' is not in the shop's catalog" in res.output


def test_a_serving_process_started_while_the_pointer_is_damaged_serves_the_newest_valid_build(shop_dir, tmp_path):
    from banditrec.service.shopapp import create_shop_app

    first = Shop(shop_dir).build
    ids = [f"i{k}" for k in range(41)]
    second = build_shop(
        catalog(tmp_path / "items2.csv", ids), interactions(tmp_path / "ev2.csv", ids, seed=4), out=shop_dir
    ).build
    (shop_dir / "CURRENT.json").write_text('{"format": "banditrec.shop/1", "bui')  # torn
    app = create_shop_app(shop_dir, "linucb", str(tmp_path / "log.db"))
    health = app.test_client().get("/healthz").get_json()
    assert health["shop_build"] == second != first and health["status"] == "degraded"
    assert "CURRENT.json is damaged" in health["last_shop_error"]
    # the newest build damaged too: the one before it
    victim = shop_dir / "builds" / second / "arrays" / "items.features.npy"
    victim.write_bytes(victim.read_bytes()[:-8])
    app = create_shop_app(shop_dir, "linucb", str(tmp_path / "log2.db"))
    assert app.test_client().get("/healthz").get_json()["shop_build"] == first
