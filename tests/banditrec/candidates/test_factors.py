"""Latent factors: recovery of planted low-rank structure, the ALS fold-in against implicit's
own solve, determinism, candidate lists against a brute-force ranking, saving, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import threadpoolctl
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import subspace_angles

from banditrec.candidates import factors as factors_module
from banditrec.candidates.factors import LatentFactors
from banditrec.errors import ValidationError


def planted(seed: int, n_users: int = 800, n_items: int = 300, rank: int = 4, per_user: int = 24, held: int = 4):
    """Users draw items without replacement from ``P = U V^T`` (rows of U and V on the simplex:
    every item equally popular a priori, so only the low-rank structure predicts).
    Returns ``(train (n_users, n_items), held-out items (n_users, held), V, P)``."""
    rng = np.random.default_rng(seed)
    U = rng.dirichlet(np.full(rank, 0.2), n_users)
    V = rng.dirichlet(np.full(rank, 0.2), n_items)
    P = U @ V.T + 0.002
    P /= P.sum(axis=1, keepdims=True)
    picks = np.argsort(-(np.log(P) + rng.gumbel(size=P.shape)), axis=1)[:, : per_user + held]  # Gumbel top-k
    rows = np.repeat(np.arange(n_users), per_user)
    X = sp.csr_matrix((np.ones(rows.size), (rows, picks[:, :per_user].ravel())), shape=(n_users, n_items))
    return X, picks[:, per_user:], V, P


def hit_rate(ids: np.ndarray, held: np.ndarray) -> float:
    """Share of held-out items found in the lists."""
    return float(np.mean([np.isin(h, i).mean() for i, h in zip(ids, held)]))


def ranked_lists(scores: np.ndarray, X: sp.csr_matrix, k: int) -> np.ndarray:
    S = np.array(scores, dtype=float)
    S[X.nonzero()] = -np.inf
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def planted_data():
    return planted(0)


@pytest.fixture(scope="module")
def als(planted_data):
    X = planted_data[0]
    return LatentFactors("als", 8, regularization=1.0, alpha=5.0, iterations=15, random_state=1).fit(X)


@pytest.mark.parametrize(
    "model, kw",
    [("als", dict(regularization=1.0, alpha=5.0, iterations=15)), ("bpr", dict(iterations=100, regularization=0.001))],
)
def test_recovers_planted_low_rank_structure(planted_data, model, kw):
    # 800 users x 300 items, rank 4, 24 training and 4 held-out items per user: popularity
    # hits about 0.04 of the held-out items, the true P about 0.12, both models about 0.10
    X, held, _, P = planted_data
    lf = LatentFactors(model, 8, random_state=1, **kw).fit(X)
    ids, scores = lf.recommend_batch(X, 10)
    pop = np.broadcast_to(np.asarray(X.sum(axis=0)), X.shape)
    hit, hit_pop, hit_true = (hit_rate(i, held) for i in (ids, ranked_lists(pop, X, 10), ranked_lists(P, X, 10)))
    assert hit > 2 * hit_pop
    assert hit > 0.7 * hit_true
    assert not X[np.arange(X.shape[0])[:, None], ids].toarray().any()  # no training item again
    assert (np.diff(scores, axis=1) <= 0).all()


def test_als_item_factors_span_the_planted_subspace(planted_data, als):
    V = planted_data[2]
    angles = np.degrees(subspace_angles(V, als.item_factors.astype(float)))
    assert angles.max() < 30  # about 15 degrees at most; a random 8-dim subspace of R^300: near 90
    rng = np.random.default_rng(0)
    assert np.degrees(subspace_angles(V, rng.normal(size=als.item_factors.shape))).max() > 60


def implicit_recalculate(lf: LatentFactors, rows: sp.csr_matrix) -> np.ndarray:
    """implicit's own fold-in (its Cholesky solve) on the fitted item factors."""
    from implicit.cpu.als import AlternatingLeastSquares

    m = AlternatingLeastSquares(factors=lf.factors, regularization=lf.regularization, alpha=lf.alpha, random_state=0)
    m.item_factors = lf.item_factors.copy()
    m.user_factors = lf.user_factors.copy()
    with threadpoolctl.threadpool_limits(1, "blas"):
        return m.recalculate_user(np.arange(rows.shape[0]), sp.csr_matrix(rows, dtype=np.float32))


def test_als_fold_in_equals_implicit_recalculate_user():
    rng = np.random.default_rng(3)
    dense = (rng.random((200, 60)) < 0.1) * rng.integers(1, 5, size=(200, 60))
    X = sp.csr_matrix(dense.astype(float))
    lf = LatentFactors("als", 6, regularization=0.3, alpha=2.5, iterations=5, random_state=2).fit(X)
    mine = lf.user_vectors(X[:20])
    ref = implicit_recalculate(lf, X[:20])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(mine, ref, atol=1e-4 * scale)
    # an anonymous session (repeated items add up), one at a time
    items, weights = [3, 7, 7, 41], [1.0, 2.0, 0.5, 3.0]
    row = sp.csr_matrix((weights, ([0] * 4, items)), shape=(1, 60))
    np.testing.assert_allclose(lf.user_vector(items, weights), implicit_recalculate(lf, row)[0], atol=1e-4 * scale)


def test_fold_in_in_chunks_equals_one_at_a_time(monkeypatch, als, planted_data):
    X = planted_data[0][:30]
    whole = als.user_vectors(X)
    monkeypatch.setattr(factors_module, "CHUNK_ENTRIES", 64 * 30)  # a few users per chunk
    chunked = als.user_vectors(X)
    single = np.stack([als.user_vector(X[r].indices, X[r].data) for r in range(30)])
    np.testing.assert_allclose(chunked, whole, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(single, whole, rtol=1e-9, atol=1e-12)
    ids, scores = als.recommend_batch(X, 7)
    for r in range(30):
        i, s = als.recommend(X[r].indices, X[r].data, N=7)
        np.testing.assert_array_equal(i, ids[r])
        np.testing.assert_allclose(s, scores[r], rtol=1e-9)


def test_bpr_fold_in_points_like_the_learned_user_factors(planted_data):
    X = planted_data[0]
    lf = LatentFactors("bpr", 8, iterations=100, regularization=0.001, random_state=1).fit(X)
    D = lf.user_vectors(X)
    assert (D[:, -1] == 1).all()  # the bias slot
    D, U = D[:, :-1], lf.user_factors[:, :-1].astype(float)
    cos = (D * U).sum(axis=1) / np.linalg.norm(D, axis=1) / np.linalg.norm(U, axis=1)
    assert cos.mean() > 0.6  # about 0.9
    assert lf.fold_scale > 0


@pytest.mark.parametrize("model", ["als", "bpr"])
def test_same_seed_same_factors(planted_data, model):
    X = planted_data[0][:300]
    make = lambda seed, threads: LatentFactors(model, 6, iterations=5, random_state=seed, num_threads=threads).fit(X)
    a, b, c = make(7, 1), make(7, 2), make(8, 2)
    np.testing.assert_allclose(a.item_factors, b.item_factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.user_factors, b.user_factors, rtol=1e-5, atol=1e-6)
    assert np.abs(a.item_factors - c.item_factors).max() > 1e-3


def handmade(Y: np.ndarray, active=None, model: str = "als") -> LatentFactors:
    """A model with the given item factors, through :meth:`LatentFactors.from_arrays`."""
    n, dim = Y.shape
    meta = {
        "format": "banditrec.LatentFactors",
        "version": 1,
        "n_items": n,
        "n_users": 1,
        "dim": dim,
        "params": LatentFactors(model, dim - (model == "bpr")).params,
    }
    arrays = {
        "item_factors": Y.astype(np.float32),
        "user_factors": np.ones((1, dim), np.float32),
        "active": np.ones(n, bool) if active is None else active,
        "scales": np.ones(3),
    }
    return LatentFactors.from_arrays(arrays, meta)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([4, 8, 16, 32]),
    st.integers(1, 12),
)
def test_recommend_equals_brute_force_ranking(seed, n, N):
    rng = np.random.default_rng(seed)
    Y = rng.integers(-2, 3, size=(n, 3)).astype(float)  # small integers: exact ties are common
    active = rng.random(n) < 0.8
    # BPR's fold-in is a difference of means: with power-of-two counts every score is exact, so
    # the ties are exact on any CPU
    lf = handmade(Y, active, model="bpr")
    seeds = rng.choice(n, size=rng.choice([0, 1, 2, 4]), replace=False)
    exclude = rng.choice(n, size=rng.integers(0, 3), replace=False)
    ids, scores = lf.recommend(seeds, N=N, exclude=exclude)
    u = lf.user_vector(seeds)
    s = lf.item_factors.astype(float) @ u
    eligible = [i for i in range(n) if active[i] and i not in seeds and i not in exclude]
    expected = sorted(eligible, key=lambda i: (-s[i], i))[:N]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, s[expected], rtol=1e-12, atol=1e-12)


def test_batch_pads_when_few_items_are_eligible():
    lf = handmade(np.eye(4), active=np.array([True, True, False, True]))
    ids, scores = lf.recommend_batch(sp.csr_matrix([[1.0, 0, 0, 0], [0, 0, 0, 0]]), N=4, exclude=[3])
    np.testing.assert_array_equal(ids, [[1, -1, -1, -1], [0, 1, -1, -1]])
    assert np.isneginf(scores[:, 2:]).all()
    assert len(lf.recommend([0], N=4, exclude=[3])[0]) == 1


def test_embeddings_are_order_one_and_rank_like_recommend(als, planted_data):
    E = als.item_embedding()
    assert E.dtype == np.float32 and E.shape == als.item_factors.shape
    np.testing.assert_allclose(np.sqrt(np.mean(E.astype(float) ** 2)), 1.0, rtol=1e-4)
    X = planted_data[0]
    users = np.stack([als.user_embedding(X[r].indices) for r in range(X.shape[0])])
    np.testing.assert_allclose(np.sqrt(np.mean(users.astype(float) ** 2)), 1.0, rtol=0.05)
    items = X[5].indices
    ids, _ = als.recommend(items, N=10)
    s = E.astype(float) @ als.user_embedding(items).astype(float)
    s[items] = -np.inf
    assert len(set(np.argsort(-s)[:10]) & set(ids)) >= 9  # float32 features: near ties may swap


@pytest.mark.parametrize("model", ["als", "bpr"])
def test_round_trip_through_arrays(planted_data, model, tmp_path):
    X = planted_data[0][:200]
    lf = LatentFactors(model, 5, iterations=3, random_state=4).fit(X, active=np.arange(300) % 7 != 0)
    arrays, meta = lf.to_arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    with np.load(tmp_path / "f.npz") as z:
        back = LatentFactors.from_arrays(dict(z), meta)
    assert back.params == lf.params
    np.testing.assert_array_equal(back.item_factors, lf.item_factors)
    np.testing.assert_array_equal(back.active, lf.active)
    for a, b in zip(back.recommend([1, 2, 3], N=20), lf.recommend([1, 2, 3], N=20)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.user_embedding([4, 5]), lf.user_embedding([4, 5]))
    assert not np.isin(lf.recommend([1], N=50)[0] % 7, 0).any()  # inactive items never come back


def test_bad_arrays_name_the_array(als):
    arrays, meta = als.to_arrays()
    cases = [
        ({**arrays, "item_factors": arrays["item_factors"][:-1]}, meta, "item_factors"),
        ({k: v for k, v in arrays.items() if k != "active"}, meta, "active"),
        ({**arrays, "active": arrays["active"].astype(int)}, meta, "active"),
        ({**arrays, "scales": np.array([np.nan, 1.0, 1.0])}, meta, "scales"),
        ({**arrays, "scales": np.array([0.0, 1.0, 1.0])}, meta, "scales"),
        (arrays, {**meta, "format": "banditrec.ItemItemCF"}, "meta.format"),
        (arrays, {**meta, "dim": 9}, "meta.dim"),
        (arrays, {**meta, "params": {**meta["params"], "colour": 1}}, "meta.params"),
    ]
    for arr, m, field in cases:
        with pytest.raises(ValidationError) as e:
            LatentFactors.from_arrays(arr, m)
        assert e.value.field == field


def test_bad_input_names_the_field():
    X = sp.csr_matrix(np.eye(5))
    cases = [
        (lambda: LatentFactors("svd"), "model"),
        (lambda: LatentFactors(factors=0), "factors"),
        (lambda: LatentFactors(regularization=-1.0), "regularization"),
        (lambda: LatentFactors(iterations=2.5), "iterations"),  # type: ignore[arg-type]
        (lambda: LatentFactors(alpha=float("nan")), "alpha"),
        (lambda: LatentFactors("bpr", learning_rate=0.0), "learning_rate"),
        (lambda: LatentFactors(random_state=True), "random_state"),  # type: ignore[arg-type]
        (lambda: LatentFactors(num_threads=0), "num_threads"),
        (lambda: LatentFactors().fit(np.eye(5)), "user_items"),
        (lambda: LatentFactors().fit(-X), "user_items"),
        (lambda: LatentFactors().fit(X * np.nan), "user_items"),
        (lambda: LatentFactors().fit(sp.csr_matrix((3, 4))), "user_items"),
        (lambda: LatentFactors().fit(X, active=np.ones(4, bool)), "active"),
        (lambda: LatentFactors().fit(X, active=np.ones(5)), "active"),
        (lambda: LatentFactors().user_vector([0]), "model"),
    ]
    fitted = LatentFactors(factors=2, iterations=2).fit(X)
    cases += [
        (lambda: fitted.user_vector([5]), "items"),
        (lambda: fitted.user_vector([-1]), "items"),
        (lambda: fitted.user_vector(["a"]), "items"),
        (lambda: fitted.user_vector([0, 1], [1.0]), "weights"),
        (lambda: fitted.user_vector([0], [-1.0]), "weights"),
        (lambda: fitted.recommend([0], N=0), "N"),
        (lambda: fitted.recommend([0], exclude=[7]), "exclude"),
        (lambda: fitted.recommend_batch(sp.csr_matrix((2, 4)), 3), "histories"),
        (lambda: fitted.recommend_batch(np.zeros((2, 5)), 3), "histories"),
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as e:
            call()
        assert e.value.field == field, (field, e.value)


def test_fit_leaves_the_callers_matrix_alone():
    X = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 3, 0]]))
    data = X.data.copy()
    LatentFactors(factors=2, iterations=2).fit(X)
    np.testing.assert_array_equal(X.data, data)
