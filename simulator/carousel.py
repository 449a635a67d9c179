"""How a customer responds to a carousel: examination, attraction, purchase, cart; exact
expected clicks, purchases and revenue per request.

Details: docs/simulator.md, "The carousel response (`simulator/carousel.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditrec.errors import ValidationError

from .config import SimConfig
from .world import Population, RetailCatalog

KINDS = ("click", "purchase", "revenue", "margin")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Response:
    """Sampled outcomes of a batch of carousels, (m, K) each; money is per slot."""

    click: np.ndarray
    purchase: np.ndarray
    cart: np.ndarray
    revenue: np.ndarray
    margin: np.ndarray

    @property
    def n_impressions(self) -> int:
        return len(self.click)


class CarouselModel:
    """The choice model; it reads the static world and the state copied into the requests."""

    def __init__(self, catalog: RetailCatalog, population: Population, config: SimConfig):
        self.catalog, self.population, self.config = catalog, population, config
        self.shift: np.ndarray | None = None  # (n_items,) today's drift and season added to each item's appeal, or None
        self._log_price = np.log(catalog.price) - catalog.log_price_ref
        self._device_eta = config.eta * np.asarray(config.device_eta)

    # ---- per item ---------------------------------------------------------------------------
    def _context_terms(self, req, items: np.ndarray):
        """comp, owned, due: (m, L) for ``items (m, L)``."""
        cat = self.catalog
        t_items = cat.product_type[items]  # (m, L)
        held = np.concatenate([req.owned, req.cart], axis=1)  # (m, R + C)
        held_type = np.where(held >= 0, cat.product_type[np.maximum(held, 0)], -1)
        if cat.complement.any():
            w = cat.complement[np.maximum(held_type, 0)[:, None, :], t_items[:, :, None]]  # (m, L, R + C)
            comp = np.where(held_type[:, None, :] >= 0, w, 0.0).max(axis=2)
        else:
            comp = np.zeros(items.shape, dtype=np.float32)
        R = req.owned.shape[1]
        owned_type = held_type[:, :R]
        same = owned_type[:, None, :] == t_items[:, :, None]  # (m, L, R)
        has = same.any(axis=2)
        consumable = cat.consumable[t_items]
        owned = has & ~consumable
        last = np.where(same, req.owned_day[:, None, :], -32768).max(axis=2)
        cycle = self.population.reorder_cycle
        if cycle is None:
            due_after = cat.reorder_days[t_items]
        else:  # the customer's own cycle of the type
            col = np.maximum(cat.consumable_column[t_items], 0)
            due_after = cycle[req.customer[:, None], col] if cycle.shape[1] else np.zeros(items.shape)
        due = has & consumable & (req.day - last >= due_after)
        return comp, owned, due

    def attraction_and_purchase(self, req, items) -> tuple[np.ndarray, np.ndarray]:
        """(a, q): P(click | examined) and P(purchase | click), each (m, L), for items (m, L)."""
        items = np.asarray(items)
        cat, pop, c = self.catalog, self.population, self.config
        comp, owned, due = self._context_terms(req, items)
        u = req.customer
        price_term = pop.price_sensitivity[u][:, None] * self._log_price[items]
        taste = np.einsum("md,mld->ml", pop.preference[u], cat.latent[items], dtype=np.float64)
        appeal = cat.bias[items] if self.shift is None else cat.bias[items] + self.shift[items]
        z = (
            c.base_logit
            + appeal
            + taste
            - price_term
            + c.complement_boost * comp
            - c.owned_penalty * owned
            + c.reorder_boost * due
        )
        a = sigmoid(z)
        q = sigmoid(c.purchase_logit - price_term + c.complement_boost * comp) * req.available[items]
        return a, q

    def attraction(self, req, items) -> np.ndarray:
        return self.attraction_and_purchase(req, items)[0]

    # ---- per slot ----------------------------------------------------------------------------
    def examination(self, req, n_slots: int) -> np.ndarray:
        """(m, K) position-based examination probabilities theta_k for each request's device."""
        k = np.arange(1, n_slots + 1, dtype=float)
        return k[None, :] ** -self._device_eta[req.device][:, None]

    def click_probabilities(self, req, slates, a: np.ndarray | None = None) -> np.ndarray:
        """(m, K) exact P(click in slot k) of each slate."""
        slates = np.asarray(slates)
        if a is None:
            a = self.attraction(req, slates)
        if self.config.click_model == "pbm":
            return a * self.examination(req, slates.shape[1])
        rho = self.config.cascade_patience
        skip = np.cumprod(np.c_[np.ones(len(a)), (1.0 - a[:, :-1]) * rho], axis=1)
        return a * skip

    def expected(self, req, slates, kind: str = "click") -> np.ndarray:
        """(m,) exact expected clicks, purchases, revenue, margin or extra column of each slate."""
        slates = check_slates(req, slates, self.catalog.n_items)
        a, q = self.attraction_and_purchase(req, slates)
        p_click = self.click_probabilities(req, slates, a)
        if kind == "click":
            return p_click.sum(axis=1)
        p_buy = p_click * q
        if kind == "purchase":
            return p_buy.sum(axis=1)
        return (p_buy * self.value_column(kind)[slates]).sum(axis=1)

    def value_column(self, kind: str) -> np.ndarray:
        if kind == "revenue":
            return self.catalog.price
        if kind == "margin":
            return self.catalog.margin
        if kind in self.catalog.columns:
            return self.catalog.columns[kind]
        known = ", ".join([*KINDS, *self.catalog.columns])
        raise ValidationError(f"kind must be one of {known}; got {kind!r}", "kind")

    def sample(self, req, slates, rng: np.random.Generator) -> Response:
        """Draw clicks, purchases and cart adds for each slate (one uniform per slot and step)."""
        slates = check_slates(req, slates, self.catalog.n_items)
        m, K = slates.shape
        a, q = self.attraction_and_purchase(req, slates)
        u = rng.random((4, m, K))
        if self.config.click_model == "pbm":
            click = u[0] < a * self.examination(req, K)
        else:  # walk down the slate: stop at the first attractive slot, or when patience runs out
            attractive = u[0] < a
            go_on = u[1] < self.config.cascade_patience
            passed = np.cumprod(np.c_[np.ones((m, 1), bool), ~attractive[:, :-1] & go_on[:, :-1]], axis=1).astype(bool)
            click = attractive & passed
        purchase = click & (u[2] < q)
        cart = click & ~purchase & (u[3] < self.config.cart_rate)
        revenue = np.where(purchase, self.catalog.price[slates], 0.0)
        margin = np.where(purchase, self.catalog.margin[slates], 0.0)
        return Response(click=click, purchase=purchase, cart=cart, revenue=revenue, margin=margin)


def check_slates(req, slates, n_items: int) -> np.ndarray:
    try:
        s = np.asarray(slates)
    except (TypeError, ValueError):
        raise ValidationError("slates must be an (m, K) integer array of item indices", "slates") from None
    m = len(req.customer)
    if s.ndim != 2 or s.shape[0] != m or not np.issubdtype(s.dtype, np.integer):
        raise ValidationError(
            f"slates must be an integer array of shape ({m}, K) (one row per request), got {s.dtype} {s.shape}",
            "slates",
        )
    if s.size and (s.min() < 0 or s.max() >= n_items):
        raise ValidationError(f"slates hold item indices outside [0, {n_items})", "slates")
    if s.shape[1] > 1 and s.size:
        srt = np.sort(s, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        if dup.any():
            raise ValidationError(f"slate of request {int(np.argmax(dup))} shows an item twice", "slates")
    return s
