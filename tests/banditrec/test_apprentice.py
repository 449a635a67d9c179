"""Apprentice mode, the control arm, the mode switch, the exploration share, pinned and promoted
items over HTTP, and cart events seeding the directional complements."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.apprentice import Arms, ServingMode, greedy_flags, switch_mode
from banditrec.cli import main
from banditrec.errors import ConflictError, ValidationError
from banditrec.experiment import hash_unit
from banditrec.service import ServiceConfig
from banditrec.service.shopapp import create_shop_app
from tests.helpers import make_engine

CTX = [0.3, -0.2, 0.5, 0.1]


def apprentice(engine, mode: str = "apprentice"):
    engine.modes = ServingMode(engine.log.serving_mode, default=mode)
    return engine


def exact_marginals(dist, n: int, k: int) -> np.ndarray:
    """(n, k) P(slot j holds candidate i) by enumerating every ordered slate and multiplying
    its conditionals: an independent path from ``dist.marginals()``."""
    out = np.zeros((n, k))
    for slate in itertools.permutations(range(n), k):
        p = float(np.prod(dist.conditionals(np.array(slate))))
        out[list(slate), np.arange(k)] += p
    return out


@pytest.mark.parametrize("policy", ["linucb:alpha=1.0,epsilon=0.2", "egreedy:epsilon=0.3", "softmax:tau=0.5"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), order=st.permutations(range(7)))
def test_apprentice_serves_the_baseline_bit_for_bit_and_logs_the_policys_marginals(small_shop, policy, seed, order):
    eng = apprentice(make_engine(small_shop, policy, seed=seed))
    ids = list(eng.items.ids)
    candidates = ids[:6]
    baseline = [ids[i] for i in order[:4]]  # may hold ids[6], which is not a candidate
    d = eng.decide("u1", 3, context=CTX, candidates=candidates, baseline=baseline)
    assert [s.item_id for s in d.slots] == baseline[:3]
    assert all(s.propensity == 1.0 and s.marginal == 1.0 for s in d.slots)
    assert d.served == "baseline" and d.joint_propensity == 1.0
    # what the policy would have drawn: a slate of distinct candidates
    assert len(d.shadow) == 3 and len(set(d.shadow)) == 3 and set(d.shadow) <= set(d.candidates)
    # the logged probabilities against every ordered slate enumerated
    cand_idx = eng.items.lookup(list(d.candidates))
    dist = eng.policy.distribution(eng.request(np.array(CTX), cand_idx), 3, eng.min_epsilon)
    exact = exact_marginals(dist, len(cand_idx), 3)
    where = {c: j for j, c in enumerate(d.candidates)}
    rows = eng.log.db.execute("SELECT position, item_id, policy_marginal FROM slots ORDER BY position").fetchall()
    se = dist.marginal_se() if hasattr(dist, "marginal_se") else np.zeros_like(exact)
    for k, item, logged in rows:
        j = where[item]
        assert logged == pytest.approx(exact[j, k], abs=5 * se[j, k] + 1e-9)
    served, shadow = eng.log.db.execute("SELECT served, shadow FROM decisions").fetchone()
    assert served == "baseline" and json.loads(shadow) == list(d.shadow)


def test_the_shadow_is_what_live_serving_would_have_drawn(small_shop):
    """Two engines with one seed: the apprentice's logged shadow slates are the live engine's
    slates, request for request (the baseline changes what is shown, not the policy's draws)."""
    live = make_engine(small_shop, seed=5)
    shadow = apprentice(make_engine(small_shop, seed=5))
    for u in range(20):
        a = live.decide(f"u{u}", 4, context=CTX)
        b = shadow.decide(f"u{u}", 4, context=CTX)
        assert b.shadow == tuple(s.item_id for s in a.slots)
        assert [s.item_id for s in b.slots] == list(b.candidates[:4])  # no baseline: the candidates in order
        idx = {s.item_id: s for s in a.slots}
        for s in b.slots:  # the policy's marginal of the baseline's item, where live showed it there
            if s.item_id in idx and idx[s.item_id].position == s.position:
                assert s.policy_marginal == pytest.approx(idx[s.item_id].marginal)


def test_apprentice_rows_are_learned_from_with_propensity_one(small_shop):
    eng = apprentice(make_engine(small_shop))
    for u in range(10):
        d = eng.decide(f"u{u}", 3, context=CTX)
        eng.reward(d.event_id, 1.0, position=u % 3)
    logged = eng.log.decisions()
    assert logged.n_decisions == 10 and np.all(logged.row_pscore == 1.0)
    before = eng.policy.n_updates
    assert eng.learn() == 30
    assert eng.policy.n_updates > before


def test_a_bad_baseline_is_refused_and_nothing_is_logged(small_shop):
    eng = apprentice(make_engine(small_shop))
    ids = list(eng.items.ids)
    for baseline, needle in (
        (["nope", ids[1], ids[2]], "baseline"),
        ([ids[1], ids[1], ids[2]], "twice"),
        ([ids[1]], "fewer than the 3 slots"),
        (ids[1], "list of item ids"),
    ):
        with pytest.raises(ValidationError, match=needle) as info:
            eng.decide("u1", 3, context=CTX, baseline=baseline)
        assert info.value.field == "baseline"
    assert eng.log.count("decisions") == 0
    # pinned items leave the baseline; the rest fills the slots in its order
    d = eng.decide("u1", 3, context=CTX, baseline=ids[3:8], pinned=[ids[4]])
    assert [s.item_id for s in d.slots] == [ids[4], ids[3], ids[5]]
    assert [s.source for s in d.slots][0] == "pinned"


# ---- the analysis holdout's assignment --------------------------------------------------
def test_arms_follow_the_salted_hash_and_control_users_get_the_baseline_in_live_mode(small_shop):
    eng = make_engine(small_shop)
    eng.decide("before", 2, context=CTX)  # arms set after a decision still reach the logged params
    eng.arms = Arms(holdout=0.3, control=0.3, salt="s1")
    users = [f"user-{k}" for k in range(120)]
    u = hash_unit(users, "s1")
    want = np.where(u < 0.3, "holdout", np.where(u < 0.6, "control", "main"))
    got = [eng.decide(user, 2, context=CTX).arm for user in users]
    assert got == want.tolist()
    rows = eng.log.db.execute("SELECT user_id, arm, served, policy_params FROM decisions WHERE seq > 1").fetchall()
    for _user, arm, served, params in rows:
        assert served == ("baseline" if arm == "control" else "policy")
        assert json.loads(params)["arms"] == {"holdout": 0.3, "control": 0.3, "salt": "s1"}
    assert {"holdout", "control", "main"} == set(got)
    with pytest.raises(ValidationError, match="at most 1"):
        Arms(holdout=0.6, control=0.5)


# ---- the mode switch --------------------------------------------------------------------
def verdict(policy: str, safe: bool) -> dict:
    return {
        "policy": policy,
        "spec": f"{policy}:alpha=1.0",
        "safe": int(safe),
        "estimator": "DR",
        "value": 0.31,
        "lower": 0.27 if safe else 0.19,
        "upper": 0.35,
        "baseline": 0.25,
        "n_decisions": 1000,
        "reason": "test",
    }


@pytest.fixture
def shop_app(sim_shop_dir, tmp_path):
    def make(seed=3, **settings):
        return create_shop_app(
            sim_shop_dir,
            "linucb:alpha=1.0,epsilon=0.1",
            tmp_path / "log.db",
            seed=seed,
            settings=ServiceConfig(**settings),
        )

    return make


def test_going_live_needs_a_safe_recorded_verdict_and_every_worker_follows(shop_app):
    app = shop_app(mode="apprentice")
    other = shop_app(seed=4, mode="apprentice")  # a second worker on the same log
    other.extensions["banditrec.engine"].modes.refresh_s = 0.0
    client, engine = app.test_client(), app.extensions["banditrec.engine"]
    assert client.get("/v1/mode").get_json()["mode"] == "apprentice"
    assert client.post("/v1/decide", json={"user_id": "u1", "slots": 3}).get_json()["served"] == "baseline"
    r = client.post("/v1/mode", json={"mode": "live", "reason": "looks good"})
    assert r.status_code == 409 and "no safe-deploy verdict" in r.get_json()["error"]["message"]
    engine.log.record_verdicts([verdict("linucb", safe=False)])
    r = client.post("/v1/mode", json={"mode": "live", "reason": "looks good"})
    assert r.status_code == 409 and "not safe" in r.get_json()["error"]["message"]
    assert engine.log.mode_history() == []  # refused switches record nothing
    engine.log.record_verdicts([verdict("linucb", safe=True)])
    r = client.post("/v1/mode", json={"mode": "live", "reason": "DR lower bound clears", "actor": "ana"})
    body = r.get_json()
    assert r.status_code == 200 and body["mode"] == "live" and body["actor"] == "ana"
    assert body["gate"]["verdict"]["safe"] is True and body["gate"]["forced"] is False
    assert client.post("/v1/decide", json={"user_id": "u1", "slots": 3}).get_json()["served"] == "policy"
    other_client = other.test_client()
    r = other_client.post("/v1/decide", json={"user_id": "u2", "slots": 3})
    assert r.get_json().get("served") == "policy", r.get_json()
    # back to apprentice needs no verdict; forcing live is recorded as forced
    assert client.post("/v1/mode", json={"mode": "apprentice", "reason": "incident"}).status_code == 200
    r = client.post("/v1/mode", json={"mode": "live", "reason": "override", "force": True})
    assert r.get_json()["gate"]["forced"] is True
    assert [h["mode"] for h in engine.log.mode_history()] == ["live", "apprentice", "live"]
    audit = engine.log.audit_rows(action="serving_mode")
    assert [(a.subject, a.actor) for a in audit] == [("live", "ana"), ("apprentice", "api"), ("live", "api")]
    assert client.post("/v1/mode", json={"mode": "sideways", "reason": "x"}).status_code == 400


def test_metrics_report_match_rate_mode_and_lift(shop_app):
    app = shop_app(mode="apprentice")
    client, engine = app.test_client(), app.extensions["banditrec.engine"]
    for u in range(15):
        client.post("/v1/decide", json={"user_id": f"u{u}", "slots": 3})
    engine.log.record_verdicts([verdict("linucb", safe=True)])
    text = client.get("/metrics").get_data(as_text=True)
    rate = float(re.search(r"^banditrec_apprentice_match_rate (\S+)$", text, re.M).group(1))
    want = engine.log.db.execute("SELECT avg(policy_marginal) FROM slots").fetchone()[0]
    assert rate == pytest.approx(want)
    assert 'banditrec_serving_mode{mode="apprentice"} 1.0' in text
    lift = float(re.search(r"^banditrec_estimated_lift (\S+)$", text, re.M).group(1))
    assert lift == pytest.approx(0.31 - 0.25)


def test_switch_mode_from_python_and_the_cli(tmp_path, make_log):
    path = tmp_path / "log.db"
    log = make_log(path)
    with pytest.raises(ConflictError):
        switch_mode(log, "live", policy="linucb", actor="t", reason="r")
    runner = CliRunner()
    out = runner.invoke(main, ["mode", "--db", str(path), "live", "--policy", "linucb:alpha=1", "--reason", "go"])
    assert out.exit_code != 0 and "no safe-deploy verdict" in out.output
    log.record_verdicts([verdict("linucb", safe=True)])
    out = runner.invoke(main, ["mode", "--db", str(path), "live", "--policy", "linucb:alpha=1", "--reason", "go"])
    assert out.exit_code == 0, out.output
    assert "switched to live" in out.output and "verdict linucb:alpha=1.0: safe" in out.output
    assert log.serving_mode()["mode"] == "live"


# ---- the exploration share --------------------------------------------------------------
def test_greedy_flags_match_the_ranking(rng):
    from banditrec.policies.slate import EpsilonGreedySlate

    scores = rng.normal(size=8)
    dist = EpsilonGreedySlate(scores, np.full(4, 0.5))
    for _ in range(50):
        s = dist.sample(rng)
        order = list(np.argsort(-scores))
        want = []
        for i in s.index.tolist():
            want.append(i == order[0])
            order.remove(i)
        assert greedy_flags(dist, s.index).tolist() == want


def test_the_exploration_share_matches_its_closed_form(small_shop):
    """ε-greedy slots explore with probability ε and a uniform pick misses the top with
    probability (n_left - 1) / n_left: the share of non-greedy slots has that mean."""
    eps, n, k = 0.4, 10, 3
    eng = make_engine(small_shop, f"egreedy:epsilon={eps}", seed=11)
    ids = list(eng.items.ids)[:n]
    rng = np.random.default_rng(0)
    for u in range(100):  # a model whose scores rank the candidates without ties
        d = eng.decide(f"w{u}", k, context=CTX, candidates=ids)
        eng.reward(d.event_id, float(rng.random() < 0.3), position=int(rng.integers(k)))
    eng.learn()
    scores = eng.policy.distribution(eng.request(np.array(CTX), eng.items.lookup(ids)), k).scores
    assert len(np.unique(scores)) == n
    flags = np.array([eng.decide(f"u{u}", k, context=CTX, candidates=ids).greedy for u in range(1500)])
    e = eps + (1 - eps) * eng.min_epsilon  # the floor mixes in as a further uniform share
    want = np.array([e * (n - j - 1) / (n - j) for j in range(k)])
    got = 1.0 - flags.mean(axis=0)
    se = np.sqrt(want * (1 - want) / len(flags))
    assert np.all(np.abs(got - want) < 4 * se), (got, want)


# ---- serving gaps over HTTP -------------------------------------------------------------
def test_pinned_and_promoted_items_over_http(shop_app):
    app = shop_app()
    client, engine = app.test_client(), app.extensions["banditrec.engine"]
    ids = list(engine.items.ids)
    body = client.post(
        "/v1/decide", json={"user_id": "u7", "slots": 4, "pinned": [ids[3], ids[1]], "promoted": [ids[2], ids[9]]}
    ).get_json()
    assert [s["item_id"] for s in body["slots"][:2]] == [ids[3], ids[1]]
    assert [s["source"] for s in body["slots"][:2]] == ["pinned", "pinned"]
    assert all(s["propensity"] == 1.0 for s in body["slots"][:2])
    cands, sources = engine.log.db.execute("SELECT candidates, candidate_sources FROM decisions").fetchone()
    by_item = dict(zip(json.loads(cands), json.loads(sources)))
    assert ids[2] in by_item and ids[9] in by_item
    assert ids[3] not in by_item  # a pinned item is not also a candidate
    # with the request's own candidates: the promoted items join them, named as promoted
    own = ids[20:30]
    client.post("/v1/decide", json={"user_id": "u8", "slots": 3, "candidates": own, "promoted": [ids[2], ids[9]]})
    cands, sources = engine.log.db.execute(
        "SELECT candidates, candidate_sources FROM decisions ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    assert json.loads(cands) == [*own, ids[2], ids[9]]
    assert json.loads(sources) == ["request"] * 10 + ["promoted", "promoted"]
    bad = client.post("/v1/decide", json={"user_id": "u7", "slots": 2, "promoted": ["no such item"]})
    assert bad.status_code == 400 and bad.get_json()["error"]["fields"][0]["field"] == "promoted"


def test_a_cart_event_seeds_the_directional_complements(shop_app):
    app = shop_app()
    client, engine = app.test_client(), app.extensions["banditrec.engine"]
    gen = engine.parts.candidate_generator
    cm = gen.complement_model.scores.tocsr()
    backoff = gen.complement_model.backoff_items.tocsr()  # the seed type's complements, for sparse items
    ids = list(engine.items.ids)
    csc = cm.tocsc()

    def tables(a):
        forward = set(cm.indices[cm.indptr[a] : cm.indptr[a + 1]].tolist())
        backward = set(csc.indices[csc.indptr[a] : csc.indptr[a + 1]].tolist()) - forward  # c -> a only
        return forward, backward - set(backoff[gen.types[a]].nonzero()[1].tolist())

    # an item with complements of its own and items that complement it only the other way round
    seed = next(a for a in np.argsort(-np.diff(cm.indptr)).tolist() if all(tables(a)))
    forward, backward = tables(seed)
    user = "a-new-visitor"
    assert client.post("/v1/events", json={"user_id": user, "item_id": ids[seed], "kind": "cart"}).status_code == 200
    client.post("/v1/decide", json={"user_id": user, "slots": 3})
    cands, sources = engine.log.db.execute("SELECT candidates, candidate_sources FROM decisions").fetchone()
    complements = {
        engine.items.lookup([c])[0] for c, s in zip(json.loads(cands), json.loads(sources)) if s == "complement"
    }
    by_type = set(backoff[gen.types[seed]].nonzero()[1].tolist())
    assert complements & forward and complements <= forward | by_type
    assert backward and not complements & backward


def test_the_production_doc_quotes_real_commands():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "production.md").read_text()
    for route in ("POST /v1/mode", "banditrec mode", "banditrec evaluate", "--record"):
        assert route in doc


# ---- the gate on a baseline-served log --------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_dec=st.integers(2, 30),
    n_items=st.integers(3, 8),
    k=st.integers(1, 3),
)
def test_ips_on_a_baseline_served_log_never_exceeds_the_true_value(seed, n_dec, n_items, k):
    """With the baseline's slots logged at propensity 1 and rewards >= 0, IPS counts only the
    target's probability on the baseline's items: per decision at most the target's exact value
    (every item's reward times its probability), so the gate's IPS bound is sound."""
    from banditrec.ope import IPS
    from banditrec.types import LoggedBandit

    g = np.random.default_rng(seed)
    k = min(k, n_items)
    reward_of = g.random((n_dec, n_items, k)) * (g.random((n_dec, n_items, k)) < 0.5)  # r(a, slot) >= 0
    shown = np.array([g.permutation(n_items)[:k] for _ in range(n_dec)])
    pi = g.dirichlet(np.ones(n_items), size=(n_dec, k)).transpose(0, 2, 1)  # (n, items, slots), a column per slot
    rows = np.arange(n_dec).repeat(k)
    slots = np.tile(np.arange(k), n_dec)
    acts = shown.ravel()
    data = LoggedBandit(
        reward=reward_of[rows, acts, slots],
        action=acts,
        slot=slots,
        pscore=np.ones(n_dec * k),
        n_actions=n_items,
        n_slots=k,
        decision=rows,
    )
    est = IPS().estimate(data, target_pscore=pi[rows, acts, slots])
    truth = float(np.einsum("nas,nas->n", pi, reward_of).mean())
    assert est.value <= truth + 1e-12


def test_the_gate_on_an_apprentice_log_decides_on_ips_and_says_why(shop_app, sim_shop_dir, tmp_path):
    from banditrec.evaluation import evaluate_log
    from banditrec.evaluation.pipeline import UNSUPPORTED_MAX
    from banditrec.shop import Shop

    app = shop_app(mode="apprentice")
    client, engine = app.test_client(), app.extensions["banditrec.engine"]
    ids = list(engine.items.ids)
    g = np.random.default_rng(1)
    for u in range(120):
        body = client.post("/v1/decide", json={"user_id": f"u{u}", "slots": 3, "baseline": ids[:5]}).get_json()
        client.post("/v1/reward", json={"event_id": body["event_id"], "position": 0, "reward": float(g.random() < 0.3)})
    result = evaluate_log(str(tmp_path / "log.db"), ["linucb:alpha=1.0,epsilon=0.1"], out=None, shop=Shop(sim_shop_dir))
    c = result.candidates[0]
    assert c.estimates["DR"].unsupported > UNSUPPORTED_MAX
    assert c.gate == "IPS" and not c.safe and "IPS lower bound" in c.reason
    assert c.estimates["IPS"].lower <= c.estimates["IPS"].value <= result.logging.value


def test_a_batch_in_apprentice_mode_serves_what_single_decisions_serve(small_shop):
    ids = list(small_shop.catalog.item_ids)
    requests = [
        {"user_id": f"u{u}", "n_slots": 3, "context": CTX, "baseline": ids[u : u + 4] if u % 2 else None}
        for u in range(8)
    ]
    one = apprentice(make_engine(small_shop, seed=9))
    batch = apprentice(make_engine(small_shop, seed=9))
    untimed = lambda ds: [dataclasses.replace(d, ts=0.0) for d in ds]  # noqa: E731 (the test clock ticks per call)
    singles = [one.decide(**r) for r in requests]
    assert untimed(batch.decide_batch(requests)) == untimed(singles)
    assert all(d.served == "baseline" for d in singles)


def test_metrics_serve_the_monitors_gauges(shop_app, sim_shop_dir, tmp_path):
    prom = tmp_path / "monitor.prom"
    app = shop_app(monitor_prom=str(prom))
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # no monitor run yet: the service's own metrics
    for u in range(30):
        client.post("/v1/decide", json={"user_id": f"u{u}", "slots": 3})
    app.extensions["banditrec.engine"].log.db.conn.commit()
    out = CliRunner().invoke(
        main,
        [
            "monitor",
            "--shop",
            str(sim_shop_dir),
            "--db",
            str(tmp_path / "log.db"),
            "--out",
            str(tmp_path / "m"),
            "--prom",
            str(prom),
        ],
    )
    assert out.exit_code in (0, 3), out.output
    text = client.get("/metrics").get_data(as_text=True)
    written = prom.read_text()
    assert written in text and re.search(r'^banditrec_monitor_alert\{check="srm"\} [01]\.0$', text, re.M)
