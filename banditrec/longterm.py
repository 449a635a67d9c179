"""Each item's long-term value, estimated from the purchase log: a within-type contrast of its
buyers' later margin, regression-adjusted and shrunk by empirical Bayes. Read its assumptions
before trusting the numbers.

Details: docs/abtest.md, "The long-term value estimate (`banditrec/longterm.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .errors import ValidationError

DAY_S = 86_400.0


@dataclass(frozen=True)
class LongTermValue:
    """Per-item estimates (arrays of length ``n_items``)."""

    value: np.ndarray  # shrunk long-term value: extra later margin per first purchase
    raw: np.ndarray  # unshrunk contrast (0 where no uncensored purchase)
    n_buyers: np.ndarray  # uncensored first purchases per item
    slope: float  # b: later margin per unit of prior margin, within groups
    residual_sd: float  # s
    prior_sd: float  # tau: spread of true item values
    n_purchases: int  # purchases used (uncensored first purchases)


def _window_sums(key: np.ndarray, cum: np.ndarray, lo_key: np.ndarray, hi_key: np.ndarray) -> np.ndarray:
    """Sum of the sorted values whose key lies in ``(lo_key, hi_key]`` (``cum`` = prefix sums
    with a leading 0)."""
    lo = np.searchsorted(key, lo_key, side="right")
    hi = np.searchsorted(key, hi_key, side="right")
    sums: np.ndarray = cum[hi] - cum[lo]
    return sums


def window_margins(
    user: ArrayLike, ts: ArrayLike, amount: ArrayLike, *, horizon_s: float, skip_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """For each purchase ``e``: the same user's total ``amount`` in ``(ts_e + skip_s, ts_e +
    horizon_s]`` (later) and in ``[ts_e - horizon_s, ts_e)`` (prior). Vectorised: one sort and
    four binary searches over a (user, time-in-milliseconds) integer key."""
    user = np.asarray(user, dtype=np.int64)
    ms = np.round(np.asarray(ts, dtype=float) * 1000.0).astype(np.int64)
    amount = np.asarray(amount, dtype=float)
    n = len(user)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    h, skip = int(round(horizon_s * 1000.0)), int(round(skip_s * 1000.0))
    t0 = int(ms.min())
    span = int(ms.max()) - t0 + h + skip + 2  # user blocks never overlap
    if (int(user.max()) + 1) * span >= 2**62:
        raise ValidationError("timestamps span too long for the (user, time) key", "ts")
    key = user * span + (ms - t0)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    cum = np.concatenate([[0.0], np.cumsum(amount[order])])
    later = _window_sums(skey, cum, key + skip, key + h)
    # prior: [t - h, t) = (t - h - 1ms, t - 1ms]; start at the block's floor so it never reaches another user
    floor = user * span - 1
    prior = _window_sums(skey, cum, np.maximum(key - h - 1, floor), key - 1)
    return later, prior


def estimate_item_values(
    user: ArrayLike,
    item: ArrayLike,
    ts: ArrayLike,
    item_margin: ArrayLike,
    groups: ArrayLike,
    *,
    horizon_days: float = 30.0,
    skip_days: float = 0.0,
    end_ts: float | None = None,
    cap_quantile: float = 0.99,
) -> LongTermValue:
    """Long-term value of every item from purchases ``(user, item, ts)`` (the method and its
    assumptions: docs/abtest.md, "The long-term value estimate").

    ``item_margin (n_items,)`` is each item's margin; ``groups (n_items,)`` each item's
    comparison group (product type). ``end_ts`` is when the log ends (default: its last
    purchase); purchases whose ``horizon_days`` window runs past it are censored.
    ``cap_quantile``: later and prior margins are capped at this quantile of their values
    (winsorised; 1 keeps them as they are): a few big spenders otherwise make the noise, and
    so the shrinkage, swamp every item's contrast.
    """
    item_margin = np.asarray(item_margin, dtype=float)
    groups = np.asarray(groups)
    n_items = len(item_margin)
    if item_margin.ndim != 1 or not np.isfinite(item_margin).all():
        raise ValidationError("item_margin must be a finite 1-D array", "item_margin")
    if groups.shape != item_margin.shape:
        raise ValidationError(f"groups must have one entry per item ({n_items}), got {groups.shape}", "groups")
    if not (np.isfinite(horizon_days) and horizon_days > 0):
        raise ValidationError(f"horizon_days must be > 0, got {horizon_days!r}", "horizon_days")
    if not (np.isfinite(cap_quantile) and 0 < cap_quantile <= 1):
        raise ValidationError(f"cap_quantile must be in (0, 1], got {cap_quantile!r}", "cap_quantile")
    if not (np.isfinite(skip_days) and 0 <= skip_days < horizon_days):
        raise ValidationError(f"skip_days must be in [0, horizon_days), got {skip_days!r}", "skip_days")
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    ts = np.asarray(ts, dtype=float)
    if not (len(user) == len(item) == len(ts)):
        raise ValidationError(
            f"user, item and ts must have the same length, got {len(user)}, {len(item)}, {len(ts)}", "item"
        )
    if len(item) and (item.min() < 0 or item.max() >= n_items):
        raise ValidationError(f"item indices must be in [0, {n_items})", "item")
    if len(user) and user.min() < 0:
        raise ValidationError("user indices must be >= 0", "user")
    if not np.isfinite(ts).all():
        raise ValidationError("ts must be finite", "ts")
    horizon_s, skip_s = horizon_days * DAY_S, skip_days * DAY_S
    later, prior = window_margins(user, ts, item_margin[item], horizon_s=horizon_s, skip_s=skip_s)
    end = (float(ts.max()) if len(ts) else 0.0) if end_ts is None else float(end_ts)
    # the first purchase of each (user, item), uncensored
    order = np.lexsort((ts, item, user))
    first = np.zeros(len(user), bool)
    if len(order):
        u, j = user[order], item[order]
        first[order] = np.r_[True, (u[1:] != u[:-1]) | (j[1:] != j[:-1])]
    use = first & (ts + horizon_s <= end)
    j, y, x = item[use], later[use], prior[use]
    if cap_quantile < 1 and len(y):
        y = np.minimum(y, np.quantile(y, cap_quantile))
        x = np.minimum(x, np.quantile(x, cap_quantile))
    # groups numbered over the purchases used, so every group counted here has buyers
    g = np.unique(groups[j], return_inverse=True)[1].astype(np.int64).ravel()
    n_groups = int(g.max()) + 1 if len(g) else 0
    count_g = np.bincount(g, minlength=n_groups).astype(float)
    yc = y - (np.bincount(g, weights=y, minlength=n_groups) / count_g)[g]
    xc = x - (np.bincount(g, weights=x, minlength=n_groups) / count_g)[g]
    sxx = float(xc @ xc)
    slope = float(xc @ yc) / sxx if sxx > 0 else 0.0
    resid = yc - slope * xc
    n_buyers = np.bincount(j, minlength=n_items)
    dof = len(resid) - n_groups - 1  # one mean per group, and the slope
    s2 = float(resid @ resid) / dof if dof > 0 else 0.0
    raw = np.bincount(j, weights=resid, minlength=n_items) / np.maximum(n_buyers, 1)
    # between-item variance, each item weighted by its buyers: well-measured items dominate
    tau2 = max(float((n_buyers * raw**2).sum() - s2 * (n_buyers > 0).sum()) / max(int(n_buyers.sum()), 1), 0.0)
    # shrinkage tau^2 / (tau^2 + s^2 / n_j); 0 for items without buyers, or when tau^2 = 0
    weight = (
        tau2 / (tau2 + np.where(n_buyers > 0, s2 / np.maximum(n_buyers, 1), np.inf)) if tau2 > 0 else np.zeros(n_items)
    )
    return LongTermValue(
        value=raw * weight,
        raw=raw,
        n_buyers=n_buyers,
        slope=slope,
        residual_sd=float(np.sqrt(s2)),
        prior_sd=float(np.sqrt(tau2)),
        n_purchases=int(use.sum()),
    )
