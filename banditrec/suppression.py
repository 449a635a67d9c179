"""What a decision must leave out before the policy scores: the global block list and the user's
unexpired hides (an item, or every item of its type). Details: docs/feedback.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from .store import DecisionLog


class ItemTable(Protocol):
    """What suppression reads of a catalog (:class:`banditrec.engine.ItemTable`)."""

    @property
    def types(self) -> np.ndarray | None: ...

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray: ...


_NONE = np.empty(0, dtype=np.int64)
_NONE.setflags(write=False)


class _BlockedIndex(NamedTuple):
    ids: frozenset  # the log's blocked ids, compared by identity
    items: object  # the catalog the indices are of, by identity
    indices: np.ndarray


class Suppressor:
    """Catalog indices a decision for a user may not show, read from the log per decision.

    The block list costs one ``PRAGMA data_version`` per call while it is unchanged
    (:meth:`DecisionLog.blocked_ids`); its catalog indices are recomputed only when the list or
    the catalog changes. Hides cost one indexed query on the user's unexpired hides.
    """

    def __init__(self):
        self._blocked = _BlockedIndex(frozenset(), None, _NONE)
        self._types: tuple | None = None  # (catalog, item indices sorted by type, each type's bounds)

    def blocked(self, log: DecisionLog, items: ItemTable) -> np.ndarray:
        """Sorted catalog indices of the blocked items (ids the catalog lacks are left out)."""
        ids = log.blocked_ids()
        cached = self._blocked
        if cached.ids is ids and cached.items is items:
            return cached.indices
        index = _NONE
        if ids:
            found = items.lookup(sorted(ids))
            index = np.unique(found[found >= 0])
            index.setflags(write=False)
        self._blocked = _BlockedIndex(ids, items, index)
        return index

    def hidden(self, log: DecisionLog, items: ItemTable, user_id: str, clock: Callable[[], float]) -> np.ndarray:
        """Sorted catalog indices ``user_id`` hid and whose hide has not expired at ``clock()``:
        the item, or with scope ``type`` every item of its type (:attr:`ItemTable.types`). The
        clock is read only for a user who ever hid something."""
        expiry = log.hide_expiry(user_id)
        if expiry is None:
            return _NONE
        now = float(clock())
        if expiry <= now:
            return _NONE
        hides = log.hidden_items(user_id, now)
        if not hides:
            return _NONE
        found = items.lookup([h.item_id for h in hides]).tolist()
        single, types = [], set()
        for hide, j in zip(hides, found):
            if j < 0:  # not in this catalog
                continue
            if hide.scope == "type" and items.types is not None:
                types.add(int(items.types[j]))
            else:  # an item, or a type hide in a catalog without types: the item itself
                single.append(j)
        parts = [np.asarray(single, dtype=np.int64), *(self._of_type(items, t) for t in types)]
        return np.unique(np.concatenate(parts))

    def _of_type(self, items: ItemTable, code: int) -> np.ndarray:
        """The catalog indices of the items of type ``code`` (a slice of a per-catalog index)."""
        cached = self._types
        if cached is None or cached[0] is not items:
            types = np.asarray(items.types)
            order = np.argsort(types, kind="stable")
            bounds = np.searchsorted(types[order], np.arange(int(types.max(initial=0)) + 2))
            cached = self._types = (items, order, bounds)
        _, order, bounds = cached
        if not 0 <= code < len(bounds) - 1:
            return _NONE
        return order[bounds[code] : bounds[code + 1]]

    def __call__(self, log: DecisionLog, items: ItemTable, user_id: str, clock: Callable[[], float]) -> np.ndarray:
        """Sorted catalog indices of ``log``'s blocked items, and of those hidden for ``user_id``
        at ``clock()``."""
        blocked = self.blocked(log, items)
        hidden = self.hidden(log, items, user_id, clock)
        if not len(hidden):
            return blocked
        return np.union1d(blocked, hidden) if len(blocked) else hidden


def drop_pinned(pin_idx: np.ndarray, pin_ids: list, suppressed: np.ndarray) -> tuple[np.ndarray, list]:
    """The pinned items that are not suppressed, in their order (a dropped pin's slot goes to the
    policy)."""
    if not len(suppressed) or not len(pin_idx):
        return pin_idx, pin_ids
    keep = ~np.isin(pin_idx, suppressed)
    if keep.all():
        return pin_idx, pin_ids
    return pin_idx[keep], [p for p, k in zip(pin_ids, keep.tolist()) if k]
