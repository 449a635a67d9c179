"""Serving on N machines: three nodes, each logging to its own shard, behind a round-robin
client; rewards posted to any node are joined to their decisions exactly once by compaction."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.compute as pc
import pytest

from banditrec.errors import ValidationError
from banditrec.service import ServiceConfig, create_app
from banditrec.store import DecisionLog
from banditrec.store.compaction import compact
from banditrec.store.partitioned import open_dataset, read_partition
from banditrec.store.shards import shard_of
from studies.coverage import build_engine

N_NODES, N_DECISIONS, WINDOW = 3, 60, 100.0
NOW = 1e6  # long after every window closed


class RoundRobin:
    """A load balancer: each request goes to the next node."""

    def __init__(self, clients):
        self.clients = clients
        self._next = itertools.cycle(range(len(clients)))

    def post(self, path, **kw):
        return self.clients[next(self._next)].post(path, **kw)


@pytest.fixture
def nodes(small_shop, tmp_path):
    """Three apps, node k logging to shard k's file; one clock, so decision times are distinct."""
    t = [0.0]

    def clock():
        t[0] += 0.01
        return t[0]

    logs, apps = [], []
    for k in range(N_NODES):
        log = DecisionLog(tmp_path / f"node{k}.db", shard=k, reward_window_s=WINDOW)
        engine = build_engine(small_shop, "linucb:alpha=1.0,epsilon=0.1", log, seed=k, n_candidates=20, clock=clock)
        apps.append(create_app(engine, settings=ServiceConfig(shard=k)))
        logs.append(log)
    yield logs, [app.test_client() for app in apps]
    for log in logs:
        log.close()


def joined_rewards(root) -> dict[tuple[str, int], float]:
    """(event id, position) -> click reward of every slot row of the dataset that has one."""
    out = {}
    for p in open_dataset(root).partitions:
        t = read_partition(p, ["event_id", "position", "reward:click"])
        t = t.filter(pc.is_valid(t.column("reward:click")))
        for e, pos, r in zip(*(t.column(c).to_pylist() for c in ("event_id", "position", "reward:click"))):
            assert (e, pos) not in out, "a reward joined twice"
            out[(e, pos)] = r
    return out


def test_rewards_posted_to_any_node_are_joined_exactly_once(nodes, tmp_path):
    logs, clients = nodes
    balancer = RoundRobin(clients)
    decided = []
    for i in range(N_DECISIONS):
        res = balancer.post("/v1/decide", json={"user_id": f"u{i % 7}", "slots": 3})
        assert res.status_code == 200, res.get_json()
        decided.append(res.get_json()["event_id"])
    assert [shard_of(e) for e in decided] == [i % N_NODES for i in range(N_DECISIONS)]
    rng = np.random.default_rng(5)
    expected, statuses, first_routed = {}, [], 0
    for e in decided:
        for pos in np.flatnonzero(rng.random(3) < 0.4).tolist():
            value = float(rng.integers(1, 5))
            expected[(e, pos)] = value
            # to a random node, and a third of them a second time to a random node (a client's retry)
            first = int(rng.integers(N_NODES))
            targets = [first] + ([int(rng.integers(N_NODES))] if rng.random() < 1 / 3 else [])
            first_routed += first != shard_of(e)
            for k in targets:
                res = clients[k].post("/v1/reward", json={"event_id": e, "reward": value, "position": pos})
                assert res.status_code == 200, res.get_json()
                statuses.append((k == shard_of(e), res.get_json()["status"]))
    assert {s for own, s in statuses if not own} == {"routed", "duplicate"}
    assert {s for own, s in statuses if own} == {"recorded", "duplicate"}
    assert sum(s == "duplicate" for _, s in statuses) < len(statuses) - len(expected)  # some copies on two nodes

    result = compact([log.path for log in logs], tmp_path / "ds", reward_window_s=WINDOW, now=NOW)
    assert result.decisions == N_DECISIONS
    assert joined_rewards(tmp_path / "ds") == expected
    assert result.rewards == len(expected)
    stored = sum(s != "duplicate" for _, s in statuses)  # a node keeps one copy of what it saw twice
    assert result.duplicates == stored - len(expected) > 0  # the copies on a second node: joined once
    assert (result.orphans, result.conflicts, result.pending) == (0, 0, 0)
    assert result.routed == first_routed > 0  # the earliest copy is the one joined
    assert result.late == 0


def test_a_bad_reward_gets_a_clear_error_from_any_node(nodes):
    logs, clients = nodes
    mine = clients[1].post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["event_id"]
    assert shard_of(mine) == 1
    unknown = mine[:-1] + ("0" if mine[-1] != "0" else "1")  # shard 1's digits, no such decision
    res = clients[1].post("/v1/reward", json={"event_id": unknown, "reward": 1.0})
    assert res.status_code == 404
    assert res.get_json()["error"]["fields"][0]["field"] == "event_id"
    for bad in ("e17", mine.upper(), mine + "0", "zz" + mine[2:]):
        res = clients[0].post("/v1/reward", json={"event_id": bad, "reward": 1.0})
        assert res.status_code == 400, bad
        body = res.get_json()["error"]
        assert body["fields"][0]["field"] == "event_id" and "shard" in body["message"]
    # a conflicting value on the routing node is refused as on the owner
    assert clients[2].post("/v1/reward", json={"event_id": mine, "reward": 1.0}).get_json()["status"] == "routed"
    res = clients[2].post("/v1/reward", json={"event_id": mine, "reward": 2.0})
    assert res.status_code == 409 and res.get_json()["error"]["fields"][0]["field"] == "reward"


def test_a_routed_reward_for_an_event_no_shard_logged_is_reported_an_orphan(nodes, tmp_path):
    logs, clients = nodes
    mine = clients[0].post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["event_id"]
    ghost = mine[:12] + "0001" + "f" * 16  # shard 1 never logged it
    assert clients[2].post("/v1/reward", json={"event_id": ghost, "reward": 1.0}).get_json()["status"] == "routed"
    result = compact([log.path for log in logs], tmp_path / "ds", reward_window_s=WINDOW, now=NOW)
    assert (result.decisions, result.orphans, result.orphan_ids) == (1, 1, (ghost,))
    assert "orphans: 1" in result.summary()


def test_a_node_refuses_a_shard_unlike_its_log(small_shop, tmp_path):
    engine = build_engine(small_shop, "linucb", DecisionLog(tmp_path / "a.db", shard=2), seed=0)
    try:
        with pytest.raises(ValidationError, match="settings.shard is 1 but the engine logs to shard 2"):
            create_app(engine, settings=ServiceConfig(shard=1))
    finally:
        engine.log.close()


def test_shop_nodes_compact_and_the_learner_publishes_from_the_dataset(sim_shop_dir, tmp_path):
    """`serve --shard K`'s app (create_shop_app with ServiceConfig(shard=K)) on two nodes, then
    `banditrec compact` and `banditrec learn --dataset --once`."""
    from click.testing import CliRunner

    from banditrec.cli import main
    from banditrec.service.shopapp import create_shop_app

    apps = [
        create_shop_app(sim_shop_dir, "linucb", tmp_path / f"log-{k}.db", settings=ServiceConfig(shard=k), seed=k)
        for k in range(2)
    ]
    clients = [app.test_client() for app in apps]
    balancer = RoundRobin(clients)
    for i in range(20):
        res = balancer.post("/v1/decide", json={"user_id": f"u{i}", "slots": 3})
        assert res.status_code == 200, res.get_json()
        event = res.get_json()["event_id"]
        assert shard_of(event) == i % 2
        # half the rewards to the node that logged the decision, half to the other
        reward = clients[(i + i // 2) % 2].post("/v1/reward", json={"event_id": event, "reward": 1.0, "position": 0})
        assert reward.status_code == 200
    for app in apps:
        app.extensions["banditrec.engine"].log.close()
    runner = CliRunner()
    shards = [a for k in range(2) for a in ("--shard", str(tmp_path / f"log-{k}.db"))]
    # the decisions are seconds old: a zero window and grace close them
    out = runner.invoke(
        main, ["compact", *shards, "--out", str(tmp_path / "ds"), "--reward-window", "0", "--grace", "0"]
    )
    assert out.exit_code == 0, out.output
    assert "compacted 20 decisions" in out.output and "rewards joined: 20 (10 routed" in out.output
    args = ["learn", "--shop", str(sim_shop_dir), "--dataset", str(tmp_path / "ds")]
    learned = runner.invoke(main, [*args, "--snapshots", str(tmp_path / "snaps"), "--policy", "linucb", "--once"])
    assert learned.exit_code == 0, learned.output
    assert "published" in learned.output and "decisions up to seq 20" in learned.output
    assert (tmp_path / "snaps" / "CURRENT.json").exists()


def test_nodes_on_real_servers_route_a_reward_over_http(small_shop, tmp_path):
    """Two nodes as werkzeug servers on 127.0.0.1 (stopped at the end of the test): a decision
    on one, its reward posted to the other, joined by compaction."""
    import json as jsonlib
    import threading
    import urllib.request

    from werkzeug.serving import make_server

    servers, logs = [], []
    try:
        for k in range(2):
            log = DecisionLog(tmp_path / f"n{k}.db", shard=k, reward_window_s=WINDOW)
            logs.append(log)
            engine = build_engine(small_shop, "linucb", log, seed=k, n_candidates=10)
            server = make_server("127.0.0.1", 0, create_app(engine, settings=ServiceConfig(shard=k)), threaded=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)

        def post(k, path, body):
            req = urllib.request.Request(
                f"http://127.0.0.1:{servers[k].server_port}{path}",
                data=jsonlib.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as res:
                return jsonlib.loads(res.read())

        event = post(1, "/v1/decide", {"user_id": "u1", "slots": 2})["event_id"]
        assert post(0, "/v1/reward", {"event_id": event, "reward": 2.0, "position": 1})["status"] == "routed"
    finally:
        for server in servers:
            server.shutdown()
        for log in logs:
            log.close()
    result = compact([tmp_path / "n0.db", tmp_path / "n1.db"], tmp_path / "ds", reward_window_s=WINDOW, now=4e9)
    assert (result.decisions, result.rewards, result.routed) == (1, 1, 1)
    assert joined_rewards(tmp_path / "ds") == {(event, 1): 2.0}


def test_a_routed_reward_waits_for_a_known_shard_left_out_and_names_an_unknown_one_an_orphan(nodes, tmp_path):
    logs, clients = nodes
    on_2 = clients[2].post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["event_id"]
    typo = on_2[:12] + "0123" + on_2[16:]  # a shard no node has
    for event in (on_2, typo):
        assert clients[0].post("/v1/reward", json={"event_id": event, "reward": 1.0}).get_json()["status"] == "routed"
    paths = [log.path for log in logs]
    first = compact(paths, tmp_path / "ds", reward_window_s=WINDOW, now=NOW)  # every shard: shard 2 is known
    assert (first.rewards, first.orphans, first.orphan_ids) == (1, 1, (typo,))
    on_2_again = clients[2].post("/v1/decide", json={"user_id": "u2", "slots": 2}).get_json()["event_id"]
    assert clients[1].post("/v1/reward", json={"event_id": on_2_again, "reward": 1.0}).get_json()["status"] == "routed"
    second = compact(paths[:2], tmp_path / "ds", reward_window_s=WINDOW, now=NOW)  # node 2 down
    # both of node 0's routed rewards for shard 2 wait (one was joined already: without its
    # shard's log, a run cannot tell), and the typo is still an orphan
    assert (second.decisions, second.pending, second.orphans) == (0, 2, 1)
    third = compact(paths, tmp_path / "ds", reward_window_s=WINDOW, now=NOW)  # node 2 back
    assert (third.decisions, third.rewards, third.pending, third.earlier) == (1, 1, 0, 1)


@pytest.mark.slow
def test_two_gunicorn_nodes_from_the_environment_serve_their_shards(sim_shop_dir, tmp_path):
    """What `banditrec serve --shard K` starts: gunicorn workers configured by BANDITREC_SHARD,
    every worker stamping its node's shard; a reward routed between the nodes, then compacted."""
    from banditrec.service.runner import GunicornServer

    token = "t" * 32
    servers = []
    try:
        for k in (4, 9):
            env = {
                "BANDITREC_DB": tmp_path / f"log-{k}.db",
                "BANDITREC_SHOP": sim_shop_dir,
                "BANDITREC_API_TOKEN": token,
                "BANDITREC_REWARD_WINDOW_S": WINDOW,
                "BANDITREC_SHARD": k,
            }
            servers.append(GunicornServer(env, log=tmp_path / f"gunicorn-{k}.log").start())
        events = []
        for i in range(8):  # over both workers of each node
            status, body = servers[i % 2].request("POST", "/v1/decide", {"user_id": f"u{i}", "slots": 2})
            assert status == 200, body
            events.append(body["event_id"])
        assert [shard_of(e) for e in events] == [4, 9] * 4
        status, body = servers[0].request(
            "POST", "/v1/reward", {"event_id": events[1], "reward": 1.0, "position": 0}, token=token
        )
        assert (status, body["status"]) == (200, "routed")
    finally:
        for server in servers:
            server.stop()
    result = compact([tmp_path / "log-4.db", tmp_path / "log-9.db"], tmp_path / "ds", reward_window_s=WINDOW, now=4e9)
    assert (result.decisions, result.rewards, result.routed, result.orphans) == (8, 1, 1, 0)
