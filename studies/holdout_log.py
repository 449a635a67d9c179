"""A live log with an analysis holdout, for ``banditrec abtest --db``: the simulated shop served
through the engine day by day, the arms switched on part-way, with the exact expected clicks
of every slate shown kept per arm (the truth the analysis should find).

    python -m studies.holdout_log --out out/holdout

Details: docs/abtest.md, "Analysing a live log".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from banditrec.apprentice import Arms
from banditrec.store import DecisionLog
from simulator import Shop, ShopConfig

from .coverage import build_engine

DAY_S = 86_400.0
ARMS = Arms(holdout=0.2, control=0.2, salt="holdout-2026")
CONFIG = ShopConfig(n_items=1000, n_customers=5000)


def run_holdout_log(
    out,
    *,
    days: int = 21,
    arms_day: int = 7,
    requests_per_day: int = 2000,
    n_slots: int = 5,
    arms: Arms = ARMS,
    config: ShopConfig = CONFIG,
    policy: str = "linucb:alpha=1.0,epsilon=0.1",
    seed: int = 2026,
) -> dict[str, float]:
    """Serve ``days`` days of ``requests_per_day`` carousels into ``out/log.db`` (replaced),
    learning online after each day (the holdout left out), with ``arms`` from day
    ``arms_day`` on. Control users get the candidates in the generator's order. Returns each
    arm's exact expected clicks per decision over the days with arms."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / 'log.db'}{suffix}").unlink(missing_ok=True)
    world, serving, traffic_seq, click_seq = np.random.SeedSequence(seed).spawn(4)
    shop = Shop(config, seed=world)
    now = [0.0]
    engine = build_engine(shop, policy, DecisionLog(out / "log.db"), seed=serving, clock=lambda: now[0])
    traffic, clicks = np.random.default_rng(traffic_seq), np.random.default_rng(click_seq)
    item_of = {item: i for i, item in enumerate(engine.items.ids)}
    truth: dict[str, list[float]] = {"main": [], "holdout": [], "control": []}
    try:
        for day in range(days):
            if day == arms_day:
                engine.arms = arms
            req = shop.requests(requests_per_day, traffic)
            slates = np.empty((requests_per_day, n_slots), dtype=np.int64)
            events, arm_of = [], []
            for i, (user, ctx) in enumerate(zip(req.user_ids(), req.context)):
                now[0] = (day + i / requests_per_day) * DAY_S
                d = engine.decide(user, n_slots, context=ctx)
                slates[i] = [item_of[s.item_id] for s in d.slots]
                events.append(d.event_id)
                arm_of.append(d.arm)
            for i, k in zip(*np.nonzero(shop.respond(req, slates, clicks))):
                engine.reward(events[i], 1.0, position=int(k))
            if day >= arms_day:
                for arm, value in zip(arm_of, shop.expected_reward(req.customer, slates).tolist()):
                    truth[arm].append(value)
            engine.learn()
    finally:
        engine.log.close()
    return {arm: float(np.mean(v)) if v else float("nan") for arm, v in truth.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/holdout")
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--arms-day", type=int, default=7)
    args = parser.parse_args(argv)
    truth = run_holdout_log(args.out, days=args.days, arms_day=args.arms_day)
    print(f"log: {Path(args.out) / 'log.db'}")
    for arm, value in truth.items():
        print(f"{arm:8s} exact expected clicks per decision from day {args.arms_day}: {value:.4f}")
    print(f"truth of holdout - control: {truth['holdout'] - truth['control']:+.4f} clicks per decision")


if __name__ == "__main__":
    main()
