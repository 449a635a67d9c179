"""Interaction events of the simulated shop, as a struct of arrays.

Each event is (customer, item, day, session, kind) with kind 0 = view, 1 = cart, 2 = purchase;
events are in time order, and a session is one visit. These are the three signals that
complementary-product models learn from: co-views (two items viewed in one session:
substitutes), view-then-buy (an item viewed, another bought in the session) and co-purchases
(two items bought in one session; the first bought tends to be the "anchor", the later one
its complement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from banditrec.errors import ValidationError

DAY_S = 86_400.0

VIEW, CART, PURCHASE = 0, 1, 2
KIND_NAMES = {"view": VIEW, "cart": CART, "purchase": PURCHASE}


@dataclass(frozen=True)
class History:
    customer: np.ndarray  # (E,) int64
    item: np.ndarray  # (E,) int64
    day: np.ndarray  # (E,) int32
    session: np.ndarray  # (E,) int64
    kind: np.ndarray  # (E,) int8
    n_customers: int
    n_items: int

    @classmethod
    def concat(cls, parts: list[tuple], n_customers: int, n_items: int) -> History:
        if parts:
            cols = [np.concatenate(c) for c in zip(*parts)]
        else:
            cols = [
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                np.empty(0, np.int32),
                np.empty(0, np.int64),
                np.empty(0, np.int8),
            ]
        return cls(
            cols[0].astype(np.int64),
            cols[1].astype(np.int64),
            cols[2].astype(np.int32),
            cols[3].astype(np.int64),
            cols[4].astype(np.int8),
            n_customers,
            n_items,
        )

    def __len__(self) -> int:
        return len(self.item)

    def _kind(self, kind) -> int:
        if isinstance(kind, str):
            if kind not in KIND_NAMES:
                raise ValidationError(f"kind must be one of {', '.join(KIND_NAMES)}; got {kind!r}", "kind")
            return KIND_NAMES[kind]
        return int(kind)

    def select(self, kind=None, *, before_day: int | None = None, from_day: int | None = None) -> History:
        keep = np.ones(len(self), bool)
        if kind is not None:
            keep &= self.kind == self._kind(kind)
        if before_day is not None:
            keep &= self.day < before_day
        if from_day is not None:
            keep &= self.day >= from_day
        return History(
            self.customer[keep],
            self.item[keep],
            self.day[keep],
            self.session[keep],
            self.kind[keep],
            self.n_customers,
            self.n_items,
        )

    def user_items(
        self, kind="purchase", *, half_life_days: float | None = None, now: int | None = None
    ) -> sp.csr_matrix:
        """(n_customers, n_items) csr of event counts of ``kind`` (or all kinds with ``None``),
        each weighted 0.5 ** ((now - day) / half_life_days) when a half-life is given."""
        h = self if kind is None else self.select(kind)
        w = np.ones(len(h))
        if half_life_days is not None:
            now = int(self.day.max()) + 1 if now is None and len(self.day) else (now or 0)
            w = 0.5 ** ((now - h.day) / float(half_life_days))
        m = sp.csr_matrix((w, (h.customer, h.item)), shape=(self.n_customers, self.n_items))
        m.sum_duplicates()
        return m

    def ordered_pairs(self, kind="purchase") -> tuple[np.ndarray, np.ndarray]:
        """(first, later): every ordered pair of distinct items with events of ``kind`` in one
        session, the first strictly before the later (by event order)."""
        h = self.select(kind)
        order = np.argsort(h.session, kind="stable")  # events are in time order within a session
        s, it = h.session[order], h.item[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        sizes = np.diff(np.r_[starts, len(s)])
        firsts, laters = [], []
        for gap in range(1, int(sizes.max(initial=1))):
            idx = np.flatnonzero(np.r_[s[gap:] == s[:-gap], np.zeros(gap, bool)])
            firsts.append(it[idx])
            laters.append(it[idx + gap])
        if not firsts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        a, b = np.concatenate(firsts), np.concatenate(laters)
        keep = a != b
        return a[keep], b[keep]


def event_times(h, base_s: float) -> np.ndarray:
    """``base_s + day x DAY_S`` plus a millisecond per event: their order survives a sort by time."""
    return base_s + h.day * DAY_S + np.arange(len(h)) * 1e-3
