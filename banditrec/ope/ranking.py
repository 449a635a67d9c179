"""Offline ranking metrics with Amazon Personalize's definitions: precision, NDCG, MRR, coverage
and average reward at k, from ranked lists and held-out interactions, over all users at once.

The formulas, the choices Personalize leaves open and the inputs' shapes are documented.

Details: docs/evaluation.md, "Ranking metrics (`ope/ranking.py`)".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ..validation import as_1d, check_finite, check_positive_int

__all__ = ["PerUserRankingMetrics", "RankingMetrics", "coverage", "ranking_metrics", "ranking_metrics_per_user"]

PAD = -1


@dataclass(frozen=True)
class RankingMetrics:
    """Means over evaluated users (formulas: docs/evaluation.md, "Ranking metrics").

    ``n_users`` is the number of users evaluated (at least one relevant item); ``n_excluded``
    the users left out for having none; ``n_reward_users`` the users in the average-reward mean
    (``None`` with ``average_reward`` when no ``item_value`` was given).
    """

    precision: float
    ndcg: float
    mrr: float
    coverage: float
    average_reward: float | None
    k: int
    n_users: int
    n_excluded: int = 0
    n_reward_users: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PerUserRankingMetrics:
    """Per-user terms, one entry per evaluated user, for bootstrap intervals.

    ``users (n_eval,)`` are the row indices of ``recommended`` that were evaluated;
    ``precision``, ``ndcg``, ``mrr`` and ``average_reward`` are aligned with it.
    ``average_reward`` is ``None`` without ``item_value`` and NaN for a user whose held-out
    items are all worth 0 (use ``np.nanmean``). Coverage is not a mean of per-user terms;
    recompute it on a resample with :func:`coverage`.
    """

    users: np.ndarray
    precision: np.ndarray
    ndcg: np.ndarray
    mrr: np.ndarray
    average_reward: np.ndarray | None
    k: int
    n_excluded: int

    def summary(self, coverage_value: float) -> RankingMetrics:
        """The means of these per-user terms, with a coverage computed elsewhere."""
        reward, n_reward = None, None
        if self.average_reward is not None:
            defined = ~np.isnan(self.average_reward)
            n_reward = int(defined.sum())
            reward = float(self.average_reward[defined].mean())
        return RankingMetrics(
            precision=float(self.precision.mean()),
            ndcg=float(self.ndcg.mean()),
            mrr=float(self.mrr.mean()),
            coverage=float(coverage_value),
            average_reward=reward,
            k=self.k,
            n_users=len(self.users),
            n_excluded=self.n_excluded,
            n_reward_users=n_reward,
        )


def _check_recommended(recommended: ArrayLike, k: int, n_items: int) -> tuple[np.ndarray, int]:
    """Validate ``recommended``, ``k`` and ``n_items``; return the top-``k`` block (a view)."""
    n_items = check_positive_int(n_items, "n_items")
    k = check_positive_int(k, "k")
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValidationError(
            f"recommended must be 2-dimensional (n_users, n_recommended), got shape {rec.shape}", "recommended"
        )
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise ValidationError(f"recommended must hold integer item indices, got dtype {rec.dtype}", "recommended")
    if k > rec.shape[1]:
        raise ValidationError(
            f"k must be <= the number of columns of recommended ({rec.shape[1]}), got {k}; pad shorter lists with -1",
            "k",
        )
    bad = (rec < PAD) | (rec >= n_items)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValidationError(
            f"recommended must hold item indices in [0, {n_items}) or -1 for padding, "
            f"found {rec[r, c].item()} at row {r}, column {c}",
            "recommended",
        )
    pad = rec == PAD
    # padding is trailing: once a slot is empty every later slot is empty
    after_pad = pad[:, :-1] & ~pad[:, 1:]
    if after_pad.any():
        r, c = np.argwhere(after_pad)[0]
        raise ValidationError(
            f"recommended row {r} has item {rec[r, c + 1].item()} at column {c + 1} after "
            f"padding (-1) at column {c}; padding must come last",
            "recommended",
        )
    if rec.shape[1] > 1 and rec.size:
        srt = np.sort(rec, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != PAD)
        if dup.any():
            r, c = np.argwhere(dup)[0]
            item = srt[r, c + 1].item()
            cols = np.flatnonzero(rec[r] == item)
            raise ValidationError(
                f"recommended row {r} lists item {item} more than once (columns "
                f"{', '.join(map(str, cols))}); a ranking holds each item at most once",
                "recommended",
            )
    return rec[:, :k], k


def _relevant_keys(relevant: Any, n_users: int, n_items: int) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` keys of the relevant (user, item) pairs."""
    if sp.issparse(relevant):
        if relevant.shape != (n_users, n_items):
            raise ValidationError(
                f"relevant must have shape (n_users, n_items) = ({n_users}, {n_items}) to match "
                f"recommended and n_items, got {relevant.shape}",
                "relevant",
            )
        csr = relevant.tocsr()  # no copy when already CSR; never modified
        data = np.asarray(csr.data)
        if data.size and np.issubdtype(data.dtype, np.number):
            check_finite(data, "relevant")
        rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(csr.indptr))
        keep = data != 0
        keys = rows[keep] * n_items + csr.indices[keep].astype(np.int64)
        return np.unique(keys)
    if isinstance(relevant, np.ndarray) or not isinstance(relevant, (list, tuple)):
        raise ValidationError(
            "relevant must be a scipy.sparse matrix (n_users, n_items) or a list of integer "
            f"arrays, got {type(relevant).__name__}",
            "relevant",
        )
    if len(relevant) != n_users:
        raise ValidationError(
            f"recommended and relevant must have the same number of users, got {n_users} and {len(relevant)}",
            "relevant",
        )
    arrays = []
    for u, items in enumerate(relevant):  # input conversion, once; the metrics are vectorised
        arr = as_1d(items, f"relevant[{u}]")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValidationError(
                f"relevant[{u}] must hold integer item indices, got dtype {arr.dtype}", f"relevant[{u}]"
            )
        arrays.append(arr.astype(np.int64, copy=False))
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=n_users)
    items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        i = int(np.argmax(bad))
        u = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        raise ValidationError(f"relevant items must be in [0, {n_items}), found {items[i]} for user {u}", "relevant")
    rows = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    return np.unique(rows * n_items + items)


def _check_item_value(item_value: ArrayLike | None, n_items: int) -> np.ndarray | None:
    if item_value is None:
        return None
    v = as_1d(item_value, "item_value", float)
    if len(v) != n_items:
        raise ValidationError(f"item_value must have one entry per item ({n_items}), got {len(v)}", "item_value")
    check_finite(v, "item_value")
    if (v < 0).any():
        i = int(np.argmax(v < 0))
        raise ValidationError(f"item_value must be >= 0, found {v[i]} at index {i}", "item_value")
    return v


def coverage(recommended: ArrayLike, *, k: int, n_items: int) -> float:
    """Share of the catalog appearing in the top ``k`` of any row of ``recommended``.

    .. math:: coverage@k = |\\bigcup_u \\{i_{u1}, \\dots, i_{uk}\\} \\setminus \\{-1\\}| / n\\_items

    Pass only the rows of evaluated users (``per_user.users``) to match
    :func:`ranking_metrics`.
    """
    top, _ = _check_recommended(recommended, k, n_items)
    return _coverage(top, n_items)


def _coverage(top: np.ndarray, n_items: int) -> float:
    items = top[top != PAD]
    return int(np.count_nonzero(np.bincount(items, minlength=n_items))) / n_items


def _per_user(
    recommended: ArrayLike, relevant: Any, k: int, n_items: int, item_value: ArrayLike | None
) -> tuple[PerUserRankingMetrics, np.ndarray, int]:
    top, k = _check_recommended(recommended, k, n_items)
    n_items = int(n_items)
    n_users = top.shape[0]
    keys = _relevant_keys(relevant, n_users, n_items)
    v = _check_item_value(item_value, n_items)

    key_user = keys // n_items
    n_relevant = np.bincount(key_user, minlength=n_users)
    users = np.flatnonzero(n_relevant > 0)
    if len(users) == 0:
        raise ValidationError(
            f"relevant holds no relevant item for any of the {n_users} users; there is nothing to evaluate", "relevant"
        )
    top = top[users]
    n_rel = n_relevant[users]

    # hit[u, j]: is the item in slot j of user u's list one of u's held-out items?
    valid = top != PAD
    query = users[:, None].astype(np.int64) * n_items + np.where(valid, top, 0)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = valid & (keys[pos] == query)

    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    precision = hit.sum(axis=1) / k
    ndcg = (hit @ discount) / ideal
    any_hit = hit.any(axis=1)
    mrr = np.where(any_hit, 1.0 / (np.argmax(hit, axis=1) + 1), 0.0)

    reward = None
    if v is not None:
        total = np.bincount(key_user, weights=v[keys % n_items], minlength=n_users)[users]
        earned = (hit * v[np.where(valid, top, 0)]).sum(axis=1)
        reward = np.full(len(users), np.nan)
        np.divide(earned, total, out=reward, where=total > 0)
        if not (total > 0).any():
            raise ValidationError(
                "item_value is 0 for every held-out item of every evaluated user, so average reward is undefined",
                "item_value",
            )
    per = PerUserRankingMetrics(
        users=users,
        precision=precision,
        ndcg=ndcg,
        mrr=mrr,
        average_reward=reward,
        k=k,
        n_excluded=n_users - len(users),
    )
    return per, top, n_items


def ranking_metrics_per_user(
    recommended: ArrayLike, relevant: Any, *, k: int, n_items: int, item_value: ArrayLike | None = None
) -> PerUserRankingMetrics:
    """Per-user precision@k, NDCG@k, reciprocal rank@k and average reward@k.

    Parameters are those of :func:`ranking_metrics`. Returns one entry per evaluated user
    (users with no relevant item are left out; ``users`` maps entries back to rows).
    """
    return _per_user(recommended, relevant, k, n_items, item_value)[0]


def ranking_metrics(
    recommended: ArrayLike, relevant: Any, *, k: int, n_items: int, item_value: ArrayLike | None = None
) -> RankingMetrics:
    """Precision@k, NDCG@k, MRR@k, coverage@k and average reward@k as Amazon Personalize defines them.

    Parameters
    ----------
    recommended : int array, shape (n_users, m), m >= k
        Item indices in rank order (column 0 is rank 1); ``-1`` pads a list shorter than
        ``m`` and must come after every real item. An item may appear once per row.
    relevant : scipy.sparse matrix (n_users, n_items), or list of n_users int arrays
        Held-out interactions: a non-zero entry (or a listed item) is relevant.
    k : int
        Cutoff, ``1 <= k <= m``.
    n_items : int
        Catalog size, the denominator of coverage.
    item_value : float array, shape (n_items,), optional
        Non-negative business value per item (Personalize's optimisation-objective column,
        e.g. price or margin). Without it ``average_reward`` is ``None``.

    Returns
    -------
    RankingMetrics
        Means over users with at least one relevant item; see docs/evaluation.md, "Ranking metrics", for the
        formulas and the choices made where Personalize's guide is ambiguous.

    Raises
    ------
    ValidationError
        On a bad shape, dtype, index, ``k``, duplicate item in a row, item after padding,
        negative or non-finite ``item_value``, or when no user has a relevant item.
    """
    per, top, n_items = _per_user(recommended, relevant, k, n_items, item_value)
    return per.summary(_coverage(top, n_items))
