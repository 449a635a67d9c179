"""A small shop: catalog, customers, purchase history and position-biased clicks.

Everything random takes an explicit Generator; one seed builds the same world every time.
The shop knows the truth: :meth:`Shop.expected_reward` is exact, computed from the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from banditrec.errors import ValidationError
from banditrec.validation import as_seed_sequence

from .catalog import Catalog, make_catalog
from .choice import PositionBasedModel
from .customers import Customers, make_customers


@dataclass(frozen=True)
class ShopConfig:
    """The world's size and shape. Every field is validated with a message naming it."""

    n_items: int = 1000
    n_types: int = 20
    n_customers: int = 5000
    dim: int = 6
    context_noise: float = 0.5
    history_purchases: int = 8
    base_logit: float = -3.0
    eta: float = 1.0

    def __post_init__(self):
        for f in ("n_items", "n_types", "n_customers", "dim", "history_purchases"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"ShopConfig.{f} must be a positive integer, got {v!r}", f)
        for f in ("context_noise", "base_logit", "eta"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValidationError(f"ShopConfig.{f} must be a finite number, got {v!r}", f)
        if self.context_noise < 0 or self.eta < 0:
            raise ValidationError("ShopConfig.context_noise and eta must be >= 0", "context_noise")
        if self.history_purchases > self.n_items:
            raise ValidationError(
                f"ShopConfig.history_purchases ({self.history_purchases}) exceeds n_items ({self.n_items})",
                "history_purchases",
            )

    def replace(self, **changes) -> "ShopConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Requests:
    """A batch of carousel requests: who asks, and the context they send."""

    customer: np.ndarray  # (m,) customer indices
    context: np.ndarray  # (m, dim) observed features

    def user_ids(self) -> list[str]:
        return [f"u{c}" for c in self.customer]


class Shop:
    """The simulated shop. ``seed`` builds the world; sampling streams are passed per call."""

    def __init__(self, config: ShopConfig | None = None, seed=0):
        self.config = config or ShopConfig()
        world_rng, history_rng = np.random.default_rng(as_seed_sequence(seed)).spawn(2)
        c = self.config
        cat_rng, cust_rng = world_rng.spawn(2)
        self.catalog: Catalog = make_catalog(c.n_items, c.n_types, c.dim, cat_rng)
        self.customers: Customers = make_customers(c.n_customers, c.dim, c.context_noise, cust_rng)
        self.model = PositionBasedModel(self.catalog, self.customers, c.base_logit, c.eta)
        self.history: sp.csr_matrix = self._purchase_history(history_rng)

    def _purchase_history(self, rng: np.random.Generator) -> sp.csr_matrix:
        """Pre-period purchases: each customer buys ``history_purchases`` distinct items, drawn
        without replacement with probability proportional to exp(bias + preference . latent)
        (Gumbel top-k), in chunks of customers."""
        c = self.config
        h = c.history_purchases
        cols = np.empty((c.n_customers, h), dtype=np.int64)
        chunk = max(1, 2_000_000 // c.n_items)
        for start in range(0, c.n_customers, chunk):
            stop = min(start + chunk, c.n_customers)
            logits = self.customers.preference[start:stop] @ self.catalog.latent.T + self.catalog.bias
            keys = logits + rng.gumbel(size=logits.shape)
            cols[start:stop] = np.argpartition(-keys, h - 1, axis=1)[:, :h]
        rows = np.repeat(np.arange(c.n_customers), h)
        data = np.ones(rows.size)
        return sp.csr_matrix((data, (rows, cols.ravel())), shape=(c.n_customers, c.n_items))

    def requests(self, n: int, rng: np.random.Generator) -> Requests:
        customer = rng.integers(0, self.config.n_customers, size=n)
        return Requests(customer=customer, context=self.customers.observed[customer])

    def respond(self, requests: Requests, slates, rng: np.random.Generator) -> np.ndarray:
        """(m, K) sampled clicks for the slates shown."""
        return self.model.sample_clicks(requests.customer, slates, rng)

    def expected_reward(self, customers, slates) -> np.ndarray:
        """(m,) exact expected clicks of each slate for each customer."""
        return self.model.expected_reward(customers, slates)
