"""The catalog: items with a product type, a latent taste vector, a bias, a price and a royalty."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ItemArrays:
    """What every simulated catalog publishes: item ids ``i0 .. i{n-1}`` and their ``latent``
    vectors as features (a subclass holds ``bias (n,)`` and ``latent (n, d)``)."""

    bias: np.ndarray
    latent: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.bias)

    @property
    def item_ids(self) -> list[str]:
        return [f"i{i}" for i in range(self.n_items)]

    @property
    def features(self) -> np.ndarray:
        return self.latent


@dataclass(frozen=True)
class Catalog(ItemArrays):
    """Struct of arrays, one entry per item.

    ``latent (n, dim)``: taste vector; it is also what the shop publishes as item features
    (think of a learned embedding of the item's metadata). ``bias (n,)``: appeal every
    customer shares, *not* published. ``product_type (n,)``, ``price (n,)``.

    ``royalty (n,)``: the royalty the shop pays the rights holder per sale of the item,
    ``royalty_j = price_j * share_j`` with ``share_j ~ U(0.05, 0.35)`` drawn independently per
    item (think of books or music licensed at a negotiated rate). It does not enter the click
    model; it is a business column (the shop keeps ``price - royalty`` per sale).
    """

    latent: np.ndarray
    bias: np.ndarray
    product_type: np.ndarray
    price: np.ndarray
    royalty: np.ndarray


def make_catalog(n_items: int, n_types: int, dim: int, rng: np.random.Generator) -> Catalog:
    """Items cluster around their type's centre; biases and log-prices are normal; each item's
    royalty is a uniform share in [0.05, 0.35) of its price.

    The royalty shares are drawn last, after every other draw from ``rng``, so adding them left
    every other array of a seed's catalog (and so the customers, histories and clicks the shop
    builds from it) exactly as it was."""
    centres = rng.normal(0.0, 1.0, size=(n_types, dim))
    product_type = rng.integers(0, n_types, size=n_items)
    latent = centres[product_type] + rng.normal(0.0, 0.5, size=(n_items, dim))
    bias = rng.normal(0.0, 0.5, size=n_items)
    price = np.round(np.exp(rng.normal(3.0, 0.8, size=n_items)), 2)
    royalty = price * rng.uniform(0.05, 0.35, size=n_items)  # keep last: see the docstring
    return Catalog(latent=latent, bias=bias, product_type=product_type, price=price, royalty=royalty)
