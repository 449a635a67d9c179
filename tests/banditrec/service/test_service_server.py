"""The decision service under a real gunicorn server on 127.0.0.1, started and stopped here.

decide -> reward -> `banditrec learn` -> reload, end to end; a chunked body over the limit;
workers restarted with a corrupt pointer; a worker SIGKILLed under load; two workers and the
learner under load for BANDITREC_LOAD_SECONDS (default 60). (The schemathesis fuzz of every
route is in test_service_fuzz.py.) Servers run in their own process group and are killed in
fixture teardown whatever the test did.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from banditrec.service.runner import GunicornServer
from tests.helpers import ROOT_DIR

TOKEN = "server-test-token-0123456789"
LOAD_SECONDS = float(os.environ.get("BANDITREC_LOAD_SECONDS", "60"))
ROOT = ROOT_DIR


def server_env(tmp: Path, shop: Path, **extra) -> dict:
    return {
        "BANDITREC_DB": tmp / "log.db",
        "BANDITREC_SHOP": shop,
        "BANDITREC_API_TOKEN": TOKEN,
        "BANDITREC_SNAPSHOTS": tmp / "snap",
        "BANDITREC_RELOAD_CHECK_MS": 200,
        "BANDITREC_REWARD_WINDOW_S": 1,
        **extra,
    }


@pytest.fixture
def start_server(tmp_path, sim_shop_dir):
    servers = []

    def start(**kw):
        env = server_env(tmp_path, kw.pop("shop", sim_shop_dir), **kw.pop("env", {}))
        srv = GunicornServer(env, log=tmp_path / f"gunicorn-{len(servers)}.log", **kw)
        servers.append(srv)
        return srv.start()

    yield start
    for srv in servers:
        srv.stop()


class Client:
    """One keep-alive connection; reconnects after a dropped one."""

    def __init__(self, server: GunicornServer, token: str | None = TOKEN, timeout: float = 10):
        self.server, self.token, self.timeout = server, token, timeout
        self.conn = None
        self.used = 0.0

    def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, auth: bool = True):
        if self.conn is not None and time.monotonic() - self.used > 2.0:
            self.conn.close()  # the server closes idle keep-alive connections after 5 s
            self.conn = None
        self.used = time.monotonic()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        ctype = resp.getheader("Content-Type", "")
        return resp.status, ctype, (json.loads(payload) if ctype.startswith("application/json") else payload)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def learn_once(tmp: Path, shop: Path, window: float = 1.0) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "banditrec.cli",
            "learn",
            "--shop",
            str(shop),
            "--db",
            str(tmp / "log.db"),
            "--snapshots",
            str(tmp / "snap"),
            "--reward-window",
            str(window),
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def open_db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=30)


# ---- 1. decide -> reward -> learn -> reload ----------------------------------------------------
@pytest.mark.slow
def test_decide_reward_learn_reload_end_to_end(start_server, tmp_path, sim_shop_dir):
    srv = start_server()
    c = Client(srv)
    status, _, health = c.call("GET", "/healthz")
    v0 = health["model_version"]
    assert (status, v0) == (200, "linucb-0")
    event_ids = []
    for i in range(30):
        status, _, body = c.call(
            "POST", "/v1/decide", {"user_id": f"c{i % 7}", "slots": 4, "context": {"device": "mobile"}}
        )
        assert status == 200, body
        assert body["model_version"] == v0
        event_ids.append(body["event_id"])
        status, _, r = c.call(
            "POST", "/v1/reward", {"event_id": body["event_id"], "position": 0, "reward": float(i % 2)}
        )
        assert (status, r["status"]) == (200, "recorded")
    time.sleep(1.2)  # the 1 s reward window closes
    out = learn_once(tmp_path, sim_shop_dir)
    assert "published" in out, out
    status, _, reloaded = c.call("POST", "/v1/models/reload")
    assert status == 200, reloaded
    v1 = reloaded["model_version"]
    assert reloaded["previous"] in (v0, v1) and v1 != v0 and v1.startswith("linucb-1.")
    # every worker picks the snapshot up by itself within reload_check_ms (200 ms)
    time.sleep(0.5)
    versions = set()
    for _ in range(12):
        fresh = Client(srv)  # a new connection may land on either worker
        versions.add(fresh.call("POST", "/v1/decide", {"user_id": "c1", "slots": 2})[2]["model_version"])
        fresh.close()
    assert versions == {v1}
    status, _, models = c.call("GET", "/v1/models")
    assert status == 200
    assert models["versions"][-1]["version"] == v1
    assert models["versions"][-1]["trained_until_seq"] == 30
    # the learner learned exactly the 30 decisions' 120 slots, with their rewards
    with open_db(tmp_path / "log.db") as db:
        assert db.execute("SELECT count(*) FROM decisions WHERE model_version = ?", (v0,)).fetchone()[0] == 30
        assert db.execute("SELECT count(*) FROM rewards").fetchone()[0] == 30
    metrics = c.call("GET", "/metrics")[2].decode()
    assert f'version="{v1}"' in metrics and "banditrec_decisions_total" in metrics
    # a cart add changes the next decision, whichever worker serves it: the cart's best complement
    # (from the shop's candidate model) becomes a candidate, the carted item is not one
    from banditrec.shop import Shop

    shop = Shop(sim_shop_dir)
    anchor = int(np.argmax(shop.popularity))
    best = shop.items.ids[int(shop.generator.complements([anchor], 1)[0][0, 0])]
    item = shop.items.ids[anchor]
    first = c.call("POST", "/v1/decide", {"user_id": "brand-new", "slots": 3})[2]
    assert c.call("POST", "/v1/events", {"user_id": "brand-new", "item_id": item, "kind": "cart"})[0] == 200
    second = Client(srv).call("POST", "/v1/decide", {"user_id": "brand-new", "slots": 3})[2]
    with open_db(tmp_path / "log.db") as db:
        cands = {
            e: json.loads(t)
            for e, t in db.execute(
                "SELECT event_id, candidates FROM decisions WHERE event_id IN (?, ?)",
                (first["event_id"], second["event_id"]),
            )
        }
        builds = {b for (b,) in db.execute("SELECT DISTINCT shop_build FROM decisions")}
    assert cands[first["event_id"]] != cands[second["event_id"]]
    assert item not in cands[second["event_id"]] and best in cands[second["event_id"]]
    assert builds == {shop.build}
    c.close()


def per_worker_info(text: str, gauge: str, label: str) -> dict[str, str]:
    """pid -> ``label`` of the live series of a per-worker info ``gauge`` in a /metrics scrape."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{gauge}\{{(.*)\}} (\S+)$", line)
        if m and float(m.group(2)) == 1.0:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels["pid"]] = labels[label]
    return out


def served_versions(srv) -> dict[str, str]:
    """pid -> the model version that worker serves, from the per-worker gauge of one scrape."""
    return per_worker_info(Client(srv).call("GET", "/metrics")[2].decode(), "banditrec_model_info", "version")


def wait_for_versions(srv, version: str, seconds: float = 20) -> None:
    """Every live worker serves ``version``: no requests are sent to make them check (a worker
    the accept race starves must get there through its own watcher thread)."""
    deadline = time.monotonic() + seconds
    while True:
        pids = {str(p) for p in srv.workers()}
        seen = served_versions(srv)
        if len(pids) == 2 and all(seen.get(p) == version for p in pids):
            return
        assert time.monotonic() < deadline, f"workers {pids} serve {seen}, not {version}, after {seconds} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_corrupt_snapshot_is_refused_by_the_running_server(start_server, tmp_path, sim_shop_dir):
    srv = start_server()
    c = Client(srv)
    for i in range(5):
        assert c.call("POST", "/v1/decide", {"user_id": f"c{i}", "slots": 2})[0] == 200
    v0 = c.call("GET", "/healthz")[2]["model_version"]
    time.sleep(1.1)
    learn_once(tmp_path, sim_shop_dir)
    # both workers pick the snapshot up within reload_check_ms (200 ms), with or without requests
    good = json.loads((tmp_path / "snap" / "CURRENT.json").read_text())["version"]
    assert good != v0
    wait_for_versions(srv, good)
    # a published snapshot whose payload was damaged after its checksum was taken
    pointer = json.loads((tmp_path / "snap" / "CURRENT.json").read_text())
    npz = tmp_path / "snap" / pointer["manifest"].replace(".json", ".npz")
    bad = tmp_path / "snap" / "damaged.npz"
    data = bytearray(npz.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "snap" / pointer["manifest"]).read_text())
    manifest["payload"] = "damaged.npz"
    (tmp_path / "snap" / "damaged.json").write_text(json.dumps(manifest))
    (tmp_path / "snap" / "CURRENT.json").write_text(
        json.dumps({**pointer, "version": "evil-1", "manifest": "damaged.json"})
    )
    status, _, err = c.call("POST", "/v1/models/reload")
    assert status == 400 and err["error"]["fields"][0]["field"] == "snapshot", err
    # both workers have met the damaged pointer (each refuses it, and logs which process did)
    deadline = time.monotonic() + 20
    while {str(p) for p in srv.workers()} - set(re.findall(r"process (\d+): snapshot refused", srv.log_text())):
        assert time.monotonic() < deadline, srv.log_text()[-3000:]
        time.sleep(0.1)
    wait_for_versions(srv, good, seconds=0)
    for _ in range(6):
        assert Client(srv).call("POST", "/v1/decide", {"user_id": "c1", "slots": 2})[2]["model_version"] == good
    assert "Traceback" not in srv.log_text()


# ---- 2. bodies and snapshots the server must refuse -------------------------------------------
def chunked_post(srv, path: str, body: bytes, piece: int = 1 << 16):
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length): ``(status, JSON)``."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        conn.request(
            "POST",
            path,
            body=(body[i : i + piece] for i in range(0, len(body), piece)),
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_is_a_413_from_the_real_server(start_server, tmp_path):
    """Issue 18's reproducer as sent by curl: the first MiB a valid decide request, then 3 MiB
    of junk, chunked. It was answered 200 and logged; now 413 naming the body, nothing logged,
    while the same request under the limit, chunked, is served."""
    srv = start_server(workers=1)
    head = b'{"user_id":"u","slots":1}'
    body = head + b" " * ((1 << 20) - len(head)) + b"JUNK" * 786432
    status, err = chunked_post(srv, "/v1/decide", body)
    assert status == 413 and err["error"]["fields"][0]["field"] == "body", (status, err)
    # the batch route's own limit (16 MiB) holds the same body: read whole, and refused as JSON
    status, err = chunked_post(srv, "/v1/decide/batch", body)
    assert status == 400 and err["error"]["fields"][0]["field"] == "body", (status, err)
    status, ok = chunked_post(srv, "/v1/decide", body[: 1 << 20])
    assert status == 200 and len(ok["slots"]) == 1, ok
    srv.stop()
    with open_db(tmp_path / "log.db") as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1


@pytest.mark.slow
def test_workers_restarted_with_a_corrupt_pointer_serve_the_newest_valid_snapshot(start_server, tmp_path, sim_shop_dir):
    """Issue 18, defect 3, on a real server: after the pointer is corrupted, a worker that is
    SIGKILLed and replaced serves what the surviving worker serves (the newest valid snapshot),
    not the untrained model; after a whole restart every worker does, and /healthz says so."""
    srv = start_server(workers=2)
    c = Client(srv)
    for i in range(5):
        assert c.call("POST", "/v1/decide", {"user_id": f"c{i}", "slots": 2})[0] == 200
    time.sleep(1.1)
    learn_once(tmp_path, sim_shop_dir)
    good = json.loads((tmp_path / "snap" / "CURRENT.json").read_text())["version"]
    wait_for_versions(srv, good)
    (tmp_path / "snap" / "CURRENT.json").write_text('{"version": "x"')  # torn by hand
    before = srv.workers()
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(set(srv.workers()) - set(before)) < 1 or len(srv.workers()) < 2:
        assert time.monotonic() < deadline, srv.log_text()[-3000:]
        time.sleep(0.1)
    wait_for_versions(srv, good)  # both: the survivor and the replacement
    assert "serving the newest valid snapshot" in srv.log_text()
    c.close()
    srv.stop()
    again = start_server(workers=2)
    wait_for_versions(again, good)
    health = Client(again).call("GET", "/healthz")[2]
    assert (health["status"], health["source"], health["model_version"]) == ("degraded", "fallback", good)
    assert "Traceback" not in srv.log_text() + again.log_text()


# ---- 3. load: a SIGKILLed worker; two workers and the learner --------------------------------
class Load:
    """Client threads deciding, rewarding and posting events; remembers every 2xx."""

    def __init__(self, srv: GunicornServer, n_threads: int, batch_every: int = 0):
        self.srv = srv
        self.n_threads = n_threads
        self.batch_every = batch_every
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.decisions: dict[str, int] = {}  # event id -> n slots, acknowledged
        self.rewards: set[tuple[str, int]] = set()
        self.events: set[int] = set()
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.versions: set[str] = set()
        self.threads = [threading.Thread(target=self.work, args=(k,), daemon=True) for k in range(n_threads)]

    def work(self, k: int):
        rng = np.random.default_rng([7, k])
        c = Client(self.srv, timeout=15)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                user = f"load{k}-{int(rng.integers(50))}"
                if self.batch_every and i % self.batch_every == 0:
                    status, _, body = c.call(
                        "POST",
                        "/v1/decide/batch",
                        {"requests": [{"user_id": user, "slots": 3}, {"user_id": user + "b", "slots": 2}]},
                    )
                    got = body["decisions"] if status == 200 else []
                else:
                    status, _, body = c.call(
                        "POST", "/v1/decide", {"user_id": user, "slots": 3, "context": {"device": "app"}}
                    )
                    got = [body] if status == 200 else []
                self.count(status)
                for d in got:
                    with self.lock:
                        self.decisions[d["event_id"]] = len(d["slots"])
                        self.versions.add(d["model_version"])
                if got:
                    d = got[0]
                    status, _, r = c.call(
                        "POST",
                        "/v1/reward",
                        {"event_id": d["event_id"], "position": 0, "reward": float(rng.random() < 0.3)},
                    )
                    self.count(status)
                    if status == 200:
                        with self.lock:
                            self.rewards.add((d["event_id"], 0))
                    status, _, e = c.call(
                        "POST", "/v1/events", {"user_id": user, "item_id": d["slots"][0]["item_id"], "kind": "view"}
                    )
                    self.count(status)
                    if status == 200:
                        with self.lock:
                            self.events.add(e["seq"])
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1  # a connection the killed worker dropped: not acknowledged
                time.sleep(0.01)
        c.close()

    def count(self, status: int):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads)


def assert_nothing_lost(db_path: Path, load: Load):
    with open_db(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        logged = dict(db.execute("SELECT event_id, n_slots FROM decisions").fetchall())
        slots = dict(db.execute("SELECT event_id, count(*) FROM slots GROUP BY event_id").fetchall())
        rewards = set(db.execute("SELECT event_id, position FROM rewards").fetchall())
        events = {r[0] for r in db.execute("SELECT seq FROM events").fetchall()}
    missing = [e for e, n in load.decisions.items() if logged.get(e) != n or slots.get(e) != n]
    assert missing == [], f"{len(missing)} acknowledged decisions are not (wholly) in the log"
    assert load.rewards <= rewards
    assert load.events <= events


@pytest.mark.slow
def test_sigkill_a_worker_under_load_loses_no_acknowledged_row(start_server, tmp_path):
    srv = start_server(workers=2)
    before = srv.workers()
    assert len(before) == 2
    with Load(srv, n_threads=4) as load:
        time.sleep(2.0)
        n_before = len(load.decisions)
        os.kill(before[0], signal.SIGKILL)
        time.sleep(3.0)
    after = srv.workers()
    assert before[0] not in after and len(after) == 2  # gunicorn replaced the killed worker
    assert n_before > 20 and len(load.decisions) > n_before + 20  # served before and after the kill
    assert not [s for s in load.statuses if s >= 500], load.statuses
    srv.stop()
    assert_nothing_lost(tmp_path / "log.db", load)


@pytest.mark.slow
def test_two_workers_and_the_learner_under_load(start_server, tmp_path, sim_shop_dir):
    srv = start_server(workers=2)
    learner_log = open(tmp_path / "learner.log", "wb")
    learner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "banditrec.cli",
            "learn",
            "--shop",
            str(sim_shop_dir),
            "--db",
            str(tmp_path / "log.db"),
            "--snapshots",
            str(tmp_path / "snap"),
            "--reward-window",
            "1",
            "--interval",
            "0.5",
        ],
        stdout=learner_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        with Load(srv, n_threads=4, batch_every=5) as load:
            time.sleep(LOAD_SECONDS)
        # the learner catches up with every decision once its window closes
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open_db(tmp_path / "log.db") as db:
                top = db.execute("SELECT coalesce(max(trained_until_seq), 0) FROM model_versions").fetchone()[0]
                last = db.execute("SELECT max(seq) FROM decisions").fetchone()[0]
            if top == last:
                break
            time.sleep(0.5)
        assert top == last, (top, last)
    finally:
        os.killpg(learner.pid, signal.SIGTERM)
        learner.wait(timeout=20)
        learner_log.close()
        srv.stop()
    logs = srv.log_text() + (tmp_path / "learner.log").read_text()
    assert "database is locked" not in logs
    assert "Traceback" not in logs, logs[-3000:]
    assert not [s for s in load.statuses if s >= 500], load.statuses
    assert load.errors == 0
    assert len(load.decisions) > 20 * LOAD_SECONDS, len(load.decisions)
    assert len(load.versions) >= 2, load.versions  # the workers reloaded the learner's snapshots under load
    assert_nothing_lost(tmp_path / "log.db", load)
    with open_db(tmp_path / "log.db") as db:
        assert db.execute("SELECT count(*) FROM model_versions").fetchone()[0] >= 2
