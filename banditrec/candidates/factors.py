"""Latent factors for implicit feedback (ALS, BPR) fitted by ``implicit``, with a fold-in for
any user from the items they touched, "because you liked" candidates and policy features.

Details: docs/factors.md.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .arrays import from_meta, meta_int, take
from .itemknn import top_n_columns

FORMAT = "banditrec.LatentFactors"
MODELS = ("als", "bpr")
DEFAULTS = {
    "als": {"regularization": 0.05, "iterations": 15, "learning_rate": 0.0},
    "bpr": {"regularization": 0.01, "iterations": 100, "learning_rate": 0.05},
}
CHUNK_ENTRIES = 1 << 22  # floats of per-entry outer products (ALS) or of scores held at once


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}", name)
    return int(value)


def _number(value, name: str, *, positive: bool) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (positive and value == 0):
        want = "a positive" if positive else "a non-negative"
        raise ValidationError(f"{name} must be {want} finite number, got {value!r}", name)
    return float(value)


def _checked_weights(M, name: str) -> sp.csr_matrix:
    if not sp.issparse(M):
        raise ValidationError(f"{name} must be a scipy.sparse matrix, got {type(M).__name__}", name)
    X = sp.csr_matrix(M, dtype=np.float64, copy=True)
    if X.nnz and not np.isfinite(X.data).all():
        i = int(np.argmax(~np.isfinite(X.data)))
        raise ValidationError(f"{name} must hold finite weights, found {X.data[i]}", name)
    if X.nnz and (X.data < 0).any():
        raise ValidationError(f"{name} must hold non-negative weights, found {X.data.min()}", name)
    X.sum_duplicates()
    X.eliminate_zeros()
    return X


class LatentFactors:
    """Dot-product matrix factorisation of a (n_users, n_items) implicit-feedback matrix.

    Parameters
    ----------
    model : "als" or "bpr"
        ALS: weighted least squares on confidences ``c = alpha * w`` (Hu, Koren & Volinsky
        2008), implicit's conjugate-gradient solver. BPR: pairwise ranking by SGD (Rendle et al.
        2009); implicit adds an item bias as the last factor column (the user's is 1).
    factors : int
        Latent dimensions (BPR's factor matrices have one more column, the bias).
    regularization, iterations : L2 penalty and passes (defaults per model: ``DEFAULTS``).
    alpha : ALS confidence scale.
    learning_rate : BPR step size.
    random_state : int or None
        Seed of the initial factors (and of BPR's sampling); None: fresh entropy.
    num_threads : int
        Threads of ALS's solves (each user's and item's solve is independent, so the result
        does not depend on it). BPR always runs on one thread: implicit's multi-threaded BPR
        is Hogwild, whose result depends on the thread schedule.
    """

    def __init__(
        self,
        model: str = "als",
        factors: int = 32,
        *,
        regularization: float | None = None,
        iterations: int | None = None,
        alpha: float = 1.0,
        learning_rate: float | None = None,
        random_state: int | None = 0,
        num_threads: int = 1,
    ):
        if model not in MODELS:
            raise ValidationError(f"model must be one of {', '.join(MODELS)}; got {model!r}", "model")
        d = DEFAULTS[model]
        self.model = model
        self.factors = _positive_int(factors, "factors")
        reg = d["regularization"] if regularization is None else regularization
        self.regularization = _number(reg, "regularization", positive=False)
        self.iterations = _positive_int(d["iterations"] if iterations is None else iterations, "iterations")
        self.alpha = _number(alpha, "alpha", positive=True)
        lr = d["learning_rate"] if learning_rate is None else learning_rate
        self.learning_rate = _number(lr, "learning_rate", positive=model == "bpr")
        if random_state is not None and (
            isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0
        ):
            raise ValidationError(
                f"random_state must be a non-negative integer or None, got {random_state!r}", "random_state"
            )
        self.random_state = None if random_state is None else int(random_state)
        self.num_threads = _positive_int(num_threads, "num_threads")
        self.item_factors: np.ndarray | None = None
        self.user_factors: np.ndarray | None = None
        self.active: np.ndarray | None = None
        self.item_rms = self.user_rms = self.fold_scale = 1.0
        self._yty: np.ndarray | None = None
        self._base: np.ndarray | None = None  # Y^T Y + lambda I (ALS)
        self._mean_item: np.ndarray | None = None
        self._y = np.empty((0, 0))
        self._inactive = np.empty(0, bool)

    @property
    def params(self) -> dict:
        return {
            "model": self.model,
            "factors": self.factors,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, user_items: sp.spmatrix, *, active=None) -> LatentFactors:
        """Factorise ``user_items`` (n_users, n_items), non-negative interaction weights (BPR
        reads only which entries are non-zero). ``active (n_items,)`` bool: the items that
        may be recommended (default all); inactive items are still learned from."""
        import threadpoolctl
        from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]
        from implicit.cpu.bpr import BayesianPersonalizedRanking  # type: ignore[import-untyped]

        X = _checked_weights(user_items, "user_items")
        n_users, n_items = X.shape
        if n_users == 0 or n_items == 0 or X.nnz == 0:
            raise ValidationError(f"user_items has no interactions (shape {X.shape})", "user_items")
        self.active = self._checked_active(active, n_items)
        with threadpoolctl.threadpool_limits(1, "blas"):  # implicit's solvers thread themselves
            if self.model == "als":
                m = AlternatingLeastSquares(
                    factors=self.factors,
                    regularization=self.regularization,
                    alpha=self.alpha,
                    iterations=self.iterations,
                    num_threads=self.num_threads,
                    random_state=self.random_state,
                )
            else:
                m = BayesianPersonalizedRanking(
                    factors=self.factors,
                    learning_rate=self.learning_rate,
                    regularization=self.regularization,
                    iterations=self.iterations,
                    num_threads=1,
                    random_state=self.random_state,
                )
            m.fit(X.astype(np.float32), show_progress=False)
        self.item_factors = np.ascontiguousarray(m.item_factors, dtype=np.float32)
        self.user_factors = np.ascontiguousarray(m.user_factors, dtype=np.float32)
        self._prepare()
        if self.model == "bpr":
            self.fold_scale = self._fitted_fold_scale(X)
        seen = np.diff(X.indptr) > 0
        self.item_rms = _rms(self.item_factors)
        self.user_rms = _rms(self.user_factors[seen])
        return self

    def _checked_active(self, active, n_items: int) -> np.ndarray:
        if active is None:
            return np.ones(n_items, dtype=bool)
        a = np.asarray(active)
        if a.dtype != bool or a.shape != (n_items,):
            raise ValidationError(
                f"active must be a bool mask of shape ({n_items},), got dtype {a.dtype} and shape {a.shape}", "active"
            )
        return a.copy()

    def _prepare(self) -> None:
        """Caches derived from the item factors: float64 ``Y``, ``Y^T Y`` (ALS), the mean item
        (BPR) and the inactive mask (what every request reads)."""
        Y = self._y = self.item_factors.astype(np.float64)  # type: ignore[union-attr]
        self._inactive = ~self.active  # type: ignore[operator]
        self._yty = Y.T @ Y if self.model == "als" else None
        self._base = self._yty + self.regularization * np.eye(Y.shape[1]) if self._yty is not None else None
        self._mean_item = Y[:, :-1].mean(axis=0) if self.model == "bpr" else None

    def _fitted_fold_scale(self, X: sp.csr_matrix) -> float:
        """BPR: the step ``s`` for which the training users' fold-in directions best match (least
        squares) their learned factors."""
        D = self._bpr_directions(X)
        U = self.user_factors[:, :-1].astype(np.float64)  # type: ignore[index]
        den = float(np.einsum("ij,ij->", D, D))
        return float(np.einsum("ij,ij->", D, U)) / den if den > 0 else 1.0

    # ---- fold-in ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.item_factors is None:
            raise ValidationError("LatentFactors is not fitted; call fit(user_items) first", "model")

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return self.item_factors.shape[0]  # type: ignore[union-attr]

    @property
    def dim(self) -> int:
        """Columns of the factor matrices (``factors``, plus BPR's bias column)."""
        self._check_fitted()
        return self.item_factors.shape[1]  # type: ignore[union-attr]

    def _history(self, items, weights) -> sp.csr_matrix:
        """One user's items (and weights, default 1) as a (1, n_items) row; duplicates add."""
        n = self.n_items
        try:
            ids = np.asarray(items, dtype=np.int64).ravel()
        except (TypeError, ValueError):
            raise ValidationError("items must be item indices (integers)", "items") from None
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValidationError(f"items must be in [0, {n}), found {bad}", "items")
        if weights is None:
            w = np.ones(len(ids))
        else:
            w = np.asarray(weights, dtype=np.float64).ravel()
            if w.shape != ids.shape:
                raise ValidationError(f"weights must have one entry per item ({len(ids)}), got {len(w)}", "weights")
        if len(w) and not (np.isfinite(w).all() and w.min() >= 0):
            bad = w[~np.isfinite(w) | (w < 0)][0]
            raise ValidationError(f"weights must be finite and non-negative, found {bad}", "weights")
        seen, at = np.unique(ids, return_inverse=True)
        summed = np.bincount(at, weights=w, minlength=len(seen))  # repeats add
        keep = summed != 0
        seen, summed = seen[keep], summed[keep]
        return sp.csr_matrix((summed, seen, np.array([0, len(seen)])), shape=(1, n))

    def _bpr_directions(self, H: sp.csr_matrix) -> np.ndarray:
        """Each row's weighted mean item factor minus the mean item (no bias column): the
        direction of the BPR log-likelihood's gradient at ``u = 0`` against uniform negatives."""
        Y = self._y[:, :-1]
        tot = np.asarray(H.sum(axis=1)).ravel()
        D = np.asarray(H @ Y)
        has = tot > 0
        D[has] = D[has] / tot[has, None] - self._mean_item
        return D

    def user_vectors(self, histories: sp.spmatrix) -> np.ndarray:
        """Fold-in of many users: row r of ``histories`` (m, n_items) holds user r's interaction
        weights; returns (m, dim) float64. See :meth:`user_vector`."""
        self._check_fitted()
        H = _checked_weights(histories, "histories")
        n = self.n_items
        if H.shape[1] != n:
            raise ValidationError(f"histories must have {n} columns (one per item), got {H.shape[1]}", "histories")
        if self.model == "bpr":
            out = np.empty((H.shape[0], self.dim))
            out[:, :-1] = self.fold_scale * self._bpr_directions(H)
            out[:, -1] = 1.0
            return out
        return self._als_fold_in(H)

    def _als_fold_in(self, H: sp.csr_matrix) -> np.ndarray:
        Y = self._y
        k = Y.shape[1]
        m = H.shape[0]
        assert self._yty is not None  # set with the item factors (_prepare)
        base = self._base
        assert base is not None  # set with the item factors (_prepare)
        out = np.zeros((m, k))
        if m == 1:  # one request: the same solve with plain matrix products
            Yi, c = Y[H.indices], self.alpha * H.data
            out[0] = np.linalg.solve(base + (Yi.T * (c - 1.0)) @ Yi, Yi.T @ c)
            return out
        lens = np.diff(H.indptr)
        per = max(1, CHUNK_ENTRIES // (k * k))  # entries whose outer products are held at once
        lo = 0
        while lo < m:
            hi = int(np.searchsorted(H.indptr, H.indptr[lo] + per, side="right")) - 1
            hi = min(m, max(hi, lo + 1))
            a, b = H.indptr[lo], H.indptr[hi]
            c = self.alpha * H.data[a:b]
            Yi = Y[H.indices[a:b]]
            rows = np.repeat(np.arange(hi - lo), lens[lo:hi])
            A = np.broadcast_to(base, (hi - lo, k, k)).copy()
            np.add.at(A, rows, (c - 1.0)[:, None, None] * Yi[:, :, None] * Yi[:, None, :])
            rhs = np.zeros((hi - lo, k))
            np.add.at(rhs, rows, c[:, None] * Yi)
            out[lo:hi] = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
            lo = hi
        return out

    def user_vector(self, items, weights=None) -> np.ndarray:
        """The factor vector (dim,) of a user who interacted with ``items`` (history and session,
        with ``weights``, default 1; repeats add), whether or not the user was in the fit.

        ALS: the exact least-squares solve of an ALS user step with the item factors fixed
        (implicit's ``recalculate_user``), ``u = (Y^T Y + Y_I^T (C_I - I) Y_I + lambda I)^-1
        Y_I^T C_I 1`` with ``C_I = alpha diag(w_I)``. BPR: ``s (mean_w(Y_I) - mean(Y))`` with
        bias slot 1, the gradient direction of the BPR log-likelihood at ``u = 0`` against
        uniformly drawn negatives, ``s`` fitted on the training users' learned factors. No
        items gives zeros (ALS) or the bias only (BPR: items by their learned bias).
        """
        return self.user_vectors(self._history(items, weights))[0]

    # ---- candidates -------------------------------------------------------------------------
    def _banned(self, exclude) -> np.ndarray:
        banned = self._inactive
        if exclude is not None:
            try:
                ex = np.asarray(exclude, dtype=np.int64).ravel()
            except (TypeError, ValueError):
                raise ValidationError("exclude must be item indices (integers)", "exclude") from None
            n = self.n_items
            if len(ex) and (ex.min() < 0 or ex.max() >= n):
                raise ValidationError(f"exclude holds item indices outside [0, {n})", "exclude")
            banned = banned.copy()
            banned[ex] = True
        return banned

    def recommend(self, items, weights=None, N: int = 10, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """ "Because you liked ``items``": the ``N`` active items of highest ``u . y`` for the
        fold-in ``u`` of :meth:`user_vector`, best first, ties by lower index; the seed items
        and ``exclude`` left out. ``(ids (n,), scores (n,))`` with ``n = min(N, eligible)``."""
        N = _positive_int(N, "N")
        H = self._history(items, weights)  # checked, repeats added
        seen, w = H.indices, H.data
        if self.model == "als":  # the one-user solve of _als_fold_in, without a sparse round trip
            Y, c = self._y, self.alpha * w
            Yi = Y[seen]
            base = self._base
            assert base is not None  # set with the item factors (_prepare)
            u = np.linalg.solve(base + (Yi.T * (c - 1.0)) @ Yi, Yi.T @ c)
        else:
            u = self.user_vectors(H)[0]
        scores = self._y @ u
        scores[self._banned(exclude)] = -np.inf
        scores[seen] = -np.inf
        cols = top_n_columns(scores[None, :], N)[0]
        vals = scores[cols]
        keep = vals > -np.inf
        return cols[keep], vals[keep]

    def recommend_batch(self, histories: sp.spmatrix, N: int = 10, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend` for each row of ``histories`` (m, n_items): ``(ids (m, N), scores
        (m, N))``, padded with -1 / -inf where fewer than ``N`` items are eligible."""
        N = _positive_int(N, "N")
        H = _checked_weights(histories, "histories")
        U = self.user_vectors(H)
        return self._top(U, H, N, self._banned(exclude))

    def _top(self, U: np.ndarray, H: sp.csr_matrix, N: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Y = self._y
        n = Y.shape[0]
        m = U.shape[0]
        width = min(N, n)
        ids = np.full((m, N), -1, dtype=np.int64)
        scores = np.full((m, N), -np.inf)
        step = max(1, CHUNK_ENTRIES // max(n, 1))
        for lo in range(0, m, step):
            hi = min(m, lo + step)
            S = U[lo:hi] @ Y.T
            S[:, banned] = -np.inf
            h = H[lo:hi]
            S[np.repeat(np.arange(hi - lo), np.diff(h.indptr)), h.indices] = -np.inf
            cols = top_n_columns(S, width)
            vals = np.take_along_axis(S, cols, axis=1)
            ok = vals > -np.inf
            ids[lo:hi, :width] = np.where(ok, cols, -1)
            scores[lo:hi, :width] = vals
        return ids, scores

    # ---- policy features ----------------------------------------------------------------------
    def item_embedding(self) -> np.ndarray:
        """Item factors divided by their RMS entry, (n_items, dim) float32: features of order 1
        whatever the model's scale. ``item_embedding() @ user_embedding(...)`` is the score
        divided by ``item_rms * user_rms``, so it ranks items as :meth:`recommend` does."""
        self._check_fitted()
        return (self.item_factors / np.float32(self.item_rms)).astype(np.float32)  # type: ignore[operator]

    def user_embedding(self, items, weights=None) -> np.ndarray:
        """:meth:`user_vector` divided by the RMS entry of the training users' factors (users
        with at least one interaction), (dim,) float32."""
        return (self.user_vector(items, weights) / self.user_rms).astype(np.float32)

    # ---- saving -----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` (see :mod:`banditrec.candidates.arrays`)."""
        self._check_fitted()
        out = {
            "item_factors": self.item_factors,
            "user_factors": self.user_factors,
            "active": self.active,
            "scales": np.array([self.item_rms, self.user_rms, self.fold_scale]),
        }
        meta = {
            "format": FORMAT,
            "version": 1,
            "n_items": int(self.n_items),
            "n_users": int(self.user_factors.shape[0]),  # type: ignore[union-attr]
            "dim": int(self.dim),
            "params": self.params,
        }
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta) -> LatentFactors:
        """The model saved by :meth:`to_arrays`; :class:`ValidationError` naming the array or
        metadata key that does not fit."""
        lf, meta = from_meta(cls, meta, FORMAT)
        n, users = meta_int(meta, "n_items", 1), meta_int(meta, "n_users")
        dim = lf.factors + (lf.model == "bpr")
        if meta_int(meta, "dim", 1) != dim:
            raise ValidationError(f"metadata 'dim' must be {dim} for {lf.model} with {lf.factors} factors", "meta.dim")
        lf.item_factors = take(arrays, "item_factors", "f", (n, dim)).astype(np.float32)
        lf.user_factors = take(arrays, "user_factors", "f", (users, dim)).astype(np.float32)
        lf.active = take(arrays, "active", "b", (n,)).copy()
        scales = take(arrays, "scales", "f", (3,))
        if (scales[:2] <= 0).any():
            raise ValidationError(f"array 'scales' must hold positive RMS values, found {scales[:2]}", "scales")
        lf.item_rms, lf.user_rms, lf.fold_scale = (float(s) for s in scales)
        lf._prepare()
        return lf


def _rms(a: np.ndarray) -> float:
    r = float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0
    return r if r > 0 else 1.0
