"""Item-item CF: sparse cosine against a dense reference; candidate lists."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import ItemItemCF
from banditrec.errors import ValidationError
from tests.reference import reference_cf_candidates


@pytest.fixture
def interactions():
    rng = np.random.default_rng(11)
    dense = (rng.random((300, 40)) < 0.1) * rng.integers(1, 4, size=(300, 40))
    dense[:, 39] = 0  # an item nobody touched
    return sp.csr_matrix(dense.astype(float)), dense.astype(float)


def dense_cosine(dense):
    norms = np.linalg.norm(dense, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = dense.T @ dense / np.outer(norms, norms)
    S = np.nan_to_num(S)
    np.fill_diagonal(S, 0)
    return S


def test_neighbours_equal_dense_cosine_top_n(interactions):
    X, dense = interactions
    cf = ItemItemCF(n_neighbors=7).fit(X)
    S = dense_cosine(dense)
    ids, scores = cf.similar_items(np.arange(40), N=7)
    for i in range(40):
        expected = np.sort(S[i])[::-1][:7]
        np.testing.assert_allclose(scores[i], expected, atol=1e-12)
        valid = ids[i] >= 0
        np.testing.assert_allclose(S[i, ids[i][valid]], scores[i][valid], atol=1e-12)
    assert (ids[39] == -1).all() and (scores[39] == 0).all()
    assert (cf.similarity.getnnz(axis=1) <= 7).all()


def test_candidates_score_by_summed_similarity_and_exclude_history(interactions):
    X, dense = interactions
    cf = ItemItemCF(n_neighbors=40).fit(X)
    S = dense_cosine(dense)
    history = np.array([0, 5, 9])
    ids, scores, source = cf.candidates(history, N=10, exclude=[3])
    expected = S[history].sum(axis=0)
    expected[[0, 5, 9, 3]] = -1
    top = np.argsort(-expected, kind="stable")[:10]
    np.testing.assert_allclose(scores, expected[top], atol=1e-12)
    assert not set(ids) & {0, 5, 9, 3}
    assert (source == "cf").all()


def test_unknown_user_gets_popular_items(interactions):
    X, dense = interactions
    cf = ItemItemCF().fit(X)
    ids, scores, source = cf.candidates([], N=5)
    np.testing.assert_array_equal(ids, np.argsort(-dense.sum(axis=0), kind="stable")[:5])
    assert (source == "popular").all() and (scores == 0).all()


def test_short_cf_list_is_filled_with_popular_items():
    X = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=float))
    cf = ItemItemCF().fit(X)
    ids, scores, source = cf.candidates([0], N=4)
    assert ids[0] == 1 and source[0] == "cf"
    assert list(source[1:]) == ["popular"] * 3
    assert len(set(ids)) == 4 and 0 not in ids


def test_errors_name_the_problem(interactions):
    X, _ = interactions
    with pytest.raises(ValidationError, match="not fitted"):
        ItemItemCF().similar_items([0])
    with pytest.raises(ValidationError, match="n_neighbors must be a positive integer"):
        ItemItemCF(0)
    with pytest.raises(ValidationError, match="scipy.sparse"):
        ItemItemCF().fit(np.ones((3, 3)))
    cf = ItemItemCF().fit(X)
    with pytest.raises(ValidationError, match=r"item id 40 is outside \[0, 40\)"):
        cf.similar_items([40])
    with pytest.raises(ValidationError, match="only 37 items are eligible"):
        cf.candidates([0, 1, 2], N=38)


def test_candidates_batch_equals_one_user_at_a_time():
    """The batch path (one sparse product per chunk) gives each row what candidates() gives
    that row's items: same scores, the same CF items in the same order, the same popular fill in
    order. Exact on purpose: both paths add the same similarity rows in the same (history)
    order in scipy's sparse loops, so a tie is a tie in both, and both break it by lower index."""
    gen = np.random.default_rng(4)
    X = sp.random(300, 120, density=0.04, random_state=5, format="csr")
    X.data[:] = gen.integers(1, 4, size=X.nnz)
    cf = ItemItemCF(n_neighbors=10).fit(X)
    rows = [np.unique(gen.integers(0, 120, size=k)) for k in gen.integers(0, 6, size=40)]
    rows[3] = np.empty(0, dtype=np.int64)  # a user with no history gets the popular items
    H = sp.csr_matrix(
        (np.ones(sum(map(len, rows))), (np.repeat(np.arange(40), list(map(len, rows))), np.concatenate(rows))),
        shape=(40, 120),
    )
    exclude = np.array([0, 7, 33])
    ids, scores, from_cf = cf.candidates_batch(H, 25, exclude=exclude, chunk=7)
    for r, hist in enumerate(rows):
        want_ids, want_scores, source = cf.candidates(hist, 25, exclude=exclude)
        np.testing.assert_allclose(scores[r], want_scores)
        np.testing.assert_array_equal(from_cf[r], source == "cf")
        np.testing.assert_array_equal(ids[r][from_cf[r]], want_ids[source == "cf"])  # ties by lower index in both
        np.testing.assert_array_equal(ids[r][~from_cf[r]], want_ids[source != "cf"])
    assert not from_cf[3].any() and from_cf.any()
    with pytest.raises(ValidationError, match="columns"):
        cf.candidates_batch(H[:, :100], 5)
    with pytest.raises(ValidationError, match="only 117 items are eligible"):
        cf.candidates_batch(H[3:4], 118, exclude=exclude)


def _dense_reference(X: np.ndarray, weighting: str, K1=1.2, B=0.75) -> np.ndarray:
    """Item-item similarity written out with dense numpy, one formula per weighting."""
    n_users, n_items = X.shape
    if weighting == "cosine":
        norms = np.sqrt((X**2).sum(axis=0))
        W = X / np.where(norms > 0, norms, 1.0)
    else:
        idf = np.log(n_items) - np.log1p((X > 0).sum(axis=1))
        if weighting == "tfidf":
            W = np.sqrt(X) * idf[:, None]
        else:
            length = X.sum(axis=0)
            norm = (1 - B) + B * length / length.mean()
            W = np.where(X > 0, X * (K1 + 1) / (K1 * norm[None, :] + X), 0.0) * idf[:, None]
    S = W.T @ W
    np.fill_diagonal(S, 0.0)
    return S


@pytest.mark.parametrize("weighting", ["cosine", "tfidf", "bm25"])
def test_weightings_equal_their_dense_formula_and_keep_the_top_n(weighting):
    gen = np.random.default_rng(7)
    X = (gen.random((80, 40)) < 0.15) * gen.integers(1, 5, size=(80, 40)).astype(float)
    S = _dense_reference(X, weighting)
    cf = ItemItemCF(n_neighbors=6, weighting=weighting).fit(sp.csr_matrix(X))
    got = cf.similarity.toarray()
    for i in range(40):
        kept = np.flatnonzero(got[i])
        np.testing.assert_allclose(got[i, kept], S[i, kept], rtol=1e-10)
        assert len(kept) == min(6, int((np.abs(S[i]) > 1e-12).sum()))
        # nothing left out beats anything kept
        if len(kept):
            assert np.delete(S[i], kept).max(initial=-np.inf) <= got[i, kept].min() + 1e-12


def test_incremental_update_equals_a_refit_on_the_stacked_decayed_rows():
    old = sp.random(200, 60, density=0.05, random_state=1, format="csr")
    new = sp.random(30, 60, density=0.05, random_state=2, format="csr")
    cf = ItemItemCF(n_neighbors=8, keep_gram=True).fit(old)
    touched = cf.update(new, decay=0.5)
    ref = ItemItemCF(n_neighbors=8).fit(sp.vstack([old * 0.5, new]).tocsr())
    np.testing.assert_allclose(cf.similarity.toarray(), ref.similarity.toarray(), atol=1e-12)
    np.testing.assert_allclose(cf.popularity, ref.popularity)
    assert 0 < len(touched) <= 60
    # an item no new row touches, nor co-occurs with a touched one, keeps its row untouched
    untouched = np.setdiff1d(np.arange(60), touched)
    assert len(untouched) == 0 or np.array_equal(
        cf.similarity[untouched].toarray(), ItemItemCF(8, keep_gram=True).fit(old).similarity[untouched].toarray()
    )
    with pytest.raises(ValidationError, match="keep_gram"):
        ItemItemCF(n_neighbors=8).fit(old).update(new)
    with pytest.raises(ValidationError, match="need weighting='cosine'"):
        ItemItemCF(weighting="bm25", keep_gram=True)
    with pytest.raises(ValidationError, match="weighting must be one of cosine, tfidf, bm25"):
        ItemItemCF(weighting="jaccard")


def _reference_top_n(S: np.ndarray, n: int) -> np.ndarray:
    """Dense top-n per row: nonzero entries by value descending, ties by lower column."""
    out = np.zeros_like(S)
    for i, row in enumerate(S):
        cols = np.flatnonzero(row)
        cols = cols[np.lexsort((cols, -row[cols]))][:n]
        out[i, cols] = row[cols]
    return out


def test_top_n_per_row_breaks_ties_by_lower_column_for_alike_and_skewed_row_lengths():
    """Both threshold paths: rows of alike lengths (one padded block) and very different
    lengths (blocks per power-of-two width), with many ties at the cut."""
    from banditrec.candidates.itemknn import _top_n_per_row

    gen = np.random.default_rng(3)
    alike = gen.integers(1, 4, size=(30, 50)).astype(float)  # values 1..3: ties everywhere
    skewed = alike * (gen.random((30, 50)) < np.linspace(0.02, 1.0, 30)[:, None])
    for dense in (alike, skewed):
        for n in (1, 4, 20):
            got = _top_n_per_row(sp.csr_matrix(dense), n)
            np.testing.assert_array_equal(got.toarray(), _reference_top_n(dense, n))
    row = np.zeros((1, 12))
    row[0, [9, 2, 7, 4]] = 0.5
    got = _top_n_per_row(sp.csr_matrix(row), 2)
    assert sorted(got.indices.tolist()) == [2, 4]


@settings(max_examples=60)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 45), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_top_n_columns_is_the_lexsort_of_score_then_column(m, k, n, levels, seed):
    """Against a full sort by (score descending, column ascending): the same columns in the
    same order, with few distinct score levels so that ties fall at the cut and inside it.
    np.argpartition would pass only where it happens to break ties that way, which depends on
    the CPU (numpy's SIMD sorts), so ties are what this checks."""
    from banditrec.candidates.itemknn import top_n_columns

    scores = np.random.default_rng(seed).integers(0, levels, size=(m, k)) / levels
    want = np.stack([np.lexsort((np.arange(k), -row))[:n] for row in scores])
    np.testing.assert_array_equal(top_n_columns(scores, n), want)


def test_candidates_rank_tied_scores_by_lower_index():
    """Items 5..9 all have score 1 (each is a neighbour of item 0 alone, with the same
    co-occurrence); asked for 3 candidates, a user who bought item 0 gets 5, 6, 7 in that order
    on every CPU, as the batch path gives them."""
    X = np.zeros((5, 10))
    X[:, 0] = 1
    X[:, 5:] = 1
    cf = ItemItemCF(n_neighbors=9).fit(sp.csr_matrix(X))
    ids, scores, source = cf.candidates([0], 3, exclude=[1, 2, 3, 4])
    assert ids.tolist() == [5, 6, 7] and (source == "cf").all()
    assert len(set(scores.tolist())) == 1  # a real tie, not a ranking
    batch, _, _ = cf.candidates_batch(sp.csr_matrix(np.eye(10)[[0]]), 3, exclude=[1, 2, 3, 4])
    assert batch[0].tolist() == [5, 6, 7]


@pytest.mark.parametrize("weighting", ["cosine", "tfidf", "bm25"])
def test_fit_in_chunks_on_threads_equals_one_chunk(weighting):
    """fit() cuts W^T W into chunks of item rows and runs them on threads; neither the chunk
    size nor the thread count changes the neighbours (nor the kept Gram matrix)."""
    gen = np.random.default_rng(9)
    light = sp.random(400, 90, density=0.05, random_state=3, format="csr")
    light.data[:] = gen.integers(1, 3, size=light.nnz)
    heavy = sp.csr_matrix((gen.random((5, 90)) < 0.6).astype(float))  # a few heavy users: long, alike rows
    X = sp.vstack([heavy, light], format="csr")
    keep = weighting == "cosine"
    one = ItemItemCF(n_neighbors=6, weighting=weighting, keep_gram=keep).fit(X, num_threads=1, chunk_products=10**12)
    many = ItemItemCF(n_neighbors=6, weighting=weighting, keep_gram=keep).fit(X, num_threads=2, chunk_products=50)
    np.testing.assert_array_equal(many.similarity.toarray(), one.similarity.toarray())
    # the dense reference sums in another order: equal to the last bits, ties broken alike
    np.testing.assert_allclose(
        many.similarity.toarray(), _reference_top_n(_dense_reference(X.toarray(), weighting), 6), rtol=1e-12
    )
    if keep:
        np.testing.assert_array_equal(many.gram.toarray(), X.toarray().T @ X.toarray())


def test_fit_leaves_out_the_diagonal_and_pairs_of_zero_similarity():
    """A user who touched all items but one has idf log 6 - log 6 = 0, so the pairs only that
    user links have similarity 0: no neighbours, though they co-occur."""
    X = np.zeros((4, 6))
    X[0, :5] = 1.0
    X[1, [0, 1]] = 1.0
    X[2, [2, 3, 5]] = 1.0
    S = _dense_reference(X, "tfidf")
    assert S[0, 4] == 0 and S[0, 1] > 0
    got = ItemItemCF(n_neighbors=3, weighting="tfidf").fit(sp.csr_matrix(X)).similarity
    np.testing.assert_allclose(got.toarray(), _reference_top_n(S, 3), rtol=1e-12)
    assert (got.diagonal() == 0).all() and (got.data > 0).all()
    assert got[0].indices.tolist() == [1] and got[4].nnz == 0


def _npz_round_trip(arrays: dict, meta: dict):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    return np.load(buf, allow_pickle=False), json.loads(json.dumps(meta))


def test_item_item_cf_round_trip_and_sparse_lists_equal_the_dense_reference():
    g = np.random.default_rng(2)
    X = sp.random(200, 60, density=0.05, random_state=3, format="csr")
    X.data[:] = g.integers(1, 4, X.nnz)
    cf = ItemItemCF(n_neighbors=8).fit(X)
    z, meta = _npz_round_trip(*cf.to_arrays())
    back = ItemItemCF.from_arrays(z, meta)
    for _ in range(40):
        hist = g.integers(0, 60, g.integers(0, 6))
        excl = g.integers(0, 60, g.integers(0, 4))
        N = int(g.integers(1, 30))
        ids, scores, source = back.candidates(hist, N, exclude=excl)
        want_ids, want_scores, n_cf = reference_cf_candidates(cf.similarity, cf.popularity, hist, N, excl)
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_array_equal(scores, want_scores)
        assert (source == "cf").sum() == n_cf
    dense = cf.similarity.toarray()
    ids, scores = back.similar_items(np.arange(60), 5)
    for i in range(60):
        order = np.lexsort((np.arange(60), -dense[i]))[:5]
        keep = dense[i, order] > 0
        assert ids[i][keep].tolist() == order[keep].tolist() and (ids[i][~keep] == -1).all()


def test_product_without_scipys_counting_pass_equals_scipys_product(monkeypatch):
    """itemknn._product calls scipy's numeric kernel sized by the multiply-adds: the same
    entries and values as ``A @ B``, and so does its fallback to the public product."""
    from banditrec.candidates import itemknn

    g = np.random.default_rng(4)
    W = sp.random(300, 80, density=0.08, random_state=5, format="csr")
    W.data[:] = g.integers(1, 4, W.nnz)
    A = W.T.tocsr()[g.permutation(80)[:30]]
    want = (A @ W).tocsr()
    got = itemknn._product(A, W)
    assert got.nnz == want.nnz
    np.testing.assert_array_equal(got.toarray(), want.toarray())
    monkeypatch.setattr(itemknn, "_csr_matmat", None)
    np.testing.assert_array_equal(itemknn._product(A, W).toarray(), want.toarray())
