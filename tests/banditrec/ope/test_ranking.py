"""Ranking metrics: hand-worked examples (Personalize's own), a plain-loop oracle, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.ope.ranking import (
    PerUserRankingMetrics,
    RankingMetrics,
    coverage,
    ranking_metrics,
    ranking_metrics_per_user,
)


def as_csr(lists, n_items):
    rows = [u for u, items in enumerate(lists) for _ in items]
    cols = [i for items in lists for i in items]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(lists), n_items))


def reference(recommended, relevant_lists, k, n_items, item_value=None):
    """The definitions read literally, one user at a time, in plain Python.

    Returns (per-user dict keyed by row, coverage, n_excluded) or None when no user has a
    relevant item.
    """
    per, seen = {}, set()
    for u, row in enumerate(recommended):
        rel = set(int(i) for i in relevant_lists[u])
        if not rel:
            continue
        top = [int(i) for i in row[:k]]
        seen.update(i for i in top if i != -1)
        hits = [i != -1 and i in rel for i in top]
        precision = sum(hits) / k
        dcg = sum(1 / math.log(1 + pos) for pos, h in enumerate(hits, start=1) if h)
        idcg = sum(1 / math.log(1 + pos) for pos in range(1, min(len(rel), k) + 1))
        rr = 0.0
        for pos, h in enumerate(hits, start=1):
            if h:
                rr = 1 / pos
                break
        reward = None
        if item_value is not None:
            total = sum(item_value[i] for i in rel)
            earned = sum(item_value[i] for i, h in zip(top, hits) if h)
            reward = earned / total if total > 0 else None
        per[u] = dict(precision=precision, ndcg=dcg / idcg, mrr=rr, reward=reward)
    if not per:
        return None
    return per, len(seen) / n_items, len(recommended) - len(per)


@st.composite
def problems(draw):
    n_items = draw(st.integers(1, 12))
    n_users = draw(st.integers(1, 7))
    m = draw(st.integers(1, n_items + 2))
    k = draw(st.integers(1, m))
    rows = []
    for _ in range(n_users):
        length = draw(st.integers(0, min(m, n_items)))
        items = draw(st.permutations(range(n_items)))[:length]
        rows.append(list(items) + [-1] * (m - length))
    relevant = [sorted(draw(st.sets(st.integers(0, n_items - 1), max_size=n_items))) for _ in range(n_users)]
    value = draw(st.none() | st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.25, 7.0]), min_size=n_items, max_size=n_items))
    return np.array(rows, dtype=np.int64).reshape(n_users, m), relevant, k, n_items, value


# ~300 small cases, each compared to the loop to 1e-12
@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(problems(), st.booleans())
def test_vectorised_metrics_match_the_plain_loop(problem, sparse_input):
    rec, rel_lists, k, n_items, value = problem
    relevant = as_csr(rel_lists, n_items) if sparse_input else [np.array(r, dtype=int) for r in rel_lists]
    item_value = None if value is None else np.array(value)
    ref = reference(rec, rel_lists, k, n_items, item_value)
    reward_defined = ref is not None and value is not None and any(p["reward"] is not None for p in ref[0].values())
    if ref is None or (value is not None and not reward_defined):
        with pytest.raises(ValidationError):
            ranking_metrics(rec, relevant, k=k, n_items=n_items, item_value=item_value)
        return
    per_ref, cov_ref, n_excluded = ref
    got = ranking_metrics(rec, relevant, k=k, n_items=n_items, item_value=item_value)
    per = ranking_metrics_per_user(rec, relevant, k=k, n_items=n_items, item_value=item_value)

    assert per.users.tolist() == sorted(per_ref)
    for name in ("precision", "ndcg", "mrr"):
        expected = [per_ref[u][name] for u in per.users]
        np.testing.assert_allclose(getattr(per, name), expected, rtol=1e-12, atol=1e-15)
        assert getattr(got, name) == pytest.approx(sum(expected) / len(expected), rel=1e-12, abs=1e-15)
    assert got.coverage == pytest.approx(cov_ref, rel=1e-12)
    assert got.coverage == pytest.approx(coverage(rec[per.users], k=k, n_items=n_items), rel=1e-12)
    assert (got.k, got.n_users, got.n_excluded) == (k, len(per_ref), n_excluded)
    if value is None:
        assert got.average_reward is None and per.average_reward is None and got.n_reward_users is None
    else:
        rewards = [per_ref[u]["reward"] for u in per.users]
        np.testing.assert_array_equal(np.isnan(per.average_reward), [r is None for r in rewards])
        defined = [r for r in rewards if r is not None]
        np.testing.assert_allclose(per.average_reward[~np.isnan(per.average_reward)], defined, rtol=1e-12)
        assert got.average_reward == pytest.approx(sum(defined) / len(defined), rel=1e-12)
        assert got.n_reward_users == len(defined)
        assert 0.0 <= got.average_reward <= 1.0
    for name in ("precision", "ndcg", "mrr", "coverage"):
        assert 0.0 <= getattr(got, name) <= 1.0


# --- Personalize's own worked examples -------------------------------------------------------


def test_the_guide_example_hits_at_ranks_two_and_five():
    # Personalize guide, "Example": the 2nd and 5th recommendations match the testing data, K=5.
    #   reciprocal rank = 1/2 = 0.5
    #   NDCG@5 = (1/log 3 + 1/log 6) / (1/log 2 + 1/log 3) = (0.9102 + 0.5581) / (1.4427 + 0.9102)
    #          = 1.4683 / 2.3529 = 0.6241
    #   precision@5 = 2/5 = 0.4
    rec = np.array([[7, 1, 8, 9, 2]])
    got = ranking_metrics(rec, [np.array([1, 2])], k=5, n_items=10)
    assert got.mrr == 0.5
    assert got.ndcg == pytest.approx(0.6241, abs=5e-5)
    assert got.precision == pytest.approx(0.4)
    assert got.coverage == pytest.approx(5 / 10)


def test_the_guide_mrr_example_three_users_at_25():
    # Guide: user 1 clicks ranks 4 and 10 -> 1/4; user 2 ranks 2, 4, 12 -> 1/2; user 3 rank 6
    # -> 1/6; MRR = (1/4 + 1/2 + 1/6) / 3 = 0.3056
    rec = np.tile(np.arange(25), (3, 1))
    relevant = [np.array([3, 9]), np.array([1, 3, 11]), np.array([5])]
    got = ranking_metrics(rec, relevant, k=25, n_items=30)
    assert got.mrr == pytest.approx((1 / 4 + 1 / 2 + 1 / 6) / 3)
    assert round(got.mrr, 4) == 0.3056
    assert got.precision == pytest.approx((2 + 3 + 1) / 25 / 3)


def test_ndcg_ideal_counts_relevant_items_the_list_missed():
    # The choice the docstring states: IDCG ranks min(|R|, k) relevant items at the top.
    # One hit at rank 1, three held-out items, k = 3:
    #   DCG = 1/log2(2) = 1; IDCG = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093
    #   NDCG = 0.46928 (re-sorting only the hits would give 1.0)
    got = ranking_metrics(np.array([[0, 5, 6]]), [np.array([0, 1, 2])], k=3, n_items=7)
    assert got.ndcg == pytest.approx(1 / (1 + 1 / math.log2(3) + 0.5))
    assert got.ndcg == pytest.approx(0.46928, abs=1e-5)


def test_average_reward_hand_worked():
    # values: item 0 -> 10, 1 -> 0, 2 -> 5, 3 -> 1, 4 -> 4.  k = 2.
    # user 0: list [2, 0, 3], held out {0, 3}: top 2 holds item 0 (10) -> 10 / (10 + 1) = 10/11
    # user 1: list [4, 1, -1], held out {2}: no hit in top 2 -> 0 / 5 = 0
    # user 2: list [1, 3, 0], held out {1}: hit on item 1 worth 0, total 0 -> undefined, left out
    # average reward = (10/11 + 0) / 2 = 0.454545...
    rec = np.array([[2, 0, 3], [4, 1, -1], [1, 3, 0]])
    value = np.array([10.0, 0.0, 5.0, 1.0, 4.0])
    relevant = [np.array([0, 3]), np.array([2]), np.array([1])]
    got = ranking_metrics(rec, relevant, k=2, n_items=5, item_value=value)
    assert got.average_reward == pytest.approx((10 / 11 + 0) / 2)
    assert got.n_reward_users == 2 and got.n_users == 3
    per = ranking_metrics_per_user(rec, relevant, k=2, n_items=5, item_value=value)
    assert per.average_reward[0] == pytest.approx(10 / 11) and per.average_reward[1] == 0
    assert np.isnan(per.average_reward[2])
    # precision counts user 2's hit even though it earns nothing: (1 + 0 + 1) / 2 / 3
    assert got.precision == pytest.approx(1 / 3)
    # coverage: top-2 items {2, 0, 4, 1, 3} = the whole catalog of 5
    assert got.coverage == 1.0


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_ndcg_is_one_for_the_ideal_ranking(data):
    n_items = data.draw(st.integers(2, 15))
    k = data.draw(st.integers(1, n_items))
    order = data.draw(st.permutations(range(n_items)))
    n_rel = data.draw(st.integers(1, n_items))
    relevant = np.array(order[:n_rel])
    rec = np.array([order])  # relevant items first (any order among them), then the rest
    got = ranking_metrics(rec, [relevant], k=k, n_items=n_items)
    assert got.ndcg == pytest.approx(1.0, rel=1e-12)
    assert got.mrr == 1.0
    assert got.precision == pytest.approx(min(n_rel, k) / k)
    # and moving a relevant item below a non-relevant one inside the top k lowers it
    if n_rel < k:
        worse = rec.copy()
        worse[0, [n_rel - 1, n_rel]] = worse[0, [n_rel, n_rel - 1]]
        assert ranking_metrics(worse, [relevant], k=k, n_items=n_items).ndcg < 1.0


# --- users, padding and inputs ------------------------------------------------------------------


def test_users_without_relevant_items_are_left_out_of_every_mean_and_of_coverage():
    rec = np.array([[0, 1], [2, 3], [4, 5]])
    relevant = [np.array([0]), np.array([], dtype=int), np.array([5])]
    got = ranking_metrics(rec, relevant, k=2, n_items=6)
    # users 0 and 2: precision (1/2 + 1/2)/2, mrr (1 + 1/2)/2; coverage {0, 1, 4, 5} / 6
    assert (got.n_users, got.n_excluded) == (2, 1)
    assert got.precision == pytest.approx(0.5)
    assert got.mrr == pytest.approx(0.75)
    assert got.coverage == pytest.approx(4 / 6)
    per = ranking_metrics_per_user(rec, relevant, k=2, n_items=6)
    assert per.users.tolist() == [0, 2]
    assert per.summary(got.coverage) == got


def test_no_user_with_a_relevant_item_is_an_error():
    with pytest.raises(ValidationError, match="no relevant item for any of the 2 users"):
        ranking_metrics(np.array([[0], [1]]), sp.csr_matrix((2, 3)), k=1, n_items=3)


def test_k_beyond_a_short_list_counts_padding_as_misses():
    # the list has two items padded to k = 4; precision divides by k, not by 2:
    # hits at ranks 1 and 2 of {0, 1} -> precision 2/4; NDCG = 1 (both relevant items on top)
    rec = np.array([[0, 1, -1, -1]])
    got = ranking_metrics(rec, [np.array([1, 0])], k=4, n_items=5)
    assert got.precision == 0.5 and got.ndcg == pytest.approx(1.0) and got.mrr == 1.0
    assert got.coverage == pytest.approx(2 / 5)
    # an all-padding list is allowed and scores 0
    got = ranking_metrics(np.array([[-1, -1]]), [np.array([3])], k=2, n_items=5)
    assert (got.precision, got.ndcg, got.mrr, got.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_columns_beyond_k_are_ignored():
    rec = np.array([[4, 0, 1]])
    got = ranking_metrics(rec, [np.array([0, 1])], k=1, n_items=5)
    assert (got.precision, got.mrr, got.ndcg, got.coverage) == (0.0, 0.0, 0.0, 0.2)


def test_sparse_explicit_zeros_are_not_relevant_and_inputs_are_not_mutated():
    rel = sp.csr_matrix((np.array([0.0, 3.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    assert rel.nnz == 2  # item 0 is an explicit zero
    rec = np.array([[0, 1]])
    rec_before, data_before = rec.copy(), rel.data.copy()
    got = ranking_metrics(rec, rel, k=2, n_items=3)
    assert got.mrr == 0.5 and got.precision == 0.5
    np.testing.assert_array_equal(rec, rec_before)
    np.testing.assert_array_equal(rel.data, data_before)
    assert rel.nnz == 2
    # other sparse formats are accepted; repeated items in a list count once
    assert ranking_metrics(rec, rel.tocoo(), k=2, n_items=3) == got
    assert ranking_metrics(rec, [np.array([1, 1, 1])], k=2, n_items=3) == got


def test_result_is_frozen_and_as_dict_round_trips():
    got = ranking_metrics(np.array([[0, 1]]), [np.array([1])], k=2, n_items=2, item_value=[1.0, 2.0])
    assert isinstance(got, RankingMetrics)
    with pytest.raises(AttributeError):
        got.precision = 1.0
    d = got.as_dict()
    assert d == {
        "precision": 0.5,
        "ndcg": pytest.approx(1 / math.log2(3)),
        "mrr": 0.5,
        "coverage": 1.0,
        "average_reward": 1.0,
        "k": 2,
        "n_users": 1,
        "n_excluded": 0,
        "n_reward_users": 1,
    }
    assert RankingMetrics(**d) == got
    per = ranking_metrics_per_user(np.array([[0, 1]]), [np.array([1])], k=2, n_items=2)
    assert isinstance(per, PerUserRankingMetrics) and per.average_reward is None


def test_per_user_terms_average_to_the_metrics_and_resample_by_fancy_indexing(rng):
    # 2,000 users, 50 items, lists of 10, scipy's random CSR (~10% density, some users empty)
    n_users, n_items, k = 2000, 50, 5
    rec = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :10]
    rel = sp.random(n_users, n_items, density=0.02, format="csr", random_state=np.random.default_rng(1))
    value = rng.gamma(2.0, 10.0, size=n_items)
    point = ranking_metrics(rec, rel, k=k, n_items=n_items, item_value=value)
    per = ranking_metrics_per_user(rec, rel, k=k, n_items=n_items, item_value=value)
    empty = np.diff(rel.indptr) == 0
    assert point.n_excluded == empty.sum() > 0 and per.users.tolist() == np.flatnonzero(~empty).tolist()
    assert per.summary(coverage(rec[per.users], k=k, n_items=n_items)) == point
    # a one-shot bootstrap: (B, n) indices into the per-user arrays, one mean per resample
    idx = rng.integers(0, len(per.users), size=(100, len(per.users)))
    boot = per.ndcg[idx].mean(axis=1)
    assert boot.shape == (100,) and boot.min() < point.ndcg < boot.max()
    assert np.isfinite(np.nanmean(per.average_reward[idx], axis=1)).all()


# --- invalid inputs ---------------------------------------------------------------------------

REC = np.array([[0, 1, 2], [3, 4, -1]])
REL = [np.array([0]), np.array([4])]


@pytest.mark.parametrize(
    "k, message",
    [
        (0, "k must be >= 1, got 0"),
        (-2, "k must be >= 1, got -2"),
        (2.0, "k must be an integer, got float 2.0"),
        (True, "k must be an integer, got bool True"),
        (4, r"k must be <= the number of columns of recommended \(3\), got 4"),
    ],
)
def test_invalid_k(k, message):
    with pytest.raises(ValidationError, match=message) as err:
        ranking_metrics(REC, REL, k=k, n_items=5)
    assert err.value.field == "k"


def test_duplicate_item_in_a_row_is_refused_naming_row_item_and_columns():
    rec = np.array([[0, 1, 2], [3, 4, 3]])
    with pytest.raises(ValidationError, match=r"row 1 lists item 3 more than once \(columns 0, 2\)") as err:
        ranking_metrics(rec, REL, k=2, n_items=5)
    assert err.value.field == "recommended"


def test_item_after_padding_is_refused():
    rec = np.array([[0, -1, 2], [3, 4, -1]])
    with pytest.raises(ValidationError, match=r"row 0 has item 2 at column 2 after padding \(-1\) at column 1"):
        ranking_metrics(rec, REL, k=2, n_items=5)


@pytest.mark.parametrize(
    "rec, message",
    [
        (np.array([[0, 1, 5], [3, 4, -1]]), r"in \[0, 5\) or -1 for padding, found 5 at row 0, column 2"),
        (np.array([[0, 1, 2], [-3, 4, -1]]), "found -3 at row 1, column 0"),
        (np.array([[0.0, 1.0, 2.0], [3.0, 4.0, -1.0]]), "integer item indices, got dtype float64"),
        (np.array([0, 1, 2]), r"2-dimensional \(n_users, n_recommended\), got shape \(3,\)"),
    ],
)
def test_bad_recommended(rec, message):
    with pytest.raises(ValidationError, match=message) as err:
        ranking_metrics(rec, REL, k=1, n_items=5)
    assert err.value.field == "recommended"


@pytest.mark.parametrize(
    "relevant, message",
    [
        ([np.array([0])], "same number of users, got 2 and 1"),
        (sp.csr_matrix((3, 5)), r"shape \(n_users, n_items\) = \(2, 5\) .* got \(3, 5\)"),
        (sp.csr_matrix((2, 4)), r"= \(2, 5\) .* got \(2, 4\)"),
        ([np.array([0]), np.array([5])], r"relevant items must be in \[0, 5\), found 5 for user 1"),
        ([np.array([0.0]), np.array([4])], "relevant\\[0\\] must hold integer item indices"),
        (np.zeros((2, 5)), "scipy.sparse matrix .* got ndarray"),
        (sp.csr_matrix(np.array([[np.nan, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]])), "relevant must be finite"),
    ],
)
def test_bad_relevant(relevant, message):
    with pytest.raises(ValidationError, match=message):
        ranking_metrics(REC, relevant, k=1, n_items=5)


@pytest.mark.parametrize(
    "value, message",
    [
        ([1.0, 2.0], r"one entry per item \(5\), got 2"),
        ([1.0, -0.5, 0, 0, 0], "item_value must be >= 0, found -0.5 at index 1"),
        ([1.0, np.nan, 0, 0, 0], "item_value must be finite, found nan at index 1"),
        ([0.0, 0, 0, 9.0, 0], "item_value is 0 for every held-out item"),
    ],
)
def test_bad_item_value(value, message):
    with pytest.raises(ValidationError, match=message) as err:
        ranking_metrics(REC, REL, k=1, n_items=5, item_value=value)
    assert err.value.field == "item_value"


def test_bad_n_items():
    with pytest.raises(ValidationError, match="n_items must be >= 1, got 0"):
        ranking_metrics(REC, REL, k=1, n_items=0)
    with pytest.raises(ValidationError, match="found 4 at row 1, column 1"):
        coverage(REC, k=2, n_items=4)
