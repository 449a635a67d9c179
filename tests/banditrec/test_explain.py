"""Explanations (docs/explanations.md): each linear policy's split of a shown item's score into
feature contributions and a bonus, against an independent recomputation (theta by
``numpy.linalg.solve`` on normal equations built here, joint features built by hand); the
ranking they imply is the sampler's; a seeded engine decides the same with and without them;
VW's audit; the policies without one say so."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.explain import explain_slate
from banditrec.policies import Request, make
from banditrec.policies.slate import EpsilonGreedySlate
from banditrec.policies.terms import FeatureNames
from tests.banditrec.test_engine import CTX, _logged
from tests.helpers import make_engine

TOL = 1e-8
JOINT = [
    "linucb:alpha=1.5",
    "egreedy",
    "softmax:tau=0.5",
    "lints:epsilon=0",
    "linucb:objective=margin,sensitivity=medium",
    "linucb:value=margin",
    "egreedy:value=margin,objective=margin,sensitivity=low",
    "lints:epsilon=0,value=margin",
]
PER_ITEM = [
    "disjoint-linucb:alpha=0.7",
    "hybrid-linucb:alpha=1.2,item_reg=2.0",
    "hybrid-linucb:local=context,item_reg=0.5",
]


def _world(seed: int, d_c: int, d_i: int, n_items: int, m: int):
    """Rows to learn from and a request, all random; ``margin`` is an item column >= 0."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n_items, d_i))
    cold = rng.random(n_items) < 0.3
    items = rng.integers(0, n_items, m)
    rows = dict(
        context=rng.normal(size=(m, d_c)), item_features=F[items], reward=rng.random(m), items=items, cold=cold[items]
    )
    n = int(rng.integers(2, n_items + 1))
    cand = rng.choice(n_items, n, replace=False)
    request = Request(rng.normal(size=d_c), cand, F[cand], cold[cand])
    env = dict(context_dim=d_c, item_dim=d_i, n_items=n_items, item_columns={"margin": rng.random(n_items) * 3})
    return rows, request, env


def _joint_x(c, v, cold) -> np.ndarray:
    """``[u, vec(u c^T)]`` with ``u = [1, v, cold]``, by hand."""
    u = np.r_[1.0, v, float(cold)]
    return np.r_[u, np.outer(u, c).ravel()]


def _blend_by_hand(policy, request, raw: np.ndarray) -> np.ndarray:
    s = raw
    if policy.config.value:
        s = np.maximum(s, 0.0) * policy.value_weight[request.items]
    w = {"off": 0.0, "low": 0.1, "medium": 0.25, "high": 0.5}[policy.config.sensitivity]
    if w:
        col = policy.objective_value[request.items]  # the catalog column min-max scaled (checked in test_policies)
        span = s.max() - s.min()
        s = (1 - w) * ((s - s.min()) / span if span > 0 else 0.0) + w * col
    return s


def _reference(policy, rows, request):
    """``(mean, bonus)`` of every candidate, from the rows and the request alone."""
    spec = policy.name
    C, V, r, a, cold = rows["context"], rows["item_features"], rows["reward"], rows["items"], rows["cold"]
    reg = policy.config.reg
    sigma = policy.noise_sd
    if spec in ("linucb", "egreedy", "softmax", "lints"):
        X = np.array([_joint_x(c, v, k) for c, v, k in zip(C, V, cold)])
        A = reg * np.eye(X.shape[1]) + X.T @ X
        theta = np.linalg.solve(A, X.T @ r)
        Xq = np.array([_joint_x(request.context, v, k) for v, k in zip(request.item_features, request.cold)])
        mean = Xq @ theta
        width = np.sqrt(np.einsum("ij,ji->i", Xq, np.linalg.solve(A, Xq.T)))
        return mean, (policy.config.alpha * sigma * width if spec == "linucb" else np.zeros(len(mean)))
    x = np.r_[1.0, request.context]
    if spec == "disjoint-linucb":
        mean, width = [], []
        for item in request.items:
            Xa = np.c_[np.ones(int((a == item).sum())), C[a == item]]
            Aa = reg * np.eye(len(x)) + Xa.T @ Xa
            mean.append(x @ np.linalg.solve(Aa, Xa.T @ r[a == item]))
            width.append(np.sqrt(x @ np.linalg.solve(Aa, x)))
        return np.array(mean), policy.config.alpha * sigma * np.array(width)
    # hybrid: one ridge over [z, the item's own block], penalties reg (shared) and item_reg (own)
    local = policy.config.local == "context"
    d = len(x) if local else 1
    k = len(_joint_x(C[0], V[0], 0))
    n_items = policy.n_items

    def design(c, v, kc, item):
        w = np.zeros(k + n_items * d)
        w[:k] = _joint_x(c, v, kc)
        w[k + item * d : k + (item + 1) * d] = np.r_[1.0, c] if local else 1.0
        return w

    W = np.array([design(c, v, kc, item) for c, v, kc, item in zip(C, V, cold, a)])
    M = np.diag(np.r_[np.full(k, reg), np.full(n_items * d, policy.config.item_reg)]) + W.T @ W
    theta = np.linalg.solve(M, W.T @ r)
    Wq = np.array(
        [
            design(request.context, v, kc, item)
            for v, kc, item in zip(request.item_features, request.cold, request.items)
        ]
    )
    width = np.sqrt(np.einsum("ij,ji->i", Wq, np.linalg.solve(M, Wq.T)))
    return Wq @ theta, policy.config.alpha * sigma * width


def _check_slots(policy, request, sample, names, mean, bonus):
    """Each slot's parts sum, and match the reference; returns the explained scores by slot."""
    explained = explain_slate(policy, request, sample, names, top=3)
    assert len(explained) == len(sample.index)
    scores = []
    for j, e in zip(sample.index.tolist(), explained):
        assert e.available and e.why is None
        parts = sum(c.value for c in e.contributions)
        assert parts == pytest.approx(e.base, abs=TOL)
        assert e.score == pytest.approx(e.base + e.bonus + e.objective, abs=TOL)
        p = len(policy.score_terms(request, names).names)
        assert [c.feature == "other" for c in e.contributions] == [False] * min(3, p) + [True] * (p > 3)  # top 3, rest
        tops = [abs(c.value) for c in e.contributions[: min(3, p)]]
        assert tops == sorted(tops, reverse=True)
        if e.kind != "posterior-draw":  # the policy's own raw score, blended as the sampler blends it
            raw = mean[j] + bonus[j]
            expected = _blend_by_hand(policy, request, mean + bonus)[j]
            assert e.score == pytest.approx(expected, abs=TOL)
            a = expected / raw if policy.config.sensitivity == "off" and raw != 0 else None
            if a is not None:  # value weighting only: every part scaled by the item's value
                assert e.base == pytest.approx(a * mean[j], abs=TOL)
                assert e.bonus == pytest.approx(a * bonus[j], abs=TOL)
        scores.append(e.score)
    return np.array(scores), explained


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    d_c=st.integers(1, 3),
    d_i=st.integers(1, 3),
    n_items=st.integers(3, 7),
    m=st.integers(1, 40),
)
@pytest.mark.parametrize("spec", JOINT + PER_ITEM)
def test_explanations_sum_to_the_score_the_sampler_ranked_by(spec, seed, d_c, d_i, n_items, m):
    rows, request, env = _world(seed, d_c, d_i, n_items, m)
    policy = make(spec, **env)
    policy.update(**rows)
    mean, bonus = _reference(policy, rows, request)
    names = FeatureNames(context=tuple(f"c{k}" for k in range(d_c)), item=tuple(f"v{j}" for j in range(d_i)))
    n = len(request.items)
    dist = policy.distribution(request, n)  # every candidate shown: every one explained
    if isinstance(dist, EpsilonGreedySlate):
        sample = dist.greedy().sample(np.random.default_rng(seed))
        scores, _ = _check_slots(policy, request, sample, names, mean, bonus)
        np.testing.assert_allclose(scores, dist.scores[sample.index], rtol=0, atol=TOL)  # what it ranked by
        assert (np.diff(scores) <= TOL).all()  # the greedy order is the order of the explained scores
    else:
        sample = dist.sample(np.random.default_rng(seed))
        scores, explained = _check_slots(policy, request, sample, names, mean, bonus)
        if spec.startswith("lints"):  # the served posterior draw, split into the mean's terms and the rest
            np.testing.assert_allclose(scores, sample.served[sample.index], rtol=0, atol=TOL)
            a = np.ones(n)
            if policy.config.value:  # max(draw, 0) x value
                a = np.where(sample.served > 0, policy.value_weight[request.items], 0.0)
            a = a[sample.index]
            np.testing.assert_allclose([e.base for e in explained], a * mean[sample.index], rtol=0, atol=TOL)
            assert (np.diff(scores) <= TOL).all()  # epsilon 0: slots in the draw's order
        else:  # softmax: Plackett-Luce weights exp((score - max) / T) order the items as the scores do
            weights = dist.values[sample.index]
            dw, ds = np.subtract.outer(weights, weights), np.subtract.outer(scores, scores)
            apart = np.abs(dw) > 1e-12 * weights.max()
            assert (np.sign(dw[apart]) == np.sign(ds[apart])).all()
    # names: the joint features' (or the per-item model's) as the shop calls them
    terms = policy.score_terms(request, names)
    if spec.startswith("disjoint"):
        assert terms.names == ("own", *(f"own × ctx:c{k}" for k in range(d_c)))
    else:
        assert "intercept" in terms.names and "item:v0" in terms.names and "ctx:c0 × item:v0" in terms.names


def test_explanations_name_the_shop_features_and_fall_back_to_positions():
    rows, request, env = _world(1, 2, 2, 5, 30)
    policy = make("linucb", **env)
    policy.update(**rows)
    named = policy.score_terms(request, FeatureNames(context=("device=mobile", "age"), item=("price", "brand=x")))
    assert named.names[:4] == ("intercept", "item:price", "item:brand=x", "item:cold")
    assert named.names[4:6] == ("ctx:device=mobile", "ctx:age")
    assert "ctx:device=mobile × item:price" in named.names and "ctx:age × item:cold" in named.names
    plain = policy.score_terms(request, FeatureNames())
    assert "ctx[1] × item[0]" in plain.names and len(plain.names) == len(named.names) == policy.dim
    # the value of each named term is that feature times its coefficient
    j = named.names.index("ctx:device=mobile × item:price")
    np.testing.assert_allclose(
        named.values[:, j], request.context[0] * request.item_features[:, 0] * policy.theta[j], rtol=1e-12
    )


@pytest.mark.parametrize("spec", ["bernoulli-ts", "uniform", "popularity", "vw-ccb", "vw-cb:explorer=bag"])
def test_policies_without_a_linear_score_say_so(spec):
    rows, request, env = _world(2, 2, 2, 5, 10)
    policy = make(spec, **env, popularity=np.arange(5.0))
    sample = policy.distribution(request, 2, 0.05).sample(np.random.default_rng(0))
    for e in explain_slate(policy, request, sample):
        assert not e.available and e.score is None and e.contributions == ()
        assert policy.name in e.why
        assert e.to_dict()["available"] is False


def test_vw_cb_explains_through_its_own_audit():
    rng = np.random.default_rng(5)
    F = rng.normal(size=(12, 3))
    policy = make("vw-cb:explorer=squarecb", context_dim=2, item_dim=3)
    for _ in range(150):
        idx = rng.choice(12, 4, replace=False)
        policy.update(
            rng.normal(size=(1, 2)),
            F[idx[:1]],
            np.array([F[idx[0], 0] > 0], dtype=float),
            pscore=np.array([0.25]),
            candidates=[F[idx]],
            chosen=np.array([0]),
        )
    request = Request(rng.normal(size=2), np.arange(6), F[:6])
    names = FeatureNames(context=("a", "b"), item=("p", "q", "r"))
    sample = policy.distribution(request, 3).sample(np.random.default_rng(0))
    explained = explain_slate(policy, request, sample, names, top=4)
    from banditrec.policies.vw import vw_audit

    audit = vw_audit(policy._model_bytes(), policy.example(request.context, request.item_features))
    for j, e in zip(sample.index.tolist(), explained):
        assert e.available and e.kind == "vw-audit" and e.bonus == 0.0
        assert sum(c.value for c in e.contributions) == pytest.approx(e.base, abs=1e-9)
        # minus the cost VW printed (6 decimals), from float32 weights
        assert e.score == pytest.approx(-audit.predictions[j], abs=2e-6)
        assert {c.feature for c in e.contributions[:-1]} <= {
            "intercept",
            "ctx:a",
            "ctx:b",
            "item:p",
            "item:q",
            "item:r",
            *(f"ctx:{x} × item:{y}" for x in "ab" for y in "pqr"),
            "vw:clipped to the costs seen",  # VW clips a predicted cost to the range of costs seen
        }
    # the audit agrees with the PMF VW sampled from: its best-scored candidate has the largest probability
    scores = -np.asarray(audit.predictions)
    assert int(np.argmax(policy.pmf(request))) == int(np.argmax(scores))


def test_top_must_be_a_positive_integer():
    rows, request, env = _world(3, 2, 2, 5, 10)
    policy = make("linucb", **env)
    sample = policy.distribution(request, 2).sample(np.random.default_rng(0))
    with pytest.raises(ValidationError, match="top must be an integer") as err:
        explain_slate(policy, request, sample, top=0)
    assert err.value.field == "top"


# ---- the engine ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["linucb:alpha=1.0,epsilon=0.1", "lints", "egreedy", "softmax", "bernoulli-ts"])
def test_a_seeded_engine_decides_the_same_with_and_without_explanations(small_shop, spec):
    """Two engines, same seed: one explains every other decision. Same event ids, slates,
    propensities, the same log rows, and the same decisions after (the streams untouched)."""
    plain, explaining = make_engine(small_shop, spec), make_engine(small_shop, spec)
    ids = list(small_shop.catalog.item_ids)
    for eng in (plain, explaining):
        for u in range(8):
            d = eng.decide(f"t{u}", 3, context=CTX)
            eng.reward(d.event_id, 1.0, position=u % 3)
        eng.learn()
    for i in range(6):
        kw = dict(context=np.roll(CTX, i).tolist())
        if i == 2:
            kw["candidates"] = ids[:12]
        if i == 4:
            kw["pinned"] = [ids[20]]
        a = plain.decide(f"u{i}", 4, **kw)
        b = explaining.decide(f"u{i}", 4, explain=i % 2 == 0 or i == 4, **kw)
        assert a.explanations is None
        assert (b.explanations is not None) == (i % 2 == 0 or i == 4)
        assert a == replace(b, explanations=None)
        if b.explanations is not None:
            assert len(b.explanations) == len(b.slots)
            if i == 4:
                assert not b.explanations[0].available and b.explanations[0].why == "pinned by the request"
            for e in b.explanations[1 if i == 4 else 0 :]:
                assert e.available == (spec != "bernoulli-ts")
                if e.available:
                    assert sum(c.value for c in e.contributions) == pytest.approx(e.base, abs=1e-9)
                    assert e.score == pytest.approx(e.base + e.bonus + e.objective, abs=1e-9)
    assert _logged(plain) == _logged(explaining)


def test_engine_explanations_are_the_served_slates(small_shop):
    """The engine's explanation of a slot is the policy's score of that slot's item: slots in
    greedy order when nothing explores, and the same numbers explain_slate gives."""
    eng = make_engine(small_shop, "linucb:alpha=0.5", min_epsilon=0.0)
    for u in range(10):
        d = eng.decide(f"t{u}", 3, context=CTX)
        eng.reward(d.event_id, float(u % 2), position=0)
    eng.learn()
    ids = list(small_shop.catalog.item_ids)[:15]
    d = eng.decide("u1", 5, context=CTX, candidates=ids, explain=True)
    scores = [e.score for e in d.explanations]
    assert scores == sorted(scores, reverse=True)
    request = eng.request(np.asarray(CTX, dtype=float), np.array([ids.index(s.item_id) for s in d.slots]))
    expected = eng.policy.scores(request)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_explain_must_be_a_bool_and_a_batch_refuses_it(engine):
    with pytest.raises(ValidationError, match="explain must be true or false") as err:
        engine.decide("u1", 2, context=CTX, explain="yes")
    assert err.value.field == "explain"
    with pytest.raises(ValidationError, match="not available in a batch") as err:
        engine.decide_batch(
            [{"user_id": "u1", "n_slots": 2, "context": CTX}, {"user_id": "u2", "n_slots": 2, "explain": True}]
        )
    assert err.value.field == "explain" and err.value.index == 1
    assert engine.log.count("decisions") == 0


def test_a_baseline_served_decision_explains_the_items_it_shows(small_shop):
    """Apprentice mode serves the request's baseline: the explanation is the policy's own score of
    each shown baseline item, says so, and the decision is the one served without explain."""
    from banditrec.apprentice import ServingMode

    engines = [make_engine(small_shop, "linucb:alpha=0.5") for _ in range(2)]
    for eng in engines:
        eng.modes = ServingMode(eng.log.serving_mode, default="apprentice")
    ids = list(small_shop.catalog.item_ids)
    baseline = [ids[7], ids[2], ids[11]]
    plain = engines[0].decide("u1", 3, context=CTX, candidates=ids[:10], baseline=baseline)
    d = engines[1].decide("u1", 3, context=CTX, candidates=ids[:10], baseline=baseline, explain=True)
    assert d.served == "baseline" and [s.item_id for s in d.slots] == baseline
    assert replace(d, explanations=None) == plain
    cand = engines[1].items.lookup(list(d.candidates))
    scores = engines[1].policy.scores(engines[1].request(np.asarray(CTX, dtype=float), cand))
    at = [list(d.candidates).index(i) for i in baseline]
    np.testing.assert_allclose([e.score for e in d.explanations], scores[at], rtol=0, atol=1e-9)
    assert all(e.available and e.why.startswith("served from the request's baseline") for e in d.explanations)


def test_a_thompson_draw_that_cannot_be_split_says_why():
    rows, request, env = _world(4, 2, 2, 6, 20)
    blended = make("lints:objective=margin,sensitivity=low", **env)
    blended.update(**rows)
    sample = blended.distribution(request, 2).sample(np.random.default_rng(0))
    assert sample.served is not None
    for e in explain_slate(blended, request, sample):
        assert not e.available and "min-max" in e.why
    plain = make("lints", **env)
    kept = plain.distribution(request, 2).sample(np.random.default_rng(0))
    for e in explain_slate(plain, request, replace(kept, served=None)):  # a sample without its draw
        assert not e.available and "did not keep the posterior draw" in e.why
