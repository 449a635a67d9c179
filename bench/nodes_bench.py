"""bench section ``nodes``: ``POST /v1/decide/batch`` throughput against the number of serving
nodes, 1 -> 4, each a gunicorn process (1 worker x 2 threads) logging to its own shard
(``BANDITREC_SHARD``), behind a round-robin client; beside the ceiling of the same number of
shard logs written alone by as many processes (pre-encoded rows, no HTTP, no scoring).

On one machine the nodes share its cores: the figure says what sharding costs and whether the
write path stops being the limit, not what N machines would give (each would have its own).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import rng, table
from service_bench import (
    BATCH,
    BENCH,
    CONNECTIONS,
    PROCS,
    SPEC,
    TOKEN,
    count_decisions,
    decide_body,
    encode,
    log_ceiling,
    one_call,
)

from banditrec.service.runner import GunicornServer

NODES = (1, 2, 3, 4)


def _client(targets: list, threads: int, offset: int, start_at: float, stop_at: float, out) -> None:
    """``threads`` keep-alive connections, thread ``k`` to node ``(offset + k) % N`` (round robin);
    sends back the latencies (ns) of calls started after ``start_at`` and the non-200 count."""
    lat: list[list[int]] = [[] for _ in range(threads)]
    bad = [0] * threads

    def run(k):
        port, payloads = targets[(offset + k) % len(targets)]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, i = bytearray(), k
        while time.time() < stop_at:
            now, t0 = time.time(), time.perf_counter_ns()
            status = one_call(sock, payloads[i % len(payloads)], buf)
            i += 1
            if now >= start_at:
                lat[k].append(time.perf_counter_ns() - t0)
                bad[k] += status != 200
        sock.close()

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((np.concatenate([np.asarray(x, dtype=np.int64) for x in lat]), sum(bad)))


def drive_many(targets: list, seconds: float, warmup: float = 1.0) -> dict:
    """:func:`service_bench.drive` over several nodes: the same 2 client processes x 4 threads,
    the connections spread round robin over ``targets`` ((port, payloads) each)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 0.3 + warmup
    stop_at = start_at + seconds
    per = CONNECTIONS // PROCS
    procs = [ctx.Process(target=_client, args=(targets, per, j * per, start_at, stop_at, q)) for j in range(PROCS)]
    for p in procs:
        p.start()
    parts = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    lat = np.concatenate([p[0] for p in parts])
    if sum(p[1] for p in parts):
        raise RuntimeError(f"{sum(p[1] for p in parts)} responses were not 200")
    return {"n": len(lat), "rps": len(lat) / seconds, "p50": float(np.median(lat))}


def bench_nodes(seconds: float = 5.0) -> list[list]:
    from simulator import Shop

    shop = Shop(seed=0)
    item_ids = list(shop.catalog.item_ids)
    gen = rng(61)
    bodies = [decide_body(gen, item_ids, shop.config.dim) for _ in range(64)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="banditrec-bench-nodes-") as tmp:
        tmp = Path(tmp)
        for n in NODES:
            servers = []
            try:
                for k in range(n):
                    env = {
                        "BANDITREC_DB": tmp / f"n{n}-shard{k}.db",
                        "BANDITREC_SHARD": k,
                        "BANDITREC_POLICY": SPEC,
                        "PYTHONPATH": str(BENCH),
                        "BANDITREC_API_TOKEN": TOKEN,
                        "BANDITREC_BATCH_MAX": BATCH,
                    }
                    srv = GunicornServer(
                        env, app="service_bench:make_service_app()", workers=1, log=tmp / f"n{n}-{k}.log"
                    )
                    servers.append(srv.__enter__())
                targets = [
                    (
                        s.port,
                        [
                            encode("/v1/decide/batch", {"requests": bodies[i : i + BATCH]}, s.port)
                            for i in range(0, len(bodies) - BATCH + 1, 7)
                        ],
                    )
                    for s in servers
                ]
                before = sum(count_decisions(tmp / f"n{n}-shard{k}.db") for k in range(n))
                t0 = time.time()
                result = drive_many(targets, seconds)
                wall = time.time() - t0
                logged = sum(count_decisions(tmp / f"n{n}-shard{k}.db") for k in range(n)) - before
            finally:
                for s in servers:
                    s.__exit__(None, None, None)
            rows.append((n, result["rps"] * BATCH, logged / wall, result["p50"] / 1e6))
        ceiling_us = log_ceiling(shop, bodies, tmp)
    return rows, ceiling_us


def report(rows: list, ceiling_us: float) -> None:
    base = rows[0][1]
    cores = os.cpu_count() or 1
    table(
        "nodes",
        f"POST /v1/decide/batch ({BATCH} decisions of 200 candidates and 10 slots per call, LinUCB) against the "
        "number of serving nodes on this machine: each a gunicorn process of 1 worker x 2 threads with its own "
        "shard log, the client round-robin over them (2 client processes x 4 keep-alive threads in all). "
        "'logged/s' counts the rows that reached the shard logs over the drive's wall time. Ceiling: the shard "
        f"logs alone, pre-encoded rows ({ceiling_us:.1f} us of CPU a decision, one process, bench http row (d)), "
        f"on min(nodes, {cores} cores).",
        ["nodes", "answered dec/s", "logged dec/s", "p50 ms per call", "vs 1 node", "logs-alone ceiling", "share"],
        [
            [
                n,
                f"{a:,.0f}",
                f"{lg:,.0f}",
                f"{p:.1f}",
                f"{a / base:.2f}x",
                f"{min(n, cores) * 1e6 / ceiling_us:,.0f}",
                f"{a / (min(n, cores) * 1e6 / ceiling_us):.2f}",
            ]
            for n, a, lg, p in rows
        ],
    )
    print(f"{cores} cores: more nodes than cores share them (production runs a node per machine)")


if __name__ == "__main__":
    report(*bench_nodes())
