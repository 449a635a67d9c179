"""A/B tests of carousel policies on the simulated shop, with the statistics to read them.

Customers are assigned to arms by a salted hash; each arm has its own engine, log and learning,
and all arms share the world's random numbers. An optional burn-in trains every arm on the
incumbent's log first.

Details: docs/abtest.md, "The A/B runner (`studies/abtest.py`)".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from banditrec import experiment
from banditrec.engine import ItemTable
from banditrec.errors import ValidationError
from banditrec.longterm import estimate_item_values
from banditrec.offline import train_from_log
from banditrec.policies import REGISTRY, parse_spec
from banditrec.store import DecisionLog
from banditrec.types import LoggedDecisions
from banditrec.validation import as_seed_sequence, check_positive_int
from simulator.carousel import Response
from simulator.config import SimConfig, read_toml
from simulator.environment import Environment
from simulator.history import PURCHASE
from simulator.scenarios import SCENARIOS as EXPLORATION_SCENARIOS
from studies.simulate import (
    DAY_S,
    REWARD_KINDS,
    ShopCandidates,
    _post_rewards,
    _progress,
    decide_requests,
    history_interactions,
)

ARM_KEYS = ("name", "learn", "lambda", "weight")

PRESETS = {
    # ranks by P(purchase) x margin: the immediate-margin policy
    "margin": "linucb:alpha=0.3,epsilon=0.05,value=margin,learn=purchase,name=margin",
    # ranks by P(purchase) x (margin + lambda x long-term value)
    "longterm": "linucb:alpha=0.3,epsilon=0.05,value=longterm,learn=purchase,lambda=10,name=longterm",
    "click": "linucb:alpha=0.3,epsilon=0.05,learn=click,name=click",
    "uniform": "uniform:learn=click,name=uniform",
}


@dataclass(frozen=True)
class Arm:
    """One arm: a banditrec policy spec, the reward kind its policy learns from, the weight of
    the long-term value in its ``longterm`` item column, and its traffic weight."""

    name: str
    policy: str
    learn: str = "click"
    lam: float = 1.0
    weight: float = 1.0

    @property
    def uses_longterm(self) -> bool:
        params = parse_spec(self.policy)[1]
        return "longterm" in (params.get("value"), params.get("objective"))


def parse_arm(text: str) -> Arm:
    """One arm from ``SPEC`` or a preset name (``margin``, ``longterm``, ``click``, ``uniform``),
    optionally with parameters that override the preset's (``longterm,lambda=3``).

    A spec is a policy spec plus optional keys ``name=``, ``learn=click|purchase|margin``,
    ``lambda=`` and ``weight=``, e.g. ``linucb:alpha=0.3,value=margin,learn=purchase``.
    """
    text = text.strip()
    first, _, rest = text.partition(",")
    if first in PRESETS:  # a preset, perhaps with parameters overriding its own
        head, raw = parse_spec(PRESETS[first])
        raw.update(parse_spec(f"x:{rest}")[1])
    else:
        head, raw = parse_spec(text)
    if head not in REGISTRY:  # before any simulated day is spent
        raise ValidationError(f"unknown policy {head!r} in {text!r}; known: {', '.join(sorted(REGISTRY))}", "arms")
    extra = {k: raw.pop(k) for k in ARM_KEYS if k in raw}
    policy = head + (":" + ",".join(f"{k}={v}" for k, v in raw.items()) if raw else "")
    learn = extra.get("learn", "click")
    if learn not in REWARD_KINDS:
        raise ValidationError(f"learn must be one of {', '.join(REWARD_KINDS)}; got {learn!r} in {text!r}", "arms")
    try:
        lam, weight = float(extra.get("lambda", 1.0)), float(extra.get("weight", 1.0))
    except ValueError:
        raise ValidationError(f"lambda and weight must be numbers in {text!r}", "arms") from None
    if not (np.isfinite(lam) and lam >= 0):
        raise ValidationError(f"lambda must be >= 0, got {lam} in {text!r}", "arms")
    if not (np.isfinite(weight) and weight > 0):
        raise ValidationError(f"weight must be > 0, got {weight} in {text!r}", "arms")
    return Arm(name=extra.get("name", policy), policy=policy, learn=learn, lam=lam, weight=weight)


def parse_arms(text: str, minimum: int = 2) -> list[Arm]:
    """Arms from ``SPEC,SPEC,...``: a comma starts a new arm unless what follows is a
    ``key=value`` parameter of the arm before (parameters contain ``=`` and no ``:``).
    An A/B test needs ``minimum`` = 2 arms; an A/A study, one."""
    parts: list[str] = []
    for token in (t.strip() for t in str(text).split(",")):
        if not token:
            continue
        if parts and "=" in token and ":" not in token:
            parts[-1] += "," + token
        else:
            parts.append(token)
    arms = [parse_arm(p) for p in parts]
    if len(arms) < minimum:
        need = {1: "an A/A study needs at least one arm", 2: "an A/B test needs at least two arms"}.get(
            minimum, f"at least {minimum} arms are needed"
        )
        raise ValidationError(f"{need}, got {len(arms)} from {text!r}", "arms")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValidationError(f"arm names must differ (set name=...), got {names}", "arms")
    return arms


@dataclass
class CustomerMetrics:
    """Per-customer totals since day 0 (arrays over the eligible customers)."""

    clicks: np.ndarray
    slots: np.ndarray
    visits: np.ndarray
    orders: np.ndarray
    revenue: np.ndarray
    margin: np.ndarray
    alive: np.ndarray
    ltv: np.ndarray


@dataclass
class ABResult:
    arms: list[Arm]
    config: SimConfig
    days: int
    seed: int
    salt: str
    arm: np.ndarray  # (n_eligible,) arm index of each customer alive on day 0
    customers: np.ndarray  # (n_eligible,) their indices
    final: CustomerMetrics
    checkpoints: dict[int, CustomerMetrics]  # day -> totals at the end of that many days
    daily_margin: np.ndarray  # (days, arms) cumulative margin per customer of each arm
    n_decisions: np.ndarray  # (arms,)
    srm: experiment.SRM
    seconds: float
    gateway_share: np.ndarray  # (days, arms) share of each arm's customers who own a gateway item
    gateway_slots: np.ndarray  # (arms,) share of the arm's carousel slots that held a gateway item
    kpis: list = field(default_factory=list, repr=False)  # the shop's DayKPIs of the test's days
    longterm_value: np.ndarray | None = field(default=None, repr=False)  # the last estimate
    gateway_items: np.ndarray | None = field(default=None, repr=False)  # (n_items,) the world's gateway flags
    pre_margin: np.ndarray | None = field(default=None, repr=False)  # (n_eligible,) margin before day 0
    burn_in_days: int = 0  # the pre-period's last days that ran the incumbent carousel

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.arm, minlength=len(self.arms))


def _metrics(env: Environment, who: np.ndarray, base: dict, clicks: np.ndarray, n_slots: int) -> CustomerMetrics:
    st = env.state
    visits = (st.visits[who] - base["visits"][who]).astype(float)
    return CustomerMetrics(
        clicks=clicks[who].astype(float),
        slots=n_slots * visits,  # every visit shows one full carousel
        visits=visits,
        orders=(st.orders[who] - base["orders"][who]).astype(float),
        revenue=st.revenue[who] - base["revenue"][who],
        margin=st.margin[who] - base["margin"][who],
        alive=st.alive[who].astype(float),
        ltv=st.ltv[who].copy(),
    )


def run_abtest(
    arms: list[Arm],
    config: SimConfig | None = None,
    days: int = 90,
    *,
    seed=0,
    salt: str = "ab",
    n_slots: int = 5,
    n_candidates: int = 50,
    min_epsilon: float = 0.01,
    refit_days: int = 7,
    horizon_days: float = 30.0,
    burn_in_days: int = 0,
    checkpoints=(7, 30, 60, 90),
    progress: bool = False,
) -> ABResult:
    """Run an A/B test of ``arms`` for ``days`` days on the shop built from ``seed``.

    ``salt`` randomises the assignment (a new salt, a new split of the same customers).
    ``horizon_days`` is the later-margin window of the long-term value estimate.
    ``burn_in_days``: the last days of the pre-period run with the shop's incumbent carousel,
    which shows ``n_slots`` of each visitor's candidates drawn uniformly at random (a logged,
    exploring recommender), so that the log the test starts from -- the candidate generator's
    co-occurrences and the long-term value estimate -- comes from a shop with a carousel, as
    in a real shop that tests a new policy against its current one. The other pre-period days
    are organic browsing only. Every arm's policy first learns from that carousel's log (its
    own reward kind; the logger's propensities are known), as a new policy is trained offline
    on the incumbent's exploration data before it goes live.
    """
    config = config or SimConfig()
    days = check_positive_int(days, "days")
    n_slots = check_positive_int(n_slots, "slots")
    n_candidates = check_positive_int(n_candidates, "candidates")
    refit_days = check_positive_int(refit_days, "refit_days")
    if len(arms) < 2:
        raise ValidationError(f"an A/B test needs at least two arms, got {len(arms)}", "arms")
    if n_slots > n_candidates:
        raise ValidationError(f"slots ({n_slots}) must not exceed candidates ({n_candidates})", "slots")
    burn_in_days = int(burn_in_days)
    if not 0 <= burn_in_days <= config.history_days:
        raise ValidationError(
            f"burn_in_days must be in [0, history_days = {config.history_days}], got {burn_in_days}", "burn_in_days"
        )
    checkpoints = sorted({int(d) for d in checkpoints if 0 < int(d) <= days} | {days})
    seed_seq = as_seed_sequence(seed)
    world_seq, respond_seq, *arm_seqs = seed_seq.spawn(2 + len(arms))
    env = Environment(config, seed=world_seq)
    env.recording = True
    env.warm_up(config.history_days - burn_in_days)
    events = history_interactions(env.take_events())  # the pre-period's events (take: later calls return each day's)
    burn_log: list[_LoggedDay] = []
    if burn_in_days:
        events, burn_log = _burn_in(
            env, events, burn_in_days, n_slots, n_candidates, refit_days, np.random.default_rng(seed_seq.spawn(1)[0])
        )
    cat, st = env.catalog, env.state
    n = config.n_customers
    arm_of = experiment.assign(np.arange(n), [a.name for a in arms], salt, [a.weight for a in arms])
    eligible = np.flatnonzero(st.alive)
    arm = arm_of[eligible]
    srm = experiment.srm_check(np.bincount(arm, minlength=len(arms)), [a.weight for a in arms])

    shop = ShopCandidates(env, events)

    lt_value = None
    if any(a.uses_longterm for a in arms):
        lt_value = _long_term(events, cat, horizon_days, end_day=0)
    engines = []
    items = ItemTable(ids=tuple(cat.item_ids), features=cat.latent.astype(float))  # frozen: one for every arm
    user_items = events.user_items("purchase")
    for a, s in zip(arms, arm_seqs):
        pol = shop.policy(
            a.policy, **({"longterm": _longterm_column(cat.margin, lt_value, a.lam)} if a.uses_longterm else {})
        )
        _warm_start(pol, burn_log, items.features, a.learn)
        engines.append(
            shop.engine(
                pol,
                DecisionLog(":memory:"),
                items,
                user_items,
                n_candidates=n_candidates,
                min_epsilon=min_epsilon,
                seed=s,
            )
        )
    respond_rng = np.random.default_rng(respond_seq)
    base = {
        "visits": st.visits.copy(),
        "orders": st.orders.copy(),
        "revenue": st.revenue.copy(),
        "margin": st.margin.copy(),
    }
    clicks = np.zeros(n, np.int64)
    size = np.bincount(arm, minlength=len(arms)).astype(float)
    daily_margin = np.zeros((days, len(arms)))
    gateway_share = np.zeros((days, len(arms)))
    n_decisions = np.zeros(len(arms), np.int64)
    gateway_slots = np.zeros(len(arms))
    snaps: dict[int, CustomerMetrics] = {}
    start = time.perf_counter()
    bar = _progress(days, progress)
    try:
        for d in range(days):
            req = env.requests()
            m = len(req)
            cand = shop.for_requests(req, n_candidates, n_slots)
            slates = np.zeros((m, n_slots), np.int64)
            req_arm = arm_of[req.customer]
            event_ids: list[list[str]] = []
            rows_of = []
            for j, engine in enumerate(engines):
                rows = np.flatnonzero(req_arm == j)
                rows_of.append(rows)
                engine.clock.now = env.day * DAY_S
                slates[rows], events_a = decide_requests(engine, req, rows, cand, n_slots)
                event_ids.append(events_a)
                n_decisions[j] += len(rows)
            gateway_slots += np.bincount(req_arm, weights=cat.gateway[slates].sum(axis=1), minlength=len(arms))
            out = env.respond(req, slates, respond_rng)
            np.add.at(clicks, req.customer, out.click.sum(axis=1).astype(np.int64))
            for j, engine in enumerate(engines):
                rows = rows_of[j]
                if len(rows):
                    engine.clock.now = (env.day + 1) * DAY_S - 1.0
                    _post_rewards(engine.log, event_ids[j], _take(out, rows), engine.clock.now)
                    engine.learn(kind=arms[j].learn)
            env.advance_day()
            shop.add(history_interactions(env.take_events()))
            daily_margin[d] = np.bincount(
                arm, weights=st.margin[eligible] - base["margin"][eligible], minlength=len(arms)
            ) / np.maximum(size, 1)
            gateway_share[d] = np.bincount(
                arm, weights=st.gateway[eligible].astype(float), minlength=len(arms)
            ) / np.maximum(size, 1)
            if d + 1 in checkpoints:
                snaps[d + 1] = _metrics(env, eligible, base, clicks, n_slots)
            if env.day % refit_days == 0:
                events = shop.refit()
                if lt_value is not None:
                    lt_value = _long_term(events, cat, horizon_days, end_day=env.day)
                    for a, engine in zip(arms, engines):
                        if a.uses_longterm:
                            engine.policy.set_value(_longterm_column(cat.margin, lt_value, a.lam))
            bar.update(1)
    finally:
        bar.close()
    return ABResult(
        arms=list(arms),
        config=config,
        days=days,
        seed=int(seed) if not isinstance(seed, np.random.SeedSequence) else -1,
        salt=salt,
        arm=arm,
        customers=eligible,
        final=snaps[days],
        checkpoints=snaps,
        daily_margin=daily_margin,
        n_decisions=n_decisions,
        srm=srm,
        seconds=time.perf_counter() - start,
        gateway_share=gateway_share,
        gateway_slots=gateway_slots / np.maximum(n_decisions * n_slots, 1),
        kpis=env.kpis[-days:],
        longterm_value=None if lt_value is None else lt_value.value,
        gateway_items=cat.gateway.copy(),
        pre_margin=base["margin"][eligible].copy(),
        burn_in_days=burn_in_days,
    )


@dataclass(frozen=True)
class _LoggedDay:
    """One burn-in day of the incumbent carousel: contexts, candidates, slates, responses."""

    context: np.ndarray  # (m, context_dim)
    candidates: np.ndarray  # (m, >= K) item indices, -1 pads
    slates: np.ndarray  # (m, K)
    out: Response

    def decisions(self, kind: str) -> LoggedDecisions:
        """The day as the decision log would return it, slots rewarded by ``kind``: the uniform
        logger's marginal ``1 / n`` (the chance that this slot holds the item, as the log's
        marginals are) and conditional ``1 / (n - slot)`` for ``n`` candidates."""
        m, k = self.slates.shape
        n = (self.candidates >= 0).sum(axis=1)
        return LoggedDecisions.from_slates(
            self.context,
            [c[c >= 0] for c in self.candidates],
            self.slates,
            marginal=np.repeat(1.0 / n, k),
            propensity=1.0 / (n[:, None] - np.arange(k)),
            reward=getattr(self.out, kind),
            event_id=[""] * m,
            seq=np.arange(m),
        )


def _burn_in(
    env: Environment, events, days: int, n_slots: int, n_candidates: int, refit_days: int, rng: np.random.Generator
):
    """Run ``days`` pre-period days with the incumbent carousel: ``n_slots`` of each visitor's
    candidates, uniformly at random. Returns ``events`` with those days' events added, and the
    carousel's log (a list of :class:`_LoggedDay`)."""
    shop = ShopCandidates(env, events)
    logged = []
    for d in range(days):
        req = env.requests()
        cand = shop.for_requests(req, n_candidates, n_slots)
        keys = rng.random(cand.shape)
        keys[cand < 0] = 2.0  # padding sorts last; every row has at least n_slots candidates
        slates = np.take_along_axis(cand, np.argsort(keys, axis=1)[:, :n_slots], axis=1)
        out = env.respond(req, slates, rng)
        logged.append(_LoggedDay(context=np.asarray(req.context, float), candidates=cand, slates=slates, out=out))
        env.advance_day()
        shop.add(history_interactions(env.take_events()))
        if (d + 1) % refit_days == 0:
            shop.refit()
    return shop.events(), logged


def _warm_start(policy, logged: list[_LoggedDay], features: np.ndarray, kind: str) -> int:
    """Train ``policy`` on the incumbent carousel's log, rewarded by ``kind`` per slot, one day
    at a time, through :func:`banditrec.offline.train_from_log` (which hands the policy the
    logger's propensities and candidates if its ``update`` asks for them). No importance
    weights: the uniform logger favoured no item. Returns the rows."""
    return sum(train_from_log(policy, day.decisions(kind), features, importance=False) for day in logged)


def _take(out: Response, rows: np.ndarray) -> Response:
    return Response(
        click=out.click[rows],
        purchase=out.purchase[rows],
        cart=out.cart[rows],
        revenue=out.revenue[rows],
        margin=out.margin[rows],
    )


def _long_term(events, cat, horizon_days: float, end_day: int):
    """Each item's long-term value from the purchases among ``events`` (Interactions)."""
    p = events.kind == PURCHASE
    return estimate_item_values(
        events.user[p],
        events.item[p],
        events.ts[p],
        cat.margin,
        cat.product_type,
        horizon_days=horizon_days,
        skip_days=1.0,
        end_ts=end_day * DAY_S,
    )


def _longterm_column(margin: np.ndarray, lt, lam: float) -> np.ndarray:
    return np.maximum(margin + lam * lt.value, 0.0)


# ---- analysis ---------------------------------------------------------------------------------

MEAN_METRICS = ("revenue", "margin", "ltv")
CUPED_METRICS = ("margin", "ltv")  # also compared adjusted for the pre-period margin (experiment.cuped)
RATIO_METRICS = {"ctr": ("clicks", "slots"), "conversion": ("orders", "visits"), "aov": ("revenue", "orders")}


@dataclass(frozen=True)
class MetricRow:
    metric: str
    arm: str
    control: str
    comparison: experiment.Comparison


def analyse(
    result: ABResult, *, alpha: float = 0.05, n_boot: int = 2000, rng: np.random.Generator | None = None, week: int = 7
) -> list[MetricRow]:
    """Each treatment arm against the first (control) arm, per metric: CTR, conversion and AOV
    (ratio metrics, delta method), revenue, margin and lifetime value per customer (margin and
    lifetime value also with CUPED, adjusted for each customer's margin before day 0), retention
    at 30/60/90 days, and the week-1 AOV and margin per customer (``week`` days). Through
    :func:`banditrec.experiment.analyse`: each metric bootstraps from its own stream (each arm's
    spawned from ``rng``), not from one stream shared in turn."""
    rng = rng or np.random.default_rng(0)
    rows: list[MetricRow] = []
    control = result.arms[0].name
    for b, gen in zip(range(1, len(result.arms)), rng.spawn(len(result.arms) - 1)):
        sel = (result.arm == 0, result.arm == b)

        def pair(values, *extra):
            return (values[sel[0]], values[sel[1]], *extra)

        def ratio(snap, name):
            num, den = (getattr(snap, attr) for attr in RATIO_METRICS[name])
            return (num[sel[0]], den[sel[0]], num[sel[1]], den[sel[1]])

        metrics = {name: ratio(result.final, name) for name in RATIO_METRICS}
        for name in MEAN_METRICS:
            metrics[name] = pair(getattr(result.final, name))
        if result.pre_margin is not None:  # CUPED on the customer's pre-period margin
            for name in CUPED_METRICS:
                metrics[f"{name} (CUPED)"] = pair(getattr(result.final, name), pair(result.pre_margin))
        for d in (30, 60, 90):
            if d in result.checkpoints:
                metrics[f"retention {d}d"] = pair(result.checkpoints[d].alive)
        if week in result.checkpoints and week != result.days:
            metrics[f"aov (week {week})"] = ratio(result.checkpoints[week], "aov")
            metrics[f"margin (week {week})"] = pair(result.checkpoints[week].margin)
        rows += [
            MetricRow(metric=c.metric, arm=result.arms[b].name, control=control, comparison=c)
            for c in experiment.analyse(metrics, alpha=alpha, n_boot=n_boot, rng=gen)
        ]
    return rows


def metric_table(rows: list[MetricRow]) -> str:
    """A Markdown table of :func:`analyse`'s rows."""
    head = (
        "| metric | arm | control mean | arm mean | difference [95% CI, Welch] | lift [95% CI] "
        "| bootstrap CI of difference | p |"
    )
    out = [head, "|" + "---|" * 8]
    for r in rows:
        c = r.comparison
        out.append(
            f"| {r.metric} | {r.arm} | {_num(c.mean_a)} | {_num(c.mean_b)} | {_num(c.diff, True)} "
            f"[{_num(c.diff_ci[0], True)}, {_num(c.diff_ci[1], True)}] | {100 * c.lift:+.1f}% "
            f"[{100 * c.lift_ci[0]:+.1f}%, {100 * c.lift_ci[1]:+.1f}%] | "
            f"[{_num(c.boot_ci[0], True)}, {_num(c.boot_ci[1], True)}] | {_p(c.p_value)} |"
        )
    return "\n".join(out)


def _num(x: float, signed: bool = False) -> str:
    if not np.isfinite(x):
        return "n/a"
    digits = 4 if abs(x) < 1 else 2
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


# ---- A/A ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AAStudy:
    n_tests: int
    alpha: float
    metrics: tuple[str, ...]
    p_values: np.ndarray  # (n_tests, n_metrics)

    def false_positive_rate(self) -> np.ndarray:
        return (self.p_values < self.alpha).mean(axis=0)

    def any_metric_rate(self) -> float:
        return float((self.p_values < self.alpha).any(axis=1).mean())


def aa_study(
    n_tests: int,
    arm: Arm,
    config: SimConfig | None = None,
    days: int = 28,
    *,
    first_seed: int = 0,
    alpha: float = 0.05,
    progress: bool = False,
    **kw,
) -> AAStudy:
    """``n_tests`` A/A tests: the same arm twice, each test on its own world (seed
    ``first_seed + t``) and salt. Under the null every metric's Welch p-value is uniform, so
    the share below ``alpha`` estimates the false-positive rate (expected: ``alpha``)."""
    n_tests = check_positive_int(n_tests, "tests")
    arms = [replace(arm, name="A"), replace(arm, name="A'")]
    names: tuple[str, ...] | None = None
    ps = []
    bar = _progress(n_tests, progress)
    try:
        for t in range(n_tests):
            r = run_abtest(arms, config, days, seed=first_seed + t, salt=f"aa-{first_seed + t}", **kw)
            rows = analyse(r, alpha=alpha, n_boot=0)
            names = names or tuple(x.metric for x in rows)
            ps.append([x.comparison.p_value for x in rows])
            bar.update(1)
    finally:
        bar.close()
    return AAStudy(n_tests=n_tests, alpha=alpha, metrics=names or (), p_values=np.array(ps))


# ---- several worlds, the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pooled:
    """One metric's treatment-minus-control difference pooled over seeds (fixed effect:
    inverse-variance weighted mean of the per-seed Welch differences; normal test)."""

    metric: str
    arm: str
    diff: float
    se: float
    p_value: float
    per_seed: tuple  # ((diff, p_value), ...) in seed order

    @property
    def ci(self) -> tuple[float, float]:
        return self.diff - 1.959963984540054 * self.se, self.diff + 1.959963984540054 * self.se


def pool_seeds(rows_by_seed: list[list[MetricRow]]) -> list[Pooled]:
    """Pool each (metric, arm) over the seeds' :func:`analyse` rows."""
    from scipy import special

    out = []
    for k, first in enumerate(rows_by_seed[0]):
        cs = [rows[k].comparison for rows in rows_by_seed]
        se = np.array([c.se for c in cs])
        d = np.array([c.diff for c in cs])
        ok = se > 0
        if ok.any():
            w = 1.0 / se[ok] ** 2
            diff, s = float((w * d[ok]).sum() / w.sum()), float(1.0 / np.sqrt(w.sum()))
            p = float(2 * special.ndtr(-abs(diff) / s))
        else:
            diff, s, p = float(d.mean()), 0.0, float("nan")
        out.append(
            Pooled(
                metric=first.metric,
                arm=first.arm,
                diff=diff,
                se=s,
                p_value=p,
                per_seed=tuple((c.diff, c.p_value) for c in cs),
            )
        )
    return out


def pooled_table(pooled: list[Pooled]) -> str:
    out = ["| metric | arm | difference, pooled [95% CI] | p | per seed: difference (p) |", "|---|---|---|---|---|"]
    for p in pooled:
        seeds = "; ".join(f"{_num(d, True)} ({_p(q)})" for d, q in p.per_seed)
        out.append(
            f"| {p.metric} | {p.arm} | {_num(p.diff, True)} [{_num(p.ci[0], True)}, {_num(p.ci[1], True)}] "
            f"| {_p(p.p_value)} | {seeds} |"
        )
    return "\n".join(out)


def power_table(result: ABResult, lifts=(0.01, 0.02, 0.05), alpha: float = 0.05, power: float = 0.8) -> str:
    """Customers per arm needed to detect each relative lift of lifetime value and of week-1
    margin, from the control arm's mean and spread in ``result``; and the lift detectable with
    this run's arm size."""
    control = result.arm == 0
    n_arm = int(control.sum())
    lines = [
        "| metric | control mean | sd | "
        + " | ".join(f"n per arm for {100 * x:g}%" for x in lifts)
        + f" | detectable lift at n = {n_arm:,} |",
        "|---" * (4 + len(lifts)) + "|",
    ]
    series = [("ltv", result.final.ltv)]
    if 7 in result.checkpoints and result.days != 7:
        series.append(("margin (week 7)", result.checkpoints[7].margin))
    for name, values in series:
        v = values[control]
        mean, sd = float(v.mean()), float(v.std(ddof=1))
        ns = [experiment.sample_size(baseline=mean, sd=sd, mde=x, alpha=alpha, power=power) for x in lifts]
        mde = experiment.minimum_detectable_effect(n_arm, baseline=mean, sd=sd, alpha=alpha, power=power)
        lines.append(
            f"| {name} | {mean:.2f} | {sd:.2f} | " + " | ".join(f"{n:,}" for n in ns) + f" | {100 * mde:.1f}% |"
        )
    return "\n".join(lines)


def over_time_table(results: list[ABResult]) -> str:
    """Per seed, what the plots show: each arm's cumulative margin per customer minus the
    control's at the end of week 1, at its lowest (and on which day) and on the last day, and
    the share of each arm's customers who own a gateway item on the last day."""
    arms = [a.name for a in results[0].arms]
    others = range(1, len(arms))
    week = min(7, results[0].days)  # the end of week 1, or the last day of a shorter test
    head = ["seed"] + [
        f"{arms[a]} - {arms[0]}: {what}"
        for a in others
        for what in (f"day {week}", "lowest (day)", f"day {results[0].days}")
    ]
    head += [f"gateway owners, {name}" for name in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        diff = r.daily_margin - r.daily_margin[:, :1]
        cells = [str(r.seed)]
        for a in others:
            low = int(np.argmin(diff[:, a]))
            cells += [f"{diff[week - 1, a]:+.2f}", f"{diff[low, a]:+.2f} ({low + 1})", f"{diff[-1, a]:+.2f}"]
        cells += [f"{share:.1%}" for share in r.gateway_share[-1]]
        lines.append("| " + " | ".join(cells) + " |")
    if len(results) > 1:
        share = np.mean([r.gateway_share[-1] for r in results], axis=0)
        cells = ["mean"] + [""] * (3 * len(others)) + [f"{x:.1%}" for x in share]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_days(results: list[ABResult], path) -> None:
    """Cumulative margin per customer by arm over days (mean over seeds), and each seed's
    treatment-minus-control difference with the share of customers owning a gateway item."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a.name for a in results[0].arms]
    days = np.arange(1, results[0].days + 1)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    mean = np.mean([r.daily_margin for r in results], axis=0)
    for a, name in enumerate(arms):
        ax[0].plot(days, mean[:, a], label=name)
    ax[0].set(
        xlabel="day", ylabel="cumulative margin per customer", title=f"margin per customer ({len(results)} seeds)"
    )
    ax[0].legend()
    for r in results:
        for a in range(1, len(arms)):
            ax[1].plot(days, r.daily_margin[:, a] - r.daily_margin[:, 0], color=f"C{a}", alpha=0.6)
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set(xlabel="day", ylabel=f"difference vs {arms[0]}", title="cumulative margin: arm minus control, per seed")
    share = np.mean([r.gateway_share for r in results], axis=0)
    for a, name in enumerate(arms):
        ax[2].plot(days, share[:, a], label=name)
    ax[2].set(xlabel="day", ylabel="share of customers", title="customers who own a gateway item")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_aa(study: AAStudy, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(study.p_values.ravel(), bins=20, range=(0, 1), density=True)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="p-value", ylabel="density", title=f"{study.n_tests} A/A tests x {len(study.metrics)} metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aa_table(study: AAStudy) -> str:
    """Per metric: the false-positive rate, the binomial probability of a rate at least that far
    from alpha when the test is exact, and the Kolmogorov-Smirnov test of the p-values against
    the uniform distribution (a miscalibrated test shows there even when the rate at alpha looks
    fine). The last rows: the mean rate over the metrics, and the rate of "any metric"
    (which multiple metrics inflate: not a calibration check)."""
    from scipy import stats

    rates = study.false_positive_rate()
    n, a = study.n_tests, study.alpha
    se = np.sqrt(a * (1 - a) / n)
    out = [
        f"| metric | false-positive rate at alpha = {a} (expected {a:.3f} +- {se:.3f}) | binomial p "
        f"| KS p (p-values uniform) |",
        "|---|---|---|---|",
    ]
    for m, r, ps in zip(study.metrics, rates, study.p_values.T):
        k = int(round(r * n))
        binom = stats.binomtest(k, n, a).pvalue
        ks = stats.kstest(ps[np.isfinite(ps)], "uniform").pvalue
        out.append(f"| {m} | {r:.3f} | {binom:.2f} | {ks:.2f} |")
    out.append(f"| mean over the {len(rates)} metrics | {rates.mean():.4f} | | |")
    out.append(f"| any of them | {study.any_metric_rate():.3f} | | |")
    return "\n".join(out)


def write_report(
    out, *, results: list[ABResult] | None = None, rows_by_seed=None, aa: AAStudy | None = None, command: str = ""
) -> Path:
    """Markdown report (``report.md``) with PNG plots in ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# A/B simulation", ""]
    if command:
        md += [f"`{command}`", ""]
    if results:
        r0 = results[0]
        md += [
            "## Design",
            "",
            "- arms: "
            + "; ".join(
                f"**{a.name}** = `{a.policy}` (learns {a.learn}"
                + (f", lambda {a.lam:g}" if a.uses_longterm else "")
                + ")"
                for a in r0.arms
            ),
            f"- {r0.config.n_customers:,} customers, {r0.days} days, seeds "
            f"{', '.join(str(r.seed) for r in results)}, salt `{r0.salt}`",
            f"- pre-period: {r0.config.history_days - r0.burn_in_days} days of organic browsing, then "
            f"{r0.burn_in_days} days with the incumbent carousel (uniformly random slates of the candidates)",
            f"- customers alive on day 0 per arm: {', '.join(f'{n:,}' for n in r0.sizes)}; sample-ratio check "
            f"chi2 = {r0.srm.chi2:.2f}, p = {r0.srm.p_value:.3f} ({'ok' if r0.srm.ok else 'MISMATCH'})",
            f"- decisions per arm: {', '.join(f'{int(n):,}' for n in r0.n_decisions)}",
            "",
        ]
        md += ["## Results" + (f" (seed {r0.seed})" if len(results) > 1 else ""), "", metric_table(rows_by_seed[0]), ""]
        if len(results) > 1:
            md += [f"## Pooled over {len(results)} seeds", "", pooled_table(pool_seeds(rows_by_seed)), ""]
        plot_days(results, out / "margin_by_day.png")
        md += [
            "## Over time",
            "",
            "![margin by day](margin_by_day.png)",
            "",
            "Cumulative margin per customer, arm minus control, and gateway-item owners on the last day:",
            "",
            over_time_table(results),
            "",
            "## Power",
            "",
            power_table(r0),
            "",
        ]
    if aa is not None:
        plot_aa(aa, out / "aa_pvalues.png")
        md += ["## A/A tests", "", aa_table(aa), "", "![A/A p-values](aa_pvalues.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


SCENARIOS = {
    "default": {},
    # the long-term study's shop (docs/abtest.md): a smaller catalog, so that the pre-period gives
    # each item enough buyers to estimate its long-term value; 5% gateway items whose buyers visit
    # three times as often and churn at a fifth of the rate (SimConfig's defaults: x1.6, x0.4)
    "gateway": {
        "n_items": 1000,
        "n_types": 50,
        "gateway_share": 0.05,
        "history_days": 120,
        "gateway_visit_boost": 2.0,
        "gateway_churn_cut": 0.8,
    },
    # the worlds where exploration pays (simulator/scenarios.py, docs/simulator.md)
    **{name: dict(sc.sim) for name, sc in EXPLORATION_SCENARIOS.items() if name != "shop"},
}


# days of the pre-period run with the incumbent (uniformly random) carousel, per scenario
SCENARIO_BURN_IN = {name: 60 if name == "gateway" else 0 for name in SCENARIOS}


def scenario_config(name: str) -> SimConfig:
    if name not in SCENARIOS:
        raise ValidationError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}", "scenario")
    return SimConfig(**SCENARIOS[name])


ABTEST_KEYS = {
    "arms": str,
    "days": int,
    "customers": int,
    "seeds": int,
    "first_seed": int,
    "salt": str,
    "aa": int,
    "burn_in": int,
}


def load_config(path) -> tuple[SimConfig, dict]:
    """A TOML file: simulator fields (top level or in tables, as :meth:`SimConfig.from_toml`)
    and an optional ``[abtest]`` table (``arms``, ``days``, ``customers``, ``seeds``,
    ``first_seed``, ``salt``, ``aa``, ``burn_in``)."""
    data = read_toml(path)
    opts = data.pop("abtest", {})
    if not isinstance(opts, dict):
        raise ValidationError(f"{path}: [abtest] must be a table", "abtest")
    for key, value in opts.items():
        if key not in ABTEST_KEYS:
            raise ValidationError(f"{path} [abtest]: unknown key {key!r}; known: {', '.join(ABTEST_KEYS)}", key)
        kind = ABTEST_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValidationError(f"{path} [abtest]: {key} must be {kind.__name__}, got {value!r}", key)
    return SimConfig.from_dict(data, source=str(path)), opts
