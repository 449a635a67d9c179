"""Item-to-item collaborative filtering (Linden, Smith & York 2003) on scipy.sparse.

Orientation is fixed: ``user_items`` is a ``csr_matrix`` of shape (n_users, n_items), one row per
user, one column per catalog item, holding interaction weights (e.g. purchase counts).

Similarity is cosine between item columns, ``S = D^-1/2 (X^T X) D^-1/2`` with ``D`` the
squared column norms and a zero diagonal; only each item's ``n_neighbors`` most similar
items are kept (the precomputed neighbour table Amazon's method relies on).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError

SOURCE_CF = "cf"
SOURCE_POPULAR = "popular"


def _top_n_per_row(S: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of every row of ``S`` (ties broken by lower column)."""
    S = S.tocsr()
    counts = np.diff(S.indptr)
    if counts.max(initial=0) <= n:
        return S
    rows = np.repeat(np.arange(S.shape[0]), counts)
    # sort entries by (row, -value, column); then keep the first n of each row
    order = np.lexsort((S.indices, -S.data, rows))
    rank = np.arange(len(order)) - np.repeat(S.indptr[:-1], counts)
    keep = order[rank < n]
    keep.sort()
    out = sp.csr_matrix((S.data[keep], S.indices[keep], np.r_[0, np.cumsum(np.minimum(counts, n))]), shape=S.shape)
    return out


class ItemItemCF:
    """Cosine item-item neighbours and per-user candidate lists.

    Parameters
    ----------
    n_neighbors : int
        Neighbours kept per item.
    """

    def __init__(self, n_neighbors: int = 50):
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise ValidationError(f"n_neighbors must be a positive integer, got {n_neighbors!r}", "n_neighbors")
        self.n_neighbors = n_neighbors
        self.similarity: sp.csr_matrix | None = None
        self.popularity: np.ndarray | None = None

    def fit(self, user_items: sp.spmatrix) -> "ItemItemCF":
        if not sp.issparse(user_items):
            raise ValidationError("user_items must be a scipy.sparse matrix (n_users, n_items)", "user_items")
        X = sp.csr_matrix(user_items, dtype=np.float64)
        if X.nnz and (X.data < 0).any():
            raise ValidationError("user_items must hold non-negative weights", "user_items")
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        Xn = X @ sp.diags(inv)
        S = (Xn.T @ Xn).tocsr()
        S.setdiag(0.0)
        S.eliminate_zeros()
        self.similarity = _top_n_per_row(S, self.n_neighbors)
        self.popularity = np.asarray(X.sum(axis=0)).ravel()
        return self

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return self.similarity.shape[0]

    def _check_fitted(self):
        if self.similarity is None:
            raise ValidationError("ItemItemCF is not fitted; call fit(user_items) first", "model")

    def similar_items(self, item_ids, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` neighbours of each item: ``(ids (m, N), scores (m, N))``, -1/0 padded."""
        self._check_fitted()
        items = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
        if ((items < 0) | (items >= self.n_items)).any():
            bad = items[(items < 0) | (items >= self.n_items)][0]
            raise ValidationError(f"item id {bad} is outside [0, {self.n_items})", "item_ids")
        rows = self.similarity[items].toarray()
        ids = np.argsort(-rows, axis=1, kind="stable")[:, :N]
        scores = np.take_along_axis(rows, ids, axis=1)
        ids = np.where(scores > 0, ids, -1)
        return ids, scores

    def candidates_batch(self, histories: sp.spmatrix, N: int, exclude=None, *, chunk: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for many users at once: ``(ids (m, N), scores (m, N), from_cf (m, N) bool)``.

        ``histories`` is an (m, n_items) sparse matrix whose row i holds user i's interaction
        weights (e.g. 1 per item in the session). Row i's result is what :meth:`candidates`
        returns for the items of row i (scored by the weighted sum of their similarity rows,
        so unit weights give the same ranking): CF items by score, ties by lower index, then the
        most popular remaining items. ``exclude``: item indices no user may get. One sparse
        product per chunk of users instead of one sparse slice per user.
        """
        self._check_fitted()
        n = self.n_items
        H = sp.csr_matrix(histories, dtype=np.float64)
        if H.shape[1] != n:
            raise ValidationError(f"histories must have {n} columns (one per item), got {H.shape[1]}", "histories")
        banned_all = np.zeros(n, dtype=bool)
        if exclude is not None:
            banned_all[np.asarray(exclude, dtype=np.int64)] = True
        m = H.shape[0]
        chunk = chunk or max(1, 16_000_000 // max(n, 1))  # a dense (chunk, n) block of about 128 MB
        ids = np.empty((m, N), dtype=np.int64)
        scores = np.zeros((m, N))
        from_cf = np.zeros((m, N), dtype=bool)
        pop_order = np.argsort(-np.where(banned_all, -np.inf, self.popularity), kind="stable")
        for lo in range(0, m, chunk):
            hi = min(lo + chunk, m)
            h = H[lo:hi]
            S = (h @ self.similarity).toarray()  # (rows, n)
            banned = np.broadcast_to(banned_all, S.shape).copy()
            rows = np.repeat(np.arange(hi - lo), np.diff(h.indptr))
            banned[rows, h.indices] = True
            eligible = n - banned.sum(axis=1)
            if (eligible < N).any():
                i = int(np.argmax(eligible < N))
                raise ValidationError(
                    f"asked for {N} candidates but only {eligible[i]} items are eligible for row {lo + i}", "candidates")
            S[banned] = 0.0
            # CF part: top N by (score desc, index asc) among positive scores
            top = np.argsort(-S, axis=1, kind="stable")[:, :N]
            top_s = np.take_along_axis(S, top, axis=1)
            is_cf = top_s > 0
            # popular fill: the most popular items neither banned nor already taken
            taken = banned
            taken[np.repeat(np.arange(hi - lo), N)[is_cf.ravel()], top[is_cf]] = True
            # only the first (N + most banned in a row) popular items can be needed
            head = pop_order[:min(n, 2 * N + int(banned.sum(axis=1).max()))]
            free = ~taken[:, head]
            rank = np.cumsum(free, axis=1)
            need = N - is_cf.sum(axis=1)
            for r in range(hi - lo):  # O(rows) gathers of precomputed positions; no per-item work
                fill = head[free[r] & (rank[r] <= need[r])]
                k = N - need[r]
                ids[lo + r, :k] = top[r, :k]
                ids[lo + r, k:] = fill
                scores[lo + r, :k] = top_s[r, :k]
                from_cf[lo + r, :k] = True
        return ids, scores, from_cf

    def candidates(self, history, N: int, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for one user: ``(ids (N,), scores (N,), source (N,))``.

        ``history`` holds the catalog indices the user interacted with. Items are scored by
        summed similarity to the history; items in ``exclude`` (and the history itself) are
        left out; if fewer than ``N`` items have a positive score, the most popular remaining
        items fill the list with source ``"popular"`` and score 0.
        """
        self._check_fitted()
        n_items = self.n_items
        history = np.asarray(history, dtype=np.int64).ravel()
        banned = np.zeros(n_items, dtype=bool)
        banned[history] = True
        if exclude is not None:
            banned[np.asarray(exclude, dtype=np.int64)] = True
        if N > n_items - banned.sum():
            raise ValidationError(
                f"asked for {N} candidates but only {n_items - banned.sum()} items are eligible", "candidates"
            )
        if len(history):
            scores = np.asarray(self.similarity[history].sum(axis=0)).ravel()
        else:
            scores = np.zeros(n_items)
        scores[banned] = 0.0
        n_cf = min(N, int((scores > 0).sum()))
        cf = np.argpartition(-scores, n_cf - 1)[:n_cf] if n_cf else np.empty(0, dtype=np.int64)
        cf = cf[np.argsort(-scores[cf], kind="stable")]
        taken = banned.copy()
        taken[cf] = True
        pop = np.where(taken, -np.inf, self.popularity)
        fill = np.argsort(-pop, kind="stable")[: N - n_cf]
        ids = np.r_[cf, fill].astype(np.int64)
        out_scores = np.r_[scores[cf], np.zeros(len(fill))]
        source = np.array([SOURCE_CF] * n_cf + [SOURCE_POPULAR] * len(fill), dtype=object)
        return ids, out_scores, source
