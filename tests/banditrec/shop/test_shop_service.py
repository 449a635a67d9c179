"""A shop that is not the simulator, end to end under gunicorn on 127.0.0.1: three CSV files with
ids that break naive CSV or JSON handling -> build -> serve -> decide, events and rewards ->
learn publishes -> workers reload -> a rebuild that adds and removes items is picked up by the
running workers while they serve -> evaluate on the log."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.service.runner import GunicornServer
from banditrec.shop import build_shop
from banditrec.shop.directory import read_pointer
from tests.banditrec.service.test_service_server import per_worker_info
from tests.helpers import ROOT_DIR

TOKEN = "shop-test-token-0123456789"
ROOT = ROOT_DIR
# ids a naive CSV writer, JSON encoder or SQL string would break: commas, quotes, backslashes,
# a JSON-looking id, emoji, non-ASCII, spaces
ODD = ["sku,42", 'say "hi"', "back\\slash", '{"id": 1}', "tent ⛺", "crème brûlée", " spaced ", "it's"]
TYPES = ("tent", "stove", "lamp", "mat", "bag")
REMOVED, ADDED = ODD[0], 'new "arrival" ✨'


def write_shop(root: Path, ids, seed: int) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "items.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "type", "price", "brand", "in_stock"])
        for k, i in enumerate(ids):
            w.writerow([i, f"{TYPES[k % 5]} no. {k}", TYPES[k % 5], 5 + 3 * (k % 17), f"b{k % 3}", "yes"])
    users = [f'user {k}, "vip"' if k % 4 == 0 else f"u{k}" for k in range(40)]
    with open(root / "users.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "segment", "age"])
        for k, u in enumerate(users):
            w.writerow([u, f"seg {k % 3}", 20 + k])
    with open(root / "interactions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "event_type", "timestamp"])
        t = 1_700_000_000
        for k in range(1500):
            t += int(rng.integers(1, 900))
            w.writerow(
                [
                    users[rng.integers(len(users))],
                    ids[rng.integers(len(ids))],
                    ("view", "view", "cart", "purchase")[k % 4],
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                ]
            )
    return root / "items.csv", root / "interactions.csv", root / "users.csv"


@pytest.fixture
def shop(tmp_path):
    ids = ODD + [f"gear-{k}" for k in range(60)]
    files = write_shop(tmp_path / "files", ids, seed=0)
    build_shop(*files, out=tmp_path / "shop")
    return tmp_path / "shop", files[2]


def post(srv, path, body, token=TOKEN):
    status, payload = srv.request("POST", path, body, token=token)
    assert status == 200, (path, status, payload)
    return payload


def served_builds(srv) -> set[str]:
    """The shop build each live worker serves, from one scrape of the per-worker gauge."""
    found = per_worker_info(srv.request("GET", "/metrics")[1], "banditrec_shop_build_info", "build")
    return {found.get(str(p)) for p in srv.workers()}


def wait_until(predicate, seconds: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_a_foreign_shop_end_to_end_under_gunicorn(shop, tmp_path):
    shop_dir, users_file = shop
    first = read_pointer(shop_dir).build
    env = {
        "BANDITREC_SHOP": shop_dir,
        "BANDITREC_DB": tmp_path / "log.db",
        "BANDITREC_API_TOKEN": TOKEN,
        "BANDITREC_SNAPSHOTS": tmp_path / "snap",
        "BANDITREC_RELOAD_CHECK_MS": 100,
        "BANDITREC_REWARD_WINDOW_S": 1,
    }
    with GunicornServer(env, log=tmp_path / "gunicorn.log", workers=2) as srv:
        # decide, post events and rewards with the odd ids
        events = []
        for k, item in enumerate(ODD):
            user = 'user 0, "vip"' if k % 2 else f"new user {k} ✨"
            post(srv, "/v1/events", {"user_id": user, "item_id": item, "kind": "cart"})
            d = post(srv, "/v1/decide", {"user_id": user, "slots": 3, "context": {"device": "mobile"}})
            assert d["shop_build"] == first and len(d["slots"]) == 3
            assert item not in [s["item_id"] for s in d["slots"]]  # the cart's item is not offered again
            events.append(d["event_id"])
            post(srv, "/v1/reward", {"event_id": d["event_id"], "position": 0, "reward": 1.0})
        # learn publishes; both workers reload it by themselves
        time.sleep(1.2)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "banditrec.cli",
                "learn",
                "--shop",
                str(shop_dir),
                "--db",
                str(tmp_path / "log.db"),
                "--snapshots",
                str(tmp_path / "snap"),
                "--reward-window",
                "1",
                "--once",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert out.returncode == 0 and "published" in out.stdout, out.stdout + out.stderr
        version = json.loads((tmp_path / "snap" / "CURRENT.json").read_text())["version"]
        wait_until(
            lambda: all(
                srv.request("POST", "/v1/decide", {"user_id": "u1", "slots": 2})[1]["model_version"] == version
                for _ in range(6)
            ),
            what="the workers did not reload the snapshot",
        )
        # a rebuild while requests flow: one item removed, one added, the index kept
        acknowledged, errors, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                status, body = srv.request("POST", "/v1/decide", {"user_id": "u3", "slots": 3})
                if status == 200:
                    acknowledged.append(body["event_id"])
                else:
                    errors.append((status, body))

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        ids = [i for i in ODD if i != REMOVED] + [f"gear-{k}" for k in range(60)] + [ADDED]
        files = write_shop(tmp_path / "files2", ids, seed=1)
        second = build_shop(*files, out=shop_dir).build
        wait_until(lambda: served_builds(srv) == {second}, what="the workers did not pick up the rebuild")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        models = srv.request("GET", "/v1/models", token=TOKEN)[1]["serving"]
        assert models["shop_build"] == second and models["last_shop_error"] is None
        shown = set()
        for k in range(60):
            d = post(srv, "/v1/decide", {"user_id": f"u{k % 40}", "slots": 4})
            assert d["shop_build"] == second
            shown.update(s["item_id"] for s in d["slots"])
        assert REMOVED not in shown
        assert "Traceback" not in srv.log_text()
    # nothing acknowledged was lost, and each decision names the build whose catalog it used
    con = sqlite3.connect(tmp_path / "log.db")
    logged = {
        e: (b, json.loads(c)) for e, b, c in con.execute("SELECT event_id, shop_build, candidates FROM decisions")
    }
    assert set(acknowledged) | set(events) <= set(logged)
    assert {b for b, _ in logged.values()} == {first, second}
    for build, candidates in logged.values():
        if build == second:
            assert REMOVED not in candidates
        else:
            assert ADDED not in candidates
    ids_logged = {i for _, c in logged.values() for i in c}
    assert set(ODD) & ids_logged  # the odd ids went through JSON and SQLite intact
    # evaluate the log on the shop's features
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--shop",
            str(shop_dir),
            "--db",
            str(tmp_path / "log.db"),
            "--policy",
            "uniform",
            "--policy",
            "egreedy",
            "--out",
            str(tmp_path / "ev"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert [c["policy"] for c in report["candidates"]] == ["uniform", "egreedy"]
    assert report["n_train_decisions"] + report["n_eval_decisions"] == len(logged)


def test_popular_backfill_never_brings_back_what_the_session_or_history_left_out(sim_shop_dir):
    """When the generator's candidates are fewer than asked, popular items fill the rest: never
    an item of the user's session (a cart event) or purchase history, which the generator leaves
    out (the cart's item was served again when exploration picked it from the backfill)."""
    from banditrec.shop import Shop, engine_for_shop
    from banditrec.store import DecisionLog

    shop = Shop(sim_shop_dir)
    engine = engine_for_shop(shop, "linucb", DecisionLog(":memory:"), n_candidates=shop.items.n_items, seed=3)
    popular = [engine.items.ids[int(i)] for i in engine.parts.backfill[:3]]
    for item in popular:
        engine.log.write_event("u-cart", item, "cart", ts=engine.clock())
    session = engine.session("u-cart")
    assert set(session.items.tolist()) >= set(engine.parts.backfill[:3].tolist())
    cand, _ = engine._candidates(engine.parts, "u-cart", 3, None, None, session)
    assert not set(popular) & {engine.items.ids[int(i)] for i in cand}
    assert len(cand) > len(engine.parts.backfill) // 2  # the backfill did fill the list
