"""When each customer will reorder each consumable: a lognormal renewal model per (customer,
consumable type), shrunk towards the type's population cycle; due probabilities, "due to
reorder" candidates and a context feature.

Details: docs/reorder.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import log_ndtr

from ..errors import ValidationError
from .arrays import from_meta, full_name, meta_int, take
from .signals import DAY_S, PURCHASE, Interactions

FORMAT = "banditrec.ReorderModel"
VAR_FLOOR = 1e-4  # smallest between-customer or noise variance of a log cycle
LAPSE_SDS = 2.5  # an occasion this many sds of log interval past the type's median cycle is old enough to tell a lapse


@dataclass(frozen=True)
class CyclePosterior:
    """Posterior of log cycles (log days) for (user, type) pairs, each (k,).

    mean, sd : posterior mean and sd of the customer's median log interval
    predictive_sd : sd of the next log interval, ``sqrt(sd**2 + noise_var[type])``
    n_intervals : the customer's observed intervals of the type
    weight : share of the posterior mean that is the customer's own mean log interval
    """

    mean: np.ndarray
    sd: np.ndarray
    predictive_sd: np.ndarray
    n_intervals: np.ndarray
    weight: np.ndarray


class ReorderModel:
    """Per-customer, per-consumable-type inter-purchase model (lognormal renewal, empirical Bayes).

    Parameters
    ----------
    occasion_gap_s : float
        Purchases of one type by one user less than this apart (chained) form one purchase
        occasion; intervals are between occasion starts.
    horizon_s : float
        Default horizon of :meth:`due`, :meth:`candidates` and :meth:`context_feature`.
    min_due : float
        A type is due when its due probability is at least this; only due types give candidates.
    backups : int
        Besides the last item bought, each due type offers its ``backups`` most-bought items.
    pool_strength : float
        Each type's population parameters are pooled with all consumable types' as if the
        pooled values were this many customers' worth of data (types with little data borrow).
    default_cycle_days, default_log_sd : float
        Prior when no consumable type has any interval: median cycle, and both the between-customer
        and within-customer sd of log intervals.
    personal : bool
        False: every customer gets the type's population cycle (the prior), ignoring their own
        intervals; an ablation.
    """

    def __init__(
        self,
        *,
        occasion_gap_s: float = DAY_S,
        horizon_s: float = 7 * DAY_S,
        min_due: float = 0.05,
        backups: int = 2,
        pool_strength: float = 10.0,
        default_cycle_days: float = 30.0,
        default_log_sd: float = 0.5,
        personal: bool = True,
    ):
        for name, v in (
            ("occasion_gap_s", occasion_gap_s),
            ("horizon_s", horizon_s),
            ("default_cycle_days", default_cycle_days),
            ("default_log_sd", default_log_sd),
        ):
            _positive(v, name)
        if not (isinstance(min_due, (int, float)) and 0.0 <= min_due <= 1.0):
            raise ValidationError(f"min_due must be in [0, 1], got {min_due!r}", "min_due")
        if isinstance(backups, bool) or not isinstance(backups, (int, np.integer)) or backups < 0:
            raise ValidationError(f"backups must be an integer >= 0, got {backups!r}", "backups")
        if isinstance(pool_strength, bool) or not isinstance(pool_strength, (int, float)) or not pool_strength >= 0:
            raise ValidationError(f"pool_strength must be >= 0, got {pool_strength!r}", "pool_strength")
        self.occasion_gap_s = float(occasion_gap_s)
        self.horizon_s = float(horizon_s)
        self.min_due = float(min_due)
        self.backups = int(backups)
        self.pool_strength = float(pool_strength)
        self.default_cycle_days = float(default_cycle_days)
        self.default_log_sd = float(default_log_sd)
        self.personal = bool(personal)
        self.user_start: np.ndarray | None = None

    @property
    def params(self) -> dict:
        return {
            "occasion_gap_s": self.occasion_gap_s,
            "horizon_s": self.horizon_s,
            "min_due": self.min_due,
            "backups": self.backups,
            "pool_strength": self.pool_strength,
            "default_cycle_days": self.default_cycle_days,
            "default_log_sd": self.default_log_sd,
            "personal": self.personal,
        }

    # ---- fitting ---------------------------------------------------------------------------
    def fit(self, events: Interactions, types, consumable, *, now: float | None = None, active=None) -> ReorderModel:
        """Learn every (user, consumable type) pair's purchase occasions and the types' cycles.

        Parameters
        ----------
        events : Interactions
            Purchases (kind 2) are used; others are ignored, as are events after ``now``.
        types : (n_items,) int
            Each item's product type, in ``[0, len(consumable))``.
        consumable : (n_types,) bool
            Which types are bought again on a cycle (only these are modelled).
        now : float, optional
            Fit time in seconds (default: the latest event).
        active : (n_items,) bool, optional
            Items that may be recommended (default all).
        """
        if not isinstance(events, Interactions):
            raise ValidationError(f"events must be Interactions, got {type(events).__name__}", "events")
        n_items = events.n_items
        consumable = np.asarray(consumable)
        if consumable.ndim != 1 or consumable.dtype != bool:
            raise ValidationError(
                f"consumable must be a 1-D bool array (one per type), got {consumable.dtype} {consumable.shape}",
                "consumable",
            )
        T = len(consumable)
        types = np.asarray(types)
        if types.shape != (n_items,) or (types.size and not np.issubdtype(types.dtype, np.integer)):
            raise ValidationError(
                f"types must be an integer array of shape ({n_items},) (one per item), got {types.dtype} {types.shape}",
                "types",
            )
        if types.size and (types.min() < 0 or types.max() >= T):
            bad = int(types.min()) if types.min() < 0 else int(types.max())
            raise ValidationError(f"types must be in [0, {T}) (len(consumable)), found {bad}", "types")
        if active is None:
            active = np.ones(n_items, bool)
        active = np.asarray(active)
        if active.shape != (n_items,) or active.dtype != bool:
            raise ValidationError(
                f"active must be a bool array of shape ({n_items},), got {active.dtype} {active.shape}", "active"
            )
        keep = events.kind == PURCHASE
        if now is not None:
            if isinstance(now, bool) or not isinstance(now, (int, float, np.number)) or not np.isfinite(now):
                raise ValidationError(f"now must be a finite number of seconds, got {now!r}", "now")
            keep &= events.ts <= now
        user, item, ts = events.user[keep], events.item[keep], events.ts[keep]
        t = types[item].astype(np.int64)
        cons = consumable[t]
        user, item, ts, t = user[cons], item[cons], ts[cons], t[cons]
        self.types = types.astype(np.int64)
        self.consumable = consumable.copy()
        self.active = active.copy()
        self.n_users, self.n_items, self.n_types = int(events.n_users), int(n_items), T
        self.item_count = np.bincount(item, minlength=n_items).astype(float)

        order = np.lexsort((ts, t, user))
        user, item, ts, t = user[order], item[order], ts[order], t[order]
        key = user * T + t
        new_pair = np.r_[True, key[1:] != key[:-1]] if len(key) else np.empty(0, bool)
        new_occ = new_pair | np.r_[True, np.diff(ts) > self.occasion_gap_s] if len(key) else new_pair
        pair_of_row = np.cumsum(new_pair) - 1
        pair_first = np.flatnonzero(new_pair)
        P = len(pair_first)
        pair_last = np.r_[pair_first[1:], len(key)][:P] - 1
        occ = np.flatnonzero(new_occ)
        occ_pair = pair_of_row[occ]
        occ_last_item = item[np.r_[occ[1:], len(key)][: len(occ)] - 1]  # the last purchase of each occasion
        same = occ_pair[1:] == occ_pair[:-1]  # consecutive occasions of one pair: an interval
        y = np.log(np.diff(ts[occ])[same] / DAY_S)
        y_pair = occ_pair[1:][same]
        repeat = (occ_last_item[1:] == occ_last_item[:-1])[same]

        self.pair_user = user[pair_first]
        self.pair_type = t[pair_first]
        self.last_ts = ts[occ][np.r_[np.flatnonzero(occ_pair[1:] != occ_pair[:-1]), len(occ) - 1]] if P else ts[:0]
        self.last_item = item[pair_last]
        self.n_intervals = np.bincount(y_pair, minlength=P).astype(np.int64)
        s1 = np.bincount(y_pair, weights=y, minlength=P)
        s2 = np.bincount(y_pair, weights=y * y, minlength=P)
        n = self.n_intervals
        self.mean_log = np.divide(s1, n, out=np.zeros(P), where=n > 0)
        ssw = np.maximum(s2 - n * self.mean_log**2, 0.0)
        self.user_start = np.searchsorted(self.pair_user, np.arange(self.n_users + 1)).astype(np.int64)
        self._fit_population(ssw, np.bincount(self.pair_type[y_pair], weights=repeat.astype(float), minlength=T))
        # lapses: among occasions old enough that a renewal would have come, the share without one
        fit_now = float(now) if now is not None else (float(ts.max()) if len(ts) else 0.0)
        occ_type = t[occ]
        old = np.exp(self.pop_mean + LAPSE_SDS * np.sqrt(self.between_var + self.noise_var)) * DAY_S
        eligible = (fit_now - ts[occ]) > old[occ_type]
        followed = np.r_[same, False]
        n_old = np.bincount(occ_type[eligible], minlength=T).astype(float)
        n_lapsed = np.bincount(occ_type[eligible], weights=~followed[eligible], minlength=T)
        g = float(n_lapsed.sum() / n_old.sum()) if n_old.sum() > 0 else 0.0
        self.lapse = np.where(self.consumable, (n_lapsed + self.pool_strength * g) / (n_old + self.pool_strength), 0.0)
        self._derive()
        return self

    def _fit_population(self, ssw: np.ndarray, repeats: np.ndarray) -> None:
        """Each type's prior by method of moments, pooled with all consumable types'."""
        T, k0 = self.n_types, self.pool_strength
        n, t, ybar = self.n_intervals, self.pair_type, self.mean_log
        has = n > 0
        cnt = lambda w: np.bincount(t[has], weights=w, minlength=T)  # noqa: E731
        N = cnt(np.ones(int(has.sum())))  # customers with an interval
        dof = np.bincount(t, weights=np.maximum(n - 1, 0), minlength=T)
        ssw_t = np.bincount(t, weights=ssw, minlength=T)
        d2 = self.default_log_sd**2
        noise_g = ssw_t.sum() / dof.sum() if dof.sum() > 0 else d2
        noise = np.maximum((ssw_t + k0 * noise_g) / (dof + k0), VAR_FLOOR)
        # between-customer variance: var(ybar_i) = tau^2 + sigma^2 / n_i
        m_raw = np.divide(cnt(ybar[has]), N, out=np.zeros(T), where=N > 0)
        dev = ybar[has] - m_raw[t[has]]
        var_ybar = np.divide(cnt(dev**2), N - 1, out=np.zeros(T), where=N > 1)
        inv_n = np.divide(cnt(1.0 / n[has]), N, out=np.zeros(T), where=N > 0)
        tau_raw = var_ybar - noise * inv_n
        df_b = np.maximum(N - 1, 0)
        tau_g = max(float((df_b * tau_raw).sum() / df_b.sum()), VAR_FLOOR) if df_b.sum() > 0 else d2
        tau = np.maximum((df_b * tau_raw + k0 * tau_g) / (df_b + k0), VAR_FLOOR)
        # the mean log cycle: the customers' means, unweighted (weighting by their counts would
        # favour short cycles, which fit more intervals into the window), pooled
        m_g = float((N * m_raw).sum() / N.sum()) if N.sum() > 0 else float(np.log(self.default_cycle_days))
        self.pop_mean = np.where(self.consumable, (N * m_raw + k0 * m_g) / (N + k0), 0.0)
        self.between_var = np.where(self.consumable, tau, d2)
        self.noise_var = np.where(self.consumable, noise, d2)
        n_rep = np.bincount(t, weights=n, minlength=T)
        r_g = float(repeats.sum() / n_rep.sum()) if n_rep.sum() > 0 else 0.5
        self.repeat = np.where(self.consumable, (repeats + k0 * r_g) / (n_rep + k0), 0.0)

    def _derive(self) -> None:
        """Posterior per pair and the types' most-bought active items."""
        t = self.pair_type
        n = self.n_intervals if self.personal else np.zeros_like(self.n_intervals)
        tau, noise = self.between_var[t], self.noise_var[t]
        prec = 1.0 / tau + n / noise
        self.post_mean = (self.pop_mean[t] / tau + n * self.mean_log / noise) / prec
        self.post_var = 1.0 / prec
        type_total = np.bincount(self.types, weights=self.item_count, minlength=self.n_types)
        self.item_share = np.divide(
            self.item_count, type_total[self.types], out=np.zeros(self.n_items), where=type_total[self.types] > 0
        )
        B = self.backups
        self.type_top = np.full((self.n_types, B), -1, np.int64)
        if B:
            ok = self.active & (self.item_count > 0) & self.consumable[self.types]
            idx = np.flatnonzero(ok)
            idx = idx[np.lexsort((idx, -self.item_count[idx], self.types[idx]))]
            tt = self.types[idx]
            first = np.r_[True, tt[1:] != tt[:-1]] if len(tt) else np.empty(0, bool)
            rank = np.arange(len(tt)) - np.maximum.accumulate(np.where(first, np.arange(len(tt)), 0))
            sel = rank < B
            self.type_top[tt[sel], rank[sel]] = idx[sel]

    def _check_fitted(self) -> None:
        if self.user_start is None:
            raise ValidationError("ReorderModel is not fitted; call fit() or from_arrays() first", "model")

    # ---- the posterior -----------------------------------------------------------------------
    def posterior(self, users, types) -> CyclePosterior:
        """Posterior of each (users[i], types[i])'s log cycle in days; a pair without purchases
        (or an unknown user) gets the type's population prior. ``types`` must be consumable."""
        self._check_fitted()
        users, types = np.atleast_1d(np.asarray(users)), np.atleast_1d(np.asarray(types))
        if users.shape != types.shape or users.ndim != 1:
            raise ValidationError(
                f"users and types must be 1-D of one length, got {users.shape} and {types.shape}", "types"
            )
        types = self._check_types(types)
        p = self._pair_index(users, types)
        found = p >= 0
        q = np.maximum(p, 0)
        n = np.where(found, self.n_intervals[q] if len(self.n_intervals) else 0, 0)
        mean = np.where(found, self.post_mean[q] if len(self.post_mean) else 0.0, self.pop_mean[types])
        var = np.where(found, self.post_var[q] if len(self.post_var) else 0.0, self.between_var[types])
        tau, noise = self.between_var[types], self.noise_var[types]
        return CyclePosterior(
            mean=mean,
            sd=np.sqrt(var),
            predictive_sd=np.sqrt(var + noise),
            n_intervals=n,
            weight=(n * tau / (n * tau + noise)) if self.personal else np.zeros(len(n)),
        )

    def _check_types(self, types) -> np.ndarray:
        if types.size and not np.issubdtype(types.dtype, np.integer):
            raise ValidationError(f"types must be integers, got {types.dtype}", "types")
        types = types.astype(np.int64)
        if types.size and (types.min() < 0 or types.max() >= self.n_types or not self.consumable[types].all()):
            bad = types[(types < 0) | (types >= self.n_types)]
            bad = bad if len(bad) else types[~self.consumable[types]]
            raise ValidationError(
                f"types must be consumable types in [0, {self.n_types}), found {int(bad[0])}", "types"
            )
        return types

    def _pair_index(self, users: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Index of each (user, type) pair, -1 where it has no purchase or the user is unknown."""
        users = self._users(users)
        known = (users >= 0) & (users < self.n_users)
        key = np.where(known, users * self.n_types + types, -1)
        pair_key = self.pair_user * self.n_types + self.pair_type
        i = np.searchsorted(pair_key, key)
        hit = known & (i < len(pair_key))
        hit[hit] = pair_key[i[hit]] == key[hit]
        return np.where(hit, i, -1)

    @staticmethod
    def _users(users) -> np.ndarray:
        users = np.atleast_1d(np.asarray(users))
        if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
            raise ValidationError(f"users must be a 1-D integer array, got {users.dtype} {users.shape}", "users")
        return users.astype(np.int64)

    # ---- due-ness ----------------------------------------------------------------------------
    def _gather(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, pairs): every pair of each user, tagged with the user's position in ``users``."""
        assert self.user_start is not None
        known = (users >= 0) & (users < self.n_users)
        u = np.where(known, users, 0)
        starts = self.user_start[u]
        lens = np.where(known, self.user_start[u + 1] - starts, 0)
        total = int(lens.sum())
        pairs = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return np.repeat(np.arange(len(users)), lens), pairs

    def _due_pairs(self, pairs: np.ndarray, now: np.ndarray, horizon_s: float) -> np.ndarray:
        """P(next occasion in (now, now + h] | none in (last, now]): the predictive lognormal's
        survival S with the type's lapse share pi, ``(1 - pi) (S(a) - S(a + h)) / (pi + (1 - pi) S(a))``."""
        t = self.pair_type[pairs]
        mu = self.post_mean[pairs]
        s = np.sqrt(self.post_var[pairs] + self.noise_var[t])
        age = np.maximum(now - self.last_ts[pairs], 0.0) / DAY_S

        def log_sf(x):
            with np.errstate(divide="ignore"):
                return np.where(x > 0, log_ndtr(-(np.log(np.maximum(x, 1e-300)) - mu) / s), 0.0)

        ls = log_sf(age)
        renew = -np.expm1(log_sf(age + horizon_s / DAY_S) - ls)  # given that the customer has not lapsed
        pi = self.lapse[t]
        alive = (1.0 - pi) * np.exp(ls)
        return np.divide(alive * renew, pi + alive, out=np.zeros(len(pairs)), where=(pi + alive) > 0)

    def _now(self, now, m: int) -> np.ndarray:
        try:
            a = np.asarray(now, dtype=float) if not isinstance(now, bool) else np.array(np.nan)
        except (TypeError, ValueError):
            a = np.array(np.nan)
        if a.ndim > 1 or (a.ndim == 1 and len(a) != m) or not np.isfinite(a).all():
            raise ValidationError(f"now must be a finite number of seconds (or {m} of them), got {now!r}", "now")
        return np.broadcast_to(a, (m,))

    def _horizon(self, horizon_s) -> float:
        if horizon_s is None:
            return self.horizon_s
        _positive(horizon_s, "horizon_s")
        return float(horizon_s)

    def due(self, users, now, horizon_s: float | None = None) -> sp.csr_matrix:
        """(len(users), n_types) csr: the probability that ``users[i]`` buys type t within
        ``(now, now + horizon_s]`` given no purchase of it since their last, for every pair with a
        purchase (stored even when 0); other entries are absent. ``now``: seconds, scalar or (m,)."""
        self._check_fitted()
        users = self._users(users)
        now_a = self._now(now, len(users))
        rows, pairs = self._gather(users)
        p = self._due_pairs(pairs, now_a[rows], self._horizon(horizon_s))
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(users)))]
        return sp.csr_matrix((p, self.pair_type[pairs], indptr), shape=(len(users), self.n_types))

    def context_features(self, users, now, horizon_s: float | None = None) -> np.ndarray:
        """(m,) the largest due probability over each user's consumable types (0 when none)."""
        self._check_fitted()
        users = self._users(users)
        now_a = self._now(now, len(users))
        out = np.zeros(len(users))
        rows, pairs = self._gather(users)
        if len(pairs):  # (most users hold no consumable: nothing to compute on the request path)
            np.maximum.at(out, rows, self._due_pairs(pairs, now_a[rows], self._horizon(horizon_s)))
        return out

    def context_feature(self, user: int, now: float, horizon_s: float | None = None) -> float:
        """The largest due probability over the user's consumable types; 0 for an unknown user."""
        return float(self.context_features([user], now, horizon_s)[0])

    # ---- candidates --------------------------------------------------------------------------
    def candidates_batch(
        self,
        users,
        now,
        N: int,
        exclude: Sequence | None = None,
        session_purchased: Sequence | None = None,
        horizon_s: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)``, each (m, N), best first, padded with -1 and 0: for each due type
        (due probability >= ``min_due``, not bought in the session) its last-bought item and its
        ``backups`` most-bought items, scored by the probability of buying that item within the
        horizon: ``due x (r + (1 - r) share)`` for the last item, ``due x (1 - r) share`` for a
        backup (``r``: the type's repeat rate, ``share``: the item's share of the type's purchases).
        ``exclude`` and ``session_purchased``: one item-index array per user (or None)."""
        self._check_fitted()
        users = self._users(users)
        m = len(users)
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 0:
            raise ValidationError(f"N must be an integer >= 0, got {N!r}", "N")
        now_a = self._now(now, m)
        rows, pairs = self._gather(users)
        if len(pairs) == 0:  # no user here ever bought a consumable
            return np.full((m, N), -1, np.int64), np.zeros((m, N))
        p = self._due_pairs(pairs, now_a[rows], self._horizon(horizon_s))
        t = self.pair_type[pairs]
        T, n_items = self.n_types, self.n_items
        if session_purchased is not None:
            r_s, it_s = self._per_user(session_purchased, m, "session_purchased")
            p = np.where(np.isin(rows * T + t, r_s * T + self.types[it_s]), 0.0, p)
        due = (p >= self.min_due) & (p > 0)
        if not due.any():  # (the usual request: nothing due)
            return np.full((m, N), -1, np.int64), np.zeros((m, N))
        rows, pairs, p, t = rows[due], pairs[due], p[due], t[due]
        r = self.repeat[t]
        last = self.last_item[pairs]
        e_rows = [rows]
        e_items = [last]
        e_scores = [p * (r + (1.0 - r) * self.item_share[last])]
        for b in range(self.backups):
            it = self.type_top[t, b]
            ok = (it >= 0) & (it != last)
            e_rows.append(rows[ok])
            e_items.append(it[ok])
            e_scores.append(p[ok] * (1.0 - r[ok]) * self.item_share[it[ok]])
        er, ei, es = np.concatenate(e_rows), np.concatenate(e_items), np.concatenate(e_scores)
        keep = self.active[ei]
        if exclude is not None:
            r_x, it_x = self._per_user(exclude, m, "exclude")
            keep &= ~np.isin(er * n_items + ei, r_x * n_items + it_x)
        er, ei, es = er[keep], ei[keep], es[keep]
        order = np.lexsort((ei, -es, er))
        er, ei, es = er[order], ei[order], es[order]
        key = er * n_items + ei
        _, first = np.unique(key, return_index=True)  # an item from two types: its best entry
        first.sort()
        er, ei, es = er[first], ei[first], es[first]
        start = np.r_[True, er[1:] != er[:-1]] if len(er) else np.empty(0, bool)
        rank = np.arange(len(er)) - np.maximum.accumulate(np.where(start, np.arange(len(er)), 0))
        sel = rank < N
        ids = np.full((m, N), -1, np.int64)
        scores = np.zeros((m, N))
        ids[er[sel], rank[sel]] = ei[sel]
        scores[er[sel], rank[sel]] = es[sel]
        return ids, scores

    def candidates(
        self, user: int, now: float, N: int, exclude=None, session_purchased=None, horizon_s: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of one user, best first (see :meth:`candidates_batch`)."""
        ids, scores = self.candidates_batch(
            [user],
            now,
            N,
            None if exclude is None else [exclude],
            None if session_purchased is None else [session_purchased],
            horizon_s,
        )
        k = int((ids[0] >= 0).sum())
        return ids[0, :k], scores[0, :k]

    def _per_user(self, lists: Sequence, m: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, items) of one item-index array per user."""
        if len(lists) != m:
            raise ValidationError(f"{name} must hold one item array per user ({m}), got {len(lists)}", name)
        arrs = [np.asarray(a).ravel() for a in lists]
        items = np.concatenate(arrs).astype(np.int64) if arrs else np.empty(0, np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            bad = int(items.min()) if items.min() < 0 else int(items.max())
            raise ValidationError(f"{name} holds item index {bad}, outside [0, {self.n_items})", name)
        return np.repeat(np.arange(m), [len(a) for a in arrs]), items

    # ---- saving --------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` (see :mod:`banditrec.candidates.arrays`)."""
        self._check_fitted()
        out = {
            "types": self.types,
            "consumable": self.consumable,
            "active": self.active,
            "item_count": self.item_count,
            "user_start": self.user_start,
            "pair_type": self.pair_type,
            "last_ts": self.last_ts,
            "last_item": self.last_item,
            "n_intervals": self.n_intervals,
            "mean_log": self.mean_log,
            "pop_mean": self.pop_mean,
            "between_var": self.between_var,
            "noise_var": self.noise_var,
            "repeat": self.repeat,
            "lapse": self.lapse,
        }
        meta = {
            "format": FORMAT,
            "version": 1,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_types": self.n_types,
            "n_pairs": len(self.pair_type),
            "params": self.params,
        }
        return out, meta

    @classmethod
    def from_arrays(cls, arrays, meta) -> ReorderModel:
        model, meta = from_meta(cls, meta, FORMAT)
        U, n, T, P = (meta_int(meta, k) for k in ("n_users", "n_items", "n_types", "n_pairs"))
        model.n_users, model.n_items, model.n_types = U, n, T
        model.types = take(arrays, "types", "i", (n,)).astype(np.int64)
        model.consumable = take(arrays, "consumable", "b", (T,)).copy()
        model.active = take(arrays, "active", "b", (n,)).copy()
        model.item_count = take(arrays, "item_count", "f", (n,)).astype(float)
        start = take(arrays, "user_start", "i", (U + 1,)).astype(np.int64)
        model.pair_type = take(arrays, "pair_type", "i", (P,)).astype(np.int64)
        model.last_ts = take(arrays, "last_ts", "f", (P,)).astype(float)
        model.last_item = take(arrays, "last_item", "i", (P,)).astype(np.int64)
        model.n_intervals = take(arrays, "n_intervals", "i", (P,)).astype(np.int64)
        model.mean_log = take(arrays, "mean_log", "f", (P,)).astype(float)
        model.pop_mean = take(arrays, "pop_mean", "f", (T,)).astype(float)
        model.between_var = take(arrays, "between_var", "f", (T,)).astype(float)
        model.noise_var = take(arrays, "noise_var", "f", (T,)).astype(float)
        model.repeat = take(arrays, "repeat", "f", (T,)).astype(float)
        model.lapse = take(arrays, "lapse", "f", (T,)).astype(float)
        if n and (model.types.min() < 0 or model.types.max() >= T):
            _bad(arrays, "types", f"must be in [0, {T})")
        if start[0] != 0 or start[-1] != P or (np.diff(start) < 0).any():
            _bad(arrays, "user_start", f"must rise from 0 to {P} (the number of pairs)")
        model.pair_user = np.repeat(np.arange(U, dtype=np.int64), np.diff(start))
        if P and (
            model.pair_type.min() < 0 or model.pair_type.max() >= T or not model.consumable[model.pair_type].all()
        ):
            _bad(arrays, "pair_type", f"must hold consumable types in [0, {T})")
        if P and ((np.diff(model.pair_type) <= 0) & (np.diff(model.pair_user) == 0)).any():
            _bad(arrays, "pair_type", "must rise strictly within each user")
        if P and (model.last_item.min() < 0 or model.last_item.max() >= n):
            _bad(arrays, "last_item", f"must be in [0, {n})")
        if P and model.n_intervals.min() < 0:
            _bad(arrays, "n_intervals", "must be >= 0")
        for name in ("between_var", "noise_var"):
            if T and getattr(model, name).min() <= 0:
                _bad(arrays, name, "must be > 0")
        for name in ("repeat", "lapse"):
            if T and ((getattr(model, name) < 0) | (getattr(model, name) > 1)).any():
                _bad(arrays, name, "must be in [0, 1]")
        if n and model.item_count.min() < 0:
            _bad(arrays, "item_count", "must be >= 0")
        model.user_start = start
        model._derive()
        return model


def _bad(arrays, key: str, what: str) -> None:
    name = full_name(arrays, key)
    raise ValidationError(f"array {name!r} {what}", name)


def _positive(v, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (np.isfinite(v) and v > 0):
        raise ValidationError(f"{name} must be a finite number > 0, got {v!r}", name)
