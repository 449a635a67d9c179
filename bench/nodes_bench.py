"""bench section ``nodes``: ``POST /v1/decide/batch`` throughput against the number of serving
nodes, 1 -> 4, each a gunicorn process (1 worker x 2 threads) logging to its own shard
(``BANDITREC_SHARD``), behind a round-robin client; beside the ceiling of the same number of
shard logs written alone by as many processes (pre-encoded rows, no HTTP, no scoring).

On one machine the nodes share its cores: the figure says what sharding costs and whether the
write path stops being the limit, not what N machines would give (each would have its own).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import rng, table
from service_bench import (
    BATCH,
    BENCH,
    SPEC,
    TOKEN,
    count_decisions,
    decide_body,
    drive_many,
    encode,
    log_ceiling,
)

from banditrec.service.runner import GunicornServer

NODES = (1, 2, 3, 4)


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
