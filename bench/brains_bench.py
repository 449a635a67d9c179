"""The other brains' cost beside the candidate generator's own (``bench/run.py --only brains``).

On the synthetic shops of the scale bench (bench/shopgen.py: 10 events per item, a fifth of
the types consumable): the fit time of each brain (latent factors by ALS and by BPR, reorder
timing, the product graph) beside the generator's fit, and one request's candidates with each
brain switched on beside the four-source generator. The latent factors score every item for
every request (one matrix-vector product), so their share grows with the catalog.
"""

from __future__ import annotations

import time

from common import compare, ratio, rng, table, us
from shopgen import synthetic_shop

from banditrec.candidates import CandidateGenerator, Interactions, UserState
from banditrec.candidates.factors import LatentFactors
from banditrec.candidates.graph import fit_graph
from banditrec.candidates.reorder import ReorderModel


def _shop(n_items: int, seed: int):
    s = synthetic_shop(n_items, rng(seed))
    ev = Interactions.from_arrays(s.user, s.item, s.ts, s.kind, session=s.session, n_users=s.n_users, n_items=s.n_items)
    return s, ev


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_brains(cfg: dict) -> None:
    fit_rows, req_rows = [], []
    for n in cfg["brains"]:
        s, ev = _shop(n, 23)
        gen, t_gen = _timed(lambda: CandidateGenerator().fit(ev, s.types, user_segments=s.segment))
        X = ev.user_items(None, half_life_s=gen.half_life_s)
        als, t_als = _timed(lambda: LatentFactors("als", 32, random_state=0).fit(X))
        _, t_bpr = _timed(lambda: LatentFactors("bpr", 32, random_state=0).fit(X))
        reorder, t_re = _timed(lambda: ReorderModel().fit(ev, s.types, s.consumable))
        graph, t_graph = _timed(lambda: fit_graph(ev, s.types, gen, brand=s.brand, price=s.price))
        for name, t in (
            ("generator (four sources)", t_gen),
            ("latent factors, ALS", t_als),
            ("latent factors, BPR", t_bpr),
            ("reorder timing", t_re),
            ("product graph", t_graph),
        ):
            fit_rows.append([f"{n:,}", f"{len(ev):,}", name, f"{t:.2f}", ratio(t, t_gen)])
        g = rng(24)
        users = g.choice(ev.n_users, size=200, replace=False)
        H = ev.user_items("purchase").tocsr()
        now = float(ev.ts.max()) + 3600.0
        states = [UserState(purchased=H[u].indices, segment=int(s.segment[u]), user=int(u), now=now) for u in users]
        accessory = graph.edge_matrix("accessory_of").T.tocsr()
        setups = {
            "the four": (None, None, None),
            "+ accessory": (None, None, accessory),
            "+ reorder": (None, reorder, None),
            "+ factors (ALS)": (als, None, None),
            "every brain": (als, reorder, accessory),
        }
        it = iter(range(10**9))

        def case(factors, re, acc):
            def run():
                gen.factors, gen.reorder, gen.accessory = factors, re, acc
                gen.candidates(states[next(it) % len(states)], 50)

            return run

        timings = compare({k: case(*v) for k, v in setups.items()}, repeats=cfg["brains_requests"])
        base = timings["the four"].p50
        for k, t in timings.items():
            req_rows.append([f"{n:,}", k, us(t.p50), us(t.p99), ratio(t.p50, base)])
        gen.factors = gen.reorder = gen.accessory = None
    table(
        "brains: fit time of each brain beside the generator's",
        "synthetic shops (bench/shopgen.py); ALS and BPR: implicit, 32 factors, one thread for BPR",
        ["items", "events", "fit", "s", "vs generator"],
        fit_rows,
    )
    table(
        "brains: one request's 50 candidates with each brain beside the four-source generator",
        "200 users' purchase histories, interleaved; the factors score every item per request",
        ["items", "sources", "p50 us", "p99 us", "vs the four"],
        req_rows,
    )
