"""Directional complements from co-purchase-only pairs, with a product-type back-off for item
pairs never seen together.

Details: docs/candidates.md, "Directional complements (`candidates/complements.py`)".
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .arrays import from_meta, meta_int, put_csr, take, take_csr
from .itemknn import _top_n_per_row, rows_top_n
from .signals import PairSignals

SOURCE_DIRECT = "complement"
SOURCE_TYPE = "type"
FORMAT = "banditrec.ComplementModel"


class ComplementModel:
    """Directional complement scores.

    Parameters
    ----------
    kappa : shrinkage of the share of a's buyers (pseudo-buyers)
    backoff : weight of type-level scores relative to direct pair scores
    n_neighbors : direct complements kept per item
    n_backoff : back-off items kept per product type
    """

    def __init__(self, *, kappa: float = 5.0, backoff: float = 0.5, n_neighbors: int = 50, n_backoff: int = 50):
        for name, v in (("kappa", kappa), ("backoff", backoff)):
            if not (np.isfinite(v) and v >= 0):
                raise ValidationError(f"{name} must be a number >= 0, got {v!r}", name)
        for name, v in (("n_neighbors", n_neighbors), ("n_backoff", n_backoff)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"{name} must be a positive integer, got {v!r}", name)
        self.kappa, self.backoff, self.n_neighbors, self.n_backoff = (
            float(kappa),
            float(backoff),
            n_neighbors,
            n_backoff,
        )
        self.scores: sp.csr_matrix | None = None
        self.type_transition: sp.csr_matrix | None = None

    @property
    def params(self) -> dict:
        return {
            "kappa": self.kappa,
            "backoff": self.backoff,
            "n_neighbors": self.n_neighbors,
            "n_backoff": self.n_backoff,
        }

    def fit(self, signals: PairSignals, item_types, *, active=None) -> ComplementModel:
        """Scores from ``signals`` (user counts) and ``item_types (n,)``. ``active (n,)`` bool:
        items that may be recommended (default all); the others are never a complement nor a
        back-off item, though their purchases still count as evidence."""
        types = np.asarray(item_types, dtype=np.int64)
        C = signals.co_purchase_only().tocsr()
        n = C.shape[0]
        if len(types) != n:
            raise ValidationError(f"item_types must have {n} entries (one per item), got {len(types)}", "item_types")
        active = np.ones(n, bool) if active is None else np.asarray(active, dtype=bool)
        self.types = types
        n_types = int(types.max()) + 1 if n else 0
        coo = C.tocoo()
        back = np.asarray(C[coo.col, coo.row]).ravel() if coo.nnz else np.empty(0)
        buyers = signals.purchases.astype(float)
        s = coo.data / (buyers[coo.row] + self.kappa) * (coo.data + 1.0) / (coo.data + back + 2.0)
        ok = active[coo.col]
        self.scores = _top_n_per_row(sp.csr_matrix((s[ok], (coo.row[ok], coo.col[ok])), shape=(n, n)), self.n_neighbors)
        T = sp.csr_matrix((coo.data, (types[coo.row], types[coo.col])), shape=(n_types, n_types))
        T.sum_duplicates()
        Tc = T.tocoo()
        out = np.asarray(T.sum(axis=1)).ravel()
        t_back = np.asarray(T[Tc.col, Tc.row]).ravel() if Tc.nnz else np.empty(0)
        t_dir = Tc.data / out[Tc.row] * (Tc.data + 1.0) / (Tc.data + t_back + 2.0)
        off = Tc.row != Tc.col  # same type: a substitute, never a complement
        self.type_transition = sp.csr_matrix((t_dir[off], (Tc.row[off], Tc.col[off])), shape=(n_types, n_types))
        # within each type, an active item's share of the type's purchases: the back-off's choice of item
        bought = buyers * active
        per_type = np.bincount(types, weights=bought, minlength=n_types)
        self.item_share = np.divide(bought, per_type[types], out=np.zeros(n), where=per_type[types] > 0)
        self.backoff_items = _backoff_table(self.type_transition, types, self.item_share, self.n_backoff)
        return self

    def _check(self):
        if self.scores is None:
            raise ValidationError("ComplementModel is not fitted; call fit(signals, item_types) first", "model")

    def complements(
        self, item_ids, N: int = 10, *, use_types: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``N`` complements of each item: ``(ids (m, N), scores (m, N), direct (m, N) bool)``
        (-1 / 0 padded). Direct pair scores first, then the type back-off (``use_types``) from
        the item's type's ``n_backoff`` back-off items, ties by lower index."""
        self._check()
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValidationError(f"N must be a positive integer, got {N!r}", "N")
        items = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
        assert self.scores is not None  # _check: fitted
        n = self.scores.shape[0]
        if len(items) and (items.min() < 0 or items.max() >= n):
            raise ValidationError(f"item ids must be in [0, {n})", "item_ids")
        ids, scores = rows_top_n(self.scores, items, N)
        direct = ids >= 0
        if use_types:
            B = self.backoff_items
            for r in np.flatnonzero(~direct[:, -1]).tolist():  # rows with room left: the type back-off
                k = int(direct[r].sum())
                t = self.types[items[r]]
                cols, vals = B.indices[B.indptr[t] : B.indptr[t + 1]], B.data[B.indptr[t] : B.indptr[t + 1]]
                order = np.lexsort((cols, -vals))
                cols, vals = cols[order], vals[order]
                free = ~np.isin(cols, np.r_[ids[r, :k], items[r]])
                fill = cols[free][: N - k]
                ids[r, k : k + len(fill)], scores[r, k : k + len(fill)] = fill, self.backoff * vals[free][: N - k]
        return ids, scores, direct

    # ---- saving -----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` (see :mod:`banditrec.candidates.arrays`)."""
        self._check()
        out = {"types": self.types, "item_share": self.item_share}
        put_csr(out, "scores", self.scores)
        put_csr(out, "type_transition", self.type_transition)
        put_csr(out, "backoff_items", self.backoff_items)
        assert self.scores is not None and self.type_transition is not None  # _check: fitted
        meta = {
            "format": FORMAT,
            "version": 1,
            "n_items": int(self.scores.shape[0]),
            "n_types": int(self.type_transition.shape[0]),
            "params": self.params,
        }
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta) -> ComplementModel:
        model, meta = from_meta(cls, meta, FORMAT)
        n, n_types = meta_int(meta, "n_items"), meta_int(meta, "n_types")
        types = take(arrays, "types", "i", (n,)).astype(np.int64)
        if n and (types.min() < 0 or types.max() >= n_types):
            raise ValidationError(
                f"array 'types' must be in [0, {n_types}), found {types.min()} ... {types.max()}", "types"
            )
        model.types = types
        model.item_share = take(arrays, "item_share", "f", (n,))
        model.scores = take_csr(arrays, "scores", (n, n))
        model.type_transition = take_csr(arrays, "type_transition", (n_types, n_types))
        model.backoff_items = take_csr(arrays, "backoff_items", (n_types, n))
        return model


def _backoff_table(t_dir: sp.csr_matrix, types: np.ndarray, share: np.ndarray, M: int) -> sp.csr_matrix:
    """(T, n): row t holds the ``M`` items j with the largest ``t_dir[t, type_j] x share_j > 0``
    (ties by lower index). Only the first ``M`` items of each complementary type (by share,
    then index) can be among them, so that is all that is expanded."""
    n_types, n = t_dir.shape[0], len(types)
    cand = np.flatnonzero(share > 0)
    by_type = cand[np.lexsort((cand, -share[cand], types[cand]))]
    start = np.searchsorted(types[by_type], np.arange(n_types + 1))
    take_n = np.minimum(np.diff(start), M)
    Tc = t_dir.tocoo()
    keep = (Tc.data > 0) & (take_n[Tc.col] > 0)
    r, u, v = Tc.row[keep], Tc.col[keep], Tc.data[keep]
    lens = take_n[u]
    local = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    items = by_type[np.repeat(start[u], lens) + local]
    B = sp.csr_matrix((np.repeat(v, lens) * share[items], (np.repeat(r, lens), items)), shape=(n_types, n))
    return _top_n_per_row(B, M)
