"""The static world of the retail simulator: a catalog with a complement graph, and customers.

Both are structs of arrays built from one Generator each; nothing here changes during a
simulation (stock, satisfaction, carts ... live in :mod:`simulator.state`). Equations are in
``docs/simulator.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import ItemArrays
from .config import DEVICES, SimConfig

DEVICE_SHARES = (0.4, 0.45, 0.15)


@dataclass(frozen=True)
class RetailCatalog(ItemArrays):
    """One entry per item unless stated; ``complement`` is per product type.

    latent (n, d) float32 : taste vector, also published as the item's features
    bias (n,) : appeal every customer shares (hidden)
    product_type (n,), category (n,) : int; ``type_category (T,)`` maps type to category
    price, margin (n,) ; columns : {name: (n,)} extra business columns (e.g. royalty)
    gateway (n,) bool : buying one raises the buyer's visit rate and lowers churn
    brand (n,), title (n,) : metadata; launch_day (n,) : new items (a share new_item_share)
        launch on days 0 .. launch_days - 1 and have no pre-period history
    consumable (T,) bool, reorder_days (T,) int : consumable types are bought again on a cycle
    complement (T, T) float32 : weight of type u as a complement of type t at [t, u]; directed
        (from the pricier type to the cheaper) so complement[t, u] > 0 implies complement[u, t] == 0
    """

    latent: np.ndarray
    bias: np.ndarray
    product_type: np.ndarray
    category: np.ndarray
    type_category: np.ndarray
    price: np.ndarray
    margin: np.ndarray
    columns: dict
    gateway: np.ndarray
    consumable: np.ndarray
    reorder_days: np.ndarray
    complement: np.ndarray
    log_price_ref: float
    brand: np.ndarray  # (n,) int: brand index (brands belong to a category)
    title: tuple  # (n,) str: words naming the category, type, brand and a model (metadata for cold start)
    launch_day: np.ndarray  # (n,) int32: first day the item is sold; new items launch on day 0
    type_order: np.ndarray  # item indices sorted by type
    type_start: np.ndarray  # (T + 1,) offsets of each type in type_order

    @property
    def n_types(self) -> int:
        return len(self.consumable)

    @property
    def consumable_column(self) -> np.ndarray:
        """(T,) int: each consumable type's column in per-customer consumable arrays, -1 for others."""
        return np.where(self.consumable, np.cumsum(self.consumable) - 1, -1)

    def items_of_type(self, t: int) -> np.ndarray:
        return self.type_order[self.type_start[t] : self.type_start[t + 1]]

    def random_item_of_type(self, types: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A uniformly chosen item of each type in ``types``, given uniforms ``u`` in [0, 1)."""
        start = self.type_start[types]
        count = self.type_start[types + 1] - start
        return self.type_order[start + np.minimum((u * count).astype(np.int64), count - 1)]


def make_retail_catalog(c: SimConfig, rng: np.random.Generator) -> RetailCatalog:
    n, T, d = c.n_items, c.n_types, c.dim
    type_category = rng.permutation(np.arange(T) % c.n_categories)
    cat_centre = rng.normal(0.0, 1.0, size=(c.n_categories, d))
    type_centre = 0.6 * cat_centre[type_category] + 0.8 * rng.normal(0.0, 1.0, size=(T, d))
    product_type = rng.permutation(np.arange(n) % T)  # every type has items
    latent = (type_centre[product_type] + rng.normal(0.0, 0.5, size=(n, d))).astype(np.float32)
    bias = rng.normal(0.0, c.bias_sd, size=n)
    type_log_price = rng.normal(c.price_log_mean, c.price_log_sd, size=T)
    gateway = rng.random(n) < c.gateway_share
    log_price = type_log_price[product_type] + rng.normal(0.0, c.item_price_log_sd, size=n)
    price = np.maximum(np.round(np.exp(log_price) * np.where(gateway, c.gateway_price_factor, 1.0), 2), 0.5)
    margin = np.round(price * rng.uniform(c.margin_rate_low, c.margin_rate_high, size=n), 2)
    columns = {
        name: np.round(price * rng.uniform(0.0, c.extra_column_max_share, size=n), 2) for name in c.extra_columns
    }
    consumable = rng.random(T) < c.consumable_share
    reorder_days = rng.integers(c.reorder_days_low, c.reorder_days_high + 1, size=T)
    complement = _complement_graph(T, type_category, type_log_price, c.complements_per_type, rng)
    category = type_category[product_type]
    brand = category * c.brands_per_category + rng.integers(0, c.brands_per_category, size=n)
    title = _titles(product_type, type_category, brand, rng)
    u = rng.random(n)
    new = u < c.new_item_share  # new items; u / share is uniform on [0, 1) among them: their launch day
    launch_day = np.where(
        new, np.floor(np.where(new, u, 0.0) / max(c.new_item_share, 1e-300) * c.launch_days), -(1 << 30)
    ).astype(np.int32)
    type_order = np.argsort(product_type, kind="stable")
    type_start = np.r_[0, np.cumsum(np.bincount(product_type, minlength=T))]
    return RetailCatalog(
        latent=latent,
        bias=bias,
        product_type=product_type,
        category=category,
        brand=brand,
        title=title,
        launch_day=launch_day,
        type_category=type_category,
        price=price,
        margin=margin,
        columns=columns,
        gateway=gateway,
        consumable=consumable,
        reorder_days=reorder_days,
        complement=complement,
        log_price_ref=float(np.median(np.log(price))),
        type_order=type_order,
        type_start=type_start,
    )


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "ha", "je", "bo")


def _word(i: int, salt: int) -> str:
    """A pronounceable made-up word for integer ``i`` (distinct for distinct i within a salt)."""
    i = i * 7 + salt
    out = []
    for _ in range(3):
        out.append(_SYLLABLES[i % 16])
        i //= 16
    return "".join(out)


def _titles(product_type, type_category, brand, rng) -> tuple:
    """ "<brand> <category word> <type word> <type word 2> <model>" per item: items of a type share
    two words, of a category one, of a brand one; the model number is the item's own."""
    model = rng.integers(100, 1000, size=len(product_type))
    return tuple(
        f"{_word(int(b), 3)} {_word(int(type_category[t]), 1)} {_word(int(t), 2)} {_word(int(t), 5)} m{int(mo)}"
        for t, b, mo in zip(product_type.tolist(), brand.tolist(), model.tolist())
    )


def _complement_graph(T: int, type_category, type_log_price, k: int, rng) -> np.ndarray:
    """Each type draws ``k`` partner types from other categories (or any other type when there
    is one category); each pair becomes one directed edge from the pricier type to the cheaper,
    weight uniform in [0.5, 1]. A pair drawn from both ends keeps one edge."""
    A = np.zeros((T, T), dtype=np.float32)
    if k == 0 or T < 2:
        return A
    # random keys; other-category partners first, self never
    keys = rng.random((T, T)) + np.where(type_category[:, None] == type_category[None, :], 1.0, 0.0)
    np.fill_diagonal(keys, np.inf)
    k = min(k, T - 1)
    partner = np.argpartition(keys, k - 1, axis=1)[:, :k]
    # by key: argpartition's order within the k is numpy's (SIMD sort) choice, and the edge
    # weights below are drawn in this order
    partner = np.take_along_axis(
        partner, np.argsort(np.take_along_axis(keys, partner, axis=1), axis=1, kind="stable"), axis=1
    )
    a = np.repeat(np.arange(T), k)
    b = partner.ravel()
    src = np.where(type_log_price[a] >= type_log_price[b], a, b)
    dst = np.where(type_log_price[a] >= type_log_price[b], b, a)
    A[src, dst] = rng.uniform(0.5, 1.0, size=len(src)).astype(np.float32)
    return A


@dataclass(frozen=True)
class Population:
    """Customers' fixed attributes (hidden unless stated), one entry per customer.

    preference (n, d) float32; observed (n, d) float32 : the published taste profile
    (preference + noise); segment (n,) int16, device (n,) int8; hour (n,) : usual hour of visit;
    price_sensitivity (n,); visit_rate0, churn0 (n,) : a new customer's daily rates
    segment_centre (S, d)
    reorder_cycle (n, Tc) float32 : median days between purchases of each consumable type
        (columns: ``RetailCatalog.consumable_column``); None: the types' ``reorder_days``
    """

    preference: np.ndarray
    observed: np.ndarray
    segment: np.ndarray
    segment_centre: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    price_sensitivity: np.ndarray
    visit_rate0: np.ndarray
    churn0: np.ndarray
    reorder_cycle: np.ndarray | None = None

    @property
    def n_customers(self) -> int:
        return len(self.segment)

    def user_ids(self, index=None) -> list[str]:
        idx = range(self.n_customers) if index is None else np.asarray(index).tolist()
        return [f"u{i}" for i in idx]


def make_population(c: SimConfig, rng: np.random.Generator) -> Population:
    n, d, S = c.n_customers, c.dim, c.n_segments
    segment_centre = rng.normal(0.0, 1.0, size=(S, d))
    segment = rng.integers(0, S, size=n).astype(np.int16)
    scale = c.preference_scale / np.sqrt(d)
    pref = (scale * (0.6 * segment_centre[segment] + 0.8 * rng.normal(0.0, 1.0, size=(n, d)))).astype(np.float32)
    observed = (pref + rng.normal(0.0, c.context_noise / np.sqrt(d), size=(n, d))).astype(np.float32)
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARES).astype(np.int8)
    hour = rng.uniform(0.0, 24.0, size=n)
    sens = c.price_sensitivity * np.exp(rng.normal(0.0, c.price_sensitivity_sd, size=n))
    visit = rng.gamma(2.0, c.visit_rate / 2.0, size=n)
    churn = np.minimum(c.churn_hazard * np.exp(rng.normal(0.0, 0.3, size=n)), 1.0)
    return Population(
        preference=pref,
        observed=observed,
        segment=segment,
        segment_centre=segment_centre,
        device=device,
        hour=hour,
        price_sensitivity=sens,
        visit_rate0=visit,
        churn0=churn,
    )


def make_reorder_cycles(c: SimConfig, catalog: RetailCatalog, n_customers: int, rng: np.random.Generator) -> np.ndarray:
    """(n_customers, Tc) float32: customer i's median reorder interval of consumable type t, in
    days, ``reorder_days[t] exp(reorder_customer_spread z)`` with z standard normal."""
    days = catalog.reorder_days[catalog.consumable].astype(float)
    z = rng.standard_normal((n_customers, len(days)), dtype=np.float32)
    return (days[None, :] * np.exp(c.reorder_customer_spread * z)).astype(np.float32)
