"""Item-to-item collaborative filtering (Linden, Smith & York 2003) on scipy.sparse: cosine,
tf-idf or BM25 weighting, a top-N neighbour table computed in chunks, incremental refresh.

Details: docs/candidates.md, "Item-to-item CF (`candidates/itemknn.py`)".
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .arrays import from_meta, meta_int, put_csr, take, take_csr
from .keys import distinct, distinct_inverse

SOURCE_CF = "cf"
SOURCE_POPULAR = "popular"
WEIGHTINGS = ("cosine", "tfidf", "bm25")
FORMAT = "banditrec.ItemItemCF"


def _thresholds(indptr: np.ndarray, data: np.ndarray, n: int) -> np.ndarray:
    """The ``n``-th largest value of every CSR row, -inf for rows of at most ``n`` entries.

    Rows are copied into a ``(rows, width)`` block padded with -inf and partitioned along each
    row (introselect: linear time, nothing sorted). One block when the rows' lengths are alike
    (padding at most doubles the work; :func:`_neighbours` orders rows so that they are),
    otherwise one block per power-of-two width.
    """
    counts = np.diff(indptr)
    out = np.full(len(counts), -np.inf)
    long = np.flatnonzero(counts > n)
    if len(long) == 0:
        return out
    width = int(counts.max())
    if len(counts) * width <= 2 * int(indptr[-1] - indptr[0]):
        block = np.full((len(counts), width), -np.inf)
        block[np.arange(width) < counts[:, None]] = data[indptr[0] : indptr[-1]]
        block.partition(width - n, axis=1)
        out[long] = block[long, width - n]
        return out
    c = counts[long]
    widths = 1 << np.ceil(np.log2(c)).astype(np.int64)
    for w in np.unique(widths).tolist():
        sel = np.flatnonzero(widths == w)
        cs = c[sel]
        block = np.full((len(sel), w), -np.inf)
        local = np.arange(int(cs.sum())) - np.repeat(np.cumsum(cs) - cs, cs)  # place within its row
        block[np.repeat(np.arange(len(sel)), cs), local] = data[np.repeat(indptr[long[sel]], cs) + local]
        block.partition(w - n, axis=1)
        out[long[sel]] = block[:, w - n]
    return out


def _top_n_positions(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int) -> np.ndarray:
    """Positions (ascending) of the ``n`` largest entries of every CSR row, ties by lower column."""
    counts = np.diff(indptr)
    t = _thresholds(indptr, data, n)
    base = int(indptr[0])
    tr = np.repeat(t, counts)
    above = np.flatnonzero(data[base : indptr[-1]] > tr) + base
    eq = np.flatnonzero(data[base : indptr[-1]] == tr) + base
    if len(eq) == 0:
        return above
    # entries equal to their row's threshold fill the places left, lower columns first
    row_of = np.searchsorted(indptr, eq, side="right") - 1
    need = n - np.bincount(np.searchsorted(indptr, above, side="right") - 1, minlength=len(counts))
    eq = eq[np.lexsort((indices[eq], row_of))]
    row_of = np.sort(row_of)
    rank = np.arange(len(eq)) - np.searchsorted(row_of, row_of)  # place among its row's ties
    return np.sort(np.r_[above, eq[rank < need[row_of]]])


def top_n_columns(scores: np.ndarray, n: int) -> np.ndarray:
    """The columns of the ``n`` largest entries of each row of a dense ``scores`` (m, k), as an
    (m, min(n, k)) array ordered by score, ties by lower column.

    The same on every CPU: ``np.argpartition`` picks among tied entries, and orders what it
    picks, by an implementation- and CPU-dependent rule (numpy's SIMD sorts), so only the
    threshold value, which is unique, is taken from a partition.
    """
    scores = np.asarray(scores, dtype=float)
    m, k = scores.shape
    n = min(int(n), k)
    if n <= 0:
        return np.empty((m, 0), dtype=np.int64)
    if m == 1 and n < k:  # one row (a request's candidates): the same rule without 2-D passes
        row = scores[0]
        kth = np.partition(row, k - n)[k - n]
        cols: np.ndarray = np.flatnonzero(row >= kth)
        if len(cols) > n:  # ties at the n-th value: keep the lowest columns among them
            above: np.ndarray = np.flatnonzero(row > kth)
            cols = np.sort(np.concatenate((above, np.flatnonzero(row == kth)[: n - len(above)])))
        return cols[np.argsort(-row[cols], kind="stable")][None, :]
    if n < k:
        kth = -np.partition(-scores, n - 1, axis=1)[:, n - 1 : n]  # each row's n-th largest value
        above = scores > kth
        tied = scores == kth  # fill the places left with the lowest columns at that value
        keep = above | (tied & (np.cumsum(tied, axis=1) <= n - above.sum(axis=1, keepdims=True)))
        cols = np.nonzero(keep)[1].reshape(m, n)  # ascending within each row
    else:
        cols = np.broadcast_to(np.arange(k), (m, k))
    vals = np.take_along_axis(scores, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(-vals, axis=1, kind="stable"), axis=1)


def _top_n_per_row(S: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of every row of ``S`` (ties broken by lower column)."""
    S = S.tocsr()
    counts = np.diff(S.indptr)
    if counts.max(initial=0) <= n:
        return S
    keep = _top_n_positions(S.indptr, S.indices, S.data, n)
    kept = np.bincount(np.searchsorted(S.indptr, keep, side="right") - 1, minlength=S.shape[0])
    return sp.csr_matrix((S.data[keep], S.indices[keep], np.r_[0, np.cumsum(kept)]), shape=S.shape)


CHUNK_PRODUCTS = 1_000_000  # multiply-adds of W^T W per chunk of item rows in fit()


try:  # scipy's numeric sparse product kernel, called without its counting pass (see _product)
    from scipy.sparse._sparsetools import csr_matmat as _csr_matmat
except ImportError:  # pragma: no cover - a scipy that moved it: the public product
    _csr_matmat = None


def _product(A: sp.csr_matrix, B: sp.csr_matrix) -> sp.csr_matrix:
    """``A @ B`` of two csr matrices, float64.

    scipy's ``A @ B`` first runs a symbolic pass over both matrices only to count the result's
    nonzeros, then the numeric pass. The number of multiply-adds (one gather over ``A``'s
    entries) also bounds the nonzeros, so here the numeric kernel is called directly on arrays
    of that size: the same kernel, the same values in the same order, one pass fewer. The
    chunks of :func:`_neighbours` are cut by multiply-adds, so the arrays stay chunk-sized.
    """
    if _csr_matmat is None:
        return sp.csr_matrix(A @ B, dtype=np.float64)
    m, n = A.shape[0], B.shape[1]
    bound = int(min(np.diff(B.indptr)[A.indices].sum(dtype=np.int64), m * n))
    big = max(bound, A.nnz, B.nnz, n, m) > np.iinfo(np.int32).max
    idx = np.int64 if big else np.int32
    indptr = np.empty(m + 1, dtype=idx)
    indices = np.empty(bound, dtype=idx)
    data = np.empty(bound, dtype=np.float64)
    _csr_matmat(
        m,
        n,
        A.indptr.astype(idx, copy=False),
        A.indices.astype(idx, copy=False),
        A.data.astype(np.float64, copy=False),
        B.indptr.astype(idx, copy=False),
        B.indices.astype(idx, copy=False),
        B.data.astype(np.float64, copy=False),
        indptr,
        indices,
        data,
    )
    nnz = int(indptr[-1])
    return sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(m, n))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _neighbours(
    W: sp.csr_matrix,
    n: int,
    *,
    scale: np.ndarray | None = None,
    keep_gram: bool = False,
    threads: int = 1,
    chunk_products: int = CHUNK_PRODUCTS,
    allowed: np.ndarray | None = None,
    progress=None,
) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """The top-``n`` rows of ``S = W^T W`` (times ``diag(scale)`` on both sides when given),
    diagonal and zeros left out, only columns where ``allowed`` (default all); and ``W^T W``
    itself when ``keep_gram``. ``progress(done, total)`` is called after each chunk.

    ``S`` is never held whole. Item rows are taken in decreasing order of the multiply-adds
    their row of ``W^T W`` costs (so rows of a chunk have similar lengths and pad little in
    :func:`_thresholds`), in chunks of about ``chunk_products`` multiply-adds; each chunk is one
    sparse product cut at once to its top ``n`` per row, on ``threads`` threads (scipy's
    sparse product and numpy's partition release the GIL).
    """
    W = W.tocsr()
    n_users, n_items = W.shape
    Wt = W.T.tocsr()
    Wt.sort_indices()
    met = np.r_[0.0, np.cumsum(np.diff(W.indptr)[Wt.indices], dtype=np.float64)]
    products = met[Wt.indptr[1:]] - met[Wt.indptr[:-1]]  # multiply-adds of each item row
    order = np.argsort(-products, kind="stable")
    cum = np.cumsum(products[order])
    total = float(cum[-1]) if n_items else 0.0
    n_chunks = max(1, int(np.ceil(total / max(chunk_products, 1))))
    cuts = np.unique(np.r_[0, np.searchsorted(cum, total * np.arange(1, n_chunks) / n_chunks), n_items])
    Wo = Wt[order]

    def chunk(lo: int, hi: int):
        P = _product(Wo[lo:hi], W)
        counts = np.diff(P.indptr)
        items = order[lo:hi]
        if scale is None:
            data = P.data.copy() if keep_gram else P.data
        else:
            data = P.data * np.repeat(scale[items], counts) * scale[P.indices]
        if data.size and data.min() <= 0:
            data[data == 0] = -np.inf
        data[np.flatnonzero(P.indices == np.repeat(items.astype(P.indices.dtype), counts))] = -np.inf
        if allowed is not None:
            data[~allowed[P.indices]] = -np.inf
        keep = _top_n_positions(P.indptr, P.indices, data, n)
        keep = keep[data[keep] > -np.inf]  # the diagonal and zeros are no neighbours
        kept = np.bincount(np.searchsorted(P.indptr, keep, side="right") - 1, minlength=hi - lo)
        return kept, P.indices[keep], data[keep], (P if keep_gram else None)

    bounds = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
    parts = list(run_chunks(chunk, bounds, threads, progress))
    if not parts:
        empty = sp.csr_matrix((n_items, n_items))
        return empty, (empty.copy() if keep_gram else None)
    kept = np.concatenate([p[0] for p in parts])
    S = sp.csr_matrix(
        (np.concatenate([p[2] for p in parts]), np.concatenate([p[1] for p in parts]), np.r_[0, np.cumsum(kept)]),
        shape=(n_items, n_items),
    )
    back = np.empty_like(order)
    back[order] = np.arange(n_items)
    S = S[back]
    gram = sp.vstack([p[3] for p in parts], format="csr")[back] if keep_gram else None
    return S, gram


def run_chunks(fn, bounds: list, threads: int, progress=None):
    """``fn(lo, hi)`` for each ``(lo, hi)`` of ``bounds``, yielded in order; on ``threads``
    threads when there are several chunks, at most ``2 x threads`` chunks ahead of the
    consumer (so results not yet consumed stay few); ``progress(done, total)`` after each
    chunk (from the calling thread)."""
    total = len(bounds)
    if progress is not None:
        progress(0, total)
    if threads > 1 and total > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            ahead = 2 * threads
            futures: list[Future[Any] | None] = [pool.submit(fn, *b) for b in bounds[:ahead]]
            for i in range(total):
                future = futures[i]
                assert future is not None  # cleared only once its result is taken, just below
                result = future.result()
                futures[i] = None
                if i + ahead < total:
                    futures.append(pool.submit(fn, *bounds[i + ahead]))
                if progress is not None:
                    progress(i + 1, total)
                yield result
        return
    for i, b in enumerate(bounds):
        result = fn(*b)
        if progress is not None:
            progress(i + 1, total)
        yield result


def _cosine_from_gram(G: sp.csr_matrix, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """Cosine similarities from a Gram matrix (all rows, or only ``rows``), zero diagonal."""
    d = G.diagonal()
    inv = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
    sub = G if rows is None else G[rows]
    S = (sp.diags(inv if rows is None else inv[rows]) @ sub @ sp.diags(inv)).tocsr()
    r = np.arange(S.shape[0]) if rows is None else np.asarray(rows)
    S = S.tocoo()
    keep = S.col != r[S.row]
    return sp.csr_matrix((S.data[keep], (S.row[keep], S.col[keep])), shape=S.shape)


def rows_top_n(table: sp.csr_matrix, items: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's N best entries of ``table`` (ids, scores), ties by lower index, -1 / 0 padded."""
    ids = np.full((len(items), N), -1, dtype=np.int64)
    scores = np.zeros((len(items), N))
    for r, a in enumerate(items.tolist()):
        lo, hi = table.indptr[a], table.indptr[a + 1]
        cols, vals = table.indices[lo:hi], table.data[lo:hi]
        order = np.lexsort((cols, -vals))[:N]
        ids[r, : len(order)], scores[r, : len(order)] = cols[order], vals[order]
    return ids, scores


class ItemItemCF:
    """Item-item neighbours and per-user candidate lists.

    Parameters
    ----------
    n_neighbors : int
        Neighbours kept per item.
    weighting : "cosine", "tfidf" or "bm25" (docs/candidates.md, "Item-to-item CF")
    K1, B : BM25's saturation and length-normalisation parameters
    keep_gram : keep ``G = X^T X`` after fitting, for :meth:`update` (cosine only)
    """

    def __init__(
        self,
        n_neighbors: int = 50,
        *,
        weighting: str = "cosine",
        K1: float = 1.2,
        B: float = 0.75,
        keep_gram: bool = False,
    ):
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise ValidationError(f"n_neighbors must be a positive integer, got {n_neighbors!r}", "n_neighbors")
        if weighting not in WEIGHTINGS:
            raise ValidationError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}", "weighting")
        if not (np.isfinite(K1) and K1 > 0):
            raise ValidationError(f"K1 must be a positive number, got {K1!r}", "K1")
        if not (np.isfinite(B) and 0 <= B <= 1):
            raise ValidationError(f"B must be in [0, 1], got {B!r}", "B")
        if keep_gram and weighting != "cosine":
            raise ValidationError(
                "incremental updates (keep_gram) need weighting='cosine': tf-idf and BM25 "
                "weights depend on every user's whole row",
                "keep_gram",
            )
        self.n_neighbors = n_neighbors
        self.weighting = weighting
        self.K1, self.B = float(K1), float(B)
        self.keep_gram = keep_gram
        self.similarity: sp.csr_matrix | None = None
        self.popularity: np.ndarray | None = None
        self.gram: sp.csr_matrix | None = None
        self._pop_order: np.ndarray | None = None

    @staticmethod
    def _checked(user_items) -> sp.csr_matrix:
        if not sp.issparse(user_items):
            raise ValidationError("user_items must be a scipy.sparse matrix (n_users, n_items)", "user_items")
        X = sp.csr_matrix(user_items, dtype=np.float64)
        if X.nnz and not np.isfinite(X.data).all():
            raise ValidationError("user_items must hold finite weights", "user_items")
        if X.nnz and (X.data < 0).any():
            raise ValidationError("user_items must hold non-negative weights", "user_items")
        return X

    def weighted(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """The weighted (n_users, n_items) matrix whose column dot products are the similarities
        (cosine: columns scaled to unit norm)."""
        X = X.copy()
        X.sum_duplicates()
        X.eliminate_zeros()
        n_users, n_items = X.shape
        if self.weighting == "cosine":
            norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
            inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            return (X @ sp.diags(inv)).tocsr()
        per_user = np.diff(X.indptr)
        idf = np.log(max(n_items, 1)) - np.log1p(per_user)
        rows = np.repeat(np.arange(n_users), per_user)
        if self.weighting == "tfidf":
            X.data = np.sqrt(X.data) * idf[rows]
            return X
        length = np.asarray(X.sum(axis=0)).ravel()
        mean = length.mean() if length.size and length.mean() > 0 else 1.0
        norm = (1.0 - self.B) + self.B * length / mean
        X.data = X.data * (self.K1 + 1.0) / (self.K1 * norm[X.indices] + X.data) * idf[rows]
        return X

    def fit(
        self,
        user_items: sp.spmatrix,
        *,
        num_threads: int | None = None,
        chunk_products: int = CHUNK_PRODUCTS,
        allowed=None,
        progress=None,
    ) -> ItemItemCF:
        """Compute every item's ``n_neighbors`` nearest neighbours from ``user_items``.

        The similarity matrix is never held whole: item rows are taken in chunks of about
        ``chunk_products`` multiply-adds of ``W^T W`` (so the memory beyond the result is
        bounded by the chunk size, not by the number of co-occurring pairs), each chunk's
        similarities computed by one sparse product and cut to its top N at once. Chunks run on
        ``num_threads`` threads (default: the CPUs this process may use); scipy's sparse
        product and numpy's partition release the GIL, so they run in parallel. The result
        does not depend on the chunking nor on the thread count.

        ``allowed (n_items,)`` bool: items that may be a neighbour (default all; e.g. the
        items still sold); every item still gets neighbours. ``progress(done, total)`` is
        called after each chunk.
        """
        X = self._checked(user_items)
        threads = num_threads if num_threads is not None else _usable_cpus()
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (X.shape[1],):
                raise ValidationError(
                    f"allowed must be a bool mask of shape ({X.shape[1]},), got {allowed.shape}", "allowed"
                )
        kw = dict(threads=threads, chunk_products=chunk_products, allowed=allowed, progress=progress)
        if self.keep_gram:
            d = np.asarray(X.multiply(X).sum(axis=0)).ravel()  # the Gram matrix's diagonal
            inv = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
            self.similarity, self.gram = _neighbours(X, self.n_neighbors, scale=inv, keep_gram=True, **kw)
        else:
            self.similarity, _ = _neighbours(self.weighted(X), self.n_neighbors, **kw)
        self.popularity = np.asarray(X.sum(axis=0)).ravel()
        self._pop_order = None
        return self

    def update(self, new_user_items: sp.spmatrix, *, decay: float = 1.0) -> np.ndarray:
        """Add interaction rows and refresh exactly the neighbour rows that can change.

        Each row of ``new_user_items`` is a new basket of interactions (a new user, or a new
        session counted as its own row); the model then equals :meth:`fit` on the old rows
        (times ``decay``) stacked over the new ones. ``decay`` multiplies every earlier weight
        (recency: ``0.5 ** (elapsed / half_life)``), scaling ``G`` by ``decay**2``, which leaves
        old cosines unchanged. Returns the indices of the items whose neighbour rows were
        recomputed: those in a new row, and every item that co-occurs with one of them.

        It pays off when new events touch few, rarely co-occurring items. A batch that touches
        popular items reaches almost every row (the bench's ``candidates`` section times one),
        and the kept Gram matrix costs memory quadratic in co-occurrence; refit with
        :meth:`fit` then.
        """
        if self.gram is None:
            raise ValidationError("update() needs a model fitted with keep_gram=True", "model")
        if not (np.isfinite(decay) and 0 < decay <= 1):
            raise ValidationError(f"decay must be in (0, 1], got {decay!r}", "decay")
        D = self._checked(new_user_items)
        if D.shape[1] != self.gram.shape[0]:
            raise ValidationError(
                f"new_user_items must have {self.gram.shape[0]} columns, got {D.shape[1]}", "new_user_items"
            )
        dG = (D.T @ D).tocsr()
        self.gram = (self.gram * (decay * decay) + dG).tocsr()
        assert self.popularity is not None  # fitted with the Gram matrix
        self.popularity = self.popularity * decay + np.asarray(D.sum(axis=0)).ravel()
        touched = np.flatnonzero(np.diff(D.tocsc().indptr))
        if len(touched) == 0:
            return touched
        # S[a, b] changes when G[a, b] or the norm of a or b changes: rows of touched items and
        # of every item that co-occurs with one
        G = self.gram
        affected = np.unique(np.r_[touched, G[:, touched].tocoo().row])
        n = G.shape[0]
        fresh = sp.csr_matrix(_top_n_per_row(_cosine_from_gram(G, rows=affected), self.n_neighbors))
        keep = np.ones(n)
        keep[affected] = 0.0
        old = (sp.diags(keep) @ self.similarity).tocsr()  # unaffected rows as they were
        old.eliminate_zeros()
        fc = fresh.tocoo()
        placed = sp.csr_matrix((fc.data, (affected[fc.row], fc.col)), shape=(n, n))
        self.similarity = (old + placed).tocsr()  # disjoint rows: a sum places them, no Python loop
        self._pop_order = None
        return affected

    @property
    def n_items(self) -> int:
        self._check_fitted()
        assert self.similarity is not None
        return self.similarity.shape[0]

    @property
    def params(self) -> dict:
        return {
            "n_neighbors": self.n_neighbors,
            "weighting": self.weighting,
            "K1": self.K1,
            "B": self.B,
            "keep_gram": self.keep_gram,
        }

    def _check_fitted(self):
        if self.similarity is None:
            raise ValidationError("ItemItemCF is not fitted; call fit(user_items) first", "model")

    def similar_items(self, item_ids, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` neighbours of each item with a positive similarity: ``(ids (m, N), scores
        (m, N))``, ties by lower index, -1/0 padded."""
        self._check_fitted()
        items = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
        if ((items < 0) | (items >= self.n_items)).any():
            bad = items[(items < 0) | (items >= self.n_items)][0]
            raise ValidationError(f"item id {bad} is outside [0, {self.n_items})", "item_ids")
        ids, scores = rows_top_n(self.similarity, items, N)
        off = scores <= 0
        ids[off], scores[off] = -1, 0.0
        return ids, scores

    def _popular_order(self) -> np.ndarray:
        if self._pop_order is None:
            assert self.popularity is not None  # fitted (the callers check)
            self._pop_order = np.argsort(-self.popularity, kind="stable")
        return self._pop_order

    def _lists(
        self,
        rows: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
        m: int,
        N: int,
        exclude,
        first_row: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row r's list from the entries ``(rows, items, weights)`` of its history: ``(ids (m, N),
        scores (m, N), from_cf (m, N))``. Work grows with the histories' neighbour lists and N,
        never with the catalog. ``first_row``: the batch row of row 0, for messages."""
        n = self.n_items
        excl = distinct(np.asarray(exclude, dtype=np.int64).ravel()) if exclude is not None else np.empty(0, np.int64)
        if len(excl) and (excl.min() < 0 or excl.max() >= n):
            raise ValidationError(f"exclude holds item indices outside [0, {n})", "exclude")
        hist_key = distinct(rows * n + items)
        per_row = np.bincount(hist_key // n, minlength=m)
        n_banned = per_row + len(excl) - np.bincount(hist_key[np.isin(hist_key % n, excl)] // n, minlength=m)
        eligible = n - n_banned
        if (eligible < N).any():
            i = int(np.argmax(eligible < N))
            where = "" if first_row is None else f" for row {first_row + i}"
            raise ValidationError(
                f"asked for {N} candidates but only {eligible[i]} items are eligible{where}", "candidates"
            )
        S = self.similarity
        assert S is not None  # fitted: n_items checked it
        r, c, v = gather_rows(S.indptr, S.indices, S.data, rows, items, weights)
        key, inv = distinct_inverse(r * n + c)
        score = np.bincount(inv, weights=v, minlength=len(key)) if len(inv) else np.zeros(0)
        ok = (score > 0) & ~np.isin(key, hist_key) & ~np.isin(key % n, excl)
        key, score = key[ok], score[ok]
        kr, kc = key // n, key % n
        order = np.lexsort((kc, -score, kr))
        kr, kc, score = kr[order], kc[order], score[order]
        place = np.arange(len(kr)) - np.searchsorted(kr, kr)
        top = place < N
        ids = np.full((m, N), -1, dtype=np.int64)
        out = np.zeros((m, N))
        from_cf = np.zeros((m, N), dtype=bool)
        ids[kr[top], place[top]] = kc[top]
        out[kr[top], place[top]] = score[top]
        from_cf[kr[top], place[top]] = True
        need = N - from_cf.sum(axis=1)
        if need.any():  # the most popular items neither banned nor taken fill the rest
            taken = np.r_[hist_key, kr[top] * n + kc[top]]
            head = self._popular_order()[: min(n, N + int(n_banned.max()) + N)]
            fill_rows = np.flatnonzero(need)
            cand = fill_rows[:, None] * n + head[None, :]
            free = ~np.isin(cand, taken) & ~np.isin(head, excl)[None, :]
            rank = np.cumsum(free, axis=1)
            for i, row in enumerate(fill_rows.tolist()):
                fill = head[free[i] & (rank[i] <= need[row])]
                ids[row, N - need[row] :] = fill
        return ids, out, from_cf

    def candidates_batch(
        self, histories: sp.spmatrix, N: int, exclude=None, *, chunk: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for many users at once: ``(ids (m, N), scores (m, N), from_cf (m, N) bool)``.

        ``histories`` is an (m, n_items) sparse matrix whose row i holds user i's interaction
        weights (e.g. 1 per item in the session). Row i's result is what :meth:`candidates`
        returns for the items of row i (scored by the weighted sum of their similarity rows,
        so unit weights give the same ranking): CF items by score, ties by lower index, then the
        most popular remaining items. ``exclude``: item indices no user may get. ``chunk``
        users are scored at once (default 4096).
        """
        self._check_fitted()
        n = self.n_items
        H = sp.csr_matrix(histories, dtype=np.float64)
        if H.shape[1] != n:
            raise ValidationError(f"histories must have {n} columns (one per item), got {H.shape[1]}", "histories")
        m = H.shape[0]
        chunk = chunk or 4096
        parts = []
        for lo in range(0, m, chunk):
            h = H[lo : lo + chunk]
            rows = np.repeat(np.arange(h.shape[0]), np.diff(h.indptr))
            parts.append(self._lists(rows, h.indices.astype(np.int64), h.data, h.shape[0], N, exclude, first_row=lo))
        if not parts:
            return np.empty((0, N), np.int64), np.empty((0, N)), np.empty((0, N), bool)
        ids, scores, from_cf = (np.concatenate(p) for p in zip(*parts))
        return ids, scores, from_cf

    def candidates(self, history, N: int, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates for one user: ``(ids (N,), scores (N,), source (N,))``.

        ``history`` holds the catalog indices the user interacted with. Items are scored by
        summed similarity to the history (ties by lower index); items in ``exclude`` (and the
        history itself) are left out; if fewer than ``N`` items have a positive score, the most
        popular remaining items fill the list with source ``"popular"`` and score 0.
        """
        self._check_fitted()
        history = np.asarray(history, dtype=np.int64).ravel()
        if len(history) and (history.min() < 0 or history.max() >= self.n_items):
            raise ValidationError(f"history holds item indices outside [0, {self.n_items})", "history")
        ids, scores, from_cf = self._lists(
            np.zeros(len(history), dtype=np.int64), history, np.ones(len(history)), 1, N, exclude
        )
        source = np.where(from_cf[0], SOURCE_CF, SOURCE_POPULAR).astype(object)
        return ids[0], scores[0], source

    def candidates_for_session(self, history, session, N: int, exclude=None, segment: int | None = None):
        """The candidate source of :class:`banditrec.engine.Engine` (:class:`CandidateSource`):
        :meth:`candidates` seeded by the user's known purchases followed by the session's
        seeds (``session.seeds()``: each cart, purchased and viewed item repeated by its kind's
        weight). ``segment`` is accepted and ignored: item-to-item CF has no segments."""
        return self.candidates(np.concatenate([history, session.seeds()]), N, exclude=exclude)

    # ---- saving -----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` (see :mod:`banditrec.candidates.arrays`)."""
        self._check_fitted()
        out = {"popularity": self.popularity}
        put_csr(out, "similarity", self.similarity)
        if self.gram is not None:
            put_csr(out, "gram", self.gram)
        meta = {"format": FORMAT, "version": 1, "n_items": int(self.n_items), "params": self.params}
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta) -> ItemItemCF:
        cf, meta = from_meta(cls, meta, FORMAT)
        n = meta_int(meta, "n_items")
        cf.similarity = take_csr(arrays, "similarity", (n, n))
        cf.popularity = take(arrays, "popularity", "f", (n,))
        if cf.keep_gram:
            cf.gram = take_csr(arrays, "gram", (n, n))
        cf._pop_order = None
        return cf


class Entries(NamedTuple):
    """Sparse entries: entry i is ``(rows[i], cols[i], weights[i])``."""

    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray


def gather_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray, items: np.ndarray, weights: np.ndarray
) -> Entries:
    """The CSR rows ``items`` of a table, as entries ``(row, column, weight x value)``: entry i
    of the input contributes its table row, tagged ``rows[i]`` and scaled by ``weights[i]``,
    in input order."""
    starts = indptr[items]
    lens = indptr[items + 1] - starts
    total = int(lens.sum())
    pos = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return Entries(np.repeat(rows, lens), indices[pos].astype(np.int64), np.repeat(weights, lens) * data[pos])
