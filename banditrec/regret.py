"""Cumulative regret of policies in the simulated shop, against its exact oracle.

Wiring (it drives the simulator): each run builds the shop for its seed, fits item-item CF on
the pre-period purchases, and serves ``n_decisions`` carousel requests with one policy, which
learns online from the sampled clicks every ``batch`` decisions. Regret is exact
pseudo-regret from the click model: for decision t with customer c and candidates C,

    regret_t = max_{slates s over C} E[clicks | c, s] - E[clicks | c, s_t]

where the maximum puts the K most attractive candidates in order (the position-based model is
separable, so by the rearrangement inequality that slate is optimal), and ``s_t`` is the
slate the policy actually showed. No sampling noise enters the regret itself; the clicks the
policy learns from are sampled. Every policy of a seed sees the same shop, the same customers
in the same order and the same candidates (common random numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .candidates import ItemItemCF
from .demo import policy_env
from .errors import ValidationError
from .policies import Request, make
from simulator import Shop, ShopConfig


@dataclass
class RegretRun:
    spec: str
    seed: int
    cumulative: np.ndarray  # (n_decisions,) cumulative regret after each decision
    reward: float  # mean exact expected clicks per decision
    oracle: float  # the oracle's mean
    seconds: float


def regret_run(spec: str, seed: int, *, shop_config: ShopConfig | None = None, n_decisions: int = 50_000,
               n_slots: int = 5, n_candidates: int = 30, batch: int = 500, min_epsilon: float = 0.0) -> RegretRun:
    """One policy, one seed: serve ``n_decisions`` requests and record the exact regret."""
    config = shop_config or ShopConfig()
    world, traffic_seq, click_seq, policy_seq = np.random.SeedSequence(seed).spawn(4)
    shop = Shop(config, seed=world)
    cf = ItemItemCF(n_neighbors=50).fit(shop.history)
    policy = make(spec, **policy_env(shop, cf))
    traffic, clicks, sampler = (np.random.default_rng(s) for s in (traffic_seq, click_seq, policy_seq))
    features = shop.catalog.features
    theta = shop.model.examination(n_slots)
    regret = np.empty(n_decisions)
    got = np.empty(n_decisions)
    best = np.empty(n_decisions)
    start = time.perf_counter()
    done = 0
    while done < n_decisions:
        size = min(batch, n_decisions - done)
        req = shop.requests(size, traffic)
        ctx_rows, item_rows, pscore_rows, reward_rows = [], [], [], []
        slates = np.empty((size, n_slots), dtype=np.int64)
        for i in range(size):
            c = int(req.customer[i])
            history = shop.history.indices[shop.history.indptr[c]:shop.history.indptr[c + 1]]
            items, _, _ = cf.candidates(history, n_candidates)
            dist = policy.distribution(Request(context=req.context[i], items=items, item_features=features[items]),
                                       n_slots, min_epsilon)
            draw = dist.sample(sampler)
            slates[i] = items[draw.index]
            attraction = shop.model.attraction(np.full(len(items), c), items)
            best[done + i] = theta @ np.sort(attraction)[::-1][:n_slots]
            got[done + i] = theta @ attraction[draw.index]
            pscore_rows.append(draw.marginal)
        clicked = shop.respond(req, slates, clicks)
        rows = np.repeat(np.arange(size), n_slots)
        kwargs = {"items": slates.ravel()}
        if getattr(policy, "needs_pscore", False):
            kwargs["pscore"] = np.concatenate(pscore_rows)
        policy.update(req.context[rows], features[slates.ravel()], clicked.ravel().astype(float), **kwargs)
        done += size
    regret = np.cumsum(best - got)
    return RegretRun(spec=spec, seed=int(seed), cumulative=regret, reward=float(got.mean()), oracle=float(best.mean()),
                     seconds=time.perf_counter() - start)


@dataclass
class RegretRow:
    spec: str
    runs: list[RegretRun]

    @property
    def finals(self) -> np.ndarray:
        return np.array([r.cumulative[-1] for r in self.runs])

    def interval(self, level: float = 0.95) -> tuple[float, float, float]:
        f = self.finals
        mean = float(f.mean())
        if len(f) < 2:
            return mean, float("nan"), float("nan")
        half = float(stats.t.ppf(0.5 + level / 2, len(f) - 1) * f.std(ddof=1) / np.sqrt(len(f)))
        return mean, mean - half, mean + half


def regret_study(specs, seeds, *, echo: Callable[[str], None] | None = None, **kwargs) -> list[RegretRow]:
    """Every policy over every seed (same seeds for every policy)."""
    if not specs:
        raise ValidationError("give at least one policy", "policy")
    seeds = list(seeds)
    if not seeds:
        raise ValidationError("give at least one seed", "seeds")
    rows = []
    for spec in specs:
        runs = []
        for seed in seeds:
            run = regret_run(spec, seed, **kwargs)
            if echo:
                echo(f"  {spec:<40} seed {seed}: cumulative regret {run.cumulative[-1]:9.1f}  "
                     f"({run.reward:.4f} vs oracle {run.oracle:.4f} clicks per carousel, {run.seconds:.0f} s)")
            runs.append(run)
        rows.append(RegretRow(spec, runs))
    return rows


def regret_table(rows: list[RegretRow]) -> str:
    w = max(len(r.spec) for r in rows)
    n = len(rows[0].runs[0].cumulative)
    head = f"{'policy':<{w}}  {'cumulative regret':>17}  {'95% CI':>21}  {'clicks/carousel':>15}  {'oracle':>6}"
    lines = [f"cumulative regret after {n:,} decisions, mean over {len(rows[0].runs)} seeds", head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: r.interval()[0]):
        mean, lo, hi = r.interval()
        reward = np.mean([x.reward for x in r.runs])
        oracle = np.mean([x.oracle for x in r.runs])
        lines.append(f"{r.spec:<{w}}  {mean:>17,.1f}  [{lo:>9,.1f}, {hi:>9,.1f}]  {reward:>15.4f}  {oracle:>6.4f}")
    return "\n".join(lines)


def regret_plot(rows: list[RegretRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        curves = np.stack([x.cumulative for x in r.runs])
        t = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(axis=0)
        ax.plot(t, mean, label=r.spec)
        if len(r.runs) > 1:
            half = stats.t.ppf(0.975, len(r.runs) - 1) * curves.std(axis=0, ddof=1) / np.sqrt(len(r.runs))
            ax.fill_between(t, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("decisions")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
