"""The small simulated shop wired to an engine: CF candidates, a policy, every decision logged
with its propensities, and off-policy estimates checked against the simulator's exact truth,
in process. ``banditrec coverage`` repeats it over many seeds; tests, benchmarks and notebooks
use its engine. (``banditrec demo`` runs the full path through a shop directory:
:mod:`studies.demo`.)

This module is wiring: it drives the simulator (tests/test_architecture.py holds the line).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from banditrec.candidates import ItemItemCF
from banditrec.engine import Engine, ItemTable
from banditrec.errors import ValidationError
from banditrec.offline import target_pscore
from banditrec.ope import IPS, SNIPS, OPEWarning
from banditrec.policies import make
from banditrec.policies.base import DEFAULT_FLOOR
from banditrec.service import create_app
from banditrec.store import DecisionLog
from banditrec.types import Estimate
from simulator import Shop, ShopConfig


def build_engine(
    shop: Shop,
    policy_spec: str,
    log: DecisionLog,
    *,
    seed=None,
    n_candidates: int = 30,
    min_epsilon: float = DEFAULT_FLOOR,
    clock=time.time,
    n_neighbors: int = 50,
) -> Engine:
    """An engine for the simulated shop: CF fitted on its pre-period purchases; ``min_epsilon``
    0 serves without a floor (``floor_off``)."""
    items = ItemTable(ids=tuple(shop.catalog.item_ids), features=shop.catalog.features)
    cf = ItemItemCF(n_neighbors=n_neighbors).fit(shop.history)
    policy = make(policy_spec, **policy_env(shop, cf))
    return Engine(
        items=items,
        policy=policy,
        log=log,
        candidate_generator=cf,
        user_items=shop.history,
        user_index={u: i for i, u in enumerate(shop.customers.user_ids)},
        context_dim=shop.config.dim,
        n_candidates=n_candidates,
        min_epsilon=min_epsilon,
        floor_off=min_epsilon == 0,
        seed=seed,
        clock=clock,
    )


def policy_env(shop: Shop, cf: ItemItemCF) -> dict:
    """What a policy may be told about this shop when it is built.

    ``item_columns`` are the business columns a policy can blend in (``objective=COLUMN``) or
    weigh by (``value=COLUMN``): ``price``, ``royalty`` (the royalty the shop pays per sale) and
    ``net`` = price - royalty, what the shop keeps per sale."""
    catalog = shop.catalog
    return {
        "context_dim": shop.config.dim,
        "item_dim": shop.config.dim,
        "popularity": cf.popularity,
        "n_items": catalog.n_items,
        "item_types": catalog.product_type,
        "item_columns": {"price": catalog.price, "royalty": catalog.royalty, "net": catalog.price - catalog.royalty},
    }


@dataclass
class PolicyResult:
    spec: str
    truth: float
    estimates: dict[str, Estimate]


@dataclass
class Served:
    """What a simulated run served: who asked, and the exact value of the logging policy."""

    customer: np.ndarray  # (D,) customer of each logged decision, in log order
    truth: np.ndarray  # (D,) exact expected clicks of the logging policy's distribution
    n_rewards: int
    max_pscore_mismatch: float


def _http_transport(engine: Engine):
    client = create_app(engine).test_client()

    def decide(user, n_slots, ctx):
        resp = client.post("/v1/decide", json={"user_id": user, "slots": n_slots, "context": ctx.tolist()})
        if resp.status_code != 200:
            raise RuntimeError(f"/v1/decide answered {resp.status_code}: {resp.get_json()}")
        body = resp.get_json()
        return body["event_id"], [s["item_id"] for s in body["slots"]]

    def reward(event_id, position, value):
        resp = client.post("/v1/reward", json={"event_id": event_id, "position": position, "reward": value})
        if resp.status_code != 200:
            raise RuntimeError(f"/v1/reward answered {resp.status_code}: {resp.get_json()}")

    return decide, reward


def _engine_transport(engine: Engine):
    def decide(user, n_slots, ctx):
        d = engine.decide(user, n_slots, context=ctx)
        return d.event_id, [s.item_id for s in d.slots]

    def reward(event_id, position, value):
        engine.reward(event_id, value, position=position)

    return decide, reward


def simulate(
    shop: Shop,
    engine: Engine,
    *,
    n_decisions: int,
    n_slots: int,
    batch: int,
    traffic: np.random.Generator,
    clicks: np.random.Generator,
    via: str = "http",
    echo=None,
) -> Served:
    """Serve ``n_decisions`` simulated requests and post their clicks back; learn per batch.

    ``via="http"`` goes through the Flask app (test client), ``via="engine"`` calls the engine
    directly. After each batch, before learning, the logging policy's exact value on that
    batch is computed from the log -- which also re-derives every logged marginal propensity.
    """
    decide, reward = {"http": _http_transport, "engine": _engine_transport}[via](engine)
    item_of = {item: i for i, item in enumerate(engine.items.ids)}
    customers, truths = [], []
    n_rewards, mismatch, learned = 0, 0.0, engine.log.max_seq()
    n_batches = -(-n_decisions // batch)
    for b in range(n_batches):
        size = min(batch, n_decisions - b * batch)
        req = shop.requests(size, traffic)
        event_ids, slates = [], np.empty((size, n_slots), dtype=np.int64)
        for i, (user, ctx) in enumerate(zip(req.user_ids(), req.context)):
            event_id, shown = decide(user, n_slots, ctx)
            event_ids.append(event_id)
            slates[i] = [item_of[s] for s in shown]
        clicked = shop.respond(req, slates, clicks)
        for i, k in zip(*np.nonzero(clicked)):
            reward(event_ids[i], int(k), 1.0)
            n_rewards += 1
        logged = engine.log.decisions(after_seq=learned)
        truth = np.empty(logged.n_decisions)

        def exact(d, items, marg, _cust=req.customer, _truth=truth):
            _truth[d] = shop.model.expected_reward_of_distribution(_cust[d], items, marg)

        recomputed = target_pscore(
            engine.policy, logged, engine.items.features, min_epsilon=engine.min_epsilon, on_decision=exact
        )
        mismatch = max(mismatch, float(np.abs(recomputed - logged.row_pscore).max()))
        customers.append(req.customer)
        truths.append(truth)
        learned = int(logged.seq[-1])
        engine.learn(until_seq=learned)
        if echo and (b + 1) % max(1, n_batches // 10) == 0:
            echo(
                f"  {b * batch + size:>7} decisions logged; exact clicks per carousel in this batch {truth.mean():.4f}"
            )
    return Served(
        customer=np.concatenate(customers),
        truth=np.concatenate(truths),
        n_rewards=n_rewards,
        max_pscore_mismatch=mismatch,
    )


def evaluate_against_truth(
    shop: Shop, engine: Engine, served: Served, targets, *, n_slots: int, estimators=None
) -> tuple[list[PolicyResult], dict[str, np.ndarray]]:
    """Estimate the logging policy and each target from the log; pair each with its exact value.

    Returns the results and, per policy, its exact value per decision.
    """
    estimators = estimators or {"IPS": IPS(), "SNIPS": SNIPS()}
    with warnings.catch_warnings():  # the table marks estimates whose diagnostics warn
        warnings.simplefilter("ignore", OPEWarning)
        return _evaluate(shop, engine, served, targets, n_slots=n_slots, estimators=estimators)


def _evaluate(shop, engine, served, targets, *, n_slots, estimators):
    logged = engine.log.decisions()
    if logged.n_decisions != len(served.customer):
        raise RuntimeError(f"log holds {logged.n_decisions} decisions, the run served {len(served.customer)}")
    data = logged.logged_bandit(n_actions=engine.items.n_items, n_slots=n_slots)
    results = [
        PolicyResult(
            spec=f"{engine.policy.spec} (logging)",
            truth=float(served.truth.mean()),
            estimates={k: est.estimate(data, target_pscore=data.pscore) for k, est in estimators.items()},
        )
    ]
    per_decision = {"logging": served.truth}
    for spec in targets:
        target = make(spec, **policy_env(shop, engine.cf))
        truth = np.empty(logged.n_decisions)

        def exact(d, items, marg, _truth=truth):
            _truth[d] = shop.model.expected_reward_of_distribution(served.customer[d], items, marg)

        pi = target_pscore(target, logged, engine.items.features, on_decision=exact)
        results.append(
            PolicyResult(
                spec=target.spec,
                truth=float(truth.mean()),
                estimates={k: est.estimate(data, target_pscore=pi) for k, est in estimators.items()},
            )
        )
        per_decision[target.spec] = truth
    return results, per_decision


def _check_run(config: ShopConfig, *, n_decisions, n_slots, n_candidates, batch):
    """Refuse sizes that cannot work before any simulation time is spent."""
    eligible = config.n_items - config.history_purchases
    if n_decisions < 2:
        raise ValidationError(f"decisions must be at least 2 (intervals need two), got {n_decisions}", "decisions")
    if batch < 1:
        raise ValidationError(f"batch must be at least 1, got {batch}", "batch")
    if not 1 <= n_slots <= n_candidates:
        raise ValidationError(f"slots must be between 1 and candidates ({n_candidates}), got {n_slots}", "slots")
    if n_candidates > eligible:
        raise ValidationError(
            f"candidates ({n_candidates}) exceeds the {eligible} items a customer has not bought "
            f"({config.n_items} items, {config.history_purchases} bought each)",
            "candidates",
        )


def _run(
    seed,
    shop_config,
    policy,
    log,
    *,
    n_decisions,
    n_slots,
    n_candidates,
    batch,
    via,
    targets=(),
    echo=None,
    floor: float = DEFAULT_FLOOR,
):
    """One seeded run: the seed splits into world, engine, traffic and click streams."""
    config = shop_config or ShopConfig()
    _check_run(config, n_decisions=n_decisions, n_slots=n_slots, n_candidates=n_candidates, batch=batch)
    world_seq, engine_seq, traffic_seq, click_seq = np.random.SeedSequence(seed).spawn(4)
    shop = Shop(config, seed=world_seq)
    now = [0.0]  # simulated clock: one second per request

    def clock():
        now[0] += 1.0
        return now[0]

    engine = build_engine(shop, policy, log, seed=engine_seq, n_candidates=n_candidates, clock=clock, min_epsilon=floor)
    for spec in targets:  # a bad target spec fails now, not after the simulation
        make(spec, **policy_env(shop, engine.cf))
    served = simulate(
        shop,
        engine,
        n_decisions=n_decisions,
        n_slots=n_slots,
        batch=batch,
        traffic=np.random.default_rng(traffic_seq),
        clicks=np.random.default_rng(click_seq),
        via=via,
        echo=echo,
    )
    return shop, engine, served


@dataclass
class CoverageRow:
    policy: str
    estimator: str
    covered: int
    runs: int
    z: np.ndarray  # (runs,) (estimate - truth) / se

    @property
    def coverage(self) -> float:
        return self.covered / self.runs


def coverage_study(
    *,
    seeds=range(10),
    n_decisions: int = 20_000,
    n_slots: int = 5,
    n_candidates: int = 30,
    batch: int = 500,
    policy: str = "linucb:alpha=1.0,epsilon=0.1",
    targets: tuple[str, ...] = ("uniform", "popularity:epsilon=0.1"),
    shop_config: ShopConfig | None = None,
    echo=print,
) -> list[CoverageRow]:
    """Repeat the demo (in process, in-memory log) over ``seeds``; for every policy and
    estimator, how often the 95% interval covered the exact truth, and the standardised errors
    (estimate - truth) / se, which should look standard normal if the intervals are honest."""
    rows: dict[tuple[str, str], CoverageRow] = {}
    for seed in seeds:
        shop, engine, served = _run(
            seed,
            shop_config,
            policy,
            DecisionLog(),
            n_decisions=n_decisions,
            n_slots=n_slots,
            n_candidates=n_candidates,
            batch=batch,
            via="engine",
            targets=targets,
        )
        results, _ = evaluate_against_truth(shop, engine, served, targets, n_slots=n_slots)
        engine.log.close()
        for r in results:
            for name, e in r.estimates.items():
                row = rows.setdefault((r.spec, name), CoverageRow(r.spec, name, 0, 0, np.empty(0)))
                row.covered += e.covers(r.truth)
                row.runs += 1
                row.z = np.append(row.z, _standardised(e, r.truth))
        if echo:
            echo(
                f"  seed {seed}: "
                + ", ".join(
                    f"{r.spec.split(':')[0]} IPS z={_standardised(r.estimates['IPS'], r.truth):+.2f}" for r in results
                )
            )
    return list(rows.values())


def _standardised(e: Estimate, truth: float) -> float:
    """(estimate - truth) / se; an exact estimate with se 0 counts as 0, a wrong one as +-inf."""
    diff = e.value - truth
    if e.se > 0:
        return diff / e.se
    return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)


def coverage_table(rows: list[CoverageRow]) -> str:
    w = max(len(r.policy) for r in rows)
    head = f"{'policy':<{w}}  {'estim.':<6} {'covered':>9} {'mean z':>7} {'sd z':>6} {'min z':>6} {'max z':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        sd = r.z.std(ddof=1) if r.runs > 1 else float("nan")
        lines.append(
            f"{r.policy:<{w}}  {r.estimator:<6} {r.covered:>4}/{r.runs:<4} {r.z.mean():>7.2f} {sd:>6.2f} "
            f"{r.z.min():>6.2f} {r.z.max():>6.2f}"
        )
    return "\n".join(lines)
