"""Directional complements from co-purchase-only pairs, with a product-type back-off.

From :class:`~banditrec.candidates.signals.PairSignals` (user counts), keep the co-purchase
pairs that were never co-viewed nor viewed-then-bought: ``C[a, b]`` users bought a and then b.
The directional score of b as a complement of a is

    s(a -> b) = C[a, b] / (n_a + kappa)  x  (C[a, b] + 1) / (C[a, b] + C[b, a] + 2)

the share of a's buyers who went on to buy b (shrunk by ``kappa`` for rarely bought a), times
how one-way the pair is (Laplace-smoothed): a camera's buyers buy SD cards afterwards, SD card
buyers rarely buy cameras afterwards, so s(camera -> card) >> s(card -> camera). Summing
``C`` over product types gives the type transition matrix

    T[t, u] = sum_{a in t, b in u} C[a, b],   T_dir[t, u] = T[t, u] / sum_u' T[t, u'] x (T[t, u] + 1) / (T[t, u] + T[u, t] + 2)

which generalises to item pairs never seen together: when an item has fewer than N direct
complements, the list is filled with the most bought items of its top complementary types
(score ``backoff x T_dir[t_a, u] x share of u's purchases``), source ``"type"``.

The symmetric baseline this improves on — cosine between items' co-purchase columns — is what
:class:`~banditrec.candidates.ItemItemCF` gives on the users x purchases matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .itemknn import _top_n_per_row, rows_top_n
from .signals import PairSignals

SOURCE_DIRECT = "complement"
SOURCE_TYPE = "type"


class ComplementModel:
    """Directional complement scores.

    Parameters
    ----------
    kappa : shrinkage of the share of a's buyers (pseudo-buyers)
    backoff : weight of type-level scores relative to direct pair scores
    n_neighbors : direct complements kept per item
    """

    def __init__(self, *, kappa: float = 5.0, backoff: float = 0.5, n_neighbors: int = 50):
        for name, v in (("kappa", kappa), ("backoff", backoff)):
            if not (np.isfinite(v) and v >= 0):
                raise ValidationError(f"{name} must be a number >= 0, got {v!r}", name)
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise ValidationError(f"n_neighbors must be a positive integer, got {n_neighbors!r}", "n_neighbors")
        self.kappa, self.backoff, self.n_neighbors = float(kappa), float(backoff), n_neighbors
        self.scores: sp.csr_matrix | None = None
        self.type_transition: np.ndarray | None = None

    def fit(self, signals: PairSignals, item_types) -> "ComplementModel":
        types = np.asarray(item_types, dtype=np.int64)
        C = signals.co_purchase_only().tocsr()
        n = C.shape[0]
        if len(types) != n:
            raise ValidationError(f"item_types must have {n} entries (one per item), got {len(types)}", "item_types")
        self.types = types
        n_types = int(types.max()) + 1 if n else 0
        coo = C.tocoo()
        back = np.asarray(C[coo.col, coo.row]).ravel() if coo.nnz else np.empty(0)
        buyers = signals.purchases.astype(float)
        s = coo.data / (buyers[coo.row] + self.kappa) * (coo.data + 1.0) / (coo.data + back + 2.0)
        self.scores = _top_n_per_row(sp.csr_matrix((s, (coo.row, coo.col)), shape=(n, n)), self.n_neighbors)
        T = np.zeros((n_types, n_types))
        np.add.at(T, (types[coo.row], types[coo.col]), coo.data)
        out = T.sum(axis=1, keepdims=True)
        share = np.divide(T, out, out=np.zeros_like(T), where=out > 0)
        self.type_transition = share * (T + 1.0) / (T + T.T + 2.0)
        np.fill_diagonal(self.type_transition, 0.0)  # same type: a substitute, never a complement
        # within each type, items by purchases: the back-off's choice of item
        per_type = np.bincount(types, weights=buyers, minlength=n_types)
        self.item_share = np.divide(buyers, per_type[types], out=np.zeros(n), where=per_type[types] > 0)
        by_type = np.lexsort((np.arange(n), -buyers, types))  # type, then most bought, then index
        self._by_type = np.split(by_type, np.cumsum(np.bincount(types, minlength=n_types))[:-1])
        return self

    def _check(self):
        if self.scores is None:
            raise ValidationError("ComplementModel is not fitted; call fit(signals, item_types) first", "model")

    def complements(self, item_ids, N: int = 10, *, use_types: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``N`` complements of each item: ``(ids (m, N), scores (m, N), direct (m, N) bool)``
        (-1 / 0 padded). Direct pair scores first, then the type back-off (``use_types``)."""
        self._check()
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValidationError(f"N must be a positive integer, got {N!r}", "N")
        items = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
        n = self.scores.shape[0]
        if len(items) and (items.min() < 0 or items.max() >= n):
            raise ValidationError(f"item ids must be in [0, {n})", "item_ids")
        ids, scores = rows_top_n(self.scores, items, N)
        direct = ids >= 0
        if use_types:
            for r in np.flatnonzero(~direct[:, -1]).tolist():  # rows with room left: the type back-off
                k = int(direct[r].sum())
                fill, fs = self._type_fill(int(items[r]), N - k, exclude=ids[r, :k])
                ids[r, k:k + len(fill)], scores[r, k:k + len(fill)] = fill, fs
        return ids, scores, direct

    def _type_fill(self, a: int, n: int, exclude) -> tuple[np.ndarray, np.ndarray]:
        row = self.type_transition[self.types[a]]
        picks, vals = [], []
        taken = set(int(x) for x in exclude) | {a}
        for u in np.argsort(-row, kind="stable"):  # every complementary type (a handful)
            if row[u] <= 0:
                break
            for j in self._by_type[u][: n]:
                if int(j) not in taken:
                    picks.append(int(j))
                    vals.append(self.backoff * row[u] * self.item_share[j])
                    taken.add(int(j))
        order = np.argsort(-np.asarray(vals), kind="stable")[:n]
        return np.asarray(picks, dtype=np.int64)[order], np.asarray(vals)[order]
