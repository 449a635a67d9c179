"""Run the retail shop with a banditrec policy, logging every decision through banditrec's
store and learning from the log at the end of every day.

Details: docs/simulator.md, "Running a policy in the shop (`studies/simulate.py`)".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banditrec.candidates import (
    AlreadyBought,
    CandidateGenerator,
    Filters,
    Interactions,
    MetadataIndex,
    OutOfStock,
    UserState,
)
from banditrec.candidates.generator import SOURCES
from banditrec.candidates.hybrid import DEFAULT_QUOTAS, BrainSettings, fit_brains
from banditrec.engine import Engine, ItemTable
from banditrec.errors import ValidationError
from banditrec.policies import make
from banditrec.store import DecisionLog
from banditrec.types import Reward
from banditrec.validation import as_seed_sequence, check_positive_int
from simulator.config import SimConfig
from simulator.environment import DayKPIs, Environment
from simulator.history import DAY_S, event_times

REWARD_KINDS = ("click", "purchase", "margin")


@dataclass
class SimulationResult:
    spec: str
    kpis: list[DayKPIs]
    n_decisions: int
    n_rewards: int
    retention: float  # share of customers alive at the end
    ltv: float  # mean discounted margin per customer over the horizon (all customers)
    seconds: float
    db: Path | None = None
    expected: dict = field(default_factory=dict)  # kind -> exact expected total of the carousels shown


KPI_HEAD = (
    f"{'day':>4} {'visits':>7} {'CTR':>6} {'conv':>6} {'AOV':>7} {'revenue':>10} {'margin':>9} "
    f"{'active':>7} {'retained':>8}"
)


def kpi_row(k: DayKPIs, n_customers: int) -> str:
    return (
        f"{k.day:>4} {k.visits:>7,} {k.ctr:>6.3f} {k.conversion:>6.3f} {k.aov:>7.2f} {k.revenue:>10,.0f} "
        f"{k.margin:>9,.0f} {k.active_30d:>7,} {k.alive / n_customers:>8.3f}"
    )


def simulate(
    config: SimConfig | None = None,
    policy: str = "uniform",
    days: int = 90,
    *,
    db=None,
    seed=0,
    n_slots: int = 5,
    n_candidates: int = 50,
    min_epsilon: float = 0.01,
    learn_kind: str = "click",
    refit_days: int = 7,
    progress: bool = False,
    echo=None,
    brains: bool = False,
    without: str | None = None,
) -> SimulationResult:
    """Run ``days`` days of the shop with the policy ``policy`` (a banditrec spec).

    Candidates come from :class:`banditrec.candidates.CandidateGenerator` (complements of the
    visitor's cart and purchases, substitutes of their views, new items by metadata
    similarity, popular in their segment), refitted
    every ``refit_days`` on all events so far; out-of-stock items and non-consumable types the
    visitor owns are filtered out. The log receives the catalog (features and attributes: type,
    category, brand, title, price, margin, ...) and every interaction event, so
    ``banditrec similar --db`` can inspect the candidate model from the log alone.

    ``brains``: also latent factors, reorder timing and the product graph's accessories, with
    quotas (:func:`banditrec.candidates.hybrid.fit_brains`); each candidate's source is logged.
    ``without``: leave that source out (the ablation's arms).

    ``db``: the decision log's path (a new file; ``None`` keeps it in memory). ``echo(line)``
    receives the KPI table's lines as days end. Returns the daily KPIs, lifetime value and the
    exact expected clicks, purchases and margin of every carousel shown (the truth an
    off-policy estimate of this log can be checked against).
    """
    config = config or SimConfig()
    days = check_positive_int(days, "days")
    n_slots = check_positive_int(n_slots, "slots")
    n_candidates = check_positive_int(n_candidates, "candidates")
    refit_days = check_positive_int(refit_days, "refit_days")
    if n_slots > n_candidates:
        raise ValidationError(f"slots ({n_slots}) must not exceed candidates ({n_candidates})", "slots")
    if learn_kind not in REWARD_KINDS:
        raise ValidationError(f"learn_kind must be one of {', '.join(REWARD_KINDS)}; got {learn_kind!r}", "learn_kind")
    if db is not None:
        db = Path(db)
        if db.exists():
            raise ValidationError(
                f"{db} already exists; simulate writes a new log (remove it or choose another path)", "db"
            )
        db.parent.mkdir(parents=True, exist_ok=True)
    world_seq, policy_seq, respond_seq = as_seed_sequence(seed).spawn(3)
    env = Environment(config, seed=world_seq)
    env.recording = True  # the log gets every view, cart add and purchase, pre-period included
    env.warm_up()
    cat = env.catalog
    base_s = config.history_days * DAY_S  # the log's clock: 0 is the first day of the pre-period
    log = DecisionLog(str(db) if db is not None else ":memory:")
    log.write_items(cat.item_ids, cat.latent.astype(float), item_attrs(cat))
    events = _write_events(log, env.take_events(), base_s)
    shop = ShopCandidates(env, events, brains=brains, without=without)
    engine = shop.engine(
        shop.policy(policy),
        log,
        ItemTable(ids=tuple(cat.item_ids), features=cat.latent.astype(float)),
        events.user_items("purchase"),
        n_candidates=n_candidates,
        min_epsilon=min_epsilon,
        seed=policy_seq,
    )
    clock = engine.clock
    respond_rng = np.random.default_rng(respond_seq)
    expected = {k: 0.0 for k in REWARD_KINDS}
    n_decisions = n_rewards = 0
    say = echo or (lambda line: None)
    say(KPI_HEAD)
    say("-" * len(KPI_HEAD))
    start = time.perf_counter()
    bar = _progress(days, progress)
    try:
        for _ in range(days):
            req = env.requests()
            m = len(req)
            times = base_s + env.day * DAY_S + req.hour * 3600.0
            cand, sources = shop.with_sources(req, n_candidates, n_slots, times)
            clock.schedule(times)  # each decision at its visit's hour
            slates, event_ids = decide_requests(engine, req, np.arange(m), cand, n_slots, sources)
            for kind in REWARD_KINDS:
                expected[kind] += float(env.expected_reward(req, slates, kind).sum())
            out = env.respond(req, slates, respond_rng)
            clock.now = base_s + (env.day + 1) * DAY_S - 1.0  # rewards arrive by the end of the day
            n_rewards += _post_rewards(log, event_ids, out, clock.now)
            n_decisions += m
            engine.learn(kind=learn_kind)
            kpi = env.advance_day()
            shop.add(_write_events(log, env.take_events(), base_s))
            if env.day % refit_days == 0:  # the candidate model learns the new days' events
                shop.refit()
            say(kpi_row(kpi, config.n_customers))
            bar.update(1)
    finally:
        bar.close()
    result = SimulationResult(
        spec=policy,
        kpis=env.kpis[-days:],
        n_decisions=n_decisions,
        n_rewards=n_rewards,
        retention=env.retention,
        ltv=float(env.state.ltv.mean()),
        seconds=time.perf_counter() - start,
        db=db,
        expected=expected,
    )
    log.close()
    return result


def decide_requests(
    engine, req, rows: np.ndarray, cand: np.ndarray, n_slots: int, sources: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """The carousels ``engine`` decides (in one batch) for the requests ``rows`` of ``req``
    with candidates ``cand`` (item indices, -1 pads) and, optionally, their ``sources`` (logged
    for the ablation): their slates as item indices ``(len(rows), n_slots)`` (through the
    engine's own item table) and their event ids."""
    items = engine.items
    batch = [
        {
            "user_id": f"u{int(req.customer[i])}",
            "n_slots": n_slots,
            "context": req.context[i],
            "candidates": [items.ids[j] for j in cand[i] if j >= 0],
            **(
                {"candidate_sources": [str(x) for x, j in zip(sources[i], cand[i]) if j >= 0]}
                if sources is not None
                else {}
            ),
        }
        for i in rows.tolist()
    ]
    decisions = engine.decide_batch(batch) if batch else []
    slates = items.index_of([s.item_id for d in decisions for s in d.slots], "slots")
    return slates.reshape(len(batch), n_slots), [d.event_id for d in decisions]


def item_attrs(cat) -> list[dict]:
    """Each item's attributes as the log stores them."""
    cols = {
        "type": cat.product_type,
        "category": cat.category,
        "brand": cat.brand,
        "price": cat.price,
        "margin": cat.margin,
        "gateway": cat.gateway,
        "consumable": cat.consumable[cat.product_type],
        "launch_day": cat.launch_day,
        **cat.columns,
    }
    lists = {k: np.asarray(v).tolist() for k, v in cols.items()}
    return [{"title": cat.title[j], **{k: v[j] for k, v in lists.items()}} for j in range(cat.n_items)]


def history_interactions(h, base_s: float = 0.0) -> Interactions:
    """The shop's recorded events as Interactions (times from :func:`event_times`)."""
    return Interactions.from_arrays(
        h.customer, h.item, event_times(h, base_s), h.kind, session=h.session, n_users=h.n_customers, n_items=h.n_items
    )


def _write_events(log: DecisionLog, h, base_s: float) -> Interactions:
    """Write the shop's recorded events to the log; return them as Interactions (log clock)."""
    kinds = np.array(["view", "cart", "purchase"], dtype=object)[h.kind]
    log.write_events(
        [f"u{c}" for c in h.customer.tolist()],
        [f"i{j}" for j in h.item.tolist()],
        kinds.tolist(),
        event_times(h, base_s).tolist(),
    )
    return history_interactions(h, base_s)


class ShopCandidates:
    """The shop's candidate generation, as :func:`simulate` and the A/B runner use it: the
    :class:`CandidateGenerator` over the events so far (metadata similarity for the items
    launched on day 0), filtered by stock and by the types a visitor owns, with the pre-period's
    best sellers filling rows that come up short."""

    def __init__(self, env, events: Interactions, *, brains: bool = False, without: str | None = None, seed: int = 0):
        cat = env.catalog
        self.env = env
        self.brains, self.without, self.seed = brains, without, seed
        if without is not None and without not in SOURCES:
            raise ValidationError(f"without must be one of {', '.join(SOURCES)}; got {without!r}", "without")
        self.stock_rule = OutOfStock(env.stock.available)
        metadata = MetadataIndex().fit(
            list(cat.title), fields={"type": cat.product_type, "brand": cat.brand}, numeric=cat.price[:, None]
        )  # cold start: new items launch on day 0
        self.generator = CandidateGenerator(
            filters=Filters([self.stock_rule, AlreadyBought(cat.product_type, cat.consumable)]),
            metadata=metadata,
            quotas=dict(DEFAULT_QUOTAS) if brains else None,
        )
        if without is not None:  # the source's component counts for nothing and keeps no quota
            self.generator.weights[without] = 0.0
            self.generator.quotas.pop(without, None)
            if without == "new":
                self.generator.min_new = 0
        self.purchases = np.bincount(events.item[events.kind == 2], minlength=cat.n_items).astype(float)
        self.fallback = np.argsort(-self.purchases, kind="stable")
        self._parts = [events]
        self.fit(events)

    def fit(self, events: Interactions) -> None:
        cat = self.env.catalog
        self.generator.fit(events, cat.product_type, user_segments=self.env.population.segment)
        if self.brains:
            fit_brains(
                self.generator,
                events,
                cat.product_type,
                consumable=cat.consumable,
                brand=cat.brand,
                price=cat.price,
                settings=BrainSettings(seed=self.seed, reorder=True),
            )

    def add(self, events: Interactions) -> None:
        """Keep a day's events for the next :meth:`refit` (the model does not see them yet)."""
        self._parts.append(events)

    def events(self) -> Interactions:
        """Every event so far: the ones given at construction, then each :meth:`add`."""
        if len(self._parts) > 1:
            self._parts = [_concat(self._parts)]
        return self._parts[0]

    def refit(self) -> Interactions:
        """Fit the candidate model on every event so far; returns them."""
        events = self.events()
        self.fit(events)
        return events

    def policy(self, spec: str, **columns):
        """``make(spec)`` for this shop: its dimensions, the pre-period's purchase counts as
        popularity, product types, and the catalog's value columns (price, margin, ... and any
        ``columns`` given, e.g. a long-term value)."""
        cat = self.env.catalog
        return make(
            spec,
            context_dim=self.env.context_dim,
            item_dim=self.env.config.dim,
            popularity=self.purchases,
            n_items=cat.n_items,
            item_types=cat.product_type,
            item_columns={"price": cat.price, "margin": cat.margin, **cat.columns, **columns},
        )

    def engine(
        self, policy, log: DecisionLog, items: ItemTable, user_items, *, n_candidates: int, min_epsilon: float, seed
    ) -> Engine:
        """An :class:`Engine` serving ``policy`` from this shop's candidates, on simulated time
        (``engine.clock`` is a :class:`_SimClock`)."""
        return Engine(
            items=items,
            policy=policy,
            log=log,
            candidate_generator=self.generator,
            user_items=user_items,
            user_index={},
            context_dim=self.env.context_dim,
            n_candidates=n_candidates,
            min_epsilon=min_epsilon,
            seed=seed,
            clock=_SimClock(),
        )

    def for_requests(self, req, n_candidates: int, n_slots: int, now: float | None = None) -> np.ndarray:
        """(m, >= n_slots) candidate item indices for the day's requests (-1 pads)."""
        return self.with_sources(req, n_candidates, n_slots, now)[0]

    def with_sources(self, req, n_candidates: int, n_slots: int, now=None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`for_requests` and each candidate's source (``""`` pads; ``"popular"`` for the
        best sellers that fill short rows). ``now``: each request's time on the events' clock
        (the reorder source needs it)."""
        self.stock_rule.available = req.available
        times = np.broadcast_to(np.asarray(now if now is not None else np.nan, dtype=float), (len(req),))
        states = [
            UserState(
                cart=r["cart"],
                purchased=r["purchases"],
                viewed=r["views"],
                segment=int(req.segment[i]),
                user=int(req.customer[i]),
                now=None if np.isnan(times[i]) else float(times[i]),
            )
            for i, r in ((i, req.recent(i)) for i in range(len(req)))
        ]
        ids, _, source = self.generator.candidates_batch(states, n_candidates)
        cand = _complete(ids, self.fallback, n_slots, req.available)
        out = np.full(cand.shape, "", dtype=object)
        out[:, : source.shape[1]] = source
        out[(cand >= 0) & (out == "")] = "popular"
        return cand, out


def _concat(parts: list[Interactions]) -> Interactions:
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return Interactions.from_arrays(
        cat("user"),
        cat("item"),
        cat("ts"),
        cat("kind"),
        session=cat("session"),
        n_users=parts[0].n_users,
        n_items=parts[0].n_items,
    )


def _complete(cand: np.ndarray, fallback: np.ndarray, n_slots: int, available: np.ndarray) -> np.ndarray:
    """Rows with fewer than ``n_slots`` candidates get the most bought available items added."""
    short = np.flatnonzero((cand >= 0).sum(axis=1) < n_slots)
    if len(short) == 0:
        return cand
    extra = fallback[available[fallback]]
    out = np.full((len(cand), max(cand.shape[1], n_slots)), -1, dtype=np.int64)
    out[:, : cand.shape[1]] = cand
    for r in short.tolist():
        have = out[r][out[r] >= 0]
        add = extra[~np.isin(extra, have)][: n_slots - len(have)]
        out[r, len(have) : len(have) + len(add)] = add
    return out


class _SimClock:
    """The engine's clock in simulated seconds: scheduled times first (one per decision, in the
    order the engine asks), then ``now``."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[float] = []

    def schedule(self, times) -> None:
        self._queue = [float(t) for t in times][::-1]

    def __call__(self) -> float:
        if self._queue:
            self.now = self._queue.pop()
        return self.now


def _post_rewards(log: DecisionLog, events: list[str], out, ts: float) -> int:
    """Every click, purchase and purchase margin, per slot, joined in one transaction."""
    rewards: list[Reward] = []
    for kind, values in (("click", out.click), ("purchase", out.purchase), ("margin", out.margin)):
        rows, cols = np.nonzero(values)
        vals = values[rows, cols].astype(float)
        rewards.extend(
            Reward(event_id=events[r], value=float(v), position=int(k), kind=kind, ts=ts)
            for r, k, v in zip(rows.tolist(), cols.tolist(), vals.tolist())
        )
    if rewards:
        log.record_rewards(rewards)
    return len(rewards)


def _progress(total: int, enabled: bool):
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, unit="day", desc="simulating", leave=False)
    return _NoBar()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


@dataclass(frozen=True)
class TrueValue:
    spec: str
    seed: int
    ltv: float  # mean discounted margin per customer over the horizon
    retention: float
    margin: float  # total margin (organic and carousel) over the run's days
    clicks_per_carousel: float  # exact expectation of the carousels shown


def true_values(specs, config: SimConfig | None = None, days: int = 90, seeds=(0,), **kw) -> list[TrueValue]:
    """Each policy's long-term value by simulation: every spec runs on every seed's world with
    common random numbers (same catalog, customers and per-day draws), so differences between
    specs on one seed are paired. ``kw`` goes to :func:`simulate` (slots, candidates, ...)."""
    out = []
    for seed in seeds:
        for spec in specs:
            r = simulate(config, spec, days, seed=seed, **kw)
            out.append(
                TrueValue(
                    spec=spec,
                    seed=int(seed),
                    ltv=r.ltv,
                    retention=r.retention,
                    margin=float(sum(k.margin for k in r.kpis)),
                    clicks_per_carousel=r.expected["click"] / max(r.n_decisions, 1),
                )
            )
    return out


def paired_difference(values: list[TrueValue], a: str, b: str, field: str = "ltv") -> tuple[float, float, int]:
    """Mean over seeds of ``field`` under ``a`` minus under ``b``, its standard error, and the
    number of seeds (pairs share a seed's world and draws)."""
    by = {(v.spec, v.seed): getattr(v, field) for v in values}
    seeds = sorted({v.seed for v in values if (a, v.seed) in by and (b, v.seed) in by})
    if not seeds:
        raise ValidationError(f"no seed has both {a!r} and {b!r}", "specs")
    d = np.array([by[(a, s)] - by[(b, s)] for s in seeds])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)
