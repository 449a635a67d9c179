"""Bench section ``choices``: the implementation choices the code makes for speed, each timed
beside the plain alternative it replaced, on the same data in the same run (medians). The code's
comments name the choice; the figures live in docs/benchmarks.md next to this command:

    .venv/bin/python bench/run.py --only choices

(a) the reward read of a whole log: scanning the rewards table (``READ_REWARDS_SCAN``) against
    driving it from the decisions in range (``READ_REWARDS``);
(b) parsing the log's JSON lists of candidates and contexts: ``number_lists`` (one C-level
    parse) against ``json.loads`` per list;
(c) the per-row sums of a target's action distribution: ``np.einsum("iak->ik")`` against
    ``dist.sum(axis=1)``;
(d) Welch's two-sided p-value: ``scipy.special.stdtr`` against ``scipy.stats.ttest_ind``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from common import compare, ratio, rng, table, us
from scipy import special, stats

from banditrec.store.codecs import number_lists, read_params
from banditrec.store.reader import READ_REWARDS, READ_REWARDS_SCAN


def run(cfg: dict, tmp: Path, slot_log) -> None:
    n_dec = cfg["logread_decisions"]
    path = tmp / "choices.db"
    slot_log(path, n_dec, rng(30))
    conn = sqlite3.connect(path)
    params = read_params(until_seq=n_dec)
    scan, driven = (
        lambda: conn.execute(READ_REWARDS_SCAN, params).fetchall(),
        lambda: conn.execute(READ_REWARDS, params).fetchall(),
    )
    assert sorted(scan()) == sorted(driven())
    cand, ctx = map(list, zip(*conn.execute("SELECT candidate_index, context FROM decisions ORDER BY seq")))
    conn_rows = len(scan())

    def loads(texts, dtype):
        return np.concatenate([np.array(json.loads(t), dtype=dtype) for t in texts])

    for texts, dtype in ((cand, np.int64), (ctx, float)):
        assert np.array_equal(number_lists(texts, dtype)[0], loads(texts, dtype))
    gen = rng(31)
    dist = gen.dirichlet(np.ones(80), size=(20_000, 3)).transpose(0, 2, 1)  # (rows, actions, slots)
    assert np.allclose(np.einsum("iak->ik", dist), dist.sum(axis=1))
    a, b = gen.normal(0, 1, 5000), gen.normal(0.05, 1.2, 4000)

    def welch():
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        return float(2 * special.stdtr(df, -abs(b.mean() - a.mean()) / np.sqrt(va + vb)))

    assert np.isclose(welch(), stats.ttest_ind(b, a, equal_var=False).pvalue, rtol=1e-10)
    reps = max(3, cfg["logread_reps"])
    groups = [
        (
            "(a) rewards of the whole log",
            {"scan": scan, "driven": driven},
            f"{conn_rows:,} rewards of {n_dec:,} decisions",
        ),
        (
            "(b) candidate lists",
            {"fast": lambda: number_lists(cand, np.int64), "loads": lambda: loads(cand, np.int64)},
            f"{sum(len(t) for t in cand) // 1_000:,} kB of JSON",
        ),
        (
            "(b) contexts",
            {"fast": lambda: number_lists(ctx, float), "loads": lambda: loads(ctx, float)},
            f"{len(ctx):,} lists",
        ),
        (
            "(c) per-row sums",
            {"einsum": lambda: np.einsum("iak->ik", dist), "sum": lambda: dist.sum(axis=1)},
            "(20,000, 80, 3) floats",
        ),
        (
            "(d) Welch p-value",
            {"stdtr": welch, "ttest": lambda: stats.ttest_ind(b, a, equal_var=False).pvalue},
            "5,000 and 4,000 values",
        ),
    ]
    rows = []
    for label, cases, size in groups:
        t = compare(cases, repeats=reps * 4, warmup=1)
        (chosen, c), (plain, p) = list(t.items())
        rows.append([label, size, f"{chosen} {us(c.p50)}", f"{plain} {us(p.p50)}", ratio(p.p50, c.p50)])
    conn.close()
    table(
        "choices",
        "Each speed choice in the code (chosen) beside the plain alternative (plain), same data, "
        "same run; both checked to give the same result first. speed-up = plain p50 / chosen p50.",
        ["choice", "data", "chosen p50 us", "plain p50 us", "speed-up"],
        rows,
    )
