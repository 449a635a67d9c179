"""A user's state as candidate generation sees it, business rules that filter candidates, and
the per-type diversity cap.

Details: docs/candidates.md, "Rules (`candidates/rules.py`)".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError

EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class UserState:
    """Item indices, newest first: what is in the cart, bought and viewed lately. ``view_age_s``
    (seconds since each view) weights views by recency when given; ``segment`` selects the
    popular-in-segment fallback; ``known`` is False for a user the shop has never seen.
    ``user``, ``now`` and ``session_purchased`` feed the per-user sources (latent factors,
    reorder timing)."""

    cart: np.ndarray = field(default_factory=lambda: EMPTY)
    purchased: np.ndarray = field(default_factory=lambda: EMPTY)
    viewed: np.ndarray = field(default_factory=lambda: EMPTY)
    view_age_s: np.ndarray | None = None
    segment: int | None = None
    user: int | None = None  # the user's row in the shop's users (None: unknown), for per-user models
    now: float | None = None  # the request's time (seconds), for time-aware sources (reorder)
    session_purchased: np.ndarray = field(default_factory=lambda: EMPTY)  # bought within the session

    def __post_init__(self):
        for name in ("cart", "purchased", "viewed", "session_purchased"):
            arr = np.asarray(getattr(self, name), dtype=np.int64).ravel()
            object.__setattr__(self, name, arr)
        if self.view_age_s is not None:
            age = np.asarray(self.view_age_s, dtype=float).ravel()
            if len(age) != len(self.viewed):
                raise ValidationError(
                    f"view_age_s needs one age per viewed item ({len(self.viewed)}), got {len(age)}", "view_age_s"
                )
            object.__setattr__(self, "view_age_s", age)

    @property
    def known(self) -> bool:
        return bool(len(self.cart) or len(self.purchased) or len(self.viewed))

    def check(self, n_items: int) -> None:
        for name in ("cart", "purchased", "viewed", "session_purchased"):
            arr = getattr(self, name)
            if len(arr) and (arr.min() < 0 or arr.max() >= n_items):
                raise ValidationError(f"{name} holds item indices outside [0, {n_items})", name)


class Rule(ABC):
    """A business rule. Subclasses define :meth:`banned_among`; :meth:`banned_among_batch`
    answers for many users at once (override it when a vectorized form exists)."""

    @abstractmethod
    def banned_among(self, state: UserState, items: np.ndarray) -> np.ndarray:
        """``(k,)`` bool: whether each of ``items`` (item indices) is banned for ``state``."""

    def banned_among_batch(self, states, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(k,)`` bool: whether ``items[i]`` is banned for ``states[rows[i]]``."""
        out = np.zeros(len(items), dtype=bool)
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(len(states) + 1))
        for r in np.flatnonzero(np.diff(bounds)).tolist():
            at = order[bounds[r] : bounds[r + 1]]
            out[at] = self.banned_among(states[r], items[at])
        return out

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        """``(n_items,)`` bool over the whole catalog."""
        return np.asarray(self.banned_among(state, np.arange(n_items)), dtype=bool)


class OutOfStock(Rule):
    """Bans items whose ``available[j]`` is False; update the array in place (or assign a new
    one) as stock moves."""

    def __init__(self, available):
        self.available = np.asarray(available, dtype=bool)

    def banned_among(self, state: UserState, items: np.ndarray) -> np.ndarray:
        return ~self.available[items]

    def banned_among_batch(self, states, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return ~self.available[items]

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        return ~self.available


class AlreadyBought(Rule):
    """Bans items of a product type the user has bought, unless that type is a consumable
    (``consumable_types[t]`` True): nobody needs a second camera, everybody more coffee."""

    def __init__(self, item_types, consumable_types=None):
        self.item_types = np.asarray(item_types, dtype=np.int64)
        n_types = int(self.item_types.max()) + 1 if len(self.item_types) else 0
        self.consumable = (
            np.zeros(n_types, bool) if consumable_types is None else np.asarray(consumable_types, dtype=bool)
        )
        if len(self.consumable) < n_types:
            raise ValidationError(
                f"consumable_types must cover {n_types} types, got {len(self.consumable)}", "consumable_types"
            )

    def _owned(self, purchased: np.ndarray) -> np.ndarray:
        t = self.item_types[purchased]
        return t[~self.consumable[t]]

    def banned_among(self, state: UserState, items: np.ndarray) -> np.ndarray:
        return np.isin(self.item_types[items], self._owned(state.purchased))

    def banned_among_batch(self, states, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        n_types = len(self.consumable)
        owned = [self._owned(s.purchased) for s in states]
        owner = np.repeat(np.arange(len(states), dtype=np.int64), [len(o) for o in owned])
        if len(owner) == 0:
            return np.zeros(len(items), dtype=bool)
        return np.isin(rows * n_types + self.item_types[items], owner * n_types + np.concatenate(owned))

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        owned = np.zeros(len(self.consumable), bool)
        owned[self.item_types[state.purchased]] = True
        owned &= ~self.consumable
        return owned[self.item_types]


class ExcludeCategories(Rule):
    """Bans every item of the given categories (e.g. a surface that must not show alcohol)."""

    def __init__(self, item_categories, excluded):
        self.item_categories = np.asarray(item_categories)
        self.mask = np.isin(self.item_categories, np.asarray(list(excluded)))

    def banned_among(self, state: UserState, items: np.ndarray) -> np.ndarray:
        return self.mask[items]

    def banned_among_batch(self, states, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.mask[items]

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        return self.mask


class Filters:
    """Any of ``rules`` (each a :class:`Rule`) bans an item."""

    def __init__(self, rules=()):
        self.rules = list(rules)
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Rule):
                raise ValidationError(
                    f"rules[{i}] is a {type(rule).__name__}, not a banditrec.candidates.Rule "
                    "(subclass Rule and define banned_among(state, items))",
                    "rules",
                )

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        """``(n_items,)``: the whole catalog's mask (each rule's :meth:`Rule.banned`)."""
        out = np.zeros(n_items, bool)
        for rule in self.rules:
            b = np.asarray(rule.banned(state, n_items), dtype=bool)
            if b.shape != (n_items,):
                raise ValidationError(
                    f"{type(rule).__name__}.banned returned shape {b.shape}, expected ({n_items},)", "rules"
                )
            out |= b
        return out

    def banned_among(self, state: UserState, items) -> np.ndarray:
        """``(k,)``: whether each of ``items`` is banned for ``state``."""
        items = np.asarray(items, dtype=np.int64)
        return self.banned_among_batch([state], np.zeros(len(items), dtype=np.int64), items)

    def banned_among_batch(self, states, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(k,)``: whether ``items[i]`` is banned for ``states[rows[i]]``; the cost grows with
        ``k``, not with the catalog."""
        out = np.zeros(len(items), bool)
        for rule in self.rules:
            b = np.asarray(rule.banned_among_batch(states, rows, items), dtype=bool)
            if b.shape != out.shape:
                raise ValidationError(
                    f"{type(rule).__name__}.banned_among_batch returned shape {b.shape}, expected {out.shape}", "rules"
                )
            out |= b
        return out


def diversify(
    ids: np.ndarray, scores: np.ndarray, types: np.ndarray, N: int, *, max_per_type: int, type_decay: float = 0.7
) -> np.ndarray:
    """Positions into ``ids`` of the ``N`` items to keep, in output order.

    At most ``max_per_type`` items of one product type; and the r-th item of a type (0-based,
    by score) counts ``score x type_decay ** r``, so the list spreads across types: the best SD
    card, the best tripod and the best bag before a second SD card. ``type_decay = 1`` keeps
    only the cap. Ties keep the input order.
    """
    ids = np.asarray(ids)
    scores = np.asarray(scores)
    order = np.lexsort((np.arange(len(ids)), -scores))
    pick = diversify_sorted(
        np.zeros(len(ids), dtype=np.int64),
        scores[order],
        np.asarray(types)[ids[order]],
        N,
        max_per_type=max_per_type,
        type_decay=type_decay,
    )
    return order[pick]


def diversify_sorted(
    rows: np.ndarray,
    scores: np.ndarray,
    types: np.ndarray,
    N: int,
    *,
    max_per_type: int,
    type_decay: float = 0.7,
    return_adjusted: bool = False,
):
    """:func:`diversify` for many users at once. Entries are sorted by ``rows`` (ascending),
    then by decreasing score (ties in the order wanted); ``types[i]`` is entry i's product type.
    Returns the positions kept, by row, each row's in output order (at most ``N`` per row), and
    with ``return_adjusted`` their adjusted scores ``score x type_decay ** rank``."""
    if max_per_type < 1:
        raise ValidationError(f"max_per_type must be >= 1, got {max_per_type!r}", "max_per_type")
    k = len(rows)
    if k == 0:
        empty = np.empty(0, dtype=np.int64)
        return (empty, np.empty(0)) if return_adjusted else empty
    pos = np.arange(k)
    one_row = rows[0] == rows[-1]
    group = types if one_row else rows * (int(types.max()) + 1) + types
    by_type = np.argsort(group, kind="stable")  # rank of each entry within its (row, type), by score
    g = group[by_type]
    first = np.ones(k, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(first, pos, 0))
    rank = np.empty(k, dtype=np.int64)
    rank[by_type] = pos - start
    keep = np.flatnonzero(rank < max_per_type)
    adjusted = scores[keep] * type_decay ** rank[keep]
    # by row, then decreasing adjusted score; the stable sort keeps ties in input order
    o = np.argsort(-adjusted, kind="stable") if one_row else np.lexsort((-adjusted, rows[keep]))
    final = keep[o]
    r = rows[final]
    place = pos[: len(final)] - np.searchsorted(r, r)
    top = place < N
    if return_adjusted:
        return final[top], adjusted[o][top]
    return final[top]
