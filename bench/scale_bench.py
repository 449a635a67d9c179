"""bench sections ``scale`` and ``scale1m``: the candidate generator's build and per-request
retrieval on synthetic shops of 1,000 to 1,000,000 items (10 interactions per item), beside
``implicit``'s item-item build on the same users x items matrix.

Data: :func:`shopgen.synthetic_shop` (seeded, stream 60 + the size's index): power-law product
types, titles, 5% of the items without events, heavy-tailed users in 8 segments, view -> cart
-> purchase sessions with complements across types, 90 days.

Each size runs in a fresh process (peak memory is that process's ``VmHWM``; see
``candidates_bench``). Build: ``MetadataIndex.fit`` (titles, type and brand fields, price)
then ``CandidateGenerator.fit`` on every usable core, each step timed once (``fit_seconds``;
the metadata column adds the index's own fit). Retrieval: 2,000 requests after 200 warm-up
ones, one at a time in one process, garbage collector off: a known user's cart of 1-3 items,
0-5 purchases and 0-10 recent views with their ages (items drawn like events, i.e. by
popularity), a segment (one request in ten unknown), N = 50, filters on (5% of items out of
stock, types already bought unless consumable, two excluded categories), type diversity on
(at most 5 per type). ``ItemItemCF.candidates`` (plain item-item CF, without the generator's other components) is
timed on the same requests' items. implicit: ``CosineRecommender(K=51)`` (its item itself is
among its K) on the same recency-weighted users x items matrix that banditrec's item-item CF
is fitted on, every core, with this interpreter (implicit is a banditrec dependency), in its
own process.
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
from common import status_mb

BENCH = Path(__file__).resolve().parent
IMPLICIT_PYTHON = Path(sys.executable)  # implicit is a dependency: the same venv as banditrec


def have_implicit() -> bool:
    import importlib.util

    return importlib.util.find_spec("implicit") is not None


N_CANDIDATES, N_REQUESTS, WARMUP = 50, 2000, 200
STEPS = ("signals", "cf", "complements", "substitutes", "metadata", "popularity")


def requests(shop, gen: np.random.Generator, k: int):
    from banditrec.candidates import UserState

    ev = shop.item
    out = []
    for _ in range(k):
        viewed = ev[gen.integers(0, len(ev), gen.integers(0, 11))]
        out.append(
            UserState(
                cart=ev[gen.integers(0, len(ev), gen.integers(1, 4))],
                purchased=ev[gen.integers(0, len(ev), gen.integers(0, 6))],
                viewed=viewed,
                view_age_s=gen.uniform(0, 3600.0, len(viewed)),
                segment=None if gen.random() < 0.1 else int(gen.integers(0, 8)),
            )
        )
    return out


def child(spec: dict) -> dict:
    """One size, banditrec: build, then time requests; writes the users x items matrix for implicit."""
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(BENCH.parent))
    from shopgen import synthetic_shop

    from banditrec.candidates import (
        AlreadyBought,
        CandidateGenerator,
        ExcludeCategories,
        Filters,
        Interactions,
        MetadataIndex,
        OutOfStock,
    )

    n = spec["items"]
    rng = np.random.default_rng(np.random.SeedSequence(20240601, spawn_key=(60, spec["index"])))
    shop = synthetic_shop(n, rng)
    events = Interactions.from_arrays(
        shop.user, shop.item, shop.ts, shop.kind, session=shop.session, n_users=shop.n_users, n_items=n
    )
    rules = Filters(
        [
            OutOfStock(rng.random(n) >= 0.05),
            AlreadyBought(shop.types, shop.consumable),
            ExcludeCategories(shop.category, {1, 2}),
        ]
    )
    base_mb = status_mb("VmRSS")
    t0 = time.perf_counter()
    meta = MetadataIndex().fit(
        shop.titles, fields={"type": shop.types, "brand": shop.brand}, numeric=shop.price[:, None]
    )
    meta_fit = time.perf_counter() - t0
    gen = CandidateGenerator(filters=rules, metadata=meta)
    t1 = time.perf_counter()
    gen.fit(events, shop.types, user_segments=shop.segment)
    total = time.perf_counter() - t0
    steps = dict(gen.fit_seconds)
    steps["metadata"] += meta_fit
    peak_mb = status_mb("VmHWM")
    X = events.user_items(None, half_life_s=gen.half_life_s)
    np.savez(spec["matrix"], data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape))
    del X

    states = requests(
        shop, np.random.default_rng(np.random.SeedSequence(20240601, spawn_key=(61,))), WARMUP + N_REQUESTS
    )
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for s in states[:WARMUP]:
        gen.candidates(s, N_CANDIDATES)
    gc.collect()
    gc.disable()
    ns, cpu_ns, cf_ns, sizes = [], [], [], []
    try:
        for s in states[WARMUP:]:
            t, c = clock(), cpu()
            ids, _, _ = gen.candidates(s, N_CANDIDATES)
            ns.append(clock() - t)
            cpu_ns.append(cpu() - c)
            sizes.append(len(ids))
        for s in states[WARMUP:]:
            hist = np.concatenate([s.cart, s.purchased, s.viewed])
            t = clock()
            gen.cf.candidates(hist, N_CANDIDATES)
            cf_ns.append(clock() - t)
    finally:
        gc.enable()
    return {
        "items": n,
        "events": len(events),
        "users": shop.n_users,
        "types": shop.n_types,
        "build_s": total,
        "fit_s": time.perf_counter() - t1,
        "steps": steps,
        "peak_mb": peak_mb,
        "base_mb": base_mb,
        "p50_us": float(np.median(ns)) / 1e3,
        "p99_us": float(np.percentile(ns, 99)) / 1e3,
        "cpu_p99_us": float(np.percentile(cpu_ns, 99)) / 1e3,
        "cf_p50_us": float(np.median(cf_ns)) / 1e3,
        "filled": float(np.mean(np.asarray(sizes) == N_CANDIDATES)),
        "threads": len(os.sched_getaffinity(0)),
    }


def implicit_child(spec: dict) -> dict:
    import implicit
    import scipy.sparse as sp
    from implicit.nearest_neighbours import CosineRecommender

    z = np.load(spec["matrix"])
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    t = time.perf_counter()
    CosineRecommender(K=51, num_threads=0).fit(X, show_progress=False)
    return {"build_s": time.perf_counter() - t, "peak_mb": status_mb("VmHWM"), "version": implicit.__version__}


def _run(python: str, mode: str, spec: dict) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([python, __file__, mode, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {spec['items']} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale_ladder(sizes: list[int], tmp: Path, title: str) -> None:
    from common import table

    run_implicit = have_implicit()
    rows, steps_rows, version = [], [], None
    first_p50 = None
    for i, n in enumerate(sizes):
        spec = {"items": n, "index": i, "matrix": str(tmp / f"user_items_{n}.npz")}
        ours = _run(sys.executable, "--child", spec)
        theirs = _run(str(IMPLICIT_PYTHON), "--implicit", spec) if run_implicit else None
        first_p50 = first_p50 or ours["p50_us"]
        if theirs:
            version = theirs["version"]
        imp = (
            (
                f"{theirs['build_s']:.2f}",
                f"{ours['steps']['cf'] / theirs['build_s']:.2f}x",
                f"{ours['build_s'] / theirs['build_s']:.1f}x",
                f"{theirs['peak_mb']:,.0f}",
            )
            if theirs
            else ("-",) * 4
        )
        rows.append(
            [
                f"{n:,}",
                f"{ours['events']:,}",
                f"{ours['build_s']:.1f}",
                f"{ours['peak_mb']:,.0f} ({ours['base_mb']:,.0f})",
                f"{ours['p50_us']:,.0f}",
                f"{ours['p99_us']:,.0f}",
                f"{ours['cpu_p99_us']:,.0f}",
                f"{ours['p50_us'] / first_p50:.2f}x",
                f"{ours['cf_p50_us']:,.0f}",
                *imp,
            ]
        )
        steps_rows.append(
            [f"{n:,}", f"{ours['users']:,}", f"{ours['types']:,}"]
            + [f"{ours['steps'][s]:.2f}" for s in STEPS]
            + [f"{ours['filled']:.3f}"]
        )
    who = f"implicit {version}" if version else "implicit not run (not installed)"
    note = (
        f"synthetic shops (bench/shopgen.py), 10 interactions per item; {N_REQUESTS:,} requests of N = "
        f"{N_CANDIDATES} after {WARMUP} warm-up, one at a time; {who}.\n"
        "build s = MetadataIndex.fit + CandidateGenerator.fit (every core); peak MB = the process's VmHWM "
        "(resident MB once the data is built, in brackets);\np50/p99 us = CandidateGenerator.candidates per "
        "request (wall clock); p99 cpu us = the same requests' thread CPU time (not inflated when other jobs "
        "take the core);\nvs first = p50 / the first size's p50 (flat = the same cost at any catalog size); "
        "ItemItemCF us = ItemItemCF.candidates p50 on the same requests' items;\nimplicit s = "
        "CosineRecommender(K=51).fit on the same users x items matrix; cf/implicit = banditrec's cf step / "
        "implicit's build; all/implicit = banditrec's whole build / implicit's."
    )
    table(
        title,
        note,
        [
            "items",
            "events",
            "build s",
            "peak MB",
            "p50 us",
            "p99 us",
            "p99 cpu us",
            "vs first",
            "ItemItemCF us",
            "implicit s",
            "cf/implicit",
            "all/implicit",
            "implicit MB",
        ],
        rows,
    )
    table(
        f"{title}: build steps (seconds)",
        "the same runs; filled = share of requests with all N candidates",
        ["items", "users", "types", *STEPS, "filled"],
        steps_rows,
    )


def bench_scale(cfg: dict, tmp) -> None:
    bench_scale_ladder(cfg["scale"], Path(tmp), "scale")


def bench_scale1m(cfg: dict, tmp) -> None:
    bench_scale_ladder(cfg["scale1m"], Path(tmp), "scale1m")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--child", "--implicit"):
        fn = child if sys.argv[1] == "--child" else implicit_child
        print(json.dumps(fn(json.loads(sys.argv[2]))))
    else:
        sys.path.insert(0, str(BENCH))
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            bench_scale_ladder([int(x) for x in sys.argv[1:]] or [1000, 10_000], Path(d), "scale")
