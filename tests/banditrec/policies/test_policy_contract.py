"""One contract for every policy in ``banditrec.policies.REGISTRY`` (CONVENTIONS #5-7, #10, #11).

The registry is read at import time, so a newly registered policy joins every test here
without an edit. Each policy is built from its spec with one environment that satisfies all
of them (dimensions, catalog size, popularity, product types, a business column and a small
``mc_draws``) and, where it learns, is first trained on rows it served itself.

Sizes are small on purpose: a request of N = 6 candidates for K = 3 slots has 6 * 5 * 4 = 120
ordered slates, few enough to enumerate, so every distribution is checked against the slow
obvious oracle ``P(slate) = prod_k conditionals(slate)[k]``:

* the conditionals of all slates sum to 1 (they form a distribution), and
* ``marginals()[j, k]`` equals the sum ``E[j, k]`` of ``P(slate)`` over the slates with
  candidate j in slot k: to 1e-6 (rounding; VW's probabilities are float32) where the
  distribution reports ``marginal_draws == 0``, and within the Monte-Carlo tolerance of
  :func:`mc_tol` where it reports D > 0 draws.

**Monte-Carlo tolerance.** A Rao-Blackwellised marginal is the mean of D terms in [0, 1] whose
mean is the true marginal E, so the terms' variance is at most E(1 - E), and Bernstein's
inequality bounds the error with probability >= 1 - 1e-4 per cell whatever the terms'
distribution. The distributions' own ``marginal_se()`` is *not* used as the pass criterion:
measured on softmax slates with D = 64, 7% of the cells of slots 1-2 are more than 4 stated se
from the enumeration, because a rare prefix can carry a large term that none of the D draws
hit, so the stated se of exactly those cells is too small. Its stated bound (at most
0.5 / sqrt(D - 1) per cell) is checked. The tests that
compare Monte-Carlo marginals with the truth use D = ``CHECK_DRAWS`` (4,096) for power (the
same model, built with more draws); the others serve with ``MC_DRAWS`` (64).

Randomised checks state their size and tolerance in place and use fixed seeds, so a failure
reproduces. Policy-specific exemptions are listed (with the reason) next to the test they
exempt; ``MC_ZERO_CELLS_POSSIBLE`` names the one documented limitation (and tests what holds).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.policies import REGISTRY, Request, load, make

NAMES = sorted(REGISTRY)  # read once, at import: a new registry entry is a new row of every test

N_ITEMS, DC, DI = 30, 3, 2  # catalog size, context dim, item-feature dim
N, K = 6, 3  # candidates per request, slots
FLOORS = (0.0, 0.05)  # serving floor min_epsilon: none, and one that reaches every candidate
MC_DRAWS = 64  # Monte-Carlo draws the policies serve with here
CHECK_DRAWS = 4096  # ... and where their Monte-Carlo marginals are compared with the truth
DELTA = 1e-4  # per-cell false-failure probability of the Monte-Carlo tolerance
TRAIN_DECISIONS = 30  # decisions (x K slots) a policy learns from before it is checked

_catalog_rng = np.random.default_rng(20240607)
CATALOG = _catalog_rng.normal(size=(N_ITEMS, DI))  # item i's features, fixed per item
TYPES = np.arange(N_ITEMS) % 3  # three product types
TASTE = _catalog_rng.normal(size=(DC, DI))  # click model of the training rows: x^T W v
ENV = dict(
    context_dim=DC,
    item_dim=DI,
    n_items=N_ITEMS,
    popularity=_catalog_rng.permutation(N_ITEMS).astype(float),  # distinct counts: a strict ranking
    item_types=TYPES,
    item_columns={"margin": _catalog_rng.uniform(1.0, 50.0, size=N_ITEMS)},
    mc_draws=MC_DRAWS,
)

# Specs the suite builds; a policy not listed is built with its defaults.
SPECS: dict[str, str] = {}

# Known gaps (policy modules not owned by this suite); each entry is reported with the fix.
# Monte-Carlo marginals can put 0 on a cell whose item was in every sampled prefix: an item a
# sharp policy shows first with probability 0.96 can be in every one of the suite's 64 prefixes.
# What is logged is guarded (a positive marginal for every shown item, tested below); the matrix
# itself may hold such zeros.
MC_ZERO_CELLS_POSSIBLE = {
    "vw-ccb": "VW-sampled prefixes: an item VW shows first with probability 0.96 can be in every one",
    "softmax": "Plackett-Luce prefixes at the default temperature (tau = 0.02 noise sds): as sharp",
}


# Thompson samplers whose default explores nothing beyond the posterior draw (epsilon = 0)
THOMPSON = {"lints", "bernoulli-ts"}


def each_policy(test: str):
    """``NAMES`` as pytest params (every registered policy)."""
    return list(NAMES)


# ---- helpers ---------------------------------------------------------------------------------
def request(rng: np.random.Generator, n: int = N, items=None) -> Request:
    items = rng.choice(N_ITEMS, size=n, replace=False) if items is None else np.asarray(items)
    return Request(context=rng.normal(size=DC), items=items, item_features=CATALOG[items])


def spec_of(name: str, extra: str = "") -> str:
    """The suite's spec of ``name`` (see ``SPECS``), with ``extra`` parameters appended."""
    base = SPECS.get(name, name)
    return base if not extra else f"{base}{',' if ':' in base else ':'}{extra}"


def build(name: str, spec: str | None = None, **env):
    return make(spec or spec_of(name), **{**ENV, **env})


def twin(policy, extra: str = "", *, draws: int | None = None, **env):
    """A policy of the same name and learned state, built with ``extra`` spec parameters and,
    with ``draws``, that many Monte-Carlo draws (env ``mc_draws``, and the config's own
    ``draws`` for a policy that has one, as the VW policies do)."""
    name = policy.name
    fields = {f.name for f in dataclasses.fields(type(policy).Config)}
    if draws is not None:
        env["mc_draws"] = draws
        if "draws" in fields:
            extra = ",".join(filter(None, [extra, f"draws={draws}"]))
    other = build(name, spec_of(name, extra), **env)
    other.set_state(*policy.state())
    other.n_updates = policy.n_updates
    return other


def learns_slates(policy) -> bool:
    """A policy that needs ``slot`` learns a whole slate (decision) as one example."""
    return "slot" in policy.needs


@dataclass
class Rows:
    """Logged slot rows of ``TRAIN_DECISIONS`` decisions, K consecutive rows per decision."""

    context: np.ndarray  # (m, DC)
    item_features: np.ndarray  # (m, DI)
    reward: np.ndarray  # (m,)
    items: np.ndarray  # (m,) catalog indices
    pscore: np.ndarray  # (m,) logged marginal P(slot k holds item)
    propensity: np.ndarray  # (m,) logged conditional P(item | earlier slots)
    slot: np.ndarray  # (m,)
    chosen: np.ndarray  # (m,) position of the item among its decision's candidates
    candidates: list  # m arrays (N, DI), shared by the rows of one decision
    weight: np.ndarray  # (m,) importance weights in [1, 2] (VW needs weight >= pscore)

    def take(self, sl: slice) -> Rows:
        return Rows(**{f.name: getattr(self, f.name)[sl] for f in dataclasses.fields(self)})


def serve_rows(policy, rng: np.random.Generator, n_decisions: int = TRAIN_DECISIONS) -> Rows:
    """``n_decisions`` slates served by ``policy`` itself (floor 0.05), with clicks drawn from
    ``sigmoid(3 x^T W v)``; the policy does not learn here."""
    parts = []
    for _ in range(n_decisions):
        req = request(rng)
        draw = policy.distribution(req, K, 0.05).sample(rng)
        v = req.item_features[draw.index]
        p_click = 1.0 / (1.0 + np.exp(-3.0 * (v @ TASTE.T @ req.context)))
        parts.append(
            dict(
                context=np.tile(req.context, (K, 1)),
                item_features=v,
                reward=(rng.random(K) < p_click).astype(float),
                items=req.items[draw.index],
                pscore=draw.marginal,
                propensity=draw.propensity,
                slot=np.arange(K),
                chosen=draw.index,
                candidates=[req.item_features] * K,
                weight=rng.uniform(1.0, 2.0, size=K),
            )
        )
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "candidates"}
    return Rows(**cat, candidates=[c for p in parts for c in p["candidates"]])


def learn(policy, rows: Rows, *, weighted: bool = False) -> None:
    """``policy.update`` on ``rows`` with everything the rows hold, through the one signature
    every policy has (each reads what it needs)."""
    policy.update(
        rows.context,
        rows.item_features,
        rows.reward,
        items=rows.items,
        pscore=rows.pscore,
        propensity=rows.propensity,
        slot=rows.slot,
        candidates=rows.candidates,
        chosen=rows.chosen,
        weight=rows.weight if weighted else None,
    )


def trained(name: str, seed: int = 0, **env):
    """A policy after learning from ``TRAIN_DECISIONS`` decisions it served (a fresh linear
    model ties or nearly ties every candidate, which would hide ranking bugs)."""
    policy = build(name, **env)
    learn(policy, serve_rows(policy, np.random.default_rng(seed)))
    return policy


def state_of(policy) -> dict:
    arrays, _ = policy.state()
    return arrays


def mc_se(dist) -> np.ndarray:
    """Stated standard error of ``dist.marginals()`` (zeros where the distribution is exact)."""
    draws = getattr(dist, "marginal_draws", 0)
    if draws == 0:
        return np.zeros_like(dist.marginals())
    assert hasattr(dist, "marginal_se"), "Monte-Carlo marginals must state their standard error"
    return np.asarray(dist.marginal_se())


def bernstein(truth: np.ndarray, draws: int, delta: float = DELTA) -> np.ndarray:
    """``t`` with P(|mean of ``draws`` terms in [0, 1] - truth| > t) <= delta: Bernstein's
    inequality with the terms' variance bounded by ``truth (1 - truth)``,
    ``t = (2L/3 + sqrt((2L/3)^2 + 8 D L v)) / (2D)``, ``L = ln(2 / delta)``."""
    L = np.log(2.0 / delta)
    v = np.clip(truth * (1.0 - truth), 0.0, 0.25)
    return (2 * L / 3 + np.sqrt((2 * L / 3) ** 2 + 8 * draws * L * v)) / (2 * draws)


def mc_tol(dist, truth: np.ndarray) -> np.ndarray:
    """Per-cell tolerance of ``dist.marginals()`` against ``truth``: 1e-6 (rounding, float32)
    where exact -- every cell when ``marginal_draws == 0``, and slot 0 when the distribution
    states a zero se for all of it (slot 0 has no prefix to sample, except under Thompson
    sampling, whose every slot depends on the posterior draw) -- :func:`bernstein` at
    ``marginal_draws`` elsewhere."""
    draws = getattr(dist, "marginal_draws", 0)
    tol = np.full(np.shape(truth), 1e-6)
    if draws:
        mc = np.ones(tol.shape, dtype=bool)
        mc[:, 0] = (mc_se(dist)[:, 0] > 0).any()
        tol += np.where(mc, bernstein(np.asarray(truth), draws), 0.0)
    return tol


def check_stated_se(dist) -> None:
    """A Monte-Carlo distribution states its standard errors, each at most the
    ``0.5 / sqrt(D - 1)`` any mean of D terms in [0, 1] can have."""
    draws = getattr(dist, "marginal_draws", 0)
    if not draws:
        return
    se = mc_se(dist)
    assert se.shape == (N, K) and np.isfinite(se).all() and (se >= 0).all()
    assert (se <= 0.5 / np.sqrt(draws - 1) + 1e-12).all(), se.max()


def enumerate_slates(dist, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered k-slate of n candidates, ``(slates (S, k), P(slate) (S,))`` with ``P`` the
    product of the distribution's own conditionals."""
    slates = np.array(list(itertools.permutations(range(n), k)), dtype=np.int64)
    joint = np.array([np.prod(dist.conditionals(s)) for s in slates])
    return slates, joint


def oracle_marginals(slates: np.ndarray, joint: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, slates.shape[1]))
    for k in range(slates.shape[1]):
        np.add.at(out[:, k], slates[:, k], joint)
    return out


def assert_within(got: np.ndarray, want: np.ndarray, tol: np.ndarray, what: str) -> None:
    ratio = np.abs(got - want) / tol
    worst = np.unravel_index(ratio.argmax(), ratio.shape)
    assert ratio[worst] <= 1.0, (
        f"{what}: cell {tuple(int(i) for i in worst)} is {got[worst]:.5f}, expected "
        f"{want[worst]:.5f} within {tol[worst]:.5f}"
    )


# ---- config, params, spec ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trip_and_params_are_json(name):
    policy = build(name)
    assert policy.name == name
    assert make(policy.spec, **ENV).params == policy.params
    # every field spelled out in a spec parses back to the same typed value
    explicit = f"{name}:" + ",".join(f"{k}={v}" for k, v in policy.params.items())
    assert make(explicit, **ENV).params == policy.params
    assert set(policy.params) == {f.name for f in dataclasses.fields(type(policy).Config)}
    # params go into the decision log as JSON, and come back identical (types included)
    assert json.loads(json.dumps(policy.params)) == policy.params
    # non-default values, including the fields the spec leaves out while at their default
    for variant in ("epsilon=0.1234567890123", "explore_from=1", "objective=margin,sensitivity=high", "max_per_type=2"):
        keys = [kv.split("=")[0] for kv in variant.split(",")]
        try:
            p = build(name, f"{name}:{variant}")
        except ValidationError as exc:  # refused (uniform's epsilon, VW's explore_from): say which
            assert any(k in str(exc) for k in keys), str(exc)
            continue
        assert make(p.spec, **ENV).params == p.params, p.spec
        for kv in variant.split(","):
            key, value = kv.split("=")
            assert str(p.params[key]) == value
            assert f"{key}={value}" in p.spec


# ---- the slate distribution ----------------------------------------------------------------
@pytest.mark.parametrize("floor", FLOORS)
@pytest.mark.parametrize("name", NAMES)
def test_distribution_is_a_distribution_and_matches_enumeration(name, floor):
    """Marginals: columns sum to 1, rows <= 1; equal to the enumeration of all 120 slates
    through the conditionals (:func:`mc_tol`, with D = ``CHECK_DRAWS`` where Monte Carlo)."""
    policy = twin(trained(name), draws=CHECK_DRAWS)
    dist = policy.distribution(request(np.random.default_rng(1)), K, floor)
    M = np.asarray(dist.marginals())
    assert M.shape == (N, K) and np.isfinite(M).all() and (M >= 0).all()
    draws = getattr(dist, "marginal_draws", 0)
    assert draws in (0, CHECK_DRAWS), f"built with {CHECK_DRAWS} draws, reports {draws}"
    check_stated_se(dist)
    slates, joint = enumerate_slates(dist, N, K)
    assert (joint >= 0).all()
    np.testing.assert_allclose(joint.sum(), 1.0, rtol=0, atol=1e-6)
    exact = oracle_marginals(slates, joint, N)
    tol = mc_tol(dist, exact)
    # Rao-Blackwellised MC averages per-prefix PMFs, each of which sums to 1, so the columns
    # sum to 1 to rounding even for MC marginals; a row (one candidate over the slots) sums
    # to at most 1, within its cells' tolerances
    np.testing.assert_allclose(M.sum(axis=0), 1.0, rtol=0, atol=1e-6)
    assert (M.sum(axis=1) <= 1.0 + tol.sum(axis=1)).all(), M.sum(axis=1)
    assert_within(M, exact, tol, "marginals vs the enumeration")


def stream_twins(policy, count: int):
    """``policy`` and ``count`` twins whose learned float arrays are scaled by ``1 + j 1e-6``:
    models that rank alike but hash to other Monte-Carlo streams (a stream is seeded from the
    model or its scores on a grid of 2^-30, see ``seed_grid``), to check what must hold
    whatever the stream."""
    yield policy
    arrays, meta = policy.state()
    if not arrays or any(isinstance(v, (bytes, bytearray)) for v in arrays.values()):
        return  # nothing learned, or a VW model file (its stream is seeded from the request)
    for j in range(1, count + 1):
        other = build(policy.name)
        other.set_state(
            {k: v * (1 + j * 1e-6) if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}, meta
        )
        other.n_updates = policy.n_updates
        yield other


@pytest.mark.parametrize("name", each_policy("floor_reaches_every_cell"))
def test_serving_floor_gives_every_cell_a_positive_marginal(name):
    """With min_epsilon = 0.05 every candidate has a conditional probability of at least
    0.05 / (N - k) in slot k, so every (candidate, slot) marginal is positive, and so must be
    the marginals a policy reports (an off-policy estimate divides by them) -- whatever the
    Monte-Carlo stream: 8 nearby models (:func:`stream_twins`) are checked too. (softmax's
    64-draw estimate used to put 0 on request 4's cell (0, 2) for about 3 streams in 10: item 0
    is in slot 0 or 1 with probability 0.98.)"""
    for policy in stream_twins(trained(name), 8):
        _check_positive_marginals(name, policy)


def _check_positive_marginals(name, policy) -> None:
    for seed in (1, 2, 4):  # the requests of the tests above
        dist = policy.distribution(request(np.random.default_rng(seed)), K, 0.05)
        M = np.asarray(dist.marginals())
        if name in MC_ZERO_CELLS_POSSIBLE:
            assert (M >= 0).all() and (M[:, 0] > 0).all()  # slot 0 is exact
            rng = np.random.default_rng(seed)
            for _ in range(50):  # what is logged is never 0
                assert (dist.sample(rng).marginal > 0).all()
            continue
        assert (M > 0).all(), f"request {seed}: marginal 0 at (candidate, slot) {np.argwhere(M <= 0).tolist()}"


@pytest.mark.parametrize("floor", FLOORS)
@pytest.mark.parametrize("name", NAMES)
def test_sampled_slates_log_the_probabilities_of_what_was_shown(name, floor):
    """50 samples: distinct candidates; propensity == conditionals(index); marginal == the
    marginals at the chosen cells (where positive); joint == product; draws reported. And
    ``sample(rng, marginals=False)`` draws the same slate from the same Generator state."""
    policy = trained(name)
    dist = policy.distribution(request(np.random.default_rng(2)), K, floor)
    M = np.asarray(dist.marginals())
    rng = np.random.default_rng(3)
    for _ in range(50):
        draw = dist.sample(rng)
        idx = np.asarray(draw.index)
        assert idx.shape == (K,) and len(set(idx.tolist())) == K and ((0 <= idx) & (idx < N)).all()
        cond = dist.conditionals(idx)
        if floor == 0 and not (cond > 0).all():
            # no floor and no exploration of its own: a Thompson draw can serve a slate no
            # Monte-Carlo draw reaches; its own path is logged (the positivity guard)
            assert name in THOMPSON and (draw.propensity > 0).all()
            continue
        np.testing.assert_array_equal(draw.propensity, cond)
        assert ((draw.propensity > 0) & (draw.propensity <= 1)).all()
        cell = M[idx, np.arange(K)]
        pos = cell > 0
        np.testing.assert_array_equal(draw.marginal[pos], cell[pos])
        assert (draw.marginal > 0).all()  # a zero estimate is replaced by the positivity guard
        np.testing.assert_allclose(draw.log_joint, np.log(draw.propensity).sum(), rtol=1e-12)
        np.testing.assert_allclose(draw.joint, np.prod(draw.propensity), rtol=1e-12)
        assert draw.marginal_draws == getattr(dist, "marginal_draws", 0)
    # the same Generator state gives the same slate, with or without the (costly) marginals
    for seed in range(5):
        a = dist.sample(np.random.default_rng(seed))
        b = dist.sample(np.random.default_rng(seed), marginals=False)
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.propensity, b.propensity)
        assert np.isnan(b.marginal).all() or np.array_equal(b.marginal, a.marginal)
    if getattr(dist, "marginal_draws", 0):
        assert draw.marginal_draws >= 2 and hasattr(dist, "marginal_se")


@pytest.mark.slow
@pytest.mark.parametrize("floor", FLOORS)
@pytest.mark.parametrize("name", NAMES)
def test_slot_frequencies_match_the_marginals(name, floor):
    """4,000 sampled slates: each (candidate, slot) frequency within 4 binomial standard errors
    of the enumerated probability E (variance floored at 1/4,000, so a cell of probability ~0
    may be hit a few times) plus the marginal's Monte-Carlo tolerance (:func:`mc_tol`, D =
    ``CHECK_DRAWS``). For lints, whose conditionals are themselves Monte Carlo, E is the same
    estimate as the marginals and the tolerance covers its error."""
    policy = twin(trained(name), draws=CHECK_DRAWS)
    dist = policy.distribution(request(np.random.default_rng(4)), K, floor)
    M = np.asarray(dist.marginals())
    slates, joint = enumerate_slates(dist, N, K)
    exact = oracle_marginals(slates, joint, N)
    draws, rng = 4000, np.random.default_rng(5)
    counts = np.zeros((N, K))
    for _ in range(draws):
        counts[dist.sample(rng).index, np.arange(K)] += 1
    freq = counts / draws
    binom = np.sqrt(np.maximum(exact * (1 - exact), 1.0 / draws) / draws)
    assert_within(freq, M, 4 * binom + mc_tol(dist, exact), f"slot frequencies over {draws} slates vs marginals")


# ---- learning -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_after_learning(name, tmp_path):
    policy = trained(name)
    req = request(np.random.default_rng(6))
    fixed = not state_of(policy)
    if not fixed:  # the snapshot must carry something a fresh policy does not have
        assert not np.array_equal(policy.scores(req), build(name).scores(req)), "training changed nothing"
    policy.save(tmp_path / "snap")
    again = load(tmp_path / "snap", **ENV)
    assert type(again) is type(policy) and again.params == policy.params
    assert again.model_version == policy.model_version
    np.testing.assert_array_equal(again.scores(req), policy.scores(req))
    for floor in FLOORS:
        a, b = policy.distribution(req, K, floor), again.distribution(req, K, floor)
        np.testing.assert_array_equal(a.marginals(), b.marginals())
        da, db = a.sample(np.random.default_rng(7)), b.sample(np.random.default_rng(7))
        np.testing.assert_array_equal(da.index, db.index)
        np.testing.assert_array_equal(da.propensity, db.propensity)
        np.testing.assert_array_equal(da.marginal, db.marginal)
        np.testing.assert_array_equal(a.conditionals(da.index), b.conditionals(da.index))


def _same_state(a, b) -> None:
    sa, sb = state_of(a), state_of(b)
    assert set(sa) == set(sb)
    for key in sa:
        if isinstance(sa[key], (bytes, bytearray)):  # VW's model file: bit for bit
            assert sa[key] == sb[key], f"{key} differs"
        else:  # Cholesky re-inversion (batch) vs Sherman-Morrison (rows): rounding only
            np.testing.assert_allclose(sa[key], sb[key], rtol=1e-9, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_batch_update_equals_one_row_at_a_time(name):
    """One weighted update of 90 rows == the same rows one update at a time, in order.

    Ridge policies (every numpy learner) are order free and equal up to rounding. VW learns
    online and is order dependent, so its units go in the logged order and must agree bit for
    bit; ``vw-ccb`` learns a whole slate as one example, so its unit is one decision (K rows)
    -- a single slot row of a multi-slot decision is not a valid example for it. The fixed
    policies (uniform, popularity) learn nothing: they only have to accept the rows. Hybrid
    LinUCB is checked with a fixed items' prior (``item_reg=1``): the default re-estimates it
    after every update, which depends on how rows are batched (documented).
    """
    spec = spec_of(name, "item_reg=1.0") if name == "hybrid-linucb" else None
    batch, single = build(name, spec), build(name, spec)
    rows = serve_rows(build(name), np.random.default_rng(8))  # served by a third: VW's file counts predictions
    learn(batch, rows, weighted=True)
    unit = K if learns_slates(single) else 1
    for s in range(0, len(rows.reward), unit):
        learn(single, rows.take(slice(s, s + unit)), weighted=True)
    _same_state(batch, single)
    req = request(np.random.default_rng(9))
    np.testing.assert_allclose(batch.scores(req), single.scores(req), rtol=1e-9, atol=1e-12)
    a, b = batch.distribution(req, K, 0.05), single.distribution(req, K, 0.05)
    # MC marginals are seeded from the model's bytes, so rounding-level differences give
    # independent estimates: they must agree within both tolerances (around their mean)
    Ma, Mb = np.asarray(a.marginals()), np.asarray(b.marginals())
    mid = (Ma + Mb) / 2
    assert_within(Ma, Mb, mc_tol(a, mid) + mc_tol(b, mid), "batch vs one-at-a-time marginals")


# ---- one protocol; catalogs that grow ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_policy_has_the_one_update_signature_and_declares_its_needs(name):
    """No policy overrides ``update`` (so no caller ever reads a signature): it learns through
    ``learn(Rows)``; what it cannot learn without is declared in ``needs``, and leaving one of
    those out is refused by name."""
    from banditrec.policies.base import OPTIONAL_INPUTS, Policy

    policy = build(name)
    assert type(policy).update is Policy.update
    assert set(policy.needs) <= set(OPTIONAL_INPUTS)
    rows = serve_rows(build(name), np.random.default_rng(10), n_decisions=2)
    full = dict(
        items=rows.items,
        pscore=rows.pscore,
        propensity=rows.propensity,
        slot=rows.slot,
        candidates=rows.candidates,
        chosen=rows.chosen,
    )
    for need in sorted(policy.needs):
        with pytest.raises(ValidationError) as err:
            policy.update(rows.context, rows.item_features, rows.reward, **{**full, need: None})
        assert need in str(err.value)
    policy.update(rows.context, rows.item_features, rows.reward, **full)


def test_every_registered_policy_accepts_the_same_update_call():
    """One call, every input of the documented signature given (``weight`` and ``cold``
    included), is accepted by every policy in the registry: what a policy does not learn
    from it takes and ignores. No policy declares another signature."""
    import inspect

    from banditrec.policies.base import OPTIONAL_INPUTS, Policy

    documented = inspect.signature(Policy.update)
    assert [p.name for p in documented.parameters.values() if p.kind is p.KEYWORD_ONLY] == list(OPTIONAL_INPUTS)
    rows = serve_rows(build(NAMES[0]), np.random.default_rng(13), n_decisions=2)
    call = dict(
        items=rows.items,
        weight=rows.weight,
        pscore=rows.pscore,
        propensity=rows.propensity,
        slot=rows.slot,
        candidates=rows.candidates,
        chosen=rows.chosen,
        cold=np.zeros(len(rows.reward), dtype=bool),
    )
    assert set(call) == set(OPTIONAL_INPUTS)
    for name in NAMES:
        policy = build(name)
        assert inspect.signature(policy.update) == inspect.signature(Policy.update.__get__(policy)), name
        policy.update(rows.context, rows.item_features, rows.reward, **call)


def grown_env(extra: int) -> dict:
    """The environment of the catalog with ``extra`` items appended (old indices unchanged)."""
    rng = np.random.default_rng(77)
    return {
        **ENV,
        "n_items": N_ITEMS + extra,
        "popularity": np.r_[ENV["popularity"], np.zeros(extra)],
        "item_types": np.r_[TYPES, rng.integers(0, TYPES.max() + 1, size=extra)],
        "item_columns": {"margin": np.r_[ENV["item_columns"]["margin"], rng.uniform(1.0, 50.0, size=extra)]},
    }


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_from_a_smaller_catalog_restores_its_items_and_the_new_ones_start_cold(name, tmp_path):
    """A catalog that grew by 10 items: a policy built for it restores a snapshot taken before
    (through set_state and through load), scores the old items exactly as the snapshot's policy
    did, and scores a new item exactly as it scores an old item it never learned about that has
    the same features and popularity -- cold, neither refused nor reset. A request of indices
    no environment ever listed is scored too."""
    policy = build(name)
    rows = serve_rows(build(name), np.random.default_rng(11), n_decisions=6)
    learn(policy, rows)
    unseen = np.setdiff1d(np.arange(N_ITEMS), rows.items)
    assert len(unseen), "every item was learned: no old item is cold"
    old_cold = int(unseen[0])
    policy.save(tmp_path / "small")
    env = grown_env(10)
    env["popularity"][N_ITEMS + 3] = ENV["popularity"][old_cold]
    env["item_types"][N_ITEMS + 3] = TYPES[old_cold]
    env["item_columns"]["margin"][N_ITEMS + 3] = ENV["item_columns"]["margin"][old_cold]
    restored = build(name, **env)
    restored.set_state(*policy.state())
    loaded = load(tmp_path / "small", **env)
    rng = np.random.default_rng(12)
    old = request(rng)
    pair = Request(
        context=old.context, items=np.array([old_cold, N_ITEMS + 3]), item_features=np.tile(CATALOG[old_cold], (2, 1))
    )
    for again in (restored, loaded):
        np.testing.assert_array_equal(again.scores(old), policy.scores(old))
        s = again.scores(pair)
        assert s[0] == s[1], f"new item {s[1]} vs old item never learned {s[0]}"
        again.distribution(pair, 2, 0.05).sample(np.random.default_rng(0))
    far = Request(
        context=old.context,
        items=np.array([N_ITEMS + 500, N_ITEMS + 900]),
        item_features=np.tile(CATALOG[old_cold], (2, 1)),
    )
    try:
        s = build(name, **{k: v for k, v in ENV.items() if k not in ("item_types", "item_columns")}).scores(far)
    except ValidationError as exc:  # only a per-item business column may need the item listed
        pytest.fail(f"{name} refused unseen item indices: {exc}")
    assert np.isfinite(s).all() and s[0] == s[1]


# ---- invalid inputs -----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "often"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_epsilon_is_refused_naming_it(name, value):
    with pytest.raises(ValidationError, match=f"epsilon.*{value}"):
        build(name, f"{name}:epsilon={value}")


@pytest.mark.parametrize("name", NAMES)
def test_bad_serving_floor_or_slot_count_is_refused(name):
    policy = build(name)
    req = request(np.random.default_rng(10))
    with pytest.raises(ValidationError, match="epsilon"):
        policy.distribution(req, K, 1.5).sample(np.random.default_rng(0))
    with pytest.raises(ValidationError, match=f"cannot fill {N + 1} slots from {N} candidates"):
        policy.distribution(req, N + 1, 0.05).sample(np.random.default_rng(0))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_refused_naming_it(name):
    with pytest.raises(ValidationError, match=f"policy {name} has no parameter bogus; it takes: "):
        build(name, f"{name}:bogus=1")


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_environment_key_is_refused_naming_it_and_the_policy(name, tmp_path):
    """Every key of the documented environment is taken by every policy (the contract's ENV
    holds them all); a key outside it -- a typo -- is refused by make, load and the class
    itself, naming the key and the policy, instead of being silently ignored."""
    from banditrec.policies.base import ENVIRONMENT

    assert set(ENV) == set(ENVIRONMENT)
    with pytest.raises(ValidationError, match=f"policy {name} does not know environment key 'context_dims'"):
        build(name, context_dims=DC)
    cls = REGISTRY[name]
    with pytest.raises(ValidationError, match=f"policy {name} does not know environment keys 'colour', 'size'"):
        cls(cls.Config(), **ENV, size=3, colour="red")
    build(name).save(tmp_path / "p")
    with pytest.raises(ValidationError, match=f"policy {name} does not know environment key 'itemdim'"):
        load(tmp_path / "p", **ENV, itemdim=DI)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", each_policy("nonfinite_context_serve"))
def test_nonfinite_context_is_refused_when_serving(name, bad):
    policy = trained(name)
    req = request(np.random.default_rng(11))
    ctx = req.context.copy()
    ctx[1] = bad
    with pytest.raises(ValidationError, match="context"):
        dist = policy.distribution(Request(context=ctx, items=req.items, item_features=req.item_features), K, 0.05)
        dist.marginals()  # some distributions compute lazily
        dist.sample(np.random.default_rng(0))


@pytest.mark.parametrize("name", each_policy("bad_update_rows"))
def test_bad_update_rows_are_refused_naming_the_input_and_learn_nothing(name):
    """NaN reward, non-finite context, a context or item-feature row of the wrong width, and an
    item-feature array with a row missing: each raises naming the input, and the model is as
    before (its snapshot state unchanged)."""
    policy = trained(name)
    rows = serve_rows(policy, np.random.default_rng(12), n_decisions=2)
    before = {k: (v if isinstance(v, bytes) else np.array(v)) for k, v in state_of(policy).items()}
    n_updates = policy.n_updates

    def bad(match: str, **change):
        r = dataclasses.replace(rows, **change)
        with pytest.raises(ValidationError, match=match):
            learn(policy, r)

    reward = rows.reward.copy()
    reward[1] = np.nan
    bad("reward", reward=reward)
    context = rows.context.copy()
    context[0, 0] = np.inf
    bad("context", context=context)
    bad("context", context=np.hstack([rows.context, np.ones((len(rows.context), 1))]))
    bad("item_features", item_features=rows.item_features[:-1])
    reads_item_features = getattr(policy, "item_dim", None) is not None
    if reads_item_features:  # disjoint LinUCB learns from the context only (documented)
        bad("item_features", item_features=np.hstack([rows.item_features, np.ones((len(rows.reward), 1))]))
    assert policy.n_updates == n_updates
    after = state_of(policy)
    for k, v in before.items():
        assert (after[k] == v) if isinstance(v, bytes) else np.array_equal(after[k], v), k


# ---- diversity cap and business objective -----------------------------------------------
@pytest.mark.parametrize("name", each_policy("diversity_cap"))
def test_diversity_cap_is_respected_or_refused(name):
    """max_per_type=1 over 6 candidates of 3 types (2 each) for 3 slots: every slate shows one
    of each type, infeasible slates have probability 0, and the marginals still match the
    enumeration. A policy without the cap must refuse it with an error naming max_per_type."""
    policy = trained(name)  # learn with the plain config, then cap a twin with the same state
    try:
        capped = twin(policy, "max_per_type=1", draws=CHECK_DRAWS)
    except ValidationError as exc:
        assert "max_per_type" in str(exc)
        return
    items = np.array([0, 3, 1, 4, 2, 5])  # types 0, 0, 1, 1, 2, 2
    assert np.array_equal(np.bincount(TYPES[items]), [2, 2, 2])
    req = request(np.random.default_rng(13), items=items)
    for floor in FLOORS:
        dist = capped.distribution(req, K, floor)
        rng = np.random.default_rng(14)
        for _ in range(300):
            shown = TYPES[items[dist.sample(rng).index]]
            assert np.bincount(shown, minlength=3).max() <= 1, f"types shown {shown.tolist()}"
        slates, joint = enumerate_slates(dist, N, K)
        feasible = np.array([len(set(TYPES[items[s]].tolist())) == K for s in slates])
        assert (joint[~feasible] == 0).all()
        np.testing.assert_allclose(joint[feasible].sum(), 1.0, rtol=0, atol=1e-6)
        exact = oracle_marginals(slates, joint, N)
        assert_within(
            np.asarray(dist.marginals()),
            exact,
            mc_tol(dist, exact),
            f"capped marginals (floor {floor}) vs the enumeration",
        )


@pytest.mark.parametrize("name", each_policy("objective"))
def test_high_sensitivity_objective_changes_the_served_ranking(name):
    """Same learned model, objective off vs high (weight 0.5): a mid-ranked candidate whose
    margin is the catalog's highest (every other margin 0) must become the likeliest first slot
    item, and not be it with the objective off. A policy without an objective must refuse one
    with an error naming it.

    argmax of estimates on purpose: at weight 0.5 the target's blended score is at least every
    other candidate's in every posterior draw (and so is its Plackett-Luce weight), tied only in
    a draw where it is the worst, and ties split evenly, so its estimate is at least any other's
    whatever the Monte-Carlo draws. (lints broke such ties by position, for the lower index,
    and lost on some CPUs' streams.) The middle candidate is picked with ties by position."""
    req = request(np.random.default_rng(15))
    for plain in stream_twins(trained(name), 4):  # other Monte-Carlo streams
        off = np.asarray(plain.distribution(req, K, 0.0).marginals())[:, 0]
        # a middle candidate under the policy's scores (without exploration most first-slot
        # probabilities are 0, which would not rank the candidates)
        target = int(np.argsort(-plain.scores(req), kind="stable")[N // 2])
        margin = np.zeros(N_ITEMS)
        margin[req.items[target]] = 1.0
        try:
            high = twin(plain, "objective=margin,sensitivity=high", item_columns={"margin": margin})
        except ValidationError as exc:
            assert "objective" in str(exc)
            return
        on = np.asarray(high.distribution(req, K, 0.0).marginals())[:, 0]
        assert int(np.argmax(off)) != target
        assert int(np.argmax(on)) == target, f"first-slot probabilities off {off.round(3)}, high {on.round(3)}"


@pytest.mark.parametrize("name", NAMES)
def test_distributions_of_many_requests_equal_one_at_a_time(name):
    """``distributions`` (vectorised where a policy has it) gives each request exactly the
    distribution of ``distribution``: the same marginal matrix (to 1e-12) and, from the same
    Generator state, the same slate with the same propensities. Six requests of varying size
    and slots, two of them with exactly tied candidates (items repeated with equal features),
    where a stacked product that reordered near-equal scores would show."""
    policy = trained(name)
    gen = np.random.default_rng(11)
    reqs = [request(gen, n) for n in (N, 5, N, 7)]
    tied = np.r_[np.arange(4), np.arange(4)]  # each item twice: exact ties in every score
    reqs += [
        Request(context=gen.normal(size=DC), items=tied, item_features=CATALOG[tied]),
        Request(context=np.zeros(DC), items=np.arange(N), item_features=CATALOG[:N]),
    ]
    slots = [K, 2, 1, K, K, K]
    many = policy.distributions(reqs, slots, 0.05)
    assert len(many) == len(reqs)
    for i, (req, k, got) in enumerate(zip(reqs, slots, many)):
        want = policy.distribution(req, k, 0.05)
        np.testing.assert_allclose(
            np.asarray(got.marginals()), np.asarray(want.marginals()), rtol=0, atol=1e-12, err_msg=f"request {i}"
        )
        for seed in range(3):
            a, b = got.sample(np.random.default_rng(seed)), want.sample(np.random.default_rng(seed))
            np.testing.assert_array_equal(a.index, b.index, err_msg=f"request {i}")
            np.testing.assert_allclose(a.propensity, b.propensity, rtol=0, atol=1e-12)
            np.testing.assert_allclose(a.marginal, b.marginal, rtol=0, atol=1e-12)
    one = policy.distributions(reqs[:1], K, 0.05)  # one count for all, one request
    assert len(one) == 1


def test_linucb_stacked_scoring_rescores_a_request_with_a_near_tie_alone(monkeypatch):
    """The vectorised LinUCB path trusts stacked scores only where rounding cannot reorder
    them: a request with two candidates 1e-15 apart (features nudged by one part in 1e15) is
    re-scored by ``scores`` alone; requests with well-separated scores are not."""
    policy = trained("linucb")
    gen = np.random.default_rng(5)
    plain = [request(gen) for _ in range(3)]
    items = np.arange(N)
    feats = CATALOG[items].copy()
    feats[1] = feats[0] * (1 + 1e-15)
    near = Request(context=gen.normal(size=DC), items=items, item_features=feats)
    alone = []
    original = type(policy).scores
    monkeypatch.setattr(type(policy), "scores", lambda self, r: alone.append(r) or original(self, r))
    many = policy.distributions([*plain, near], K, 0.05)
    assert alone == [near]
    for req, got in zip([*plain, near], many):
        want = policy.distribution(req, K, 0.05)
        np.testing.assert_array_equal(got.marginals(), want.marginals())


@pytest.mark.parametrize("name", NAMES)
def test_every_distribution_is_a_slate_distribution_with_a_greedy_version(name):
    """What a policy's ``distribution`` returns implements the slate-distribution protocol (what
    the engine, ``sample_slates`` and the estimators call); its ``greedy()`` is one too: an
    epsilon-greedy slate without exploration is the ranking itself (the same slate whatever
    the draws); any other distribution is its own greedy version."""
    from banditrec.policies import SlateDistribution
    from banditrec.policies.slate import EpsilonGreedySlate

    policy = trained(name)
    req = request(np.random.default_rng(14))
    dist = policy.distribution(req, K, 0.05)
    assert isinstance(dist, SlateDistribution)
    greedy = dist.greedy()
    assert isinstance(greedy, SlateDistribution)
    assert (greedy.n_candidates, greedy.n_slots) == (dist.n_candidates, dist.n_slots)
    if type(dist) is EpsilonGreedySlate:
        np.testing.assert_array_equal(greedy.scores, dist.scores)
        assert not greedy.epsilon.any()
        if not greedy.tied:
            slates = {tuple(greedy.sample(np.random.default_rng(s)).index) for s in range(5)}
            assert slates == {tuple(np.argsort(-dist.scores, kind="stable")[:K])}
    else:
        assert greedy is dist
