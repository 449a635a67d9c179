"""``banditrec rollout``: the simulated shop switches a bandit on the safe way.

Apprentice days (the shop's bestseller carousel is served bit for bit while the policy learns
from it and its draws are logged), the safe-deploy gate on that log (``evaluate --record``),
the switch to live over HTTP, then live days; an analysis holdout and a control arm run
throughout. Every step goes through the service as a shop would call it; the simulator knows
the exact expected clicks of every carousel shown and of every carousel the policy would
have shown, so the estimated lift of switching is checked against the truth.

Details: docs/production.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banditrec.apprentice import Arms
from banditrec.evaluation import evaluate_log
from banditrec.evaluation.apprentice import apprentice_summary, verdict_rows
from banditrec.learner import Learner
from banditrec.offline import target_pscore
from banditrec.service.config import ServiceConfig
from banditrec.service.shopapp import create_shop_app
from banditrec.shop import Shop
from banditrec.store import DecisionLog
from simulator import SimConfig
from simulator.history import DAY_S

from .demo import REWARD_WINDOW_S, _Clock, _device, _exact, _post, _post_events, _post_rewards, simulated_shop

ROLLOUT_CONFIG = SimConfig(n_items=1_000, n_types=40, n_customers=4_000, history_days=30)
BASELINE_LENGTH = 20  # the bestseller list the shop's own carousel shows from


@dataclass
class RolloutResult:
    out: Path
    db: Path
    shop: Path
    lines: list[str] = field(default_factory=list)
    went_live: bool = False
    estimated_lift: float = float("nan")
    lift_lower: float = float("nan")
    true_lift: float = float("nan")
    daily: list = field(default_factory=list)  # (day, mode, exact clicks per carousel shown)
    seconds: float = 0.0


def run_rollout(
    *,
    apprentice_days: int = 4,
    live_days: int = 3,
    n_slots: int = 5,
    n_candidates: int = 30,
    holdout: float = 0.1,
    control: float = 0.1,
    policy: str = "linucb:alpha=1.0,epsilon=0.1",
    seed: int = 0,
    force: bool = False,
    out="out/rollout",
    config: SimConfig = ROLLOUT_CONFIG,
    echo=print,
) -> RolloutResult:
    """Run the rollout (see the module docstring); writes the shop, log and evaluation under ``out``."""
    start = time.perf_counter()
    echo = echo or (lambda line: None)
    out = Path(out)
    env, _, _, db, serve_seq, respond_seq = simulated_shop(out, config, seed)
    shop = Shop(out / "shop")
    # the shop's own carousel: its bestsellers, the same for everyone
    bestsellers = [shop.items.ids[i] for i in np.argsort(-shop.popularity, kind="stable")[:BASELINE_LENGTH].tolist()]
    arms = Arms(holdout=holdout, control=control, salt=f"rollout-{seed}")
    clock = _Clock(config.history_days * DAY_S)
    app = create_shop_app(
        out / "shop",
        policy,
        db,
        settings=ServiceConfig(
            snapshots=str(out / "snapshots"),
            reload_check_ms=0,
            mode="apprentice",
            holdout=arms.holdout,
            control=arms.control,
            salt=arms.salt,
        ),
        reward_window_s=REWARD_WINDOW_S,
        n_candidates=n_candidates,
        seed=serve_seq,
        clock=clock,
    )
    client = app.test_client()
    engine = app.extensions["banditrec.engine"]
    engine.modes.refresh_s = 0.0  # simulated time: read the log's mode on every request
    log = DecisionLog(db, reward_window_s=REWARD_WINDOW_S)
    learner = Learner(
        log, shop.policy(policy), shop.items.features, out / "snapshots", clock=clock, item_cold=shop.items.cold
    )
    respond = np.random.default_rng(respond_seq)
    result = RolloutResult(out=out, db=db, shop=out / "shop")
    shown_truth: dict[int, float] = {}  # seq -> exact clicks of the carousel shown
    policy_truth: dict[int, float] = {}  # seq -> exact clicks of the policy's carousel (apprentice days)

    def say(line: str) -> None:
        result.lines.append(line)
        echo(line)

    say(
        f"rollout: {config.n_items:,} items, {config.n_customers:,} customers; {apprentice_days} apprentice days, "
        f"then the gate, then {live_days} live days; holdout {holdout:.0%}, control {control:.0%}"
    )
    try:
        for day in range(apprentice_days + live_days):
            if day == apprentice_days:
                learner.step()
                _gate(client, db, shop, policy, out, result, say, force)
            day_start = config.history_days * DAY_S + env.day * DAY_S
            clock.now = day_start
            if learner.step() is not None:
                _post(client, "/v1/models/reload", {})
            req = env.requests()
            order = np.argsort(req.hour, kind="stable")
            when = day_start + req.hour * 3600.0
            _post_events(client, clock, env.take_events(), req, when)
            seq0 = engine.log.max_seq()
            slates = np.empty((len(req), n_slots), dtype=np.int64)
            event_ids = [""] * len(req)
            for i in order.tolist():
                clock.now = float(when[i])
                body = _post(
                    client,
                    "/v1/decide",
                    {
                        "user_id": f"u{int(req.customer[i])}",
                        "slots": n_slots,
                        "context": {"device": _device(req, i)},
                        "baseline": bestsellers,
                    },
                )
                event_ids[i] = body["event_id"]
                slates[i] = [int(s["item_id"][1:]) for s in body["slots"]]
            logged = engine.log.decisions(after_seq=seq0)
            mode = engine.mode
            for d, sq in enumerate(logged.seq.tolist()):
                i = int(order[d])
                one_hot = np.eye(n_slots)
                shown_truth[sq] = _exact(env, req, i, slates[i], one_hot)
            if mode == "apprentice":

                def exact(d, items, marg, _seq=logged.seq, _req=req, _order=order):
                    policy_truth[int(_seq[d])] = _exact(env, _req, int(_order[d]), items, marg)

                target_pscore(
                    engine.policy,
                    logged,
                    engine.items.features,
                    min_epsilon=engine.min_epsilon,
                    on_decision=exact,
                    cold=engine.items.cold,
                )
            _post_rewards(client, clock, env.respond(req, slates, respond), event_ids, when)
            clock.now = day_start + DAY_S - 1.0
            env.advance_day()
            _post_events(client, clock, env.take_events(), None, None)
            day_truth = float(np.mean([shown_truth[s] for s in logged.seq.tolist()]))
            result.daily.append((day + 1, mode, day_truth))
            say(
                f"serve     day {day + 1:>2} ({mode:<10}): {len(req):>5,} carousels, "
                f"exact clicks per carousel {day_truth:.4f}"
            )
        clock.now += DAY_S
        learner.step()
    finally:
        log.close()
    _truth_of_lift(engine.log, shown_truth, policy_truth, result, say)
    engine.log.close()
    result.seconds = time.perf_counter() - start
    say(f"log       {db}; shop {out / 'shop'} ({result.seconds:.0f} s)")
    return result


def _gate(client, db, shop, policy, out, result: RolloutResult, say, force: bool) -> None:
    """``banditrec evaluate --record`` on the apprentice log, then ``POST /v1/mode`` live."""
    evaluation = evaluate_log(str(db), [policy], shop=shop, out=Path(out) / "evaluate")
    log = DecisionLog(db)
    try:
        log.record_verdicts(verdict_rows(evaluation))
        summary = apprentice_summary(log)
    finally:
        log.close()
    c = evaluation.candidates[0]
    dr = c.estimates[evaluation.primary]
    e = c.estimates[c.gate or evaluation.primary]  # the estimate the gate decided on
    result.estimated_lift = e.value - evaluation.logging.value
    result.lift_lower = e.lower - evaluation.logging.value
    if summary is not None:
        for line in summary.lines():
            say(line)
    for name, est in ((evaluation.primary, dr), *(((c.gate, e),) if c.gate else ())):
        say(
            f"estimate  {policy}: {name} {est.value:.4f} [{est.lower:.4f}, {est.upper:.4f}] against the baseline's "
            f"{evaluation.logging.value:.4f}: lift {est.value - evaluation.logging.value:+.4f}"
        )
    say(f"gate      {'SAFE' if c.safe else 'not shown safe'} on {c.gate or evaluation.primary}'s lower bound")
    say(f"          {c.reason}")
    resp = client.post("/v1/mode", json={"mode": "live", "reason": "the apprentice's verdict", "actor": "rollout"})
    body = resp.get_json()
    say(
        f"switch    POST /v1/mode live -> {resp.status_code}: "
        + (body["mode"] if resp.status_code == 200 else body["error"]["message"])
    )
    if resp.status_code != 200 and force:
        reason = "forced: live with the holdout and control arms measuring"
        resp = client.post("/v1/mode", json={"mode": "live", "reason": reason, "actor": "rollout", "force": True})
        say(
            f"switch    POST /v1/mode live, force -> {resp.status_code}: {resp.get_json()['mode']} (recorded as forced)"
        )
    result.went_live = resp.status_code == 200


def _truth_of_lift(log, shown: dict, policy: dict, result: RolloutResult, say) -> None:
    """The exact lift on the apprentice decisions the gate evaluated (its second half)."""
    rows = log.db.execute(
        "SELECT seq FROM decisions WHERE served = 'baseline' AND arm = 'main' ORDER BY seq"
    ).fetchall()
    seqs = [r[0] for r in rows if r[0] in policy]
    if not seqs:
        return
    half = seqs[len(seqs) // 2 :]
    result.true_lift = float(np.mean([policy[s] - shown[s] for s in half]))
    covered = result.lift_lower <= result.true_lift
    say(
        f"truth     the served policy's exact lift over the baseline on those days: {result.true_lift:+.4f} clicks per "
        f"carousel (the gate's lower bound on it, {result.lift_lower:+.4f}, is {'below' if covered else 'ABOVE'} it)"
    )
