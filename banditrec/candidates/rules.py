"""A user's state as candidate generation sees it, business rules that filter candidates, and
the per-type diversity cap.

Rules compose: ``Filters([OutOfStock(available), AlreadyBought(types, consumable),
ExcludeCategories(categories, {"adult"})])`` bans an item when any rule bans it. A rule is any
object with ``banned(state, n_items) -> bool array (n_items,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError

EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class UserState:
    """Item indices, newest first: what is in the cart, bought and viewed lately. ``view_age_s``
    (seconds since each view) weights views by recency when given; ``segment`` selects the
    popular-in-segment fallback; ``known`` is False for a user the shop has never seen."""

    cart: np.ndarray = field(default_factory=lambda: EMPTY)
    purchased: np.ndarray = field(default_factory=lambda: EMPTY)
    viewed: np.ndarray = field(default_factory=lambda: EMPTY)
    view_age_s: np.ndarray | None = None
    segment: int | None = None

    def __post_init__(self):
        for name in ("cart", "purchased", "viewed"):
            arr = np.asarray(getattr(self, name), dtype=np.int64).ravel()
            object.__setattr__(self, name, arr)
        if self.view_age_s is not None:
            age = np.asarray(self.view_age_s, dtype=float).ravel()
            if len(age) != len(self.viewed):
                raise ValidationError(f"view_age_s needs one age per viewed item ({len(self.viewed)}), got {len(age)}",
                                      "view_age_s")
            object.__setattr__(self, "view_age_s", age)

    @property
    def known(self) -> bool:
        return bool(len(self.cart) or len(self.purchased) or len(self.viewed))

    def check(self, n_items: int) -> None:
        for name in ("cart", "purchased", "viewed"):
            arr = getattr(self, name)
            if len(arr) and (arr.min() < 0 or arr.max() >= n_items):
                raise ValidationError(f"{name} holds item indices outside [0, {n_items})", name)


class OutOfStock:
    """Bans items whose ``available[j]`` is False; update the array in place (or assign a new
    one) as stock moves."""

    def __init__(self, available):
        self.available = np.asarray(available, dtype=bool)

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        return ~self.available

    def banned_batch(self, states, n_items: int) -> np.ndarray:
        return np.broadcast_to(~self.available, (len(states), n_items))


class AlreadyBought:
    """Bans items of a product type the user has bought, unless that type is a consumable
    (``consumable_types[t]`` True): nobody needs a second camera, everybody more coffee."""

    def __init__(self, item_types, consumable_types=None):
        self.item_types = np.asarray(item_types, dtype=np.int64)
        n_types = int(self.item_types.max()) + 1 if len(self.item_types) else 0
        self.consumable = (np.zeros(n_types, bool) if consumable_types is None
                           else np.asarray(consumable_types, dtype=bool))
        if len(self.consumable) < n_types:
            raise ValidationError(f"consumable_types must cover {n_types} types, got {len(self.consumable)}",
                                  "consumable_types")

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        return self.banned_batch([state], n_items)[0]

    def banned_batch(self, states, n_items: int) -> np.ndarray:
        owned = np.zeros((len(states), len(self.consumable)), bool)
        rows = np.repeat(np.arange(len(states)), [len(s.purchased) for s in states])
        if len(rows):
            owned[rows, self.item_types[np.concatenate([s.purchased for s in states])]] = True
        owned &= ~self.consumable[None, :]
        return owned[:, self.item_types]


class ExcludeCategories:
    """Bans every item of the given categories (e.g. a surface that must not show alcohol)."""

    def __init__(self, item_categories, excluded):
        self.item_categories = np.asarray(item_categories)
        self.mask = np.isin(self.item_categories, np.asarray(list(excluded)))

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        return self.mask

    def banned_batch(self, states, n_items: int) -> np.ndarray:
        return np.broadcast_to(self.mask, (len(states), n_items))


class Filters:
    """Any of ``rules`` bans an item."""

    def __init__(self, rules=()):
        self.rules = list(rules)
        for i, rule in enumerate(self.rules):
            if not callable(getattr(rule, "banned", None)):
                raise ValidationError(f"rules[{i}] has no banned(state, n_items) method", "rules")

    def banned(self, state: UserState, n_items: int) -> np.ndarray:
        out = np.zeros(n_items, bool)
        for rule in self.rules:
            b = np.asarray(rule.banned(state, n_items), dtype=bool)
            if b.shape != (n_items,):
                raise ValidationError(f"{type(rule).__name__}.banned returned shape {b.shape}, expected ({n_items},)",
                                      "rules")
            out |= b
        return out

    def banned_batch(self, states, n_items: int) -> np.ndarray:
        """(m, n_items) for many users: a rule's own ``banned_batch`` when it has one, else its
        ``banned`` per user."""
        out = np.zeros((len(states), n_items), bool)
        for rule in self.rules:
            if hasattr(rule, "banned_batch"):
                b = np.asarray(rule.banned_batch(states, n_items), dtype=bool)
            else:
                b = np.array([rule.banned(s, n_items) for s in states], dtype=bool).reshape(len(states), -1)
            if b.shape != (len(states), n_items):
                raise ValidationError(f"{type(rule).__name__} banned {b.shape[1:]} items, expected ({n_items},)",
                                      "rules")
            out |= b
        return out


def diversify(ids: np.ndarray, scores: np.ndarray, types: np.ndarray, N: int, *, max_per_type: int,
              type_decay: float = 0.7) -> np.ndarray:
    """Positions into ``ids`` of the ``N`` items to keep, in output order.

    At most ``max_per_type`` items of one product type; and the r-th item of a type (0-based,
    by score) counts ``score x type_decay ** r``, so the list spreads across types: the best SD
    card, the best tripod and the best bag before a second SD card. ``type_decay = 1`` keeps
    only the cap. Ties keep the input order.
    """
    if max_per_type < 1:
        raise ValidationError(f"max_per_type must be >= 1, got {max_per_type!r}", "max_per_type")
    ids = np.asarray(ids)
    if len(ids) == 0:
        return np.empty(0, dtype=np.int64)
    t = np.asarray(types)[ids]
    order = np.lexsort((np.arange(len(ids)), -np.asarray(scores)))
    ts = t[order]
    # rank of each item within its type, by score
    by_type = np.lexsort((np.arange(len(order)), ts))
    first = np.r_[True, ts[by_type][1:] != ts[by_type][:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_type] = np.arange(len(order)) - start
    keep = rank < max_per_type
    adjusted = np.asarray(scores)[order] * type_decay ** rank
    pos = order[keep]
    adj = adjusted[keep]
    final = np.lexsort((np.arange(len(pos)), -adj))[:N]
    return pos[final]
