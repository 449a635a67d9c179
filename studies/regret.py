"""Cumulative regret of policies in the simulated shop, against its exact oracle.

Each run serves a scenario's customers with one policy that learns online; regret is the exact
pseudo-regret of each shown slate against the best slate over the same candidates, with common
random numbers across the policies of a seed.

Details: docs/policies.md, "The regret study (`studies/regret.py`)".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from banditrec.candidates import ItemItemCF
from banditrec.errors import ValidationError
from banditrec.offline import learn_from_log, uses_marginals
from banditrec.policies import REGISTRY, Request, make, parse_spec
from banditrec.policies.base import DEFAULT_FLOOR
from banditrec.types import LoggedDecisions
from simulator import Shop, ShopConfig
from simulator.scenarios import scenario as get_scenario
from studies.coverage import policy_env

FRESH_DAYS = 10.0  # new items are candidates for this many days after their launch


@dataclass
class RegretRun:
    spec: str
    seed: int
    cumulative: np.ndarray  # (n_decisions,) cumulative regret after each decision
    reward: float  # mean exact expected reward per decision
    oracle: float  # the oracle's mean
    seconds: float
    scenario: str = "shop"


def scenario_shop(scenario: str = "shop", shop_config: ShopConfig | None = None) -> tuple[ShopConfig, int | None]:
    """The shop config of ``scenario`` (its changes over ``shop_config``, default ShopConfig())
    and its candidates per request (``None`` when the scenario leaves it to the caller)."""
    sc = get_scenario(scenario)
    return (shop_config or ShopConfig()).replace(**sc.shop), sc.candidates


def regret_run(
    spec: str,
    seed: int,
    *,
    scenario: str = "shop",
    shop_config: ShopConfig | None = None,
    n_decisions: int = 50_000,
    n_slots: int = 5,
    n_candidates: int | None = None,
    batch: int = 500,
    min_epsilon: float = DEFAULT_FLOOR,
) -> RegretRun:
    """One policy, one seed: serve ``n_decisions`` requests and record the exact regret.

    ``min_epsilon`` is the serving floor (the engine's default, so that the regret is what a
    served, evaluable policy pays); ``n_candidates`` defaults to the scenario's, else 30."""
    config, sc_candidates = scenario_shop(scenario, shop_config)
    n_candidates = n_candidates or sc_candidates or 30
    world, traffic_seq, click_seq, policy_seq = np.random.SeedSequence(seed).spawn(4)
    shop = Shop(config, seed=world)
    cf = ItemItemCF(n_neighbors=max(50, 2 * n_candidates // max(config.history_purchases, 1))).fit(shop.history)
    env = policy_env(shop, cf)
    # regret needs no marginals; only a learner that trains on them (vw-cb) pays for them. The
    # Monte-Carlo draws behind propensities never change which slate is served (a Thompson
    # slate ranks by one fresh posterior draw, a Plackett-Luce slate samples its own path), so
    # a policy that learns without marginals is served with two: the same decisions, faster
    needs_marginals = uses_marginals(make(spec, **env))
    policy = make(spec, **env, **({} if needs_marginals else {"mc_draws": 2}))
    traffic, clicks, sampler = (np.random.default_rng(s) for s in (traffic_seq, click_seq, policy_seq))
    fresh = np.random.default_rng(traffic_seq.spawn(1)[0])
    cache: dict = {}  # each customer's CF candidates
    theta = shop.model.examination(n_slots)
    got = np.empty(n_decisions)
    best = np.empty(n_decisions)
    start = time.perf_counter()
    done = 0
    while done < n_decisions:
        size = min(batch, n_decisions - done)

        def score(i, c, items, draw, value, _at=done):
            best[_at + i] = theta @ np.sort(value)[::-1][:n_slots]
            got[_at + i] = theta @ value[draw.index]

        serve_and_learn(
            policy,
            shop,
            cf,
            shop.requests(size, traffic),
            n_slots=n_slots,
            n_candidates=n_candidates,
            min_epsilon=min_epsilon,
            sampler=sampler,
            clicks=clicks,
            marginals=needs_marginals,
            on_decision=score,
            first=done,
            fresh=fresh,
            cache=cache,
        )
        done += size
    regret = np.cumsum(best - got)
    return RegretRun(
        spec=spec,
        seed=int(seed),
        cumulative=regret,
        reward=float(got.mean()),
        oracle=float(best.mean()),
        seconds=time.perf_counter() - start,
        scenario=scenario,
    )


def candidates_for(
    shop: Shop,
    cf: ItemItemCF,
    customer: int,
    n_candidates: int,
    *,
    day: float = 0.0,
    fresh: np.random.Generator | None = None,
    cache: dict | None = None,
) -> np.ndarray:
    """The candidates of one customer at ``day``: CF's from their pre-period purchases and,
    when items launch during the run, up to a sixth drawn (with ``fresh``) from the items
    launched in the last ``FRESH_DAYS`` days. ``cache`` keeps each customer's CF candidates
    (they depend on the customer and the count only)."""
    k = 0
    if shop.config.new_item_share:
        launched = shop.launch_day
        recent = np.flatnonzero((launched > 0) & (launched <= day) & (launched > day - FRESH_DAYS))
        k = min(len(recent), n_candidates // 6)
    key = (customer, n_candidates - k)
    cf_items = None if cache is None else cache.get(key)
    if cf_items is None:
        history = shop.history.indices[shop.history.indptr[customer] : shop.history.indptr[customer + 1]]
        cf_items = cf.candidates(history, n_candidates - k)[0]
        if cache is not None:
            cache[key] = cf_items
    if not k:
        return cf_items
    assert fresh is not None, "items launch during the run: candidates_for needs fresh to draw them"
    return np.concatenate([cf_items, fresh.choice(recent, size=k, replace=False)])


def serve_and_learn(
    policy,
    shop: Shop,
    cf: ItemItemCF,
    req,
    *,
    n_slots: int,
    n_candidates: int,
    min_epsilon: float,
    sampler: np.random.Generator,
    clicks: np.random.Generator,
    marginals: bool = True,
    on_decision=None,
    first: int = 0,
    fresh: np.random.Generator | None = None,
    cache: dict | None = None,
) -> None:
    """Serve one batch of requests with ``policy``, sample the rewards, and learn from them.

    Request ``i`` is decision ``first + i`` of the run, at day ``(first + i) / day_decisions``.
    ``on_decision(i, customer, candidates, draw, value)`` sees every decision as it is made,
    with ``value``, the candidates' exact expected reward per look (:meth:`Shop.item_value`).
    """
    features = shop.catalog.features
    size = len(req.customer)
    day = (first + np.arange(size)) / shop.config.day_decisions if shop.changes else np.zeros(size)
    slates = np.empty((size, n_slots), dtype=np.int64)
    cand_lists, marg_rows, cond_rows, cold_rows = [], [], [], []
    for i in range(size):
        c = int(req.customer[i])
        items = candidates_for(shop, cf, c, n_candidates, day=float(day[i]), fresh=fresh, cache=cache)
        cold = shop.cold(float(day[i]))[items] if shop.config.new_item_share else None
        dist = policy.distribution(
            Request(context=req.context[i], items=items, item_features=features[items], cold=cold), n_slots, min_epsilon
        )
        draw = dist.sample(sampler, marginals=marginals)
        slates[i] = items[draw.index]
        if on_decision is not None:
            on_decision(i, c, items, draw, shop.item_value(c, items, float(day[i])))
        cand_lists.append(items)
        marg_rows.append(draw.marginal)
        cond_rows.append(draw.propensity)
        cold_rows.append(np.zeros(n_slots, bool) if cold is None else cold[draw.index])
    rewarded = shop.respond(req, slates, clicks, day=day if shop.changes else None)
    learn(
        policy,
        req.context,
        cand_lists,
        slates,
        rewarded,
        marg_rows,
        cond_rows,
        features,
        cold=np.concatenate(cold_rows) if shop.config.new_item_share else None,
    )


def learn(policy, context, cand_lists, slates, clicked, marg_rows, cond_rows, features, cold=None) -> None:
    """Update ``policy`` on one batch of served slates through the engine's own learning path;
    ``cold (size * K,)``: each shown item's cold flag when it was shown."""
    logged = LoggedDecisions.from_slates(
        context, cand_lists, slates, marginal=marg_rows, propensity=cond_rows, reward=clicked
    )
    learn_from_log(policy, logged, features, row_cold=cold)


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

    def paired(self, baseline: RegretRow, level: float = 0.95) -> tuple[float, float, float]:
        """Mean and t interval of this policy's final regret minus ``baseline``'s, seed by seed
        (both ran on the same customers and candidates per seed, so the worlds' spread cancels)."""
        if [r.seed for r in self.runs] != [r.seed for r in baseline.runs]:
            raise ValidationError("paired differences need the same seeds for both policies", "seeds")
        d = self.finals - baseline.finals
        mean = float(d.mean())
        if len(d) < 2:
            return mean, float("nan"), float("nan")
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        return mean, mean - half, mean + half


def regret_study(
    specs, seeds, *, echo: Callable[[str], None] | None = None, jobs: int = 1, **kwargs
) -> list[RegretRow]:
    """Every policy over every seed (same seeds for every policy); ``jobs`` worker processes
    run (policy, seed) pairs side by side -- each run is seeded on its own, so the numbers do
    not depend on ``jobs``."""
    if not specs:
        raise ValidationError("give at least one policy", "policy")
    seeds = list(seeds)
    if not seeds:
        raise ValidationError("give at least one seed", "seeds")
    for spec in specs:  # a bad spec fails before any simulation
        name, _ = parse_spec(spec)
        if name not in REGISTRY:
            raise ValidationError(f"unknown policy {name!r}; known: {', '.join(sorted(REGISTRY))}", "policy")
    tasks = [(spec, seed) for spec in specs for seed in seeds]

    def report(run):
        if echo:
            echo(
                f"  {run.spec:<40} seed {run.seed}: cumulative regret {run.cumulative[-1]:9.1f}  "
                f"({run.reward:.4f} vs oracle {run.oracle:.4f} per carousel, {run.seconds:.0f} s)"
            )

    done: dict[tuple[str, int], RegretRun] = {}
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(regret_run, spec, seed, **kwargs) for spec, seed in tasks]
            for fut in as_completed(futures):
                run = fut.result()
                done[(run.spec, run.seed)] = run
                report(run)
    else:
        for spec, seed in tasks:
            run = regret_run(spec, seed, **kwargs)
            done[(spec, seed)] = run
            report(run)
    return [RegretRow(spec, [done[(spec, seed)] for seed in seeds]) for spec in specs]


def regret_table(rows: list[RegretRow]) -> str:
    w = max(len(r.spec) for r in rows)
    n = len(rows[0].runs[0].cumulative)
    sc = rows[0].runs[0].scenario
    unit = f"{get_scenario(sc).reward}s/carousel"
    u = max(15, len(unit))
    head = f"{'policy':<{w}}  {'cumulative regret':>17}  {'95% CI':>21}  {unit:>{u}}  {'oracle':>6}"
    lines = [
        f"scenario {sc}: cumulative regret after {n:,} decisions, mean over {len(rows[0].runs)} seeds",
        head,
        "-" * len(head),
    ]
    for r in sorted(rows, key=lambda r: r.interval()[0]):
        mean, lo, hi = r.interval()
        reward = np.mean([x.reward for x in r.runs])
        oracle = np.mean([x.oracle for x in r.runs])
        lines.append(f"{r.spec:<{w}}  {mean:>17,.1f}  [{lo:>9,.1f}, {hi:>9,.1f}]  {reward:>{u}.4f}  {oracle:>6.4f}")
    base = next((r for r in rows if r.spec.split(":")[0] == "egreedy"), None)
    if base is not None and len(rows) > 1 and len(base.runs) > 1:
        lines += ["", f"paired difference from {base.spec} (the same seeds; below 0: less regret), 95% CI"]
        for r in sorted(rows, key=lambda r: r.interval()[0]):
            if r is not base:
                d, lo, hi = r.paired(base)
                lines.append(f"{r.spec:<{w}}  {d:>+17,.1f}  [{lo:>+9,.1f}, {hi:>+9,.1f}]")
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
    ax.set_ylabel(f"cumulative regret (expected {get_scenario(rows[0].runs[0].scenario).reward}s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the business-objective sensitivity table ----------------------------------------------
@dataclass
class SensitivityRow:
    sensitivity: str
    metrics: dict  # Personalize's metrics plus every business column's total in the top k


def sensitivity_study(
    spec: str,
    objective: str = "price",
    *,
    seed: int = 0,
    shop_config: ShopConfig | None = None,
    n_train: int = 10_000,
    n_test: int = 5_000,
    k: int = 5,
    n_candidates: int = 30,
    batch: int = 500,
) -> list[SensitivityRow]:
    """Amazon Personalize's objective-sensitivity table, in the simulated shop.

    ``spec`` learns online for ``n_train`` decisions; then, for ``n_test`` held-out requests,
    the same learned state ranks the candidates greedily (epsilon 0) with the business column
    ``objective`` blended in at each sensitivity. Relevant items are the held-out customer's
    clicks, sampled once from the click model on every candidate (the same for every
    sensitivity); metrics follow Personalize's definitions (``banditrec.ope.ranking``).

    ``objective`` is one of the shop's item columns (:func:`studies.coverage.policy_env`):
    ``price``, ``royalty`` (the royalty paid per sale) or ``net`` = price - royalty, what the
    shop keeps per sale; the blend maximises it. Each row's metrics hold, beside Personalize's,
    ``COLUMN_in_top_k`` for *every* item column: its total over the k items recommended, mean
    per customer (so with ``objective="net"`` the rows also say what the shop would pay in
    royalties, ``royalty_in_top_k``, and the price, ``price_in_top_k``, of those items). For
    fixed learned scores, the objective's total in the top k cannot fall as the sensitivity
    rises (greedy top k of a linear blend: raising its weight can only replace an item of the
    top k by one with a higher column value), request by request.
    """
    from banditrec.ope import ranking_metrics
    from banditrec.policies import SENSITIVITY

    config = shop_config or ShopConfig()
    world, traffic_seq, click_seq, policy_seq, test_seq, rel_seq = np.random.SeedSequence(seed).spawn(6)
    shop = Shop(config, seed=world)
    cf = ItemItemCF(n_neighbors=50).fit(shop.history)
    env = policy_env(shop, cf)
    columns = env["item_columns"]
    if objective not in columns:
        raise ValidationError(
            f"objective {objective!r} is not an item column of the shop; known: {', '.join(sorted(columns))}",
            "objective",
        )
    trained = make(spec, **env)
    traffic, clicks, sampler = (np.random.default_rng(s) for s in (traffic_seq, click_seq, policy_seq))
    features = shop.catalog.features
    done = 0
    while done < n_train:  # learn online, as served
        size = min(batch, n_train - done)
        serve_and_learn(
            trained,
            shop,
            cf,
            shop.requests(size, traffic),
            n_slots=k,
            n_candidates=n_candidates,
            min_epsilon=0.0,
            sampler=sampler,
            clicks=clicks,
        )
        done += size
    arrays, meta = trained.state()
    test = shop.requests(n_test, np.random.default_rng(test_seq))
    rel_rng = np.random.default_rng(rel_seq)
    cands, relevant = [], []
    for i in range(n_test):
        c = int(test.customer[i])
        items = candidates_for(shop, cf, c, n_candidates)
        cands.append(items)
        relevant.append(items[rel_rng.random(len(items)) < shop.model.attraction(np.full(len(items), c), items)])
    value = np.asarray(columns[objective], dtype=float)
    totals = {name: np.asarray(col, dtype=float) for name, col in columns.items()}
    out = []
    for level in SENSITIVITY:
        extra = f"objective={objective},sensitivity={level}" if level != "off" else ""
        body = spec if not extra else (f"{spec},{extra}" if ":" in spec else f"{spec}:{extra}")
        policy = make(body, **env)
        policy.set_state(arrays, dict(meta))
        rank_rng = np.random.default_rng(0)
        rec = np.empty((n_test, k), dtype=np.int64)
        for i, items in enumerate(cands):
            dist = policy.distribution(Request(test.context[i], items, features[items]), k)
            rec[i] = items[dist.greedy().sample(rank_rng).index]
        m = ranking_metrics(rec, relevant, k=k, n_items=shop.catalog.n_items, item_value=value)
        out.append(
            SensitivityRow(
                level,
                {
                    "average_reward_at_k": m.average_reward,
                    "coverage": m.coverage,
                    "mrr": m.mrr,
                    "ndcg_at_k": m.ndcg,
                    "precision_at_k": m.precision,
                    **{f"{name}_in_top_k": float(col[rec].sum(axis=1).mean()) for name, col in totals.items()},
                    "n_users": m.n_users,
                },
            )
        )
    return out


def sensitivity_table(rows: list[SensitivityRow], k: int, objective: str) -> str:
    """Personalize's columns, the objective's total in the top k and, when the rows have it and
    the objective is another column, the royalty the shop pays on those k items."""
    extra = [objective] + [c for c in ("royalty",) if c != objective and f"{c}_in_top_k" in rows[0].metrics]
    names = [f"{c} in top {k}" for c in extra]
    widths = [max(14, len(n)) for n in names]
    head = (
        f"{'sensitivity':<11} {'avg reward@' + str(k):>13} {'coverage':>9} {'MRR':>7} {'NDCG@' + str(k):>8} "
        f"{'precision@' + str(k):>12}" + "".join(f" {n:>{w}}" for n, w in zip(names, widths))
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r.metrics
        lines.append(
            f"{r.sensitivity:<11} {m['average_reward_at_k']:>13.4f} {m['coverage']:>9.4f} {m['mrr']:>7.4f} "
            f"{m['ndcg_at_k']:>8.4f} {m['precision_at_k']:>12.4f}"
            + "".join(f" {m[c + '_in_top_k']:>{w}.2f}" for c, w in zip(extra, widths))
        )
    return "\n".join(lines)
