"""Policy registry, LinUCB against direct linear algebra, and the policy contract."""

from __future__ import annotations

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.features import joint_dim, joint_features
from banditrec.policies import REGISTRY, LinUCB, Request, make, parse_spec

ENV = {"context_dim": 3, "item_dim": 2, "popularity": np.arange(10.0), "n_items": 10}


def request(rng, n=6):
    items = rng.choice(10, size=n, replace=False)
    return Request(context=rng.normal(size=3), items=items, item_features=rng.normal(size=(n, 2)))


def test_parse_spec():
    assert parse_spec("linucb:alpha=0.5, epsilon=0.05") == ("linucb", {"alpha": "0.5", "epsilon": "0.05"})
    assert parse_spec("uniform") == ("uniform", {})


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            "nope",
            "unknown policy 'nope'; known: bernoulli-ts, disjoint-linucb, egreedy, hybrid-linucb, "
            "lints, linucb, popularity, softmax, uniform",
        ),
        (
            "linucb:beta=1",
            "policy linucb has no parameter beta; it takes: epsilon, explore_from, objective, "
            "sensitivity, max_per_type, value, alpha, reg",
        ),
        ("linucb:alpha=fast", "alpha must be a number, got 'fast'"),
        ("linucb:alpha", "must look like key=value"),
        ("linucb:alpha=1,alpha=2", "given twice"),
        ("linucb:epsilon=1.5", r"epsilon must be a number in \[0, 1\], got 1.5"),
        ("linucb:alpha=-1", "alpha must be a finite number >= 0"),
        ("linucb:reg=0", "reg must be a finite number > 0"),
        ("uniform:epsilon=0.5", "epsilon must be 1"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(ValidationError, match=match):
        make(spec, **ENV)


def test_missing_environment_is_named():
    with pytest.raises(ValidationError, match="context_dim"):
        make("linucb")
    with pytest.raises(ValidationError, match="popularity"):
        make("popularity")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_contract_for_every_registered_policy(name, rng):
    """Spec round-trip, params, PMF and marginals, and propensity == probability of the choice."""
    policy = make(name, **ENV)
    again = make(policy.spec, **ENV)
    assert again.params == policy.params
    req = request(rng)
    dist = policy.distribution(req, 3, min_epsilon=0.05)
    M = dist.marginals()
    np.testing.assert_allclose(M.sum(axis=0), 1.0, atol=1e-12)
    assert (M > 0).all()  # the floor reaches every candidate in every slot
    draw = dist.sample(np.random.default_rng(1))
    np.testing.assert_allclose(draw.propensity, dist.conditionals(draw.index), rtol=0, atol=0)
    np.testing.assert_allclose(draw.marginal, M[draw.index, np.arange(3)])


def test_serving_floor_mixes_a_greedy_policy(rng):
    policy = make("linucb:epsilon=0", **ENV)
    req = request(rng)
    assert (policy.distribution(req, 2).marginals() == 0).any()  # greedy: some items never shown
    floored = policy.distribution(req, 2, min_epsilon=0.02)
    np.testing.assert_array_equal(floored.epsilon, [0.02, 0.02])


def test_joint_features_are_item_vector_then_outer_product(rng):
    """``[u, vec(u c^T)]`` with ``u = [1, v, cold]``: an intercept, the item's terms, its cold
    flag, and every product with the context (the context's own terms are ``1 x c``)."""
    x, V = rng.normal(size=3), rng.normal(size=(4, 2))
    cold = np.array([0, 1, 0, 1])
    X = joint_features(x, V, cold)
    assert X.shape == (4, joint_dim(3, 2)) == (4, (2 + 2) * (3 + 1))
    for i in range(4):
        u = np.r_[1.0, V[i], cold[i]]
        np.testing.assert_allclose(X[i], np.r_[u, np.outer(u, x).ravel()])
    assert (X[:, 0] == 1).all() and np.array_equal(X[:, 3], cold)
    np.testing.assert_allclose(X[:, 4:7], np.tile(x, (4, 1)))  # 1 x c: the context's own terms
    rows = joint_features(np.tile(x, (4, 1)), V, cold)
    np.testing.assert_allclose(rows, X)
    np.testing.assert_array_equal(joint_features(x, V), joint_features(x, V, np.zeros(4)))


def test_linucb_scores_match_direct_formula(rng):
    policy = make("linucb:alpha=0.7,reg=2.0", **ENV)
    ctx, feats, r = rng.normal(size=(50, 3)), rng.normal(size=(50, 2)), rng.normal(size=50)
    policy.update(ctx, feats, r)
    req = request(rng)
    X = joint_features(req.context, req.item_features)
    Xall = joint_features(ctx, feats)
    A = 2.0 * np.eye(X.shape[1]) + Xall.T @ Xall
    theta = np.linalg.solve(A, Xall.T @ r)
    # the bonus is alpha noise standard deviations: the ridge residual sum of squares plus one
    # prior row of variance (range / 2)^2, over the residual degrees of freedom plus one
    df = X.shape[1] - 2.0 * np.trace(np.linalg.inv(A))
    sigma = np.sqrt((r @ r - theta @ (Xall.T @ r) + (r.max() - r.min()) ** 2 / 4) / (max(50 - df, 0) + 1))
    assert policy.noise_sd == pytest.approx(sigma, rel=1e-9)
    expected = X @ theta + 0.7 * sigma * np.sqrt(np.einsum("ij,jk,ik->i", X, np.linalg.inv(A), X))
    np.testing.assert_allclose(policy.scores(req), expected, rtol=1e-9)


def test_sherman_morrison_updates_match_inverse(rng):
    one_by_one = make("linucb", **ENV)
    batch = make("linucb", **ENV)
    ctx, feats, r = rng.normal(size=(300, 3)), rng.normal(size=(300, 2)), rng.normal(size=300)
    for i in range(300):
        one_by_one.update(ctx[i], feats[i], r[i])
    batch.update(ctx, feats, r)
    np.testing.assert_allclose(one_by_one.A_inv, np.linalg.inv(one_by_one.A), atol=1e-10)
    np.testing.assert_allclose(one_by_one.A_inv, batch.A_inv, atol=1e-10)
    np.testing.assert_allclose(one_by_one.theta, batch.theta, atol=1e-9)
    assert one_by_one.n_updates == 300 and batch.n_updates == 1
    assert batch.model_version == "linucb-1"


def test_linucb_recovers_a_known_parameter():
    """20,000 rows with reward = x . theta* + N(0, 0.1^2): theta within 0.01 of theta*."""
    rng = np.random.default_rng(3)
    policy: LinUCB = make("linucb:reg=1.0", **ENV)
    theta_star = rng.normal(size=policy.dim)
    theta_star[
        joint_features(np.ones(3), np.zeros((1, 2)), [1])[0] != joint_features(np.ones(3), np.zeros((1, 2)))[0]
    ] = 0
    ctx, feats = rng.normal(size=(20_000, 3)), rng.normal(size=(20_000, 2))  # no item is cold: those terms stay 0
    X = joint_features(ctx, feats)
    policy.update(ctx, feats, X @ theta_star + rng.normal(0, 0.1, size=20_000))
    assert np.abs(policy.theta - theta_star).max() < 0.01


def test_update_rejects_bad_rows():
    policy = make("linucb", **ENV)
    with pytest.raises(ValidationError, match="finite"):
        policy.update(np.zeros((1, 3)), np.zeros((1, 2)), [np.nan])
    with pytest.raises(ValidationError, match=r"update needs features \(m, 16\)"):
        policy.update_features(np.zeros((2, 5)), np.zeros(2))
    assert policy.n_updates == 0


def test_popularity_ranks_by_counts(rng):
    policy = make("popularity:epsilon=0", **ENV)
    req = Request(context=np.zeros(3), items=np.array([2, 9, 5]), item_features=np.zeros((3, 2)))
    M = policy.distribution(req, 3).marginals()
    np.testing.assert_array_equal(M.argmax(axis=0), [1, 2, 0])


def test_an_update_that_would_overflow_leaves_the_model_as_it_was(rng):
    policy = make("linucb", **ENV)
    policy.update(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), rng.normal(size=20))
    before = (policy.A.copy(), policy.b.copy(), policy.theta.copy(), policy.n_updates)
    with pytest.raises(ValidationError, match="non-finite"):  # batch path: A overflows
        policy.update(np.ones((2, 3)), np.full((2, 2), 1e155), [1.0, 0.0])
    with pytest.raises(ValidationError, match="non-finite"):  # one row: Sherman-Morrison overflows
        policy.update(np.ones((1, 3)), np.full((1, 2), 1e155), [1.0])
    with pytest.raises(ValidationError, match="finite"):  # the features themselves overflow
        policy.update(np.full((1, 3), 1e200), np.full((1, 2), 1e200), [1.0])
    np.testing.assert_array_equal(policy.A, before[0])
    np.testing.assert_array_equal(policy.theta, before[2])
    assert policy.n_updates == before[3]
    assert np.isfinite(policy.scores(request(rng))).all()


# ---- registry names -------------------------------------------------------------------------
def test_linucb_is_the_shared_model_and_disjoint_linucb_the_per_item_one():
    from banditrec.policies import DisjointLinUCB, LinUCB

    assert type(make("linucb", context_dim=2, item_dim=3)) is LinUCB
    assert type(make("disjoint-linucb", context_dim=2, n_items=4)) is DisjointLinUCB


def test_the_old_shared_name_still_parses_with_a_deprecation_warning():
    from banditrec.policies import LinUCB

    with pytest.warns(DeprecationWarning, match="'shared-linucb', which is now 'linucb'"):
        policy = make("shared-linucb:alpha=0.5", context_dim=2, item_dim=3)
    assert type(policy) is LinUCB and policy.name == "linucb" and policy.params["alpha"] == 0.5


@pytest.mark.parametrize("old, cls_name", [("linucb", "DisjointLinUCB"), ("shared-linucb", "LinUCB")])
def test_a_format_2_snapshot_loads_under_the_new_name_with_a_warning(tmp_path, old, cls_name):
    """Format 2 named the per-item model ``linucb`` and the shared one ``shared-linucb``."""
    import json

    from banditrec.policies import load, snapshot

    new = snapshot.RENAMED_SINCE_2[old]
    env = {"context_dim": 2, "item_dim": 3, "n_items": 4}
    policy = make(new, **env)
    rng = np.random.default_rng(0)
    policy.update(rng.normal(size=(6, 2)), rng.normal(size=(6, 3)), rng.random(6), items=np.arange(6) % 4)
    manifest_path = policy.save(tmp_path / "snap")
    manifest = json.loads(manifest_path.read_text())
    manifest.update(format=snapshot.FORMAT_2, policy=old)
    manifest["checksum"] = snapshot.sha256(snapshot.canonical(manifest))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(DeprecationWarning, match=f"names policy '{old}', which is now '{new}'"):
        loaded = load(manifest_path, **env)
    assert type(loaded).__name__ == cls_name and loaded.name == new
    want, got = policy.state(), loaded.state()
    assert want[0].keys() == got[0].keys()
    for key in want[0]:
        np.testing.assert_array_equal(got[0][key], want[0][key])
