"""Vowpal Wabbit policies (vw-cb, vw-ccb): the policy contract, and one test per VW pitfall
that applies (../shared/VW-NOTES.md): cost sign, zero probability, the ``shared`` keyword,
finished examples, finish()/save(), and PMF ordering of cb vs ccb."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from vowpalwabbit import Workspace

import banditrec.policies as policies
from banditrec.errors import ValidationError
from banditrec.policies import Request
from banditrec.policies.vw import (
    VWCCBConfig,
    VWConditionalContextualBandit,
    VWConfig,
    VWContextualBandit,
    VWSlate,
    _Lines,
)

N, DC, K = 6, 3, 3  # candidates, context dim, slots; item features are one-hot (item_dim = N)
CLASSES = {"vw-cb": (VWContextualBandit, VWConfig), "vw-ccb": (VWConditionalContextualBandit, VWCCBConfig)}


@pytest.fixture
def registry(monkeypatch):
    """Register both policies for make()/load() in this test only."""
    for name, (cls, _) in CLASSES.items():
        monkeypatch.setitem(policies.REGISTRY, name, cls)


def build(name: str, **params):
    cls, config = CLASSES[name]
    return cls(config(**params))


def request(rng, n=N, perm=None) -> Request:
    feats = np.eye(n)
    if perm is not None:
        feats = feats[perm]
    return Request(context=rng.normal(size=DC), items=np.arange(n), item_features=feats)


def train(policy, rng, rounds: int, best: int = 2, n=N, slots=K):
    """Serve ``rounds`` decisions and learn from them; item ``best`` earns 1, the others 0."""
    for _ in range(rounds):
        req = request(rng, n)
        draw = policy.distribution(req, slots, 0.05).sample(rng)
        learn(policy, req, draw, (draw.index == best).astype(float))


def learn(policy, req, draw, reward, weight=None):
    m = len(draw.index)
    kw = dict(candidates=[req.item_features] * m, chosen=draw.index, weight=weight)
    if isinstance(policy, VWConditionalContextualBandit):
        kw.update(propensity=draw.propensity, slot=np.arange(m))
    else:
        kw.update(pscore=draw.marginal)
    policy.update(np.tile(req.context, (m, 1)), req.item_features[draw.index], reward, **kw)


def weights(policy) -> str:
    """The learned weights (non-zero ones, as JSON). The model file also counts predictions,
    so two models that learned the same rows differ there if one served more."""
    return policy._ws().json_weights()


def vw_rng_state(policy) -> str:
    """VW's RNG state, as its model file records it (``--random_seed <state>``; absent while 0)."""
    found = re.search(rb"--random_seed (\d+)", policy.state()[0]["payload"])
    return found.group(1).decode() if found else "0"


# ---- config and registry -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_spec_round_trip_through_make(name, registry):
    policy = policies.make(f"{name}:explorer=bag,size=3,epsilon=0.2,seed=7")
    assert policy.params["explorer"] == "bag" and policy.params["size"] == 3 and policy.params["seed"] == 7
    assert policies.make(policy.spec).params == policy.params
    assert "--bag" in policy.vw_args() and "--random_seed" in policy.vw_args()


@pytest.mark.parametrize(
    "explorer, learner",
    [
        ("epsilon", "cb_explore_adf_greedy"),
        ("squarecb", "cb_explore_adf_squarecb"),
        ("bag", "cb_explore_adf_bag"),
        ("cover", "cb_explore_adf_cover"),
        ("softmax", "cb_explore_adf_softmax"),
    ],
)
def test_every_explorer_builds_and_gives_a_pmf(explorer, learner, rng):
    policy = build("vw-cb", explorer=explorer, epsilon=0.1)
    assert learner in policy._learners
    train(policy, rng, 20)
    pmf = policy.pmf(request(rng))
    assert pmf.shape == (N,) and abs(pmf.sum() - 1) < 1e-6 and (pmf >= 0.1 / N * (1 - 1e-6)).all()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"explorer": "thompson"}, "explorer must be one of epsilon, squarecb, bag, cover, softmax"),
        ({"cb_type": "ips"}, "squarecb explorer learns with cb_type mtr only, got cb_type='ips'"),
        ({"cb_type": "awesome"}, "cb_type must be one of"),
        ({"explore_from": 2}, "explore_from must be 0 for Vowpal Wabbit policies"),
        ({"objective": "margin"}, "do not blend a business objective"),
        ({"gamma_scale": 0.0}, "gamma_scale must be a finite number > 0"),
        ({"softmax_lambda": float("nan")}, "softmax_lambda must be a finite number > 0"),
        ({"size": 0}, r"size must be an integer in \[1, 1024\]"),
        ({"bits": 40}, r"bits must be an integer in \[4, 30\]"),
        ({"draws": 1}, "draws must be an integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"epsilon": 1.5}, r"epsilon must be a number in \[0, 1\]"),
    ],
)
def test_bad_configs_raise_clear_errors(params, match):
    for _, config in CLASSES.values():
        with pytest.raises(ValidationError, match=match):
            config(**params)


# ---- the contract ------------------------------------------------------------------------
CONTRACT = [
    ("vw-cb", {}),
    ("vw-cb", {"explorer": "epsilon"}),
    ("vw-cb", {"explorer": "softmax", "epsilon": 0.1}),
    ("vw-ccb", {}),
    ("vw-ccb", {"explorer": "bag", "epsilon": 0.1}),
]


@pytest.mark.parametrize("name, params", CONTRACT)
def test_contract_marginals_and_logged_propensities(name, params, rng):
    """Columns sum to 1; rows to at most 1 (exactly for slot 0, within 4 standard errors for the
    Monte-Carlo slots: one prefix's slot probabilities of an item can add up to more than 1);
    the floor reaches every slot-0 cell; a drawn slate's logged propensities equal the
    distribution's probabilities of its items, and its marginals are never 0."""
    draws = 16
    policy = build(name, draws=draws, **params)
    train(policy, rng, 30)
    dist = policy.distribution(request(rng), K, 0.05)
    M, se = dist.marginals(), dist.marginal_se()
    assert M.shape == se.shape == (N, K) and dist.n_candidates == N and dist.n_slots == K
    assert dist.marginal_draws == draws
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-5)  # VW's probabilities are float32
    assert (M.sum(axis=1) <= 1 + 1e-5 + 4 * se.sum(axis=1)).all()
    assert (M[:, 0] >= 0.05 / N).all() and (M >= 0).all()
    assert (se[:, 0] == 0).all() and (se <= 0.5 / np.sqrt(draws) + 1e-12).all()
    for seed in range(5):
        draw = dist.sample(np.random.default_rng(seed))
        assert len(set(draw.index.tolist())) == K and draw.marginal_draws == draws
        np.testing.assert_array_equal(draw.propensity, dist.conditionals(draw.index))
        held = M[draw.index, np.arange(K)]
        # positivity guard: a cell no sampled prefix reached is logged as its own path's term
        np.testing.assert_array_equal(draw.marginal, np.where(held > 0, held, draw.propensity / (draws + 1)))
        assert (draw.marginal > 0).all()
        assert draw.marginal[0] == M[draw.index[0], 0]
        assert np.isclose(draw.log_joint, np.log(draw.propensity).sum())


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_same_generator_same_slate(name, rng):
    policy = build(name, draws=4)
    train(policy, rng, 10)
    req = request(rng)
    a = policy.distribution(req, K).sample(np.random.default_rng(3))
    b = policy.distribution(req, K).sample(np.random.default_rng(3))
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.marginal, b.marginal)  # MC stream seeded by the request's content


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_batch_update_equals_single_updates(name, rng):
    """VW learns online: one update of m rows is m single-row (vw-ccb: single-decision)
    updates in the same order, bit for bit."""
    batch, single = build(name), build(name)
    reqs = [request(rng) for _ in range(4)]
    draws = [batch.distribution(r, K, 0.05).sample(rng) for r in reqs]
    rewards = [rng.binomial(1, 0.5, size=K).astype(float) for _ in reqs]
    for req, draw, r in zip(reqs, draws, rewards):
        learn(single, req, draw, r)
    m = K * len(reqs)
    kw = dict(
        candidates=[r.item_features for r in reqs for _ in range(K)], chosen=np.concatenate([d.index for d in draws])
    )
    if name == "vw-ccb":
        kw.update(propensity=np.concatenate([d.propensity for d in draws]), slot=np.tile(np.arange(K), len(reqs)))
    else:
        kw.update(pscore=np.concatenate([d.marginal for d in draws]))
    batch.update(
        np.repeat([r.context for r in reqs], K, axis=0),
        np.concatenate([r.item_features[d.index] for r, d in zip(reqs, draws)]),
        np.concatenate(rewards),
        **kw,
    )
    assert len(kw["chosen"]) == m
    assert weights(batch) == weights(single) and vw_rng_state(batch) == vw_rng_state(single)
    probe = request(rng)
    np.testing.assert_array_equal(batch.scores(probe), single.scores(probe))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_save_load_round_trip_gives_identical_distributions(name, registry, tmp_path, rng):
    policy = build(name, explorer="bag", epsilon=0.1, draws=8)
    train(policy, rng, 20)
    manifest = policy.save(tmp_path / "snap")
    assert json.loads(manifest.read_text())["payload"] == "snap.vw"
    again = policies.load(tmp_path / "snap")
    assert type(again) is type(policy) and again.params == policy.params
    assert again.model_version == policy.model_version == f"{name}-20"
    req = request(rng)
    a, b = policy.distribution(req, K, 0.05), again.distribution(req, K, 0.05)
    np.testing.assert_array_equal(a.marginals(), b.marginals())
    np.testing.assert_array_equal(a.sample(np.random.default_rng(1)).index, b.sample(np.random.default_rng(1)).index)
    # training resumes bit-exactly after the reload (bag's bootstrap RNG state included)
    state = rng.bit_generator.state
    train(policy, rng, 10)
    rng.bit_generator.state = state
    train(again, rng, 10)
    np.testing.assert_array_equal(policy.scores(req), again.scores(req))


def test_item_lines_fast_path_matches_the_plain_format(rng):
    """The cached, templated item lines equal a plain per-value format, zeros (and values that
    are 0 in float32) left out; 9 significant digits give back exactly the float32 VW stores."""
    V = rng.normal(size=(40, 5)) * 10.0 ** rng.integers(-8, 8, size=(40, 5))
    V[3, 2], V[7], V[9, 0] = 0.0, 0.0, 1e-50
    plain = [
        (
            "|Action " + " ".join(f"f{j}:{float(np.float32(v)):.9g}" for j, v in enumerate(row) if np.float32(v) != 0)
        ).rstrip()
        for row in V
    ]
    lines = _Lines()
    assert lines.items(V) == plain  # formatted
    assert lines.items(V[::-1].copy()) == plain[::-1]  # from the cache
    for line, row in zip(plain, V):
        for token in line.split()[1:]:
            j, value = token[1:].split(":")
            assert np.float32(float(value)) == np.float32(row[int(j)])
    assert plain[7] == "|Action"


# ---- pitfalls ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_cost_sign_a_rewarded_item_gains_mass(name, rng):
    """Pitfall 1: labels hold cost = -reward; learning the other way round would bury item 2."""
    policy = build(name, epsilon=0.2)
    req = request(rng)
    before = policy.scores(req)[2]
    train(policy, rng, 60, best=2)
    after = policy.scores(req)
    assert after[2] > before and after.argmax() == 2


@pytest.mark.parametrize(
    "name, bad",
    [("vw-cb", 0.0), ("vw-cb", 1e-40), ("vw-cb", 1.5), ("vw-cb", np.nan), ("vw-ccb", 0.0), ("vw-ccb", 1e-40)],
)
def test_zero_probability_is_rejected_before_anything_is_learned(name, bad, rng):
    """Pitfall 2: a probability of 0 (or one that reads as 0 in float32) makes VW learn nothing,
    silently; every row is checked first, so a bad row leaves the model untouched."""
    policy = build(name)
    req = request(rng)
    draw = policy.distribution(req, K).sample(rng)
    before = weights(policy)
    probs = (draw.propensity if name == "vw-ccb" else draw.marginal).copy()
    probs[1] = bad
    key = "propensity" if name == "vw-ccb" else "pscore"
    kw = dict(candidates=[req.item_features] * K, chosen=draw.index, **{key: probs})
    if name == "vw-ccb":
        kw["slot"] = np.arange(K)
    with pytest.raises(ValidationError, match=rf"{key} must be in \(0, 1\].*found {bad!r} at row 1"):
        policy.update(np.tile(req.context, (K, 1)), req.item_features[draw.index], np.ones(K), **kw)
    assert weights(policy) == before and policy.n_updates == 0
    kw.pop(key)
    with pytest.raises(ValidationError, match=f"needs {key}="):
        policy.update(np.tile(req.context, (K, 1)), req.item_features[draw.index], np.ones(K), **kw)


def test_shared_keyword_gives_one_probability_per_candidate(rng, monkeypatch):
    """Pitfall 3: without ``shared`` the context line becomes an extra action (n + 1
    probabilities); the policy writes it and refuses a PMF of the wrong length."""
    policy = build("vw-cb")
    req = request(rng)
    lines = policy.example(req.context, req.item_features)
    assert lines[0].startswith("shared |User ") and len(lines) == N + 1
    assert len(policy.pmf(req)) == N
    assert len(policy._ws().predict([lines[0][len("shared ") :], *lines[1:]])) == N + 1  # the pitfall itself
    monkeypatch.setattr(policy, "example", lambda c, f, **kw: [lines[0][len("shared ") :], *lines[1:]])
    with pytest.raises(ValidationError, match="shared line missing its keyword"):
        policy.pmf(req)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_examples_are_finished_memory_stays_bounded(rng):
    """Pitfall 5: unfinished examples leak ~3 MB per 100-action decision; the policies pass
    list[str] so VW finishes them. 150 decisions of 100 candidates (a leak would add ~450 MB)."""
    cb, ccb = build("vw-cb", draws=2), build("vw-ccb", draws=2)
    req = request(rng, n=100)
    for _ in range(20):
        cb.distribution(req, 3).marginals(), ccb.distribution(req, 3).sample(rng)
    start = rss_bytes()
    for _ in range(150):
        cb.distribution(req, 3).sample(rng), ccb.distribution(req, 3).sample(rng)
    assert rss_bytes() - start < 40 * 2**20
    assert cb._ws().predict(" ".join(cb.example(req.context, req.item_features))) == []  # pitfall 4: one str


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_saved_model_reloads_with_dash_i_and_save_keeps_the_model(name, tmp_path, rng):
    """Pitfall 6: ``-f`` writes only at finish(); save() writes VW's file at once, the policy
    keeps learning afterwards, and the file reloads with ``-i`` to the same predictions."""
    policy = build(name, draws=4)
    train(policy, rng, 15)
    manifest = policy.save(tmp_path / "a")
    vw = Workspace(arg_list=["--quiet", "-i", str(tmp_path / "a.vw")])
    req = request(rng)
    if name == "vw-cb":
        lines = policy.example(req.context, req.item_features)
    else:
        slots = ["ccb slot 'seed=1 |Slot s=0", "ccb slot 'seed=2 |Slot s=1"]
        lines = policy.example(req.context, req.item_features, slots)
    assert vw.predict(lines) == policy._ws().predict(lines)  # bit-exact
    vw.finish()
    train(policy, rng, 5)  # still learning after save
    policy.save(tmp_path / "b")
    assert (tmp_path / "a.vw").read_bytes() != (tmp_path / "b.vw").read_bytes()
    assert json.loads(manifest.read_text())["model_version"] == f"{name}-15"


def test_pmf_order_cb_is_candidate_order_and_ccb_lists_are_mapped_back(rng):
    """Pitfall: cb_explore_adf's PMF follows the action lines; ccb lists the chosen action
    first. Permuting the candidates must permute every probability with them."""
    cb, ccb = build("vw-cb", epsilon=0.2), build("vw-ccb", epsilon=0.2, draws=8)
    train(cb, rng, 60, best=3)
    train(ccb, rng, 60, best=3)
    perm = np.array([4, 3, 0, 5, 1, 2])  # item 3 is candidate 1 here
    ctx = rng.normal(size=DC)
    req = Request(context=ctx, items=np.arange(N), item_features=np.eye(N))
    preq = Request(context=ctx, items=perm, item_features=np.eye(N)[perm])
    np.testing.assert_array_equal(cb.pmf(preq), cb.pmf(req)[perm])
    assert cb.pmf(preq).argmax() == 1
    d, pd = ccb.distribution(req, K), ccb.distribution(preq, K)
    np.testing.assert_array_equal(pd.marginals()[:, 0], d.marginals()[perm, 0])
    assert pd.marginals()[:, 0].argmax() == 1
    inv = np.argsort(perm)
    slate = np.array([3, 0, 5])  # candidates of req; in preq they sit at inv[slate]
    np.testing.assert_array_equal(pd.conditionals(inv[slate]), d.conditionals(slate))
    for seed in range(5):  # VW chose first; the first pair's probability is the chosen one's
        draw = pd.sample(np.random.default_rng(seed))
        assert draw.propensity[0] == pd.marginals()[draw.index[0], 0]


def test_ccb_chosen_first_lists_map_to_candidate_positions():
    """The mapping itself, on a prediction in VW's shape (chosen first, earlier choices gone)."""
    slate = VWSlate.__new__(VWSlate)
    slate._n, slate._k = 4, 2
    slate._predict = lambda lines: [[(2, 0.7), (0, 0.1), (1, 0.1), (3, 0.1)], [(3, 0.5), (0, 0.25), (1, 0.25)]]
    index, cond, pmfs = slate._run([0, 0])
    np.testing.assert_array_equal(index, [2, 3])
    np.testing.assert_array_equal(cond, [0.7, 0.5])
    np.testing.assert_array_equal(pmfs, [[0.1, 0.1, 0.7, 0.1], [0.25, 0.25, 0.0, 0.5]])
    slate._predict = lambda lines: [[(2, 0.7), (0, 0.1), (1, 0.1), (3, 0.1)], [(2, 0.5), (0, 0.25), (1, 0.25)]]
    with pytest.raises(ValidationError, match="expected the 3 not taken by earlier slots"):
        slate._run([0, 0])


def test_ccb_slots_follow_vw_probabilities_with_seeds_from_the_generator(rng):
    """VW samples each slot with the tag seed drawn from the caller's Generator: 4,000 slates,
    slot-0 frequencies within 4 standard errors of VW's PMF; serving never moves VW's RNG."""
    policy = build("vw-ccb", epsilon=0.3, draws=2, seed=5)
    train(policy, rng, 40, slots=2)
    req = request(rng)
    dist = policy.distribution(req, 2)
    p = dist.marginals()[:, 0]
    before = vw_rng_state(policy)
    gen = np.random.default_rng(11)
    counts = np.bincount([dist.sample(gen).index[0] for _ in range(4000)], minlength=N)
    se = np.sqrt(p * (1 - p) / 4000)
    assert (np.abs(counts / 4000 - p) < 4 * se).all(), (counts / 4000, p)
    assert vw_rng_state(policy) == before


def test_ccb_serving_floor_must_come_from_vw_epsilon(rng):
    policy = build("vw-ccb", epsilon=0.05, draws=2)
    with pytest.raises(ValidationError, match="min_epsilon=0.1 needs epsilon >= 0.1"):
        policy.distribution(request(rng), K, 0.1)
    train(policy, rng, 30)
    draw = policy.distribution(request(rng), K, 0.05).sample(rng)  # checked against the floor inside
    assert (draw.propensity >= 0.05 / N * (1 - 1e-5)).all()


# ---- weights ------------------------------------------------------------------------------
def test_weight_is_applied_as_probability_over_weight(rng):
    """VW's labels carry no weight: (p, w) is learned as probability p / w, so (0.2, 2) is
    exactly (0.1, 1), a weight-0 row is skipped, and w < p is refused."""
    a, b, c = build("vw-cb"), build("vw-cb"), build("vw-cb")
    req = request(rng)
    draw = a.distribution(req, 2, 0.05).sample(rng)
    x, v = np.tile(req.context, (2, 1)), req.item_features[draw.index]
    kw = dict(candidates=[req.item_features] * 2, chosen=draw.index)
    a.update(x, v, [1.0, 0.0], pscore=[0.2, 0.3], weight=[2.0, 0.0], **kw)
    b.update(x[:1], v[:1], [1.0], pscore=[0.1], candidates=kw["candidates"][:1], chosen=draw.index[:1])
    assert weights(a) == weights(b)
    with pytest.raises(ValidationError, match="weight 0.1 at row 0 is below its pscore 0.2"):
        c.update(x, v, [1.0, 0.0], pscore=[0.2, 0.3], weight=[0.1, 1.0], **kw)
    with pytest.raises(ValidationError, match="for cb_type mtr or ips only, not dr"):
        build("vw-cb", explorer="epsilon", cb_type="dr").update(
            x, v, [1.0, 0.0], pscore=[0.2, 0.3], weight=[2.0, 1.0], **kw
        )


# ---- snapshots that must fail ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_corrupt_or_truncated_model_fails_loudly_and_keeps_the_old_model(name, registry, tmp_path, rng):
    policy = build(name, draws=4)
    train(policy, rng, 10)
    policy.save(tmp_path / "snap")
    model = (tmp_path / "snap.vw").read_bytes()
    (tmp_path / "snap.vw").write_bytes(model[: len(model) // 2])
    with pytest.raises(ValidationError, match="truncated or corrupt"):
        policies.load(tmp_path / "snap")
    arrays, meta = policy.state()
    req = request(rng)
    serving = policy.scores(req)
    # VW itself would load the truncated file as a partly fresh model: the checksum catches it
    with pytest.raises(ValidationError, match="do not match their checksum"):
        policy.set_state({"payload": model[: len(model) // 2]}, meta)
    garbage = b"not a model" * 50
    with pytest.raises(ValidationError, match="Vowpal Wabbit cannot load the model"):
        policy.set_state(
            {"payload": garbage},
            {**meta, "model_sha256": hashlib.sha256(garbage).hexdigest(), "model_size": len(garbage)},
        )
    other = build(name, explorer="softmax")._model_bytes()
    with pytest.raises(ValidationError, match="reductions"):
        policy.set_state(
            {"payload": other}, {**meta, "model_sha256": hashlib.sha256(other).hexdigest(), "model_size": len(other)}
        )
    with pytest.raises(ValidationError, match="lacks model_sha256"):
        policy.set_state(arrays, {})
    np.testing.assert_array_equal(policy.scores(req), serving)


def test_a_failed_save_leaves_the_previous_snapshot(registry, tmp_path, rng):
    policy = build("vw-cb")
    train(policy, rng, 5)
    policy.save(tmp_path / "snap")
    good = policies.load(tmp_path / "snap").scores(request(np.random.default_rng(1)))

    def broken(path):
        Path(path).write_bytes(b"")

    policy._ws().save = broken  # VW writes nothing: refused before anything is replaced
    with pytest.raises(ValidationError, match="empty model file"):
        policy.save(tmp_path / "snap")
    np.testing.assert_array_equal(policies.load(tmp_path / "snap").scores(request(np.random.default_rng(1))), good)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_workspace_is_never_pickled_and_close_is_final(name):
    policy = build(name)
    with pytest.raises(TypeError, match="cannot be pickled; use policy.save"):
        pickle.dumps(policy)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(policy)
    policy.close()
    with pytest.raises(ValidationError, match="was closed"):
        policy.scores(request(np.random.default_rng(0)))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_one_policy_serves_and_learns_from_two_threads(name):
    """The workspace is guarded by the policy's lock (a ccb decision holds it for all of its
    1 + draws predicts): 40 decisions served while another thread learns 40 more."""
    policy = build(name, draws=4)
    errors, served = [], []

    def serve():
        gen = np.random.default_rng(1)
        try:
            for _ in range(40):
                dist = policy.distribution(request(gen), K, 0.05)
                served.append((dist.sample(gen), dist.marginals()))
        except Exception as exc:  # reported below, with the thread's traceback lost otherwise
            errors.append(exc)

    def learner():
        try:
            train(policy, np.random.default_rng(2), 40)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve), threading.Thread(target=learner)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(served) == 40 and policy.n_updates == 40
    for draw, M in served:
        np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-5)
        assert (draw.marginal > 0).all()


# ---- invalid input -----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_bad_requests_raise_validation_errors(name, rng):
    policy = build(name)
    policy_dims = CLASSES[name][0](CLASSES[name][1](), context_dim=DC, item_dim=N)
    ok = request(rng)
    cases = [
        (policy, Request(ok.context, ok.items, ok.item_features), 7, 0.0, "cannot fill 7 slots from 6 candidates"),
        (
            policy,
            Request(np.r_[np.nan, ok.context[1:]], ok.items, ok.item_features),
            2,
            0.0,
            "context must be finite.*found nan at index 0",
        ),
        (policy, Request(ok.context, ok.items, np.full((N, N), 1e39)), 2, 0.0, "within float32 range"),
        (policy, Request(ok.context[None, :], ok.items, ok.item_features), 2, 0.0, "context must be 1-dimensional"),
        (policy, Request(ok.context, ok.items[:3], ok.item_features), 2, 0.0, "same length, got 3 and 6"),
        (policy, ok, 0, 0.0, "slots must be >= 1"),
        (policy, ok, 2, 1.5, r"min_epsilon must be a number in \[0, 1\]"),
        (policy_dims, Request(ok.context[:2], ok.items, ok.item_features), 2, 0.0, "context must have 3 columns"),
    ]
    for p, req, k, floor, match in cases:
        with pytest.raises(ValidationError, match=match):
            p.distribution(req, k, floor)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_bad_updates_raise_and_learn_nothing(name, rng):
    policy = build(name)
    req = request(rng)
    draw = policy.distribution(req, K).sample(rng)
    key = "propensity" if name == "vw-ccb" else "pscore"
    base = dict(candidates=[req.item_features] * K, chosen=draw.index, **{key: draw.propensity})
    if name == "vw-ccb":
        base["slot"] = np.arange(K)
    x, v, r = np.tile(req.context, (K, 1)), req.item_features[draw.index], np.ones(K)
    before = weights(policy)
    cases = [
        (dict(candidates=None), "pass candidates"),
        (dict(chosen=np.roll(draw.index, 1)), "misaligned"),
        (dict(chosen=np.r_[draw.index[:2], 99]), r"chosen must be in \[0, 6\) for row 2, found 99"),
        (dict(candidates=[req.item_features] * 2), r"candidates must hold one array per row \(3\), got 2"),
        (dict(weight=[1.0, -1.0, 1.0]), "weight must be finite and >= 0"),
    ]
    if name == "vw-ccb":
        cases += [
            (dict(slot=[0, 2, 1]), r"must be slots 0..2 of one decision, got \[0, 2, 1\]"),
            (dict(slot=[1, 2, 3]), "slot must start each decision at 0"),
            (dict(slot=None), "groups rows into slates by slot"),
            (dict(pscore=draw.marginal, propensity=None), r"needs propensity=\(m,\)"),
            (dict(weight=[1.0, 0.0, 1.0]), "cannot skip one slot of a slate"),
        ]
    for change, match in cases:
        with pytest.raises(ValidationError, match=match):
            policy.update(x, v, r, **{**base, **change})
    with pytest.raises(ValidationError, match="reward must be finite"):
        policy.update(x, v, np.array([1.0, np.inf, 0.0]), **base)
    with pytest.raises(ValidationError, match="one row each"):
        policy.update(x, v, np.ones(2), **base)
    assert weights(policy) == before and policy.n_updates == 0
