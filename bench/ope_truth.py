"""bench section ``opetruth``: every estimator against the simulator's exact truth, over many seeds.

The larger version of tests/banditrec/ope/test_ope_truth.py, with the same study code (imported from it, so
the table and the tests can never describe different experiments): a shop whose position-based
click model gives the exact expected reward of any slate, a personalised epsilon-greedy target
whose exact marginals give its exact value over the customer population, and two loggers --
uniform random slates, and epsilon-greedy over pre-period popularity. Each seed logs a fresh
set of decisions and every estimator estimates the target's value from the log alone.

Columns: bias = mean (estimate - truth) over the seeds with its 95% t-interval (``*`` when the
interval excludes 0); RMSE; how many of the 95% intervals covered the truth; their mean width.
DM, DR, SNDR and SwitchDR fit banditrec's cross-fitted ridge model, which cannot represent the
click model's preference x item interaction; "DM, exact q_hat" is DM given the true expected
clicks (the well-specified control). Replay and SlatePI need uniform logging.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from common import table
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.*
from banditrec.ope import DM, DR, IPS, SNDR, SNIPS, ClippedIPS, Replay, RidgeRewardModel, SlatePI, SwitchDR  # noqa: E402
from tests.banditrec.ope.test_ope_truth import make_world, run_study  # noqa: E402  (the tests' study, at a larger size)

RIDGE = RidgeRewardModel()  # the study's misspecified model (bench section rewardtruth compares models)
WORLD = dict(n_items=100, n_customers=1000, n_slots=4, dim=6, seed=2024, target_eps=0.5, logger_eps=0.7)

ESTIMATORS = {
    "IPS": lambda s: IPS(),
    "IPS, bootstrap": lambda s: IPS(interval="bootstrap", seed=s),
    "ClippedIPS (lambda 10)": lambda s: ClippedIPS(lambda_=10.0),
    "SNIPS": lambda s: SNIPS(),
    "DM": lambda s: DM(seed=s, reward_model=RIDGE),
    "DM, exact q_hat": lambda s: (DM(), True),
    "DR": lambda s: DR(seed=s, reward_model=RIDGE),
    "DR, bootstrap": lambda s: DR(interval="bootstrap", seed=s, reward_model=RIDGE),
    "SNDR": lambda s: SNDR(seed=s, reward_model=RIDGE),
    "SwitchDR (lambda 10)": lambda s: SwitchDR(lambda_=10.0, seed=s, reward_model=RIDGE),
}
UNIFORM_ONLY = {
    "Replay": lambda s: Replay(seed=s),
    "SlatePI": lambda s: SlatePI(),
}


def summarise(runs) -> list[str]:
    e = runs.error
    S = len(e)
    half = float(student_t.ppf(0.975, S - 1) * e.std(ddof=1) / np.sqrt(S))
    mark = "*" if abs(e.mean()) > half else " "
    return [
        f"{e.mean():+.4f} ± {half:.4f}{mark}",
        f"{np.sqrt((e**2).mean()):.4f}",
        f"{runs.covered}/{S} ({runs.covered / S:.0%})",
        f"{(runs.upper - runs.lower).mean():.4f}",
    ]


def bench_ope_truth(cfg: dict, tmp: Path) -> None:
    seeds = range(500, 500 + cfg["truth_seeds"])
    n_dec = cfg["truth_decisions"]
    world = make_world(**WORLD)
    w = WORLD
    print(
        f"\n(opetruth: exact truth {world.truth:.4f} expected clicks per carousel; Shop(n_items={w['n_items']}, "
        f"n_customers={w['n_customers']}, dim={w['dim']}, seed={w['seed']}), {w['n_slots']} slots filled from the "
        f"whole catalogue; target epsilon-greedy {w['target_eps']} per slot on observed context . item latent; "
        f"{len(seeds)} seeds x {n_dec:,} decisions per logger)"
    )
    for logger, how in (
        ("uniform", "uniformly random slates, propensity 1/{n}"),
        ("popularity", f"epsilon-greedy {w['logger_eps']} per slot on pre-period popularity"),
    ):
        t0 = time.perf_counter()
        est = dict(ESTIMATORS, **(UNIFORM_ONLY if logger == "uniform" else {}))
        results = run_study(world, logger, est, n_decisions=n_dec, seeds=seeds)
        rows = [[name, *summarise(runs)] for name, runs in results.items()]
        r = results["IPS"]
        table(
            f"opetruth: {logger} logger",
            f"Logger: {how.format(n=w['n_items'])}. Median IPS effective sample size {np.median(r.ess):,.0f} of "
            f"{n_dec * world.n_slots:,} rows, largest weight {r.max_weight.max():.0f}. Bias = mean error over "
            f"{len(seeds)} seeds with its 95% t-interval (* excludes 0); coverage of the 95% intervals (normal "
            f"unless marked bootstrap: 2,000 resamples of decisions); {time.perf_counter() - t0:.0f} s.",
            ["estimator", "bias ± 95% CI", "RMSE", "coverage", "mean width"],
            rows,
        )
