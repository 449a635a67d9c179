"""bench section ``sim``: simulated carousel impressions per minute on one core, and peak memory.

Each size runs in its own process pinned to one CPU with single-threaded BLAS, so the peak
resident memory (``VmHWM``) is that size's alone. A simulated day is the whole loop:

  requests()         visits, organic browsing (views, cart checkouts, purchases, complements)
  slates             5 distinct random items per visitor (a stand-in policy, numpy)
  expected_reward()  exact expected clicks AND margin of every slate (the truth is available)
  respond()          sampled clicks, purchases, cart adds, satisfaction, LTV
  advance_day()      churn, satisfaction decay, restocking

The ceiling beside it, in the same process on the same visitors and slates: bare numpy doing
the least a position-based click draw needs (gather the items' latent vectors, dot with the
customer's, sigmoid, examination weights, compare with uniforms) -- no complements, purchases,
state or bookkeeping. Ratio = simulator time per impression / ceiling time per impression.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 5


def random_slates(n_items: int, m: int, gen: np.random.Generator) -> np.ndarray:
    """(m, K) distinct random items per row: draw, then redraw the rare rows with a repeat."""
    s = gen.integers(0, n_items, size=(m, K))
    while True:
        srt = np.sort(s, axis=1)
        bad = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        if not bad.any():
            return s
        s[bad] = gen.integers(0, n_items, size=(int(bad.sum()), K))


def bare_ceiling(env, req, slates, gen) -> float:
    pop, cat = env.population, env.catalog
    t0 = time.perf_counter()
    pref = pop.preference[req.customer]
    z = np.einsum("md,mkd->mk", pref, cat.latent[slates]) + cat.bias[slates] - 3.0
    a = 1.0 / (1.0 + np.exp(-z))
    theta = np.arange(1, K + 1, dtype=float) ** -1.0
    clicks = gen.random(a.shape) < a * theta
    clicks.sum()
    return time.perf_counter() - t0


def peak_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: after fork+exec Linux carries the
    parent's peak into the child's ru_maxrss, so a small child would report the runner's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(n_customers: int, days: int, history_days: int) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from simulator import Environment, SimConfig

    t0 = time.perf_counter()
    env = Environment(SimConfig(n_customers=n_customers, history_days=history_days), seed=0)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    env.warm_up()
    warm = time.perf_counter() - t0
    gen = np.random.default_rng(1)
    impressions, loop, ceiling, truth = 0, 0.0, 0.0, 0.0
    parts = {"requests": 0.0, "expected": 0.0, "respond": 0.0, "advance": 0.0}
    for _ in range(days):
        t0 = time.perf_counter()
        req = env.requests()
        t1 = time.perf_counter()
        slates = random_slates(env.catalog.n_items, len(req), gen)
        t2 = time.perf_counter()
        truth += float(env.expected_reward(req, slates, "click").sum())
        env.expected_reward(req, slates, "margin")
        t3 = time.perf_counter()
        env.respond(req, slates, gen)
        t4 = time.perf_counter()
        env.advance_day()
        t5 = time.perf_counter()
        loop += t5 - t0
        parts["requests"] += t1 - t0
        parts["expected"] += t3 - t2
        parts["respond"] += t4 - t3
        parts["advance"] += t5 - t4
        impressions += len(req)
        ceiling += bare_ceiling(env, req, slates, gen)
    return {
        "customers": n_customers,
        "days": days,
        "impressions": impressions,
        "seconds": loop,
        "ceiling_seconds": ceiling,
        "build_seconds": built,
        "warmup_seconds": warm,
        "warmup_days": history_days,
        "parts": parts,
        "peak_mb": peak_mb(),
        "state_mb": env.state.nbytes / 2**20,
        "clicks_per_impression": truth / max(impressions, 1),
    }


def run_child(n_customers: int, days: int, history_days: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n_customers), str(days), str(history_days)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_sim(cfg: dict, tmp) -> None:
    from common import table

    rows = []
    for n_customers, days, history in cfg["sim"]:
        r = run_child(n_customers, days, history)
        per_min = r["impressions"] / r["seconds"] * 60
        ceil_min = r["impressions"] / r["ceiling_seconds"] * 60
        p = r["parts"]
        split = "/".join(f"{100 * p[k] / r['seconds']:.0f}" for k in ("requests", "expected", "respond", "advance"))
        rows.append(
            [
                f"{n_customers:,}",
                f"{r['impressions']:,}",
                f"{per_min / 1e6:.2f} M",
                f"{ceil_min / 1e6:.1f} M",
                f"{r['ceiling_seconds'] / r['seconds']:.3f}",
                split,
                f"{r['peak_mb']:,.0f}",
                f"{r['state_mb']:,.0f}",
                f"{r['build_seconds'] + r['warmup_seconds']:.1f} ({r['warmup_days']} d)",
            ]
        )
    table(
        "sim",
        "Simulated carousel impressions (5 slots) per minute on ONE core, exact expected clicks and margin "
        "computed for every slate;\nceiling: bare numpy position-based click draw on the same slates. "
        "Split: % of the loop in requests/expected/respond/advance.",
        [
            "customers",
            "impressions",
            "per minute",
            "ceiling/min",
            "ceiling ratio",
            "split %",
            "peak MB",
            "state MB",
            "build+warm-up s",
        ],
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        bench_sim({"sim": [(20_000, 30, 30), (1_000_000, 5, 3)]}, None)
