"""Interaction events and the item-pair signals learned from them: co-view, view-then-buy and
co-purchase, each counted in users.

Details: docs/candidates.md, "Pair signals (`candidates/signals.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from .keys import distinct, distinct_inverse

VIEW, CART, PURCHASE = 0, 1, 2
KINDS = {"view": VIEW, "cart": CART, "purchase": PURCHASE}
DAY_S = 86_400.0
MAX_PAIR_DISTANCE = 100  # see pair_signals


@dataclass(frozen=True)
class Interactions:
    user: np.ndarray  # (E,) int64 user index
    item: np.ndarray  # (E,) int64 item index
    ts: np.ndarray  # (E,) float seconds
    kind: np.ndarray  # (E,) int8
    session: np.ndarray  # (E,) int64
    n_users: int
    n_items: int

    @classmethod
    def from_arrays(
        cls,
        user,
        item,
        ts,
        kind,
        *,
        session=None,
        n_users: int | None = None,
        n_items: int | None = None,
        session_gap_s: float = 1800.0,
    ) -> Interactions:
        """Events from arrays (any order; they are sorted by time). ``kind`` holds codes 0/1/2 or
        the names view/cart/purchase. Without ``session``, a user's session ends after
        ``session_gap_s`` seconds without an event."""
        user = np.asarray(user, dtype=np.int64)
        item = np.asarray(item, dtype=np.int64)
        ts = np.asarray(ts, dtype=float)
        kind = np.asarray(kind)
        if kind.dtype.kind in "UO":
            codes = np.array([KINDS.get(k, -1) for k in kind.tolist()], dtype=np.int8)
            if len(codes) and codes.min() < 0:
                bad = str(kind[int(np.argmin(codes))])
                raise ValidationError(f"kind must be one of view, cart, purchase; got {bad!r}", "kind")
            kind = codes
        kind = kind.astype(np.int8)
        n = len(user)
        for name, arr in (("item", item), ("ts", ts), ("kind", kind)):
            if len(arr) != n:
                raise ValidationError(f"user and {name} must have the same length, got {n} and {len(arr)}", name)
        if n and (user.min() < 0 or item.min() < 0):
            raise ValidationError("user and item indices must be >= 0", "user" if user.min() < 0 else "item")
        if n and not np.isfinite(ts).all():
            raise ValidationError("ts must be finite", "ts")
        if n and ((kind < 0) | (kind > 2)).any():
            raise ValidationError("kind codes must be 0 (view), 1 (cart) or 2 (purchase)", "kind")
        n_users = int(user.max()) + 1 if n_users is None and n else (n_users or 0)
        n_items = int(item.max()) + 1 if n_items is None and n else (n_items or 0)
        if n and (user.max() >= n_users or item.max() >= n_items):
            raise ValidationError(f"indices exceed n_users={n_users} or n_items={n_items}", "item")
        order = np.lexsort((np.arange(n), ts, user))  # by user, then time, then input order
        user, item, ts, kind = user[order], item[order], ts[order], kind[order]
        if session is None:
            new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > session_gap_s)] if n else np.empty(0, bool)
            session = np.cumsum(new) - 1
        else:
            session = np.asarray(session, dtype=np.int64)[order]
        return cls(user, item, ts, kind, session.astype(np.int64), int(n_users), int(n_items))

    def __len__(self) -> int:
        return len(self.item)

    def select(self, keep: np.ndarray) -> Interactions:
        return Interactions(
            self.user[keep],
            self.item[keep],
            self.ts[keep],
            self.kind[keep],
            self.session[keep],
            self.n_users,
            self.n_items,
        )

    def of_kind(self, kind) -> Interactions:
        code = KINDS[kind] if isinstance(kind, str) else int(kind)
        return self.select(self.kind == code)

    def user_items(self, kind=None, *, half_life_s: float | None = None, now: float | None = None) -> sp.csr_matrix:
        """(n_users, n_items) csr of event counts (of ``kind``, or all), each weighted
        ``0.5 ** ((now - ts) / half_life_s)`` when a half-life is given (``now``: the latest ts)."""
        e = self if kind is None else self.of_kind(kind)
        w = np.ones(len(e))
        if half_life_s is not None:
            if not half_life_s > 0:
                raise ValidationError(f"half_life_s must be > 0, got {half_life_s!r}", "half_life_s")
            now = float(self.ts.max()) if now is None and len(self) else (now or 0.0)
            w = 0.5 ** ((now - e.ts) / half_life_s)
        m = sp.csr_matrix((w, (e.user, e.item)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        return m


def ordered_pairs(
    group: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    *,
    window_s: float | None = None,
    first_mask: np.ndarray | None = None,
    later_mask: np.ndarray | None = None,
    max_distance: int | None = None,
):
    """Pairs (i, j) of event positions with the same ``group``, i strictly before j (events are
    sorted by group, then time), ``ts[j] - ts[i] <= window_s`` when given, ``j - i <=
    max_distance`` when given, event i in ``first_mask`` and j in ``later_mask``. Returns (items
    first, items later, group). Loops over the distance ``j - i``, each pass over the events
    that still have a partner that far away in their group (and within the window), so the
    work is the number of pairs plus the events, not the longest group times the events."""
    n = len(item)
    e = np.empty(0, np.int64)
    if n == 0:
        return e, e, e
    bounds = np.r_[np.flatnonzero(group[1:] != group[:-1]) + 1, n]
    end = np.repeat(bounds, np.diff(np.r_[0, bounds]))  # one past the last event of each event's group
    alive = np.flatnonzero(end - np.arange(n) > 1)
    if first_mask is not None:
        alive = alive[first_mask[alive]]
    firsts, laters, groups = [], [], []
    gap = 1
    while len(alive) and (max_distance is None or gap <= max_distance):
        alive = alive[alive + gap < end[alive]]
        j = alive + gap
        if window_s is not None:  # times rise within a group: a pair out of the window stays out
            inside = (ts[j] - ts[alive]) <= window_s
            alive, j = alive[inside], j[inside]
        i = alive
        if later_mask is not None:
            ok = later_mask[j]
            i, j = i[ok], j[ok]
        firsts.append(item[i])
        laters.append(item[j])
        groups.append(group[i])
        gap += 1
    if not firsts:
        return e, e, e
    return np.concatenate(firsts), np.concatenate(laters), np.concatenate(groups)


def _user_pair_counts(a, b, who, n_items: int) -> sp.csr_matrix:
    """(n_items, n_items) count of distinct ``who`` per ordered pair (a, b), a != b."""
    keep = a != b
    a, b, who = a[keep].astype(np.int64), b[keep].astype(np.int64), who[keep].astype(np.int64)
    if len(a):
        n = max(n_items, 1)
        pair = a * n + b
        if (int(who.max()) + 1) * n * n < 2**63:
            key = distinct(who * (n * n) + pair) % (n * n)
        else:  # too many (user, pair) combinations for one int64 key: number the pairs first
            pairs, code = distinct_inverse(pair)
            key = pairs[distinct(who * len(pairs) + code) % len(pairs)]
        a, b = key // n, key % n
    return sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n_items, n_items))


@dataclass(frozen=True)
class PairSignals:
    """The three signals as (n_items, n_items) csr matrices of user counts (docs/candidates.md,
    "Pair signals")."""

    co_view: sp.csr_matrix  # symmetric
    view_then_buy: sp.csr_matrix  # [viewed, bought]
    co_purchase: sp.csr_matrix  # [bought first, bought later]
    purchases: np.ndarray  # (n_items,) users who bought each item

    @property
    def substitutes(self) -> sp.csr_matrix:
        """Co-viewed or viewed-then-bought either way: symmetric evidence of substitution."""
        return (self.co_view + self.view_then_buy + self.view_then_buy.T).tocsr()

    def co_purchase_only(self) -> sp.csr_matrix:
        """``co_purchase`` restricted to pairs never co-viewed nor viewed-then-bought (either
        way): what is bought together but not compared is a complement."""
        mask = self.substitutes
        mask.data[:] = 1.0
        out = (self.co_purchase - self.co_purchase.multiply(mask)).tocsr()
        out.eliminate_zeros()
        return out


def pair_signals(
    events: Interactions, *, window_s: float = 30 * DAY_S, max_pair_distance: int | None = MAX_PAIR_DISTANCE
) -> PairSignals:
    """Count the three signals. Co-view and view-then-buy within a session; co-purchase by the
    same user within ``window_s`` seconds, in purchase order.

    ``max_pair_distance``: an event pairs only with the next ``max_pair_distance`` events of
    its session (co-view, view-then-buy), a purchase only with the user's next
    ``max_pair_distance`` purchases (co-purchase); ``None`` pairs all. A heavy session (a
    crawler, a reseller's basket) would otherwise add pairs quadratic in its length; sessions
    shorter than the cap are counted in full.
    """
    n = events.n_items
    if max_pair_distance is not None and (isinstance(max_pair_distance, bool) or max_pair_distance < 1):
        raise ValidationError(
            f"max_pair_distance must be a positive integer or None, got {max_pair_distance!r}", "max_pair_distance"
        )
    s = events
    if len(s) and not _sorted_by(s.session, s.ts):
        s = events.select(np.lexsort((np.arange(len(events)), events.ts, events.session)))
    view, buy = s.kind == VIEW, s.kind == PURCHASE
    a, b, g = ordered_pairs(s.session, s.item, s.ts, first_mask=view, later_mask=view, max_distance=max_pair_distance)
    V = _distinct_user_sym(a, b, _session_user(s, g), n)
    # view-then-buy: viewed a and did NOT buy it, then bought b, which was viewed in that session
    # too (chose b over a). A bought item nobody compared (an SD card added after a camera)
    # is no substitute of the cameras looked at.
    _, at = distinct_inverse(s.session * n + s.item)
    bought_here = np.bincount(at, weights=buy)[at] > 0
    viewed_here = np.bincount(at, weights=view)[at] > 0
    a, b, g = ordered_pairs(
        s.session,
        s.item,
        s.ts,
        first_mask=view & ~bought_here,
        later_mask=buy & viewed_here,
        max_distance=max_pair_distance,
    )
    VB = _user_pair_counts(a, b, _session_user(s, g), n)
    p = events.of_kind(PURCHASE)
    if len(p) and not _sorted_by(p.user, p.ts):
        p = p.select(np.lexsort((np.arange(len(p)), p.ts, p.user)))
    a, b, who = ordered_pairs(p.user, p.item, p.ts, window_s=window_s, max_distance=max_pair_distance)
    P = _user_pair_counts(a, b, who, n)
    buyers = distinct(p.user * n + p.item) % n if len(p) else np.empty(0, np.int64)
    return PairSignals(co_view=V, view_then_buy=VB, co_purchase=P, purchases=np.bincount(buyers, minlength=n))


def _sorted_by(group: np.ndarray, ts: np.ndarray) -> bool:
    """Whether events are sorted by ``group``, then by time."""
    dg = np.diff(group)
    return bool((dg >= 0).all() and (np.diff(ts)[dg == 0] >= 0).all())


def _session_user(s: Interactions, g: np.ndarray) -> np.ndarray:
    """The user of each session id in ``g`` (sessions are sorted in ``s``)."""
    if len(g) == 0:
        return g
    return s.user[np.searchsorted(s.session, g)]


def _distinct_user_sym(a, b, who, n) -> sp.csr_matrix:
    """Symmetric distinct-user counts of unordered pairs {a, b}."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    C = _user_pair_counts(lo, hi, who, n)
    return (C + C.T).tocsr()
