"""``banditrec demo``: the simulated retail shop run as a real shop would run banditrec
(export, build, serve, learn, evaluate).

Details: docs/simulator.md, "The demo (`studies/demo.py`)".
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banditrec.errors import ValidationError
from banditrec.evaluation import Evaluation, evaluate_log
from banditrec.learner import Learner
from banditrec.offline import target_pscore
from banditrec.service.config import ServiceConfig
from banditrec.service.shopapp import create_shop_app
from banditrec.shop import BuildConfig, Shop, build_shop
from banditrec.store import DecisionLog
from simulator import SimConfig
from simulator.environment import Environment
from simulator.export import export_shop
from simulator.history import DAY_S

DEMO_CONFIG = SimConfig(n_items=2_000, n_types=50, n_customers=6_000, history_days=30)
REWARD_WINDOW_S = 3600.0  # a carousel's clicks and purchases come within the hour
REWARD_DELAY_S = 30.0  # when they are posted, after the carousel


@dataclass
class Truths:
    """Exact expected clicks per carousel, per logged decision (log order)."""

    logging: list = field(default_factory=list)
    requests: dict = field(default_factory=dict)  # log seq -> (the day's Requests, row)


@dataclass
class ShopDemoResult:
    n_decisions: int
    n_events: int
    n_rewards: int
    days: int
    seconds: float
    evaluation: Evaluation
    truth: dict  # label -> exact value per decision over the evaluated half
    daily: list  # exact clicks per carousel of each served day
    max_pscore_mismatch: float
    build: str
    report: Path | None = None
    db: Path | None = None

    def table(self) -> str:
        ev = self.evaluation
        w = max([len("logging (on-policy)")] + [len(c.spec) for c in ev.candidates])
        head = f"{'policy':<{w}}  {'estim.':<6} {'estimate':>8} {'95% CI':>18} {'truth':>7}  in CI {'ESS':>8}"
        lines = [head, "-" * len(head)]

        def row(label, e, truth):
            ci = f"[{e.lower:.3f}, {e.upper:.3f}]"
            mark = " !" if e.warnings else ""
            return (
                f"{label:<{w}}  {e.estimator:<6} {e.value:>8.4f} {ci:>18} {truth:>7.4f}  "
                f"{'yes' if e.covers(truth) else 'NO':<5} {e.ess:>8,.0f}{mark}"
            )

        lines.append(row("logging (on-policy)", ev.logging, self.truth["logging"]))
        for c in ev.candidates:
            for e in c.estimates.values():
                lines.append(row(c.spec, e, self.truth[c.spec]))
        if any(e.warnings for c in ev.candidates for e in c.estimates.values()):
            lines.append(
                "! the estimator's diagnostics warn (low effective sample size or heavy weights): "
                "do not trust that interval"
            )
        return "\n".join(lines)


def simulated_shop(out: Path, config: SimConfig, seed):
    """A fresh ``out`` with the simulated shop warmed up, its files exported (``files/``) and
    built (``shop/``), and no log at ``log.db`` yet: ``(env, files, built, db, serve_seed,
    respond_seed)``, the last two for the service's and the customers' streams."""
    for name in ("files", "shop", "snapshots", "evaluate"):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "log.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    world, serve_seq, respond_seq = np.random.SeedSequence(seed).spawn(3)
    env = Environment(config, seed=world)
    env.recording = True
    history = env.warm_up()
    env.take_events()  # the pre-period is in the exported files, not posted again
    files = export_shop(env, history, out / "files")
    built = build_shop(
        files.items, files.interactions, files.users, out=out / "shop", config=BuildConfig.from_toml(files.config)
    )
    return env, files, built, db, serve_seq, respond_seq


class _Clock:
    """The service's clock in simulated seconds, set before each request."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _exact(env: Environment, req, i: int, items: np.ndarray, marg: np.ndarray) -> float:
    """Exact expected clicks of a carousel whose slot marginals over ``items`` are ``marg``
    (position-based clicks are linear in the marginals)."""
    one = req.take([i])
    a = env.model.attraction(one, items[None, :])[0]
    theta = env.model.examination(one, marg.shape[1])[0]
    return float(a @ marg @ theta)


def run_shop_demo(
    *,
    days: int = 14,
    n_slots: int = 5,
    n_candidates: int = 30,
    seed: int = 0,
    out="out/demo",
    policy: str = "linucb:alpha=1.0,epsilon=0.1",
    targets: tuple[str, ...] = ("uniform", "popularity:epsilon=0.1", "linucb:alpha=0.5,epsilon=0.05"),
    config: SimConfig = DEMO_CONFIG,
    echo=print,
) -> ShopDemoResult:
    """Run the five steps (docs/simulator.md, "The demo"); writes everything under ``out``."""
    if config.click_model != "pbm":
        raise ValidationError("the demo's exact truth needs position-based clicks (click_model = 'pbm')", "click_model")
    start = time.perf_counter()
    echo = echo or (lambda line: None)
    out = Path(out)
    env, files, built, db, serve_seq, respond_seq = simulated_shop(out, config, seed)
    echo(
        f"export    {files.items.parent}: {files.n_items:,} items, {files.n_interactions:,} interactions, "
        f"{files.n_users:,} users"
    )
    echo(
        f"build     {built.directory}: {built.build}, {built.item_dim} item and {built.context_dim} context features "
        f"({built.seconds:.1f} s)"
    )
    clock = _Clock(config.history_days * DAY_S)
    app = create_shop_app(
        out / "shop",
        policy,
        db,
        settings=ServiceConfig(snapshots=str(out / "snapshots"), reload_check_ms=0),
        reward_window_s=REWARD_WINDOW_S,
        n_candidates=n_candidates,
        seed=serve_seq,
        clock=clock,
    )
    client = app.test_client()
    engine = app.extensions["banditrec.engine"]
    shop = Shop(out / "shop")
    log = DecisionLog(db, reward_window_s=REWARD_WINDOW_S)
    learner = Learner(
        log, shop.policy(policy), shop.items.features, out / "snapshots", clock=clock, item_cold=shop.items.cold
    )
    respond = np.random.default_rng(respond_seq)
    truths = Truths()
    counts = {"events": 0, "rewards": 0, "decisions": 0}
    daily, mismatch = [], 0.0
    try:
        for _ in range(days):
            day_start = config.history_days * DAY_S + env.day * DAY_S
            clock.now = day_start
            published = learner.step()  # yesterday's decisions have closed: learn, publish, reload
            if published is not None:
                _post(client, "/v1/models/reload", {})
            req = env.requests()
            order = np.argsort(req.hour, kind="stable")
            when = day_start + req.hour * 3600.0
            counts["events"] += _post_events(client, clock, env.take_events(), req, when)
            seq0 = engine.log.max_seq()
            slates, event_ids = np.empty((len(req), n_slots), dtype=np.int64), [""] * len(req)
            for i in order.tolist():
                clock.now = float(when[i])
                body = _post(
                    client,
                    "/v1/decide",
                    {"user_id": f"u{int(req.customer[i])}", "slots": n_slots, "context": {"device": _device(req, i)}},
                )
                event_ids[i] = body["event_id"]
                slates[i] = [int(s["item_id"][1:]) for s in body["slots"]]
            counts["decisions"] += len(req)
            logged = engine.log.decisions(after_seq=seq0)
            truth_day = np.empty(logged.n_decisions)

            def exact(d, items, marg, _order=order, _req=req, _truth=truth_day):
                _truth[d] = _exact(env, _req, int(_order[d]), items, marg)

            recomputed = target_pscore(
                engine.policy,
                logged,
                engine.items.features,
                min_epsilon=engine.min_epsilon,
                on_decision=exact,
                cold=engine.items.cold,
            )
            mismatch = max(mismatch, float(np.abs(recomputed - logged.row_pscore).max()))
            truths.logging.extend(truth_day.tolist())
            for d, sq in enumerate(logged.seq.tolist()):
                truths.requests[sq] = (req, int(order[d]))
            daily.append(float(truth_day.mean()))
            counts["rewards"] += _post_rewards(client, clock, env.respond(req, slates, respond), event_ids, when)
            clock.now = day_start + DAY_S - 1.0
            env.advance_day()
            counts["events"] += _post_events(client, clock, env.take_events(), None, None)
            echo(
                f"serve     day {len(daily):>2}: {len(req):>5,} carousels, exact clicks per carousel "
                f"{daily[-1]:.4f}; model {engine.model_version}"
            )
        clock.now += DAY_S
        learner.step()
    finally:
        log.close()
    # evaluate: the log alone, on the shop's features; the truth of each candidate beside it
    exact_of = _TruthOfTargets(env, truths.requests)
    evaluation = evaluate_log(
        str(db), list(targets), shop=Shop(out / "shop"), out=out / "evaluate", on_target=exact_of.record
    )
    n_train = evaluation.n_train
    truth = {"logging": float(np.mean(truths.logging[n_train:]))}
    for spec in targets:
        truth[spec] = exact_of.mean(spec)
    engine.log.close()
    result = ShopDemoResult(
        n_decisions=counts["decisions"],
        n_events=counts["events"],
        n_rewards=counts["rewards"],
        days=days,
        seconds=time.perf_counter() - start,
        evaluation=evaluation,
        truth=truth,
        daily=daily,
        max_pscore_mismatch=mismatch,
        build=built.build,
        db=db,
    )
    result.report = write_report(result, out, seed=seed, n_slots=n_slots, n_candidates=n_candidates, config=config)
    return result


class _TruthOfTargets:
    """Each candidate's exact value on the evaluated decisions (``evaluate_log``'s ``on_target``)."""

    def __init__(self, env: Environment, requests: dict):
        self.env, self.requests = env, requests
        self.values: dict[str, list[float]] = {}

    def record(self, spec, test, d, items, marg) -> None:
        req, i = self.requests[int(test.seq[d])]
        self.values.setdefault(spec, []).append(_exact(self.env, req, i, items, marg))

    def mean(self, spec: str) -> float:
        return float(np.mean(self.values[spec]))


def _device(req, i: int) -> str:
    from simulator.config import DEVICES

    return DEVICES[int(req.device[i])]


def _post(client, route: str, body: dict) -> dict:
    resp = client.post(route, json=body)
    if resp.status_code != 200:
        raise RuntimeError(f"{route} answered {resp.status_code}: {resp.get_json()}")
    return resp.get_json()


def _post_rewards(client, clock: _Clock, response, event_ids: list, when: np.ndarray) -> int:
    """Post each carousel's clicks and purchases to ``/v1/reward``, ``REWARD_DELAY_S`` after it."""
    n = 0
    for kind, values in (("click", response.click), ("purchase", response.purchase)):
        for i, k in zip(*np.nonzero(values)):
            clock.now = float(when[i]) + REWARD_DELAY_S
            _post(client, "/v1/reward", {"event_id": event_ids[i], "position": int(k), "reward": 1.0, "kind": kind})
            n += 1
    return n


def _post_events(client, clock: _Clock, history, req, when) -> int:
    """Post recorded events to ``/v1/events``: a visitor's browsing a minute before their
    carousel (``req``, ``when``), the rest (carousel purchases, checkouts) at the clock's time."""
    kinds = ("view", "cart", "purchase")
    visit_time = {}
    if req is not None:
        visit_time = dict(zip(req.customer.tolist(), (when - 60.0).tolist()))
    base = clock.now
    for k, (cust, item, kind) in enumerate(
        zip(history.customer.tolist(), history.item.tolist(), history.kind.tolist())
    ):
        ts = visit_time.get(cust, base) + k * 1e-3
        _post(client, "/v1/events", {"user_id": f"u{cust}", "item_id": f"i{item}", "kind": kinds[kind], "ts": ts})
    return len(history)


def write_report(result: ShopDemoResult, out: Path, *, seed, n_slots, n_candidates, config) -> Path:
    """``report.md`` in ``out``."""
    ev = result.evaluation
    lines = [
        "# banditrec demo report",
        "",
        f"Seed {seed}. The simulated shop ({config.n_items:,} items in {config.n_types} product types, "
        f"{config.n_customers:,} customers, a {config.history_days}-day pre-period) was exported as files, built "
        f"into the shop directory `{out / 'shop'}` (build `{result.build}`) and served for {result.days} days "
        f"through the decision service: {result.n_decisions:,} carousels of {n_slots} slots from {n_candidates} "
        f"candidates, {result.n_events:,} interaction events and {result.n_rewards:,} rewards posted; the learner "
        f"published a snapshot every day. Wall time {result.seconds:.1f} s.",
        "",
        "## Exact clicks per carousel, day by day",
        "",
        "| day | " + " | ".join(str(d + 1) for d in range(len(result.daily))) + " |",
        "|---|" + "---|" * len(result.daily),
        "| clicks | " + " | ".join(f"{v:.4f}" for v in result.daily) + " |",
        "",
        "## Off-policy estimates beside the truth",
        "",
        f"Candidates learned from the first {ev.n_train:,} decisions and were estimated on the next "
        f"{ev.n_eval:,} ({ev.n_rows:,} slots) from the log alone; *truth* is each policy's exact expected clicks "
        "per carousel on those decisions, from the simulator's click model.",
        "",
        "```",
        result.table(),
        "```",
        "",
        f"Logged marginal propensities recomputed from the log: largest difference {result.max_pscore_mismatch:.2e}.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
