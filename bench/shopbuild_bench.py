"""bench sections ``shopbuild`` and ``shopbuild1m``: ``banditrec build`` from CSV files, end to
end, and a served decision from the built shop directory, at 1,000 to 1,000,000 items.

Data: the synthetic shops of ``bench/shopgen.py`` (10 interactions per item), written as the
three files a shop hands over (``docs/data-formats.md``): ``items.csv`` (id, title, type,
category, brand, price, in_stock), ``interactions.csv`` (user, item, event type, an ISO-8601
timestamp with ``Z``) and ``users.csv`` (id, segment). Ids are strings (``sku-17``,
``user-42``).

Each size runs in its own subprocess: ``build_shop`` (what the CLI runs) is timed by step, the
process's peak resident memory is its ``VmHWM``; then the directory is loaded as a serving
worker loads it (every file checksummed) and 2,000 decisions (after 200 warm-up) are made by an
engine on it -- candidates from the full generator, the shop's context features, a shared
LinUCB over 30 candidates, 5 slots, logged to an in-memory log -- beside the candidate
generator's retrieval alone for the same users (the floor of a decision). The ratio column
divides each size's decide p50 by the 1,000-item shop's.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
N_DECISIONS, WARMUP = 2000, 200
KINDS = np.array(["view", "cart", "purchase"])


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_files(shop, out: Path) -> dict:
    """The synthetic shop as the three input files; returns their sizes in MB."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    out.mkdir(parents=True, exist_ok=True)
    n = shop.n_items
    ids = pc.binary_join_element_wise("sku-", pa.array(np.arange(n)).cast(pa.string()), "")
    items = pa.table(
        {
            "item_id": ids,
            "title": pa.array(shop.titles),
            "type": pc.binary_join_element_wise("t", pa.array(shop.types).cast(pa.string()), ""),
            "category": pa.array(shop.category).cast(pa.string()),
            "brand": pc.binary_join_element_wise("b", pa.array(shop.brand).cast(pa.string()), ""),
            "price": pa.array(shop.price),
            "in_stock": pa.array(np.ones(n, bool)),
        }
    )
    pcsv.write_csv(items, out / "items.csv")
    base = np.datetime64("2025-01-01T00:00:00", "s").astype(np.int64)
    stamps = pa.array((base + shop.ts.astype(np.int64)).astype("datetime64[s]")).cast(pa.string())
    events = pa.table(
        {
            "user_id": pc.binary_join_element_wise("user-", pa.array(shop.user).cast(pa.string()), ""),
            "item_id": pc.binary_join_element_wise("sku-", pa.array(shop.item).cast(pa.string()), ""),
            "event_type": pa.array(KINDS[shop.kind]),
            "timestamp": pc.binary_join_element_wise(pc.replace_substring(stamps, " ", "T"), "Z", ""),
        }
    )
    pcsv.write_csv(events, out / "interactions.csv")
    users = pa.table(
        {
            "user_id": pc.binary_join_element_wise("user-", pa.array(np.arange(shop.n_users)).cast(pa.string()), ""),
            "segment": pa.array(shop.segment).cast(pa.string()),
        }
    )
    pcsv.write_csv(users, out / "users.csv")
    return {f: (out / f).stat().st_size / 1e6 for f in ("items.csv", "interactions.csv", "users.csv")}


def child(spec: dict) -> dict:
    """One size: write the files, build, load, decide."""
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(BENCH.parent))
    from shopgen import synthetic_shop

    from banditrec.candidates import UserState
    from banditrec.shop import Shop, build_shop, engine_for_shop
    from banditrec.store import DecisionLog

    n = spec["items"]
    tmp = Path(spec["dir"])
    rng = np.random.default_rng(np.random.SeedSequence(20240601, spawn_key=(70, spec["index"])))
    shop = synthetic_shop(n, rng)
    sizes = write_files(shop, tmp / "files")
    n_events, n_users = len(shop.item), shop.n_users
    import scipy.sparse as sp  # the users x items counts, for implicit's build on the same data

    X = sp.csr_matrix((np.ones(n_events), (shop.user, shop.item)), shape=(n_users, n))
    X.sum_duplicates()
    np.savez(spec["matrix"], data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape))
    del shop, X
    gc.collect()
    base_mb = status_mb("VmRSS")
    t0 = time.perf_counter()
    result = build_shop(
        tmp / "files" / "items.csv", tmp / "files" / "interactions.csv", tmp / "files" / "users.csv", out=tmp / "shop"
    )
    build_s = time.perf_counter() - t0
    peak_mb = status_mb("VmHWM")
    t1 = time.perf_counter()
    served = Shop(tmp / "shop")
    load_s = time.perf_counter() - t1
    engine = engine_for_shop(
        served, "linucb:alpha=1.0,epsilon=0.1", DecisionLog(), seed=0, clock=lambda: 1_740_000_000.0
    )
    users = [served.user_ids[int(u)] for u in rng.integers(0, len(served.user_ids), WARMUP + N_DECISIONS)]
    clock = time.perf_counter_ns
    for u in users[:WARMUP]:
        engine.decide(u, 5, context={"device": "mobile"})
    gc.collect()
    gc.disable()
    decide_ns, gen_ns = [], []
    try:
        for u in users[WARMUP:]:
            t = clock()
            engine.decide(u, 5, context={"device": "mobile"})
            decide_ns.append(clock() - t)
        for u in users[WARMUP:]:
            row = served.user_index[u]
            state = UserState(
                purchased=served.history.indices[served.history.indptr[row] : served.history.indptr[row + 1]],
                segment=int(served.user_segment[row]),
            )
            t = clock()
            served.generator.candidates(state, 30)
            gen_ns.append(clock() - t)
    finally:
        gc.enable()
    return {
        "items": n,
        "events": n_events,
        "users": n_users,
        "files_mb": sizes,
        "build_s": build_s,
        "load_s": load_s,
        "peak_mb": peak_mb,
        "base_mb": base_mb,
        "item_dim": result.item_dim,
        "context_dim": result.context_dim,
        "decide_p50_us": float(np.median(decide_ns)) / 1e3,
        "decide_p99_us": float(np.percentile(decide_ns, 99)) / 1e3,
        "gen_p50_us": float(np.median(gen_ns)) / 1e3,
    }


def bench_ladder(sizes: list[int], tmp: Path, title: str) -> None:
    from common import table
    from scale_bench import IMPLICIT_PYTHON, have_implicit

    rows, first, version = [], None, None
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    for k, n in enumerate(sizes):
        spec = {"items": n, "index": k, "dir": str(tmp / f"shop{n}"), "matrix": str(tmp / f"user_items_{n}.npz")}
        proc = subprocess.run(
            [sys.executable, __file__, "child", json.dumps(spec)], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise RuntimeError(f"shopbuild {n} exited {proc.returncode}: {proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        theirs = None
        if have_implicit():
            out = subprocess.run(
                [str(IMPLICIT_PYTHON), str(BENCH / "scale_bench.py"), "--implicit", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode == 0:
                theirs = json.loads(out.stdout.strip().splitlines()[-1])
                version = theirs["version"]
        first = first or r
        rows.append(
            [
                f"{n:,}",
                f"{r['events']:,}",
                f"{sum(r['files_mb'].values()):,.0f}",
                f"{r['build_s']:.1f}",
                f"{r['peak_mb']:,.0f}",
                f"{r['load_s']:.1f}",
                f"{r['decide_p50_us']:,.0f}",
                f"{r['decide_p99_us']:,.0f}",
                f"{r['gen_p50_us']:,.0f}",
                f"{r['decide_p50_us'] / first['decide_p50_us']:.2f}x",
                f"{theirs['build_s']:.1f}" if theirs else "-",
                f"{r['build_s'] / theirs['build_s']:.1f}x" if theirs else "-",
            ]
        )
    who = f"implicit {version}" if version else "implicit not run (not installed)"
    note = (
        "build s = banditrec.shop.build_shop from the three CSV files, what `banditrec build` runs (read and check, "
        "features, candidate model, write); peak MB = the build process's VmHWM;\nload s = a serving worker's "
        "Shop(dir), every file checksummed; decide = Engine.decide on it (5 slots, 30 candidates, shared LinUCB, "
        "the shop's context features, in-memory log),\nwall clock over 2,000 decisions; candidates = the "
        f"generator alone for the same users; vs 1k = decide p50 / the 1,000-item shop's;\n{who}: "
        "CosineRecommender(K=51).fit on the same users x items matrix, and banditrec's whole build / its build."
    )
    table(
        title,
        note,
        [
            "items",
            "interactions",
            "files MB",
            "build s",
            "peak MB",
            "load s",
            "decide p50 us",
            "decide p99 us",
            "candidates p50 us",
            "vs 1k",
            "implicit s",
            "build/implicit",
        ],
        rows,
    )


def bench_shopbuild(cfg: dict, tmp) -> None:
    bench_ladder(cfg["shopbuild"], Path(tmp), "shopbuild")


def bench_shopbuild1m(cfg: dict, tmp) -> None:
    bench_ladder(cfg["shopbuild1m"], Path(tmp), "shopbuild1m")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    print(json.dumps(child(json.loads(sys.argv[2]))))
