"""bench section ``candeval``: candidate generation judged on the simulated shop at full size.

The default shop (5,000 items in 100 types, 20,000 customers; 5% new items launching on day 0)
runs a 90-day pre-period; models learn on the first 60 days and are asked about the last 30
(docs/candidates.md, "Judging the generators", says exactly what is asked). Not a speed benchmark: quality
against the simulator's true complement graph, with the fitting times beside it.
"""

from __future__ import annotations

import time

from simulator import SimConfig
from studies.candidate_eval import evaluate_candidates


def _metadata(cat):
    from banditrec.candidates.metadata import MetadataIndex

    return MetadataIndex().fit(
        list(cat.title), fields={"type": cat.product_type, "brand": cat.brand}, numeric=cat.price[:, None]
    )


def bench_candeval(cfg: dict, tmp) -> None:
    customers, seeds = cfg["candeval"]
    for seed in range(seeds):
        t0 = time.perf_counter()
        r = evaluate_candidates(
            SimConfig(n_customers=customers), seed=seed, train_days=60, test_days=30, metadata_factory=_metadata
        )
        print(f"\n== candeval (seed {seed}) ==")
        print(
            f"{customers:,} customers; {r.queries} held-out queries (a purchase followed, in the same visit, by a "
            f"purchase of a truly complementary type); {time.perf_counter() - t0:.0f} s"
        )
        print(r.table())
        print("fit seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items()))


if __name__ == "__main__":
    bench_candeval({"candeval": (20_000, 3)}, None)
