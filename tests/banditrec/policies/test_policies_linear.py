"""Linear policies -- disjoint and hybrid LinUCB, linear Thompson sampling, epsilon-greedy and
softmax -- each fast path against a slow obvious version (np.linalg.inv, a joint least-squares
solve, a loop over candidates, repeated rows), plus snapshots, validation and learning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.features import joint_features
from banditrec.policies import Request, snapshot
from banditrec.policies.base import SENSITIVITY
from banditrec.policies.disjoint import DisjointLinUCB
from banditrec.policies.greedy import EpsilonGreedy, Softmax
from banditrec.policies.hybrid import HybridLinUCB
from banditrec.policies.sampling import PlackettLuceSlate, SampledRankingSlate
from banditrec.policies.slate import EpsilonGreedySlate
from banditrec.policies.thompson import LinTS

N_ITEMS, DC, DI = 6, 3, 2
ENV = {"n_items": N_ITEMS, "context_dim": DC, "item_dim": DI}
CLASSES = [DisjointLinUCB, HybridLinUCB, LinTS, EpsilonGreedy, Softmax]
SHARED = [LinTS, EpsilonGreedy, Softmax]  # one ridge model over joint features


# the joint-feature coordinates that involve the cold flag
COLD_TERMS = np.flatnonzero(
    joint_features(np.ones(DC), np.zeros((1, DI)), [1])[0] != joint_features(np.ones(DC), np.zeros((1, DI)))[0]
)


def noise_sd(r, w, fitted, df):
    """The documented noise scale from its parts: ridge residual sum of squares ``sum w r^2 -
    t . c`` plus one prior row of variance (range / 2)^2, over max(sum w - df, 0) + 1."""
    w = np.ones(len(r)) if w is None else np.asarray(w, dtype=float)
    seen = r[w > 0]
    spread = seen.max() - seen.min() if len(seen) and seen.max() > seen.min() else 1.0
    return np.sqrt((w @ (r * r) - fitted + spread**2 / 4) / (max(w.sum() - df, 0.0) + 1.0))


def shared_sigma(C, V, r, reg=1.0, w=None):
    """The shared ridge model's noise scale computed from the rows directly."""
    X = joint_features(C, V)
    w = np.ones(len(r)) if w is None else w
    A = reg * np.eye(X.shape[1]) + X.T @ (w[:, None] * X)
    c = X.T @ (w * r)
    return noise_sd(r, w, np.linalg.solve(A, c) @ c, X.shape[1] - reg * np.trace(np.linalg.inv(A)))


def build(cls, env=ENV, **config):
    return cls(cls.Config(**config), **env)


def rows(rng, m, n_items=N_ITEMS):
    """Logged rows: contexts (m, DC), item features (m, DI), rewards (m,), items (m,)."""
    return (rng.normal(size=(m, DC)), rng.normal(size=(m, DI)), rng.normal(size=m), rng.integers(0, n_items, size=m))


def request(rng, n=5, n_items=N_ITEMS):
    return Request(
        context=rng.normal(size=DC),
        items=rng.choice(n_items, size=n, replace=False),
        item_features=rng.normal(size=(n, DI)),
    )


def arrays(policy) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in policy.state()[0].items()}


def reload(policy, path, env=ENV):
    """Save through Policy.save, read back through the snapshot module, rebuild the class."""
    policy.save(path)
    manifest, payload = snapshot.load(path)
    cls = type(policy)
    assert manifest["policy"] == cls.name
    again = cls(cls.Config(**manifest["params"]), **env)
    meta = dict(manifest["meta"])
    again.n_updates = meta.pop("n_updates")
    again.set_state(payload, meta)
    return again


def x1(c):
    return np.r_[1.0, c]


# ---- Sherman-Morrison against np.linalg.inv ------------------------------------------------
def test_disjoint_sherman_morrison_matches_the_inverse_of_the_accumulated_matrix(rng):
    """300 one-row updates (weights in [0, 2)): every item's A^-1 equals inv(A), and A, b, theta
    equal the ridge statistics summed directly from the rows."""
    p = build(DisjointLinUCB, reg=0.5)
    C, V, r, a = rows(rng, 300)
    w = rng.uniform(0, 2, size=300)
    for i in range(300):
        p.update(C[i], V[i], r[i], items=[a[i]], weight=[w[i]])
    assert p.n_updates == 300
    for item in range(N_ITEMS):
        X = np.array([x1(c) for c in C[a == item]])
        A = 0.5 * np.eye(DC + 1) + X.T @ (w[a == item, None] * X)
        b = X.T @ (w[a == item] * r[a == item])
        np.testing.assert_allclose(p.A[item], A, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p.A_inv[item], np.linalg.inv(p.A[item]), atol=1e-12)
        np.testing.assert_allclose(p.theta[item], np.linalg.solve(A, b), atol=1e-12)


def test_hybrid_sherman_morrison_matches_the_inverse_of_the_accumulated_matrix(rng):
    """300 one-row updates: each A_a^-1 equals inv(A_a); A0^-1, updated by the rank-one formula,
    equals inv(A0); and A0 is the Schur complement reg I + Z^T W Z - sum_a B_a^T A_a^-1 B_a."""
    p = build(HybridLinUCB, reg=2.0)
    C, V, r, a = rows(rng, 300)
    w = rng.uniform(0, 2, size=300)
    for i in range(300):
        p.update(C[i], V[i], r[i], items=[a[i]], weight=[w[i]])
    np.testing.assert_allclose(p.A_inv, np.linalg.inv(p.A), atol=1e-12)
    np.testing.assert_allclose(p.A0_inv, np.linalg.inv(p.A0), atol=1e-12)
    Z = joint_features(C, V)
    schur = 2.0 * np.eye(p.k) + Z.T @ (w[:, None] * Z)
    for item in range(N_ITEMS):
        schur -= p.B[item].T @ np.linalg.solve(p.A[item], p.B[item])
    np.testing.assert_allclose(p.A0, schur, rtol=1e-10, atol=1e-10)


# ---- the hybrid model is a joint ridge regression ------------------------------------------
def local(ctx, kind):
    """A hybrid item's own features: [1, c] (``context``) or [1] (``bias``)."""
    return x1(ctx) if kind == "context" else np.ones(1)


def joint_ridge(C, V, r, a, w, reg, n_items=N_ITEMS, kind="context"):
    """Direct solve on phi = [z, onehot(a) (x) x]: (solution, M^-1, a function phi(ctx, v, item))."""
    Z = joint_features(C, V)
    k, d = Z.shape[1], len(local(C[0], kind))

    def phi(ctx, v, item):
        out = np.zeros(k + n_items * d)
        out[:k] = joint_features(ctx, v[None])[0]
        out[k + item * d : k + (item + 1) * d] = local(ctx, kind)
        return out

    Phi = np.array([phi(C[i], V[i], a[i]) for i in range(len(r))])
    M = reg * np.eye(Phi.shape[1]) + Phi.T @ (w[:, None] * Phi)
    return np.linalg.solve(M, Phi.T @ (w * r)), np.linalg.inv(M), phi, k, d


@pytest.mark.parametrize("kind", ["bias", "context"])
@pytest.mark.parametrize("single", [True, False])
def test_hybrid_estimates_are_the_joint_ridge_solution(rng, single, kind):
    """beta, theta_a and the scores (mean + alpha s sqrt(phi^T M^-1 phi), s the reward range)
    equal a direct solve of weighted ridge on [z, onehot(a) (x) x] with the same reg, after
    one-row or batch updates, for either kind of per-item features; a candidate the model has
    never seen (index 9 of a 6-item catalog) scores as a new block of phi would."""
    C, V, r, a = rows(rng, 80)
    w = rng.uniform(0, 3, size=80)
    p = build(HybridLinUCB, alpha=0.7, reg=1.5, local=kind, item_reg=1.5)
    if single:
        for i in range(80):
            p.update(C[i : i + 1], V[i : i + 1], r[i : i + 1], items=a[i : i + 1], weight=w[i : i + 1])
    else:
        p.update(C, V, r, items=a, weight=w)
    sol, M_inv, phi, k, d = joint_ridge(C, V, r, a, w, 1.5, n_items=10, kind=kind)
    # the noise scale: t . c of the joint solve, and the documented effective number of
    # parameters k + n d - reg (trace(A0^-1) + sum_a trace(A_a^-1)), A0^-1 being M^-1's top block
    M = np.linalg.inv(M_inv)
    Phi = np.array([phi(C[i], V[i], a[i]) for i in range(80)])
    df = (
        k
        + 10 * d
        - 1.5
        * (
            np.trace(M_inv[:k, :k])
            + sum(
                np.trace(np.linalg.inv(M[k + j * d : k + (j + 1) * d, k + j * d : k + (j + 1) * d])) for j in range(10)
            )
        )
    )
    sigma = noise_sd(r, w, sol @ (Phi.T @ (w * r)), df)
    assert p.noise_sd == pytest.approx(sigma, rel=1e-9)
    np.testing.assert_allclose(p.beta, sol[:k], atol=1e-10)
    np.testing.assert_allclose(p.theta(np.arange(10)), sol[k:].reshape(10, d), atol=1e-10)
    req = request(rng, n=5, n_items=10)
    req = Request(req.context, np.r_[req.items[:4], 9], req.item_features)
    expected = [
        phi(req.context, req.item_features[j], item) @ sol
        + 0.7
        * sigma
        * np.sqrt(phi(req.context, req.item_features[j], item) @ M_inv @ phi(req.context, req.item_features[j], item))
        for j, item in enumerate(req.items)
    ]
    np.testing.assert_allclose(p.scores(req), expected, rtol=1e-10)


# ---- batch == one row at a time; weights == repeated rows ----------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_batch_update_equals_sequential_single_updates(rng, cls):
    """400 rows with float weights: two batch updates (150 rows, then 250 on the learned
    model) == 400 one-row updates, to 1e-9."""
    C, V, r, a = rows(rng, 400)
    w = rng.uniform(0, 2, size=400)
    one, batch = build(cls), build(cls)
    for i in range(400):
        one.update(C[i], V[i], r[i], items=[a[i]], weight=[w[i]])
    batch.update(C[:150], V[:150], r[:150], items=a[:150], weight=w[:150])
    batch.update(C[150:], V[150:], r[150:], items=a[150:], weight=w[150:])
    assert one.n_updates == 400 and batch.n_updates == 2
    got, want = arrays(batch), arrays(one)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)
    req = request(rng)
    np.testing.assert_allclose(batch.scores(req), one.scores(req), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls", CLASSES)
def test_integer_weights_equal_repeated_rows(rng, cls):
    """weight=w (integers 0..3) gives the model of the rows repeated w times, batch and one-row."""
    C, V, r, a = rows(rng, 60)
    w = rng.integers(0, 4, size=60)
    weighted, repeated = build(cls), build(cls)
    weighted.update(C, V, r, items=a, weight=w)
    repeated.update(np.repeat(C, w, axis=0), np.repeat(V, w, axis=0), np.repeat(r, w), items=np.repeat(a, w))
    for k, v in arrays(repeated).items():
        np.testing.assert_allclose(arrays(weighted)[k], v, rtol=1e-9, atol=1e-9, err_msg=k)
    one_weighted, one_repeated = build(cls), build(cls)  # the Sherman-Morrison path
    one_weighted.update(C[0], V[0], r[0], items=[a[0]], weight=[3.0])
    for _ in range(3):
        one_repeated.update(C[0], V[0], r[0], items=[a[0]])
    for k, v in arrays(one_repeated).items():
        np.testing.assert_allclose(arrays(one_weighted)[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


# ---- recovery of a known parameter ---------------------------------------------------------
def test_disjoint_recovers_each_items_parameter():
    """5 items, d = 4 (3 context + intercept), 20,000 rows (~4,000 per item), reward = x .
    theta*_a + N(0, 0.1^2): every coefficient within 0.01 (the standard error is ~0.0016)."""
    rng = np.random.default_rng(11)
    env = {**ENV, "n_items": 5}
    p = build(DisjointLinUCB, env)
    theta_star = rng.normal(size=(5, DC + 1))
    C, V, _, a = rows(rng, 20_000, n_items=5)
    r = np.einsum("md,md->m", np.c_[np.ones(20_000), C], theta_star[a]) + rng.normal(0, 0.1, size=20_000)
    p.update(C, V, r, items=a)
    assert np.abs(p.theta - theta_star).max() < 0.01


@pytest.mark.parametrize("kind", ["bias", "context"])
def test_hybrid_recovers_shared_and_per_item_parameters(kind):
    """5 items, k = 16 shared + 1 or 4 per item, item features drawn per row, 20,000 rows,
    noise N(0, 0.1^2). The shared features hold [1, c] (intercept and context terms), which
    the per-item features repeat, so only the sums beta_[1,c] + theta_a are identified: those,
    and every other coordinate of beta, within 0.01 (standard errors ~0.001 to ~0.002); the
    cold-flag coordinates (no item is cold) stay 0."""
    rng = np.random.default_rng(12)
    env = {**ENV, "n_items": 5}
    p = build(HybridLinUCB, env, local=kind)
    ones = joint_features(np.arange(1.0, DC + 1), np.zeros((1, DI)))[0]
    shared = np.flatnonzero(ones != 0)[: p.dim]  # the coordinates of 1 x [1, c] (or 1 x 1)
    cold = np.flatnonzero(
        joint_features(np.ones(DC), np.zeros((1, DI)), [1])[0] != joint_features(np.ones(DC), np.zeros((1, DI)))[0]
    )
    beta_star, theta_star = rng.normal(size=p.k), rng.normal(size=(5, p.dim))
    beta_star[cold] = 0.0
    C, V, _, a = rows(rng, 20_000, n_items=5)
    X = np.c_[np.ones(20_000), C][:, : p.dim]
    r = joint_features(C, V) @ beta_star + np.einsum("md,md->m", X, theta_star[a]) + rng.normal(0, 0.1, size=20_000)
    p.update(C, V, r, items=a)
    other = np.setdiff1d(np.arange(p.k), shared)
    assert np.abs(p.beta[other] - beta_star[other]).max() < 0.01
    got = p.beta[shared][None, :] + p.theta(np.arange(5))
    assert np.abs(got - (beta_star[shared][None, :] + theta_star)).max() < 0.01


@pytest.mark.parametrize("cls", SHARED)
def test_shared_models_recover_a_known_parameter(cls):
    """dim 8, 20,000 rows, noise N(0, 0.1^2): theta within 0.01 of theta*."""
    rng = np.random.default_rng(13)
    p = build(cls)
    theta_star = rng.normal(size=p.dim)
    theta_star[COLD_TERMS] = 0.0  # no row is cold: those terms are never seen and stay 0
    C, V, _, a = rows(rng, 20_000)
    p.update(C, V, joint_features(C, V) @ theta_star + rng.normal(0, 0.1, size=20_000), items=a)
    assert np.abs(p.theta - theta_star).max() < 0.01


# ---- vectorised scores against a loop over candidates --------------------------------------
def test_disjoint_scores_match_a_loop_over_candidates(rng):
    p = build(DisjointLinUCB, alpha=0.8)
    C, V, r, a = rows(rng, 200)
    p.update(C, V, r, items=a)
    req = request(rng)
    x = x1(req.context)
    # the noise scale from each item's own ridge solve: t . c = sum_a b_a . theta_a, and
    # sum_a (d - reg trace(A_a^-1)) effective parameters
    fitted = sum(p.b[i] @ np.linalg.solve(p.A[i], p.b[i]) for i in range(N_ITEMS))
    df = sum(DC + 1 - np.trace(np.linalg.inv(p.A[i])) for i in range(N_ITEMS))
    s = noise_sd(r, None, fitted, df)
    assert p.noise_sd == pytest.approx(s, rel=1e-9)
    expected = [
        x @ np.linalg.solve(p.A[i], p.b[i]) + 0.8 * s * np.sqrt(x @ np.linalg.inv(p.A[i]) @ x) for i in req.items
    ]
    np.testing.assert_allclose(p.scores(req), expected, rtol=1e-10)


def test_hybrid_scores_match_the_papers_formula_in_a_loop(rng):
    """Algorithm 2's four-term s and theta_a, per candidate, with explicit inverses."""
    p = build(HybridLinUCB, alpha=0.6, local="context")
    C, V, r, a = rows(rng, 200)
    p.update(C, V, r, items=a)
    req = request(rng)
    A0i = np.linalg.inv(p.A0)
    beta = A0i @ p.b0
    x = x1(req.context)
    expected = []
    for j, i in enumerate(req.items):
        z = joint_features(req.context, req.item_features[j : j + 1])[0]
        Ai, B = np.linalg.inv(p.A[i]), p.B[i]
        theta = Ai @ (p.b[i] - B @ beta)
        s = z @ A0i @ z - 2 * z @ A0i @ B.T @ Ai @ x + x @ Ai @ x + x @ Ai @ B @ A0i @ B.T @ Ai @ x
        expected.append(z @ beta + x @ theta + 0.6 * p.noise_sd * np.sqrt(s))
    np.testing.assert_allclose(p.scores(req), expected, rtol=1e-10)


@pytest.mark.parametrize("cls", SHARED)
def test_shared_means_match_a_loop_over_candidates(rng, cls):
    p = build(cls)
    C, V, r, a = rows(rng, 200)
    p.update(C, V, r, items=a)
    req = request(rng)
    theta = np.linalg.solve(p.A, p.b)
    expected = [
        np.r_[1.0, v, 0.0, np.outer(np.r_[1.0, v, 0.0], req.context).ravel()] @ theta for v in req.item_features
    ]
    np.testing.assert_allclose(p.scores(req), expected, rtol=1e-10)


def test_softmax_weights_match_a_loop_and_never_overflow(rng):
    """Weights are exp((s - max s) / T), T = tau times the reward range: equal to
    exp(s_i / T) / exp(max / T) computed one by one where that does not overflow, and finite
    with the largest 1 where it would."""
    p = build(Softmax, tau=0.5)
    C, V, r, a = rows(rng, 200)
    p.update(C, V, r, items=a)
    req = request(rng)
    s, T = p.scores(req), 0.5 * shared_sigma(C, V, r)
    assert p.temperature == pytest.approx(T, rel=1e-15)
    np.testing.assert_allclose(p.weights(req), [np.exp(si / T) / np.exp(s.max() / T) for si in s], rtol=1e-12)
    cold = build(Softmax, tau=1e-6)
    cold.update(C, V, (r + 5) * 1e3, items=a)  # means of order 5e3, T of order 1e-2: exp(mean / T) = inf
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(cold.scores(req) / cold.temperature)).all()
    w = cold.weights(req)
    assert np.isfinite(w).all() and w.max() == 1.0 and (w >= 0).all()
    assert isinstance(cold.distribution(req, 2, 0.05), PlackettLuceSlate)


def test_lints_draw_scores_are_posterior_samples_times_features(rng):
    p = build(LinTS, v=0.3)
    C, V, r, a = rows(rng, 100)
    p.update(C, V, r, items=a)
    req = request(rng)
    S = p.draw_scores(req)(np.random.default_rng(5), 7)
    samples = p.posterior_samples(np.random.default_rng(5), 7)
    X = joint_features(req.context, req.item_features)
    assert S.shape == (7, len(req.items))
    np.testing.assert_allclose(S, np.array([[X[j] @ t for j in range(len(X))] for t in samples]), rtol=1e-12)


def test_lints_blends_the_objective_into_every_draw(rng):
    margin = rng.uniform(0, 10, size=N_ITEMS)
    env = {**ENV, "item_columns": {"margin": margin}}
    plain = build(LinTS, v=0.3)
    blended = build(LinTS, env, v=0.3, objective="margin", sensitivity="medium")
    C, V, r, a = rows(rng, 100)
    plain.update(C, V, r, items=a)
    blended.update(C, V, r, items=a)
    req = request(rng)
    raw = plain.draw_scores(req)(np.random.default_rng(2), 4)
    got = blended.draw_scores(req)(np.random.default_rng(2), 4)
    assert SENSITIVITY["medium"] > 0 and not np.allclose(raw, got)
    for row_raw, row in zip(raw, got):  # each draw blended as Policy.blend blends one score vector
        np.testing.assert_allclose(row, blended.blend(req, row_raw), rtol=1e-12)


def test_lints_model_a_few_ulps_off_replays_the_same_monte_carlo_stream(rng):
    """The same posterior but for the last bits of theta and A^-1 (as another BLAS kernel
    learns it) seeds the same Monte-Carlo stream, so its marginals agree to rounding; a model
    1e-6 apart seeds another. The state is made elementwise (no BLAS), so its bits, and the
    outcome, are the same on every machine."""
    d = build(LinTS).dim
    S = rng.uniform(-1, 1, size=(d, d))
    A = np.eye(d) * 2 * d + (S + S.T)  # diagonally dominant: positive definite
    A_inv = np.eye(d) / (2 * d) + (S + S.T) * 1e-4  # stands in for the inverse: only hashed
    theta, b = rng.normal(size=d), rng.normal(size=d)
    req = request(rng, n=6)

    def policy(move):
        p = build(LinTS, v=0.3)
        arrays, meta = p.state()  # the current layout (the reward scale at its prior)
        p.set_state({**arrays, "A": move(A), "A_inv": move(A_inv), "b": b, "theta": move(theta)}, meta)
        return p

    base = policy(lambda a: a)
    want = base.distribution(req, 3, 0.05).marginals()
    for ulps in (1, 2, 3):

        def move(a, ulps=ulps):
            for _ in range(ulps):
                a = np.nextafter(a, np.inf)
            return a

        other = policy(move)
        assert other.replay_seed(req) == base.replay_seed(req)
        np.testing.assert_allclose(other.distribution(req, 3, 0.05).marginals(), want, rtol=1e-9, atol=1e-12)
    assert policy(lambda a: a * (1 + 1e-6)).replay_seed(req) != base.replay_seed(req)


# ---- Thompson sampling's posterior ---------------------------------------------------------
def test_lints_posterior_draws_have_the_right_mean_and_covariance():
    """20,000 draws (dim 8, v = 0.5): every mean coordinate within 4 standard errors of
    theta_hat, every covariance entry within 5 standard errors of v^2 A^-1 (the entry's
    standard error sqrt((S_ii S_jj + S_ij^2) / n) under normality)."""
    rng = np.random.default_rng(21)
    p = build(LinTS, v=0.5)
    p.posterior_factor()  # cached for the prior: the update must drop it
    C, V, r, a = rows(rng, 40)
    p.update(C, V, r, items=a)
    n = 20_000
    T = p.posterior_samples(np.random.default_rng(22), n)
    # the posterior scale: v times the noise scale computed from the rows directly
    assert p.posterior_scale == pytest.approx(0.5 * shared_sigma(C, V, r), rel=1e-9)
    S = p.posterior_scale**2 * np.linalg.inv(p.A)
    np.testing.assert_allclose(p.posterior_factor() @ p.posterior_factor().T, np.linalg.inv(p.A), atol=1e-12)
    se_mean = np.sqrt(np.diag(S) / n)
    assert (np.abs(T.mean(axis=0) - p.theta) < 4 * se_mean).all()
    cov = np.cov(T, rowvar=False)
    se_cov = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / n)
    assert (np.abs(cov - S) < 5 * se_cov).all()
    # and the check has teeth: the same draws are refused as draws of a scale 1.2 times larger
    assert not (np.abs(cov - 1.44 * S) < 5 * se_cov).all()


def test_lints_distribution_is_a_seeded_posterior_slate(rng):
    """A SampledRankingSlate over mc_draws posterior draws: marginals are reproduced exactly by
    the same model and request, change when the model changes, and concentrate on the
    posterior-mean ranking when the posterior is narrow (so they are not 1/n)."""
    p = build(LinTS, {**ENV, "mc_draws": 300}, v=0.01, epsilon=0.0)
    C, V, _, a = rows(rng, 2000)
    theta_star = rng.normal(size=p.dim)
    p.update(C, V, joint_features(C, V) @ theta_star, items=a)
    req = request(rng, n=6)
    dist = p.distribution(req, 3, min_epsilon=0.05)
    assert isinstance(dist, SampledRankingSlate) and dist.draws == 300
    M = dist.marginals()
    np.testing.assert_array_equal(M, p.distribution(req, 3, min_epsilon=0.05).marginals())
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-12)
    exact = EpsilonGreedySlate(p.scores(req), [0.05] * 3).marginals()
    np.testing.assert_allclose(M, exact, atol=1e-9)  # narrow posterior: every draw ranks alike
    assert M.max() > 0.9
    p.update(C[:1], V[:1], [5.0], items=a[:1])
    assert p.replay_seed(req) != dist.seed


# ---- the shared contract -------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_contract(rng, cls):
    """Config round trip; PMF columns sum to 1; the floor reaches every candidate; the logged
    propensity equals the probability of the chosen slate; the logged marginal is its cell."""
    p = build(cls)
    assert cls.Config(**p.params) == p.config
    C, V, r, a = rows(rng, 100)
    p.update(C, V, r, items=a)
    req = request(rng)
    dist = p.distribution(req, 3, min_epsilon=0.05)
    M = dist.marginals()
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-12)
    # exact marginals: every cell > 0; Monte-Carlo ones can miss a cell no sampled prefix
    # allows (sample() guards the cells it logs: checked below and in the contract suite)
    assert (M > 0).all() or getattr(dist, "marginal_draws", 0) > 0
    draw = dist.sample(np.random.default_rng(1))
    assert (draw.marginal > 0).all()
    np.testing.assert_allclose(draw.propensity, dist.conditionals(draw.index), rtol=1e-12)
    np.testing.assert_allclose(draw.marginal, M[draw.index, np.arange(3)])
    assert len(set(draw.index.tolist())) == 3


def test_egreedy_is_epsilon_greedy_over_the_mean(rng):
    p = build(EpsilonGreedy, epsilon=0.2)
    C, V, r, a = rows(rng, 100)
    p.update(C, V, r, items=a)
    req = request(rng)
    dist = p.distribution(req, 2)
    assert isinstance(dist, EpsilonGreedySlate)
    np.testing.assert_array_equal(dist.scores, p.mean(req))
    np.testing.assert_array_equal(dist.epsilon, [0.2, 0.2])


# ---- snapshots -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_save_load_round_trip_gives_bit_identical_scores(rng, tmp_path, cls):
    p = build(cls)
    C, V, r, a = rows(rng, 150)
    p.update(C, V, r, items=a)
    p.update(C[:1], V[:1], r[:1], items=a[:1])
    again = reload(p, tmp_path / "model")
    assert again.n_updates == p.n_updates == 2 and again.params == p.params
    for k, v in arrays(p).items():
        np.testing.assert_array_equal(arrays(again)[k], v, err_msg=k)
    req = request(rng)
    np.testing.assert_array_equal(again.scores(req), p.scores(req))
    np.testing.assert_array_equal(
        again.distribution(req, 3, 0.05).marginals(), p.distribution(req, 3, 0.05).marginals()
    )
    # the restored model learns on exactly as the original does
    p.update(C[1:3], V[1:3], r[1:3], items=a[1:3])
    again.update(C[1:3], V[1:3], r[1:3], items=a[1:3])
    np.testing.assert_array_equal(again.scores(req), p.scores(req))


@pytest.mark.parametrize("cls", CLASSES)
def test_restored_arrays_are_not_the_callers(rng, cls):
    """set_state takes what it is given, but learning afterwards never writes into the caller's
    arrays (the per-item models update their stacks in place, so they must own them)."""
    p = build(cls)
    C, V, r, a = rows(rng, 50)
    p.update(C, V, r, items=a)
    given, meta = p.state()
    given = {k: np.array(v, copy=True) for k, v in given.items()}
    kept = {k: v.copy() for k, v in given.items()}
    q = build(cls)
    q.set_state(given, meta)
    q.update(C[:1], V[:1], r[:1], items=a[:1])
    q.update(C[:5], V[:5], r[:5], items=a[:5])
    for k in kept:
        np.testing.assert_array_equal(given[k], kept[k], err_msg=k)


@pytest.mark.parametrize("cls", CLASSES)
def test_a_truncated_snapshot_raises(rng, tmp_path, cls):
    p = build(cls)
    C, V, r, a = rows(rng, 50)
    p.update(C, V, r, items=a)
    p.save(tmp_path / "model")
    npz = tmp_path / "model.npz"
    npz.write_bytes(npz.read_bytes()[:-100])
    with pytest.raises(ValidationError, match="truncated or corrupt"):
        reload_from(tmp_path / "model", cls)


def reload_from(path, cls, env=ENV):
    manifest, payload = snapshot.load(path)
    again = cls(cls.Config(**manifest["params"]), **env)
    meta = dict(manifest["meta"])
    meta.pop("n_updates")
    again.set_state(payload, meta)
    return again


@pytest.mark.parametrize("cls", [DisjointLinUCB, HybridLinUCB, LinTS])
def test_a_snapshot_from_another_environment_is_refused(rng, tmp_path, cls):
    p = build(cls)
    p.save(tmp_path / "model")
    other = {**ENV, "n_items": 7, "context_dim": 4}
    with pytest.raises(ValidationError, match="snapshot"):
        reload_from(tmp_path / "model", cls, other)
    manifest, payload = snapshot.load(tmp_path / "model")
    payload = dict(payload)
    name = sorted(payload)[0]
    payload[name] = payload[name][..., :-1]  # a mangled array with the right meta
    with pytest.raises(ValidationError, match=f"snapshot array '{name}' has shape"):
        build(cls).set_state(payload, {k: v for k, v in manifest["meta"].items() if k != "n_updates"})


# ---- invalid configs and inputs ------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, config, match",
    [
        (DisjointLinUCB, {"alpha": -1.0}, r"alpha must be a finite number >= 0, got -1.0"),
        (DisjointLinUCB, {"reg": 0.0}, r"reg must be a finite number > 0, got 0.0"),
        (HybridLinUCB, {"alpha": float("nan")}, r"alpha must be a finite number >= 0, got nan"),
        (HybridLinUCB, {"epsilon": 1.5}, r"epsilon must be a number in \[0, 1\], got 1.5"),
        (LinTS, {"v": 0.0}, r"v must be a finite number > 0, got 0.0"),
        (LinTS, {"v": True}, r"v must be a finite number > 0, got True"),
        (LinTS, {"max_per_type": 2}, r"max_per_type must be 0, got 2"),
        (EpsilonGreedy, {"reg": -2}, r"reg must be a finite number > 0, got -2"),
        (Softmax, {"tau": 0.0}, r"tau must be a finite number > 0, got 0.0"),
        (Softmax, {"tau": float("inf")}, r"tau must be a finite number > 0, got inf"),
    ],
)
def test_invalid_configs_name_the_field_and_value(cls, config, match):
    with pytest.raises(ValidationError, match=match) as err:
        cls.Config(**config)
    assert err.value.field == next(iter(config))


@pytest.mark.parametrize(
    "cls, env, match",
    [
        (DisjointLinUCB, {"n_items": 5}, r"disjoint-linucb needs context_dim"),
        (DisjointLinUCB, {"n_items": -1, "context_dim": 3}, r"n_items must be an integer >= 0, got -1"),
        (DisjointLinUCB, {"n_items": 2.5, "context_dim": 3}, r"n_items must be an integer >= 0, got 2.5"),
        (HybridLinUCB, {"n_items": 5, "context_dim": 3}, r"hybrid-linucb needs item_dim"),
        (LinTS, {"context_dim": 3}, r"lints needs feature sizes"),
    ],
)
def test_missing_environment_is_named(cls, env, match):
    with pytest.raises(ValidationError, match=match):
        cls(cls.Config(), **env)


@pytest.mark.parametrize("cls", [DisjointLinUCB, HybridLinUCB])
def test_per_item_models_refuse_bad_rows(rng, cls):
    p = build(cls)
    C, V, r, a = rows(rng, 3)
    cases = [
        (dict(), "keeps one model per item: update"),
        (dict(items=[0, -1, 1]), r"items must be catalog indices >= 0, found -1 at row 1"),
        (dict(items=[0.0, 1.0, 2.0]), "items must hold integer catalog indices, got dtype float64"),
        (dict(items=[0, 1]), r"items must have one entry per row \(3\), got shape \(2,\)"),
        (dict(items=a, weight=[1.0, -1.0, 1.0]), r"weight must be finite and >= 0, found -1.0 at row 1"),
        (dict(items=a, weight=[1.0, 1.0]), r"weight must have one entry per row \(3\), got shape \(2,\)"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValidationError, match=match):
            p.update(C, V, r, **kwargs)
    with pytest.raises(ValidationError, match=r"context must have shape \(m, 3\), got \(3, 4\)"):
        p.update(np.zeros((3, 4)), V, r, items=a)
    with pytest.raises(ValidationError, match=r"reward must be finite, found nan at index 2"):
        p.update(C, V, [0.0, 1.0, np.nan], items=a)
    with pytest.raises(ValidationError, match=r"reward must have one entry per row \(3\), got shape \(2,\)"):
        p.update(C, V, r[:2], items=a)
    bad = Request(context=np.zeros(DC), items=np.array([1, -9]), item_features=np.zeros((2, DI)))
    with pytest.raises(ValidationError, match=r"request items must be catalog indices >= 0, found -9"):
        p.scores(bad)
    with pytest.raises(ValidationError, match=r"context must have shape \(3,\), got \(2,\)"):
        p.scores(Request(context=np.zeros(2), items=np.array([1]), item_features=np.zeros((1, DI))))
    assert p.n_updates == 0


def test_hybrid_refuses_item_features_of_the_wrong_width(rng):
    p = build(HybridLinUCB)
    C, _, r, a = rows(rng, 3)
    with pytest.raises(ValidationError, match=r"item_features must have shape \(3, 2\), got \(3, 5\)"):
        p.update(C, np.zeros((3, 5)), r, items=a)


@pytest.mark.parametrize("cls", SHARED)
def test_shared_models_refuse_bad_rows(rng, cls):
    p = build(cls)
    with pytest.raises(ValidationError, match="finite"):
        p.update(np.zeros((1, DC)), np.zeros((1, DI)), [np.nan])
    with pytest.raises(ValidationError, match=r"update needs features \(m, 16\)"):
        p.update_features(np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(ValidationError, match=r"weight must be finite and >= 0, found inf at row 0"):
        p.update(np.zeros((1, DC)), np.zeros((1, DI)), [1.0], weight=[np.inf])
    assert p.n_updates == 0


# ---- copy-then-commit ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
def test_an_update_that_would_overflow_leaves_the_model_as_it_was(rng, cls):
    p = build(cls)
    C, V, r, a = rows(rng, 40)
    p.update(C, V, r, items=a)
    before, n_before = arrays(p), p.n_updates
    big = 1e155  # finite features whose squares overflow to inf
    for m in (1, 3):  # the one-row (Sherman-Morrison) path and the batch path
        ctx, feats = (
            (np.ones((m, DC)), np.full((m, DI), big)) if cls in SHARED else (np.full((m, DC), big), np.ones((m, DI)))
        )
        with pytest.raises(ValidationError, match="non-finite"):
            p.update(ctx, feats, np.ones(m), items=a[:m])
    with pytest.raises(ValidationError, match="non-finite"):  # finite rows, overflowing rewards
        p.update(C[:3] * 1e150, V[:3] * 1e150, np.full(3, 1e300), items=np.array([0, 0, 1]))
    for k, v in arrays(p).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert p.n_updates == n_before
    assert np.isfinite(p.scores(request(rng))).all()


# ---- learning in a small simulated bandit --------------------------------------------------
def test_disjoint_linucb_learns_to_pick_the_best_arm():
    """8 arms, context dim 3, reward = [1, x] . theta*_a + N(0, 0.3^2), 2,000 one-slot rounds of
    Algorithm 1 (alpha 2: a bound two posterior standard deviations of the mean wide;
    epsilon 0: exploration by the confidence bound only; fixed seed), one-row updates. The last 500 rounds'
    mean regret is under 2% of a uniform choice's and a
    tenth of the first 100 rounds'; after learning the greedy choice is the best arm on >= 95%
    of 1,000 fresh contexts. (Seeds 31-34 give 0.03-0.12% of uniform and 97-99.6%.)"""
    rng = np.random.default_rng(31)
    env = {"n_items": 8, "context_dim": DC}
    p = build(DisjointLinUCB, env, alpha=2.0, epsilon=0.0)
    theta_star = rng.normal(size=(8, DC + 1))
    items = np.arange(8)
    regret, uniform = [], []
    for _ in range(2000):
        x = rng.normal(size=DC)
        req = Request(context=x, items=items, item_features=np.zeros((8, 1)))
        arm = int(p.distribution(req, 1).sample(rng).index[0])
        means = theta_star @ x1(x)
        regret.append(means.max() - means[arm])
        uniform.append(means.max() - means.mean())
        p.update(x[None], np.zeros((1, 1)), [means[arm] + rng.normal(0, 0.3)], items=[arm])
    regret = np.array(regret)
    assert regret[-500:].mean() < 0.02 * np.mean(uniform)
    assert regret[-500:].mean() < regret[:100].mean() / 10
    X = np.c_[np.ones(1000), rng.normal(size=(1000, DC))]
    assert ((X @ p.theta.T).argmax(axis=1) == (X @ theta_star.T).argmax(axis=1)).mean() >= 0.95


def test_softmax_honours_the_diversity_cap(rng):
    """max_per_type=1 over candidates of 3 product types: 200 sampled 3-slot slates each show
    one item of every type, and the conditionals match the capped slate's."""
    types = np.array([0, 0, 1, 1, 2, 2])
    p = build(Softmax, {**ENV, "item_types": types}, max_per_type=1, tau=0.5)
    C, V, r, a = rows(rng, 100)
    p.update(C, V, r, items=a)
    req = Request(context=rng.normal(size=DC), items=np.arange(6), item_features=rng.normal(size=(6, DI)))
    dist = p.distribution(req, 3, 0.05)
    draw_rng = np.random.default_rng(4)
    for _ in range(200):
        draw = dist.sample(draw_rng)
        assert sorted(types[draw.index].tolist()) == [0, 1, 2]
        np.testing.assert_allclose(draw.propensity, dist.conditionals(draw.index), rtol=1e-12)


# ---- shared LinUCB: the factored score ----------------------------------------------------
def _trained_linucb(rng, d_c, d_i, alpha=1.0, batches=(200, 1, 37), value=None, n_items=50):
    """A shared LinUCB updated by a Cholesky batch, one Sherman-Morrison row and another batch,
    so that theta and A^-1 are dense (and A^-1 not exactly symmetric)."""
    from banditrec.policies.linucb import LinUCB

    env = {"context_dim": d_c, "item_dim": d_i}
    if value is not None:
        env["item_columns"] = {"v": value}
    p = LinUCB(LinUCB.Config(alpha=alpha, epsilon=0.1, value="v" if value is not None else ""), **env)
    for m in batches:
        C, V = rng.normal(size=(m, d_c)), rng.normal(size=(m, d_i))
        p.update(C, V, rng.normal(size=m) + V[:, 0] * C[:, 0])
    return p


def _direct_linucb_scores(p, request):
    """The textbook formula on the (n, dim) joint features: x^T theta + alpha sqrt(x^T A^-1 x),
    the quadratic form as an explicit per-row loop (independent of the policy's arithmetic)."""
    X = joint_features(np.asarray(request.context, dtype=float), request.item_features)
    var = np.array([x @ p.A_inv @ x for x in X])
    alpha = p.config.alpha * p.noise_sd
    scale = np.abs(X) @ np.abs(p.theta) + alpha * np.sqrt(
        np.einsum("ij,jk,ik->i", np.abs(X), np.abs(p.A_inv), np.abs(X))
    )
    return X @ p.theta + alpha * np.sqrt(np.maximum(var, 0.0)), scale


@pytest.mark.parametrize("d_c,d_i", [(1, 1), (3, 2), (6, 6), (4, 7), (32, 8)])
def test_shared_linucb_factored_scores_equal_the_joint_feature_formula(d_c, d_i):
    """LinUCB.scores contracts theta and A^-1 with [1, c] once per request (never building the
    joint features); it equals the direct per-candidate formula over joint_features to 1e-11
    relative, before and after a further update (the cached blocks follow the model)."""
    rng = np.random.default_rng(d_c * 100 + d_i)
    p = _trained_linucb(rng, d_c, d_i, alpha=0.8)
    for _ in range(2):
        for n in (1, 13, 200):
            req = Request(context=rng.normal(size=d_c), items=np.arange(n), item_features=rng.normal(size=(n, d_i)))
            want, scale = _direct_linucb_scores(p, req)
            got = p.scores(req)
            assert got.shape == (n,)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * scale.max())
        p.update(rng.normal(size=(5, d_c)), rng.normal(size=(5, d_i)), rng.normal(size=5))


def test_shared_linucb_factored_scores_zero_context_and_zero_items():
    """A zero context leaves only the item block of A^-1 (u = [1, v, cold]); a zero item scores
    as the intercept alone."""
    rng = np.random.default_rng(3)
    p = _trained_linucb(rng, 4, 3)
    V = rng.normal(size=(6, 3))
    V[2] = 0.0
    req = Request(context=np.zeros(4), items=np.arange(6), item_features=V)
    got = p.scores(req)
    U = np.c_[np.ones(6), V, np.zeros(6)]
    s = p.noise_sd
    want = U @ p.theta[:5] + s * np.sqrt(np.einsum("ij,jk,ik->i", U, p.A_inv[:5, :5], U))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] == p.theta[0] + s * np.sqrt(p.A_inv[0, 0])


def test_shared_linucb_scores_refuse_item_features_of_another_width():
    p = _trained_linucb(np.random.default_rng(0), 3, 2)
    for V in (np.ones((4, 3)), np.ones(2)):
        with pytest.raises(ValidationError) as e:
            p.scores(Request(context=np.zeros(3), items=np.arange(len(V)), item_features=V))
        assert e.value.field == "item_features"


@settings(max_examples=60, deadline=None)
@given(
    d_c=st.integers(1, 6),
    d_i=st.integers(1, 5),
    n=st.integers(1, 30),
    alpha=st.floats(0.0, 3.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_shared_linucb_factored_scores_property(d_c, d_i, n, alpha, scale, seed):
    """Any sizes, contexts and feature scales: the factored scores equal the direct formula."""
    rng = np.random.default_rng(seed)
    p = _trained_linucb(rng, d_c, d_i, alpha=alpha, batches=(int(rng.integers(1, 60)), 1))
    req = Request(
        context=scale * rng.normal(size=d_c),
        items=np.arange(n),
        item_features=rng.normal(size=(n, d_i)) * rng.choice([0.0, 1.0, scale], size=(n, 1)),
    )
    want, s = _direct_linucb_scores(p, req)
    np.testing.assert_allclose(p.scores(req), want, rtol=1e-9, atol=1e-11 * s.max())


def _assert_same_distributions(p, reqs, slots, min_epsilon=0.05):
    many = p.distributions(reqs, slots, min_epsilon)
    assert len(many) == len(reqs)
    for i, (req, k, got) in enumerate(zip(reqs, slots, many)):
        want = p.distribution(req, k, min_epsilon)
        np.testing.assert_array_equal(got.marginals(), want.marginals(), err_msg=f"request {i}")
        for seed in range(2):
            a, b = got.sample(np.random.default_rng(seed)), want.sample(np.random.default_rng(seed))
            np.testing.assert_array_equal(a.index, b.index, err_msg=f"request {i}")
            np.testing.assert_array_equal(a.propensity, b.propensity)


@pytest.mark.parametrize("d_c,d_i", [(6, 6), (32, 8), (2, 1)])
def test_shared_linucb_batched_distributions_equal_one_at_a_time(d_c, d_i):
    """The batched path (stacked contexts, one padded batched product, rounding-bound re-score)
    gives every request exactly its own distribution: requests of unequal sizes (padding), a
    zero context, zero items, repeated items (exact ties) and one of a single candidate."""
    rng = np.random.default_rng(d_c + d_i)
    p = _trained_linucb(rng, d_c, d_i)
    reqs, slots = [], []
    for n in (200, 3, 57, 1, 200):
        reqs.append(Request(context=rng.normal(size=d_c), items=np.arange(n), item_features=rng.normal(size=(n, d_i))))
        slots.append(min(n, 10))
    V = rng.normal(size=(8, d_i))
    V[3] = 0.0
    reqs.append(Request(context=np.zeros(d_c), items=np.arange(8), item_features=V))
    reqs.append(Request(context=rng.normal(size=d_c), items=np.r_[0:4, 0:4], item_features=np.r_[V[:4], V[:4]]))
    slots += [4, 4]
    _assert_same_distributions(p, reqs, slots)
    _assert_same_distributions(p, reqs[:1] + reqs[-1:], [10, 4])  # equal sizes: no padding


def test_shared_linucb_batched_distributions_with_values_equal_one_at_a_time(monkeypatch):
    """Value-weighted (max(s, 0) x value, zero values tying): still exactly one at a time, and a
    request whose weighted ranking has a near-tie is re-scored alone (the batched check ranks
    by the weighted scores, with its bound scaled by the values)."""
    from banditrec.policies.linucb import LinUCB

    rng = np.random.default_rng(8)
    value = rng.uniform(0.0, 2.0, 50)
    value[:10] = 0.0
    p = _trained_linucb(rng, 5, 4, value=value)
    reqs = [
        Request(
            context=rng.normal(size=5), items=rng.choice(50, n, replace=False), item_features=rng.normal(size=(n, 4))
        )
        for n in (30, 30, 12, 30)
    ]
    _assert_same_distributions(p, reqs, [5, 5, 3, 5])
    # near-ties in the weighted ranking (values up to 2e6, so that an unscaled bound would be
    # far too small): per request, only candidates scoring > 0 (no ties at max(s, 0) = 0), and
    # the value of its second-best item set so that max(s, 0) x value comes within 1 to 10^6
    # ulps of the best item's
    near, value = [], value * 1e6
    p.set_value(value)
    for r, ulps in enumerate((1, 4, 1e3, 1e6)):
        items = np.arange(10 + 10 * r, 20 + 10 * r)
        req = Request(context=rng.normal(size=5), items=items, item_features=rng.normal(size=(10, 4)))
        positive = p.scores(req) > 0
        req = Request(context=req.context, items=items[positive], item_features=req.item_features[positive])
        s = p.scores(req)
        i, j = np.argsort(-s)[:2]
        assert len(s) >= 3 and s.min() > 0
        value[req.items[j]] = value[req.items[i]] * s[i] / s[j] * (1 + ulps * np.finfo(float).eps)
        near.append(req)
    p.set_value(value)
    _assert_same_distributions(p, near, [3] * len(near))
    alone = []
    original = LinUCB.scores
    monkeypatch.setattr(LinUCB, "scores", lambda self, r: alone.append(r) or original(self, r))
    p.distributions(near + reqs, [3] * len(near) + [5, 5, 3, 5], 0.05)
    assert all(any(a is r for a in alone) for r in near[:2])  # within 4 ulps: always re-scored
    assert not any(a is near[3] for a in alone)  # 10^6 ulps apart: batched, so the scaled bound is finite


def test_shared_linucb_batched_scores_are_rechecked_only_near_a_tie(monkeypatch):
    """Well-separated requests are served from the batched scores (no per-request re-score);
    one whose scores overflow is re-scored alone and refused exactly as one at a time."""
    from banditrec.policies.linucb import LinUCB

    rng = np.random.default_rng(12)
    p = _trained_linucb(rng, 6, 6)
    reqs = [
        Request(context=rng.normal(size=6), items=np.arange(200), item_features=rng.normal(size=(200, 6)))
        for _ in range(8)
    ]
    alone = []
    original = LinUCB.scores
    monkeypatch.setattr(LinUCB, "scores", lambda self, r: alone.append(r) or original(self, r))
    p.distributions(reqs, 10, 0.01)
    assert alone == []
    huge = Request(context=rng.normal(size=6), items=np.arange(5), item_features=np.full((5, 6), 1e200))
    with pytest.raises(ValidationError) as one:
        p.distribution(huge, 2)
    alone.clear()
    with pytest.raises(ValidationError) as many:
        p.distributions([reqs[0], huge], 2)
    assert alone == [huge] and str(many.value) == str(one.value)


def test_shared_linucb_batched_distributions_exact_at_near_ties_of_every_scale():
    """Candidates nudged by 1 to 10^6 ulps of each other (where stacked and single-request
    rounding can reorder them), at feature scales 1e-3 to 1e3 and with alpha 0 (mean only):
    every request's batched distribution is still exactly its own."""
    rng = np.random.default_rng(21)
    for alpha in (0.0, 1.0):
        p = _trained_linucb(rng, 5, 3, alpha=alpha)
        reqs = []
        for scale in (1e-3, 1.0, 1e3):
            for ulps in (1, 4, 1e3, 1e6):
                V = scale * rng.normal(size=(40, 3))
                V[1::2] = V[0::2] * (1 + ulps * np.finfo(float).eps)
                reqs.append(Request(context=scale * rng.normal(size=5), items=np.arange(40), item_features=V))
        _assert_same_distributions(p, reqs, [10] * len(reqs))


@pytest.mark.parametrize("bad", ["short", "nan", "2d", "scalar", "width"])
def test_shared_linucb_batched_refuses_bad_requests_like_one_at_a_time(bad):
    """A malformed request in a batch raises what the one-at-a-time loop raises (the batched
    context check is only a fast path)."""
    from banditrec.policies.base import Policy

    rng = np.random.default_rng(2)
    p = _trained_linucb(rng, 2, 3)
    good = Request(context=rng.normal(size=2), items=np.arange(4), item_features=rng.normal(size=(4, 3)))
    ctx, feats = {
        "short": (np.ones(1), None),
        "nan": (np.array([0.0, np.nan]), None),
        "2d": (np.ones((1, 2)), None),
        "scalar": (np.float64(1.0), None),
        "width": (np.ones(2), np.ones((4, 2))),
    }[bad]
    worse = Request(context=ctx, items=np.arange(4), item_features=good.item_features if feats is None else feats)
    batch = [good, worse] if bad != "scalar" else [worse, worse]  # two scalars: m == d_c
    with pytest.raises(ValidationError) as one:
        Policy.distributions(p, batch, 2)
    with pytest.raises(ValidationError) as many:
        p.distributions(batch, 2)
    assert str(many.value) == str(one.value) and many.value.field == one.value.field


@pytest.mark.parametrize("cls", [DisjointLinUCB, HybridLinUCB])
def test_an_item_past_the_learned_ones_is_scored_with_the_prior(rng, cls):
    """Every item of a 6-item catalog learned from; items 7 and 50 (a grown catalog) are
    scored with the prior per-item statistics, in closed form: disjoint mean 0 and variance
    x^T x / reg; hybrid (local=bias) z . beta and z^T A0^-1 z + 1 / rho -- not with any
    learned item's statistics -- and scoring them allocates nothing."""
    p = build(cls, alpha=1.5)
    C, V, r, a = rows(rng, 120)
    a[:6] = np.arange(6)
    p.update(C, V, r, items=a)
    req = Request(context=rng.normal(size=DC), items=np.array([7, 50]), item_features=rng.normal(size=(2, DI)))
    got = p.scores(req)
    if cls is DisjointLinUCB:
        x = x1(req.context)
        want = np.full(2, 1.5 * p.noise_sd * np.sqrt(x @ x / 1.0))
    else:
        Z = joint_features(req.context, req.item_features)
        s = np.einsum("ij,jk,ik->i", Z, np.linalg.inv(p.A0), Z) + 1.0 / p.item_prior[0]
        want = Z @ p.beta + 1.5 * p.noise_sd * np.sqrt(s)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert p.n_items == 6


def test_snapshots_written_before_the_intercept_and_the_reward_scale_still_load(rng):
    """A shared model's snapshot over the old joint features [v, vec(v c^T)] (no intercept, no
    cold flag, no reward scale) is embedded: the restored mean is the old model's, x_old .
    theta_old, for any request; a disjoint snapshot without the reward scale restores its
    per-item models."""
    C, V, r, a = rows(rng, 200)
    X_old = np.array([np.r_[v, np.outer(v, c).ravel()] for c, v in zip(C, V)])
    A_old = np.eye(X_old.shape[1]) + X_old.T @ X_old
    b_old = X_old.T @ r
    theta_old = np.linalg.solve(A_old, b_old)
    p = build(EpsilonGreedy)
    p.set_state({"A": A_old, "A_inv": np.linalg.inv(A_old), "b": b_old, "theta": theta_old}, {"dim": X_old.shape[1]})
    req = request(rng)
    x_old = np.array([np.r_[v, np.outer(v, req.context).ravel()] for v in req.item_features])
    np.testing.assert_allclose(p.mean(req), x_old @ theta_old, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValidationError, match="snapshot"):
        p.set_state(
            {"A": A_old[:-1, :-1], "A_inv": A_old[:-1, :-1], "b": b_old[:-1], "theta": theta_old[:-1]},
            {"dim": X_old.shape[1] - 1},
        )
    d = build(DisjointLinUCB)
    d.update(C, V, r, items=a)
    arrays, meta = d.state()
    old = {k: v for k, v in arrays.items() if k != "stats"}
    again = build(DisjointLinUCB)
    again.set_state(old, meta)
    np.testing.assert_array_equal(again.theta, d.theta)


@pytest.mark.parametrize("spec", ["linucb", "egreedy:epsilon=0.1", "linucb:gamma=0.99"])
def test_a_large_batch_learns_its_joint_features_a_block_at_a_time(monkeypatch, spec):
    """A log's training share is learned without its (m, dim) joint features at once: in
    blocks of rows, the ridge sums and the model are the one-block update's up to rounding,
    and a non-finite feature in a later block is refused as before, the model unchanged."""
    from banditrec.policies import make, ridge

    rng = np.random.default_rng(3)
    m, d_c, d_i = 1000, 4, 3
    C, V, r, w = rng.normal(size=(m, d_c)), rng.normal(size=(m, d_i)), rng.random(m), rng.random(m) + 0.5
    whole, blocked = make(spec, context_dim=d_c, item_dim=d_i), make(spec, context_dim=d_c, item_dim=d_i)
    whole.update(C, V, r, weight=w)
    monkeypatch.setattr(ridge, "LEARN_BLOCK_ROWS", 64)
    calls = []
    monkeypatch.setattr(ridge, "joint_features", lambda *a: calls.append(len(a[0])) or joint_features(*a))
    blocked.update(C, V, r, weight=w)
    assert max(calls) == 64 and sum(calls) == m
    for name in ("A", "A_inv", "b", "theta", "stats"):
        np.testing.assert_allclose(getattr(blocked, name), getattr(whole, name), rtol=1e-12, atol=1e-12, err_msg=name)
    assert blocked.n_updates == whole.n_updates == 1
    before = blocked.A.copy()
    V[900], C[900] = 1e200, 1e200  # finite rows whose joint features overflow, in a late block
    with pytest.raises(ValidationError, match="update features and rewards must be finite"):
        blocked.update(C, V, r, weight=w)
    np.testing.assert_array_equal(blocked.A, before)
