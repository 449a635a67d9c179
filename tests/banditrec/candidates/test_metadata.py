"""Cold-start metadata neighbours: hashed TF-IDF against a dense reference built here from
hashlib, brute-force cosine top-N, ranking properties, errors, and the simulator's catalog."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import banditrec.candidates.metadata as metadata
from banditrec.candidates.metadata import MetadataIndex, hash_tokens, tokenize
from banditrec.errors import ValidationError
from tests.helpers import ROOT_DIR

REPO = ROOT_DIR
WORDS = ["acme", "bolt", "widget", "gizmo", "spanner", "drill", "lamp", "shade", "cable", "plug"]


def blake(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def random_catalog(rng: np.random.Generator, n: int, *, numeric: bool = True):
    titles = [" ".join(rng.choice(WORDS, size=rng.integers(0, 5))) + f" m{rng.integers(1, 4)}" for _ in range(n)]
    fields = {"brand": rng.integers(0, 4, size=n), "type": np.array([f"t{k}" for k in rng.integers(0, 5, size=n)])}
    num = np.c_[rng.lognormal(3.0, 1.0, size=n), rng.normal(0.0, 1.0, size=n)] if numeric else None
    return titles, fields, num


def reference_vectors(titles, fields, num, n_features, weights, numeric_weight, alternate_sign=True):
    """The module docstring's formulas, dense and one token at a time."""
    n = len(titles)
    X = np.zeros((n, n_features))
    for i in range(n):
        tokens = re.findall(r"[^\W_]+", titles[i].lower())
        tokens += [f"{name}={vals[i]}" for name, vals in fields.items()]
        for t in set(tokens):
            if "=" in t:
                w = weights.get(t.split("=")[0], 1.0)
            else:
                w = weights.get("title_digits", 0.25) if re.search(r"\d", t) else weights.get("title", 1.0)
            h = blake(t)
            sign = -1.0 if (alternate_sign and h >> 63) else 1.0
            X[i, h % n_features] += sign * w * (1 + math.log(tokens.count(t)))
    df = (X != 0).sum(axis=0)
    X *= np.log((1 + n) / (1 + df)) + 1
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    T = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
    if num is None:
        return T
    a = num.copy()
    for k in range(num.shape[1]):
        if (num[:, k] > 0).all():
            a[:, k] = np.log(num[:, k])
        else:
            a[:, k] = num[:, k]
    z = (a - a.mean(axis=0)) / a.std(axis=0)
    V = np.hstack([T, numeric_weight * z / math.sqrt(num.shape[1])])
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def brute_force_check(idx: MetadataIndex, ids, scores, queries, N, among=None, tol=1e-10):
    """ids/scores must be a top-N of the dense cosines among items sharing a text column."""
    used = np.unique(idx.vectors.indices)  # dense over the columns some item uses
    V = idx.vectors[:, used].toarray()
    text = used < idx.n_features
    C = V @ V.T
    shares = np.abs(V[:, text] @ V[:, text].T) > 1e-12
    allowed = np.ones(len(V), dtype=bool) if among is None else among
    for row, i in enumerate(queries):
        cand = np.flatnonzero(shares[i] & allowed & (C[i] > 0))
        cand = cand[cand != i]
        got = ids[row][ids[row] >= 0]
        k = len(got)
        assert k == min(N, len(cand))
        assert (ids[row][k:] == -1).all() and (scores[row][k:] == 0).all()
        assert set(got) <= set(cand.tolist())
        np.testing.assert_allclose(scores[row][:k], C[i, got], atol=tol)
        assert (np.diff(scores[row][:k]) <= tol).all()
        near = np.diff(scores[row][:k]) == 0  # ties by lower index
        assert (np.diff(got)[near] > 0).all()
        if k:
            rest = np.setdiff1d(cand, got)
            assert (C[i, rest] <= scores[row][k - 1] + tol).all()


# --------------------------------------------------------------------------- hashing


def test_hash_matches_independent_blake2b_values():
    # hard-coded: blake2b(token, digest_size=8) as a little-endian unsigned 64-bit integer
    expected = {"brand=17": 5835095136991951269, "kaloru": 10607585939894459782, "type=42": 3328000251689161138}
    for token, h in expected.items():
        assert blake(token) == h
    cols, signs = hash_tokens(list(expected), 2**18)
    assert cols.tolist() == [244133, 155014, 250290]
    assert signs.tolist() == [1.0, -1.0, 1.0]  # bit 63 set for "kaloru" only
    cols, signs = hash_tokens(list(expected), 1000, alternate_sign=False)
    assert cols.tolist() == [h % 1000 for h in expected.values()] and (signs == 1).all()


def test_vectors_are_the_same_in_another_process_with_another_hash_seed():
    titles = ["Acme Bolt m12", "Lamp-Shade café", "drill"]
    fields = {"brand": [3, 3, 7], "type": ["x", "y", "x"]}
    code = (
        "import json, sys; from banditrec.candidates.metadata import MetadataIndex; "
        "a = json.loads(sys.argv[1]); V = MetadataIndex().fit(a['titles'], a['fields']).vectors.tocoo(); "
        "print(json.dumps([V.row.tolist(), V.col.tolist(), V.data.tolist()]))"
    )
    arg = json.dumps({"titles": titles, "fields": fields})
    out = subprocess.run(
        [sys.executable, "-c", code, arg],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    row, col, data = json.loads(out)
    V = MetadataIndex().fit(titles, fields).vectors.tocoo()
    assert sorted(zip(row, col, data)) == sorted(zip(V.row.tolist(), V.col.tolist(), V.data.tolist()))


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
    assert tokenize("Café-Crème 500ml_x  A/B") == ["café", "crème", "500ml", "x", "a", "b"]


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("alternate_sign", [True, False])
def test_vectors_equal_the_dense_reference(alternate_sign):
    rng = np.random.default_rng(3)
    titles, fields, num = random_catalog(rng, 40)
    titles[5] = "bolt bolt bolt lamp"  # sublinear tf
    titles[6] = ""  # no title words, still has fields
    weights = {"title": 1.5, "title_digits": 0.1, "brand": 0.5, "type": 2.0}
    F = 64  # small, so that collisions (and signed cancellations) happen
    idx = MetadataIndex(n_features=F, field_weights=weights, numeric_weight=0.4, alternate_sign=alternate_sign).fit(
        titles, fields, num
    )
    assert idx.vectors.shape == (40, F + 2) and sp.isspmatrix_csr(idx.vectors)
    np.testing.assert_allclose(
        idx.vectors.toarray(), reference_vectors(titles, fields, num, F, weights, 0.4, alternate_sign), atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(idx.vectors.multiply(idx.vectors).sum(axis=1)).ravel(), 1.0)


def test_item_without_any_metadata_has_a_zero_row_and_no_neighbours():
    idx = MetadataIndex().fit(["bolt", "", "bolt m1"], {"brand": np.array(["a", "", "a"], dtype=object)})
    assert idx.vectors[1].nnz == 0
    ids, scores = idx.similar_items(1, N=2)
    assert ids.tolist() == [[-1, -1]] and scores.tolist() == [[0.0, 0.0]]
    assert idx.similar_items(0, N=1)[0].tolist() == [[2]]


# --------------------------------------------------------------------------- neighbours


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 30),
    N=st.integers(1, 8),
    numeric=st.booleans(),
    masked=st.booleans(),
)
def test_neighbours_are_the_brute_force_top_n(seed, n, N, numeric, masked):
    rng = np.random.default_rng(seed)
    titles, fields, num = random_catalog(rng, n, numeric=numeric)
    idx = MetadataIndex(numeric_weight=0.5).fit(titles, fields, num)
    among = rng.random(n) < 0.5 if masked else None
    q = np.arange(n)
    ids, scores = idx.similar_items(q, N, among=among)
    assert ids.shape == scores.shape == (n, N)
    brute_force_check(idx, ids, scores, q, N, among)
    if masked:
        assert np.isin(ids[ids >= 0], np.flatnonzero(among)).all()


def test_chunked_products_and_blocked_thresholds_agree_with_one_chunk(monkeypatch):
    rng = np.random.default_rng(8)
    titles, fields, num = random_catalog(rng, 300)
    idx = MetadataIndex().fit(titles, fields, num)
    ids1, scores1 = idx.similar_items(np.arange(300), 7)
    monkeypatch.setattr(metadata, "_CHUNK_ENTRIES", 500)  # many chunks, many partition blocks
    ids2, scores2 = idx.similar_items(np.arange(300), 7)
    assert (ids1 == ids2).all()
    np.testing.assert_allclose(scores1, scores2, atol=1e-12)
    brute_force_check(idx, ids2, scores2, np.arange(300), 7)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(30, 160),
    N=st.integers(1, 12),
    numeric=st.booleans(),
    leaf=st.integers(1, 9),
    block=st.integers(1, 40),
    masked=st.booleans(),
)
def test_grouped_bounded_scoring_equals_the_sparse_product_and_brute_force(seed, n, N, numeric, leaf, block, masked):
    """With every column heavy, queries go through the groups of shared heavy columns, the
    leaves' bounds and the two scoring rounds; they must find exactly what the sparse product
    finds (same ids; scores up to summation order), which is the brute-force top-N."""
    rng = np.random.default_rng(seed)
    titles, fields, num = random_catalog(rng, n, numeric=numeric)
    idx = MetadataIndex(numeric_weight=0.5, n_neighbors=N).fit(titles, fields, num)
    among = rng.random(n) < 0.6 if masked else None
    q = np.arange(n)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metadata, "heavy_threshold", lambda allowed: 10**9)  # the sparse product alone
        ids0, scores0 = idx.similar_items(q, N, among=among)
        mp.setattr(metadata, "heavy_threshold", lambda allowed: 0)  # every column is heavy
        mp.setattr(metadata, "_SMALL_GROUP", 0)
        mp.setattr(metadata, "_LEAF", leaf)
        mp.setattr(metadata, "_QUERY_BLOCK", block)
        table = idx.neighbour_table(among=among)
    ids1 = np.full((n, N), -1)
    scores1 = np.zeros((n, N))
    for i in range(n):
        row = table[i]
        top = np.lexsort((row.indices, -row.data))[:N]
        ids1[i, : len(top)], scores1[i, : len(top)] = row.indices[top], row.data[top]
    assert (ids1 == ids0).all() or _same_up_to_near_ties(ids0, scores0, ids1, scores1)
    np.testing.assert_allclose(scores1, scores0, atol=1e-11)
    brute_force_check(idx, ids1, scores1, q, N, among)


def _same_up_to_near_ties(ids0, scores0, ids1, scores1, tol=1e-11):
    """Lists that differ only where two scores are within ``tol`` (summation order)."""
    for a, sa, b, sb in zip(ids0, scores0, ids1, scores1):
        if (a == b).all():
            continue
        np.testing.assert_allclose(sa, sb, atol=tol)
        for x, y, s in zip(a, b, sa):
            if x != y and not (np.abs(sa - s) <= tol).sum() > 1:
                return False
    return True


def test_row_kth_equals_sorting_each_row():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, size=50)
    v = rng.random(counts.sum())
    kth = metadata._row_kth(v, counts, 5, budget=60)
    rows = np.split(v, np.cumsum(counts)[:-1])
    for k, row in zip(kth, rows):
        assert k == (np.sort(row)[::-1][4] if len(row) > 5 else -np.inf)


def test_shared_type_and_brand_outrank_shared_category():
    titles = [
        "acme drill hammer pro m100",  # the query
        "zenit saw blade kit m200",  # same category only
        "acme drill hammer pro m300",  # same type and brand
        "other lamp shade set m400",
        "bright lamp bulb set m500",
        "other cable plug set m600",
    ]
    fields = {"brand": [1, 2, 1, 3, 4, 3], "category": [10, 10, 10, 20, 20, 30], "type": [5, 6, 5, 7, 8, 9]}
    ids, scores = MetadataIndex().fit(titles, fields).similar_items([0], N=5)
    assert ids[0].tolist() == [2, 1, -1, -1, -1]
    assert scores[0, 0] > 2 * scores[0, 1] > 0


def test_among_restricts_to_the_mask():
    titles = ["bolt nut", "bolt nut", "bolt nut", "bolt washer", "nut"]
    idx = MetadataIndex().fit(titles)
    warm = np.array([False, False, True, True, True])
    ids, _ = idx.similar_items([0, 1], N=4, among=warm)
    assert set(ids[ids >= 0].tolist()) <= {2, 3, 4}
    # item 1 is as close as item 2 but not allowed; "nut" alone (cosine 1/sqrt 2 with equal idfs)
    # beats "bolt washer", whose rare word weighs more
    assert ids[0].tolist() == [2, 4, 3, -1]
    assert idx.similar_items([0], N=4, among=np.zeros(5, dtype=bool))[0].tolist() == [[-1] * 4]


def test_numeric_weight_moves_neighbours_towards_similar_prices():
    titles = ["acme drill", "acme drill", "acme drill", "lamp"]
    price = np.array([[100.0], [900.0], [110.0], [100.0]])
    without = MetadataIndex(numeric_weight=0.0).fit(titles, numeric=price)
    ids, scores = without.similar_items([0], N=3)
    assert ids[0].tolist() == [1, 2, -1] and scores[0, 0] == pytest.approx(scores[0, 1])  # tie: lower index
    ids, scores = MetadataIndex(numeric_weight=0.3).fit(titles, numeric=price).similar_items([0], N=3)
    assert ids[0].tolist() == [2, 1, -1]  # the item at 110 now beats the one at 900
    assert scores[0, 0] > scores[0, 1]
    # item 3 has the query's exact price but shares no token: price alone never makes a neighbour
    assert 3 not in ids[0]


def test_ties_go_to_the_lower_index_and_the_item_itself_is_excluded():
    idx = MetadataIndex().fit(["bolt"] * 6)
    ids, scores = idx.similar_items([3, 0], N=5)
    assert ids.tolist() == [[0, 1, 2, 4, 5], [1, 2, 3, 4, 5]]
    np.testing.assert_allclose(scores, 1.0)


def test_padding_when_fewer_neighbours_exist():
    idx = MetadataIndex().fit(["bolt", "bolt", "lamp", "bolt"])
    ids, scores = idx.similar_items(0, N=4)
    assert ids.shape == (1, 4)  # a scalar is a batch of one, 2-D like a 1-D batch
    assert ids.tolist() == [[1, 3, -1, -1]] and scores[0, 2:].tolist() == [0.0, 0.0]
    assert idx.similar_items(np.array([], dtype=np.int64), N=3)[0].shape == (0, 3)


def test_neighbour_table_holds_the_top_n_rows():
    rng = np.random.default_rng(5)
    titles, fields, num = random_catalog(rng, 50)
    idx = MetadataIndex(n_neighbors=4).fit(titles, fields, num)
    T = idx.neighbour_table()
    assert T.shape == (50, 50) and sp.isspmatrix_csr(T)
    ids, scores = idx.similar_items(np.arange(50), 4)
    for i in range(50):
        ok = ids[i] >= 0
        row = T[i].toarray().ravel()
        np.testing.assert_allclose(row[ids[i][ok]], scores[i][ok])
        assert T[i].nnz == ok.sum()
    part = idx.neighbour_table(rows=[3, 7])
    assert set(np.flatnonzero(np.diff(part.indptr))) <= {3, 7}
    np.testing.assert_allclose(part[3].toarray(), T[3].toarray())


# --------------------------------------------------------------------------- the simulator's catalog


def test_new_items_get_neighbours_of_their_own_product_type():
    from simulator import Environment, SimConfig

    cat = Environment(SimConfig(n_items=2000, n_types=40), seed=0).catalog
    fields = {"brand": cat.brand, "category": cat.category, "type": cat.product_type}
    idx = MetadataIndex().fit(cat.title, fields, np.c_[cat.price])
    new = cat.launch_day == 0
    assert 50 < new.sum() < 200
    q = np.flatnonzero(new)
    ids, scores = idx.similar_items(q, N=10, among=~new)
    assert (ids >= 0).all() and not new[ids].any()
    same = cat.product_type[ids] == cat.product_type[q][:, None]
    assert same.mean() >= 0.9, same.mean()
    # titles alone (no fields, no price) still find the type: its two words are in every title
    ids, _ = MetadataIndex().fit(cat.title).similar_items(q, N=10, among=~new)
    assert (cat.product_type[ids] == cat.product_type[q][:, None]).mean() >= 0.9


# --------------------------------------------------------------------------- errors


def error(fn, *args, **kwargs) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kwargs)
    return info.value


def test_bad_inputs_name_the_field_and_the_value():
    idx = MetadataIndex()
    e = error(idx.fit, ["a", "b"], {"brand": [1, 2, 3]})
    assert e.field == "fields.brand" and "got 2 and 3" in e.message
    e = error(idx.fit, ["a", "b"], None, np.ones((3, 1)))
    assert e.field == "numeric" and "got 2 and 3" in e.message
    e = error(idx.fit, ["a", "b"], None, np.array([[1.0], [np.nan]]))
    assert e.field == "numeric" and "nan at index (1, 0)" in e.message
    e = error(idx.fit, ["a", "b"], {"weight": [0.5, 1.5]})
    assert e.field == "fields.weight" and "float64" in e.message and "0.5" in e.message
    e = error(idx.fit, ["a", "b"], {"brand": np.array([1, 2.5], dtype=object)})
    assert e.field == "fields.brand" and "float 2.5 at index 1" in e.message
    e = error(idx.fit, ["a", 7])
    assert e.field == "titles" and "int 7 at index 1" in e.message
    e = error(idx.fit, ["a"], {"title": ["x"]})
    assert e.field == "fields" and "reserved" in e.message
    e = error(MetadataIndex(field_weights={"colour": 2.0}).fit, ["a"], {"brand": [1]})
    assert e.field == "field_weights" and "'colour'" in e.message
    e = error(MetadataIndex(log_numeric=[True]).fit, ["a", "b"], None, np.array([[1.0], [-2.0]]))
    assert e.field == "numeric" and "-2.0 at row 1" in e.message

    for kwargs, field in [
        ({"n_features": 0}, "n_features"),
        ({"numeric_weight": -1.0}, "numeric_weight"),
        ({"numeric_weight": float("inf")}, "numeric_weight"),
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"field_weights": {"brand": "high"}}, "field_weights"),
    ]:
        assert error(MetadataIndex, **kwargs).field == field

    assert error(MetadataIndex().similar_items, [0], 3).field == "model"
    idx = MetadataIndex().fit(["a", "b", "a"])
    e = error(idx.similar_items, [0], 0)
    assert e.field == "N" and "got 0" in e.message
    e = error(idx.similar_items, [0, 3], 2)
    assert e.field == "item_ids" and "found 3 at row 1" in e.message
    e = error(idx.similar_items, [0], 2, among=np.array([1, 0, 1]))
    assert e.field == "among" and "int64" in e.message
    e = error(idx.similar_items, [0], 2, among=np.ones(4, dtype=bool))
    assert e.field == "among" and "got 4" in e.message
    assert error(idx.neighbour_table, rows=[5]).field == "rows"
