"""What each candidate source adds, in the simulator: the shop run with every brain, and once
more without each source, on the same worlds (common random numbers), with the true value of
every run. The off-policy counterpart, read off a log, is ``banditrec ablation --db``.

Details: docs/candidates.md, "Ablation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from banditrec.candidates.generator import SOURCES
from simulator.config import SimConfig

from .simulate import simulate

METRICS = ("clicks", "margin", "ltv")


@dataclass(frozen=True)
class ArmRun:
    without: str | None  # None: every source
    seed: int
    clicks: float  # exact expected clicks per carousel shown
    margin: float  # exact expected carousel margin per carousel shown
    ltv: float  # mean discounted margin per customer over the horizon


def run_ablation(
    config: SimConfig,
    policy: str = "egreedy:epsilon=0.1",
    days: int = 14,
    *,
    sources=SOURCES,
    seeds=(0, 1, 2),
    **kw,
) -> list[ArmRun]:
    """Every seed's world run with every source, then without each of ``sources``."""
    out = []
    for seed in seeds:
        for without in (None, *sources):
            r = simulate(config, policy, days, seed=seed, brains=True, without=without, **kw)
            n = max(r.n_decisions, 1)
            out.append(ArmRun(without, int(seed), r.expected["click"] / n, r.expected["margin"] / n, r.ltv))
    return out


def ablation_table(runs: list[ArmRun]) -> str:
    """Per source: each metric's change when it is left out, the mean over seeds of the paired
    difference (same seed, same world) with a Student-t 95% interval when there are 2+ seeds."""
    base = {r.seed: r for r in runs if r.without is None}
    lines = [
        "| without | "
        + " | ".join(f"{m} (all: {np.mean([getattr(b, m) for b in base.values()]):.4f})" for m in METRICS)
        + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name in dict.fromkeys(r.without for r in runs if r.without is not None):
        cells = []
        for m in METRICS:
            d = np.array([getattr(r, m) - getattr(base[r.seed], m) for r in runs if r.without == name])
            if len(d) > 1:
                half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                cells.append(f"{d.mean():+.4f} ({d.mean() - half:+.4f}, {d.mean() + half:+.4f})")
            else:
                cells.append(f"{d.mean():+.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
