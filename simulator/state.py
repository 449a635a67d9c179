"""What changes during a simulation, as arrays: customers' state, and the shop's stock.

Fixed-size rings hold each customer's recent purchases, views and cart (``-1`` marks an empty
entry), so memory is O(customers x (ring sizes + consumable types)) whatever the number of days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SimConfig

NOT_DUE = np.iinfo(np.int16).max
NOT_WAITING = np.iinfo(np.int32).min  # an item's restock day when it is not waiting (days may be negative)


@dataclass
class CustomerState:
    alive: np.ndarray  # (n,) bool
    satisfaction: np.ndarray  # (n,) float32
    gateway: np.ndarray  # (n,) bool: has bought a gateway item
    purchases: np.ndarray  # (n, R) int32 item, -1 empty
    purchase_day: np.ndarray  # (n, R) int16
    purchase_next: np.ndarray  # (n,) int16 ring pointer
    views: np.ndarray  # (n, V) int32
    view_next: np.ndarray  # (n,) int16
    cart: np.ndarray  # (n, C) int32
    cart_day: np.ndarray  # (n, C) int16
    last_visit: np.ndarray  # (n,) int16, -32768 never
    visits: np.ndarray  # (n,) int32
    orders: np.ndarray  # (n,) int32 visits with a purchase
    revenue: np.ndarray  # (n,) float64
    margin: np.ndarray  # (n,) float64
    ltv: np.ndarray  # (n,) float64: discounted margin within the horizon
    due_day: np.ndarray  # (n, Tc) int16: day each consumable type is next replenished, NOT_DUE when not
    last_consumable: np.ndarray  # (n, Tc) int32: the item of each consumable type bought last, -1 never

    @classmethod
    def new(cls, c: SimConfig, n_consumable: int = 0) -> CustomerState:
        n, R, V, C = c.n_customers, c.recent_purchases, c.recent_views, c.cart_size
        return cls(
            alive=np.ones(n, bool),
            satisfaction=np.zeros(n, np.float32),
            gateway=np.zeros(n, bool),
            purchases=np.full((n, R), -1, np.int32),
            purchase_day=np.zeros((n, R), np.int16),
            purchase_next=np.zeros(n, np.int16),
            views=np.full((n, V), -1, np.int32),
            view_next=np.zeros(n, np.int16),
            cart=np.full((n, C), -1, np.int32),
            cart_day=np.zeros((n, C), np.int16),
            last_visit=np.full(n, -32768, np.int16),
            visits=np.zeros(n, np.int32),
            orders=np.zeros(n, np.int32),
            revenue=np.zeros(n),
            margin=np.zeros(n),
            ltv=np.zeros(n),
            due_day=np.full((n, n_consumable), NOT_DUE, np.int16),
            last_consumable=np.full((n, n_consumable), -1, np.int32),
        )

    def copy(self) -> CustomerState:
        return CustomerState(**{k: v.copy() for k, v in vars(self).items()})

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values())


def push(
    ring: np.ndarray,
    pointer: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    stamp: np.ndarray | None = None,
    stamp_value=None,
) -> None:
    """Append ``values[j]`` to the ring of customer ``rows[j]``, in order (a customer may appear
    several times; their entries go in one after the other)."""
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], values[order]
    # occurrence number of each row within the batch: 0, 1, 2, ... per customer
    first = np.r_[True, rows[1:] != rows[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    occ = np.arange(len(rows)) - start
    size = ring.shape[1]
    slot = (pointer[rows].astype(np.int64) + occ) % size
    ring[rows, slot] = values
    if stamp is not None:
        stamp[rows, slot] = stamp_value if np.isscalar(stamp_value) else np.asarray(stamp_value)[order]
    counts = np.bincount(rows, minlength=0)
    uniq = np.flatnonzero(counts)
    pointer[uniq] = (pointer[uniq].astype(np.int64) + counts[uniq]) % size


@dataclass
class Stock:
    """Units in stock per item; an item that runs out comes back ``restock_days`` later on average."""

    units: np.ndarray  # (n_items,) int32
    restock_day: np.ndarray  # (n_items,) int32, NOT_WAITING when not waiting

    @classmethod
    def new(
        cls, c: SimConfig, rng: np.random.Generator, launch_day: np.ndarray | None = None, start_day: int = 0
    ) -> Stock:
        """Random initial units; an item launching after ``start_day`` has none until its
        launch day."""
        units = rng.integers(1, c.stock_level + 1, size=c.n_items).astype(np.int32)
        restock = np.full(c.n_items, NOT_WAITING, np.int32)
        if launch_day is not None:
            later = launch_day > start_day
            units[later] = 0
            restock[later] = launch_day[later]
        return cls(units=units, restock_day=restock)

    @property
    def available(self) -> np.ndarray:
        return self.units > 0

    def take(self, items: np.ndarray) -> None:
        """Sell one unit of each of ``items`` (repeats allowed); never below zero."""
        if len(items):
            np.subtract.at(self.units, items, 1)
            np.maximum(self.units, 0, out=self.units)

    def advance(self, day: int, c: SimConfig, rng: np.random.Generator) -> None:
        out = (self.units == 0) & (self.restock_day == NOT_WAITING)
        if out.any():
            self.restock_day[out] = day + rng.geometric(1.0 / c.restock_days, size=int(out.sum()))
        back = (self.restock_day != NOT_WAITING) & (self.restock_day <= day + 1)
        self.units[back] = c.stock_level
        self.restock_day[back] = NOT_WAITING
