"""A small shop: catalog, customers, purchase history and position-biased clicks, with exact
expected rewards; scenarios where exploration pays are settings of :class:`ShopConfig`.

Details: docs/simulator.md, "The small shop (`simulator/shop.py`)".
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
    # ---- scenarios (docs/simulator.md); every one off by default ----
    bias_sd: float = 0.5  # sd of the hidden per-item appeal (logit)
    new_item_share: float = 0.0  # share of items that launch while the shop runs, not before
    launch_days: float = 50.0  # new items launch uniformly over days [0, launch_days)
    cold_days: float = 2.0  # an item launched less than this many days ago is flagged cold
    drift_sd: float = 0.0  # daily sd of each item's random-walk appeal (logit)
    season_amplitude: float = 0.0  # amplitude of each product type's seasonal appeal (logit)
    season_days: float = 20.0  # the seasons' period
    reward: str = "click"  # click | purchase: what the shop rewards (and the truth counts)
    purchase_logit: float = -2.0  # purchase | click: sigmoid(purchase_logit + purchase_sd z_j)
    purchase_sd: float = 1.0  # spread of the hidden per-item conversion (logit)
    day_decisions: int = 1000  # requests per day: the clock of regret runs

    def __post_init__(self):
        for f in ("n_items", "n_types", "n_customers", "dim", "history_purchases", "day_decisions"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"ShopConfig.{f} must be a positive integer, got {v!r}", f)
        for f in (
            "context_noise",
            "base_logit",
            "eta",
            "bias_sd",
            "new_item_share",
            "launch_days",
            "cold_days",
            "drift_sd",
            "season_amplitude",
            "season_days",
            "purchase_logit",
            "purchase_sd",
        ):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValidationError(f"ShopConfig.{f} must be a finite number, got {v!r}", f)
        if self.context_noise < 0 or self.eta < 0:
            raise ValidationError("ShopConfig.context_noise and eta must be >= 0", "context_noise")
        for f in ("bias_sd", "drift_sd", "season_amplitude", "purchase_sd", "cold_days"):
            if getattr(self, f) < 0:
                raise ValidationError(f"ShopConfig.{f} must be >= 0, got {getattr(self, f)!r}", f)
        for f in ("launch_days", "season_days"):
            if getattr(self, f) <= 0:
                raise ValidationError(f"ShopConfig.{f} must be > 0, got {getattr(self, f)!r}", f)
        if not 0 <= self.new_item_share < 1:
            raise ValidationError(
                f"ShopConfig.new_item_share must be in [0, 1), got {self.new_item_share!r}", "new_item_share"
            )
        if self.reward not in ("click", "purchase"):
            raise ValidationError(f"ShopConfig.reward must be 'click' or 'purchase', got {self.reward!r}", "reward")
        if self.history_purchases > self.n_items:
            raise ValidationError(
                f"ShopConfig.history_purchases ({self.history_purchases}) exceeds n_items ({self.n_items})",
                "history_purchases",
            )

    def replace(self, **changes) -> ShopConfig:
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
        # the scenarios' draws come from a third child, so that the default world is unchanged
        cat_rng, cust_rng, scenario_rng = world_rng.spawn(3)
        self.catalog: Catalog = make_catalog(c.n_items, c.n_types, c.dim, cat_rng)
        if c.bias_sd != 0.5:  # the same draws, another spread
            self.catalog = dataclasses.replace(self.catalog, bias=self.catalog.bias * (c.bias_sd / 0.5))
        self.customers: Customers = make_customers(c.n_customers, c.dim, c.context_noise, cust_rng)
        self.model = PositionBasedModel(self.catalog, self.customers, c.base_logit, c.eta)
        seed_seq = scenario_rng.bit_generator.seed_seq
        # numpy's stub types seed_seq as the ISeedSequence protocol, without spawn; it is a SeedSequence
        launch_seq, season_seq, purchase_seq, self._walk_seq = seed_seq.spawn(4)  # type: ignore[attr-defined]
        launch_rng, season_rng, purchase_rng = map(np.random.default_rng, (launch_seq, season_seq, purchase_seq))
        # launch day of each item: 0 before the run (the pre-period's items), later for new ones
        self.launch_day = np.zeros(c.n_items)
        if c.new_item_share > 0:
            new = launch_rng.random(c.n_items) < c.new_item_share
            self.launch_day[new] = launch_rng.uniform(0.0, c.launch_days, size=int(new.sum()))
        self.season_phase = season_rng.uniform(0.0, 2 * np.pi, size=c.n_types)
        self.conversion: np.ndarray | None = None  # P(purchase | click) per item when purchases are the reward
        if c.reward == "purchase":
            self.conversion = 1.0 / (
                1.0 + np.exp(-(c.purchase_logit + c.purchase_sd * purchase_rng.normal(size=c.n_items)))
            )
        self._walk = np.zeros((1, c.n_items))  # appeal random walk at days 0, 1, ...
        self.history: sp.csr_matrix = self._purchase_history(history_rng)

    def _purchase_history(self, rng: np.random.Generator) -> sp.csr_matrix:
        """Pre-period purchases: each customer buys ``history_purchases`` distinct items, drawn
        without replacement with probability proportional to exp(bias + preference . latent)
        (Gumbel top-k), in chunks of customers; items that launch later are never bought."""
        c = self.config
        h = c.history_purchases
        cols = np.empty((c.n_customers, h), dtype=np.int64)
        chunk = max(1, 2_000_000 // c.n_items)
        later = self.launch_day > 0
        for start in range(0, c.n_customers, chunk):
            stop = min(start + chunk, c.n_customers)
            logits = self.customers.preference[start:stop] @ self.catalog.latent.T + self.catalog.bias
            keys = logits + rng.gumbel(size=logits.shape)
            if later.any():
                keys[:, later] = -np.inf
            cols[start:stop] = np.argpartition(-keys, h - 1, axis=1)[:, :h]
        rows = np.repeat(np.arange(c.n_customers), h)
        data = np.ones(rows.size)
        return sp.csr_matrix((data, (rows, cols.ravel())), shape=(c.n_customers, c.n_items))

    # ---- time ---------------------------------------------------------------------------------
    @property
    def changes(self) -> bool:
        """Whether the world changes with time (new items, drift or seasons)."""
        c = self.config
        return c.new_item_share > 0 or c.drift_sd > 0 or c.season_amplitude > 0

    def launched(self, day: float) -> np.ndarray:
        """(n_items,) bool: the items on sale at ``day``."""
        return self.launch_day <= day

    def cold(self, day: float) -> np.ndarray:
        """(n_items,) bool: items launched during the run less than ``cold_days`` ago (no history)."""
        return (self.launch_day > 0) & (self.launch_day <= day) & (day - self.launch_day < self.config.cold_days)

    def appeal_shift(self, day: float) -> np.ndarray | None:
        """(n_items,) what drift and seasons add to each item's appeal logit at ``day`` (``None``
        when neither is on): ``season_amplitude sin(2 pi day / season_days + phase_type)`` plus a
        random walk with daily steps ``N(0, drift_sd^2)`` (the step of day d drawn from a stream
        of its own, so that the walk is the same whoever asks first)."""
        c = self.config
        if c.drift_sd == 0 and c.season_amplitude == 0:
            return None
        shift = np.zeros(c.n_items)
        if c.season_amplitude:
            shift += c.season_amplitude * np.sin(
                2 * np.pi * day / c.season_days + self.season_phase[self.catalog.product_type]
            )
        if c.drift_sd:
            d = int(np.floor(max(day, 0.0)))
            while len(self._walk) <= d:
                day_seq = np.random.SeedSequence(
                    self._walk_seq.entropy, spawn_key=(*self._walk_seq.spawn_key, len(self._walk))
                )
                step = np.random.default_rng(day_seq).normal(0.0, c.drift_sd, size=c.n_items)
                self._walk = np.vstack([self._walk, self._walk[-1] + step])
            shift += self._walk[d]
        return shift

    def item_value(self, customer: int, items, day: float = 0.0) -> np.ndarray:
        """(n,) the expected reward of showing each of ``items`` to ``customer`` in a slot that
        is looked at, at ``day``: the attraction, times the conversion for purchases."""
        items = np.asarray(items)
        shift = self.appeal_shift(day)
        a = self.model.attraction(np.full(len(items), customer), items, shift=None if shift is None else shift[items])
        return a if self.conversion is None else a * self.conversion[items]

    # ---- requests and rewards ------------------------------------------------------------------
    def requests(self, n: int, rng: np.random.Generator) -> Requests:
        customer = rng.integers(0, self.config.n_customers, size=n)
        return Requests(customer=customer, context=self.customers.observed[customer])

    def respond(self, requests: Requests, slates, rng: np.random.Generator, day=None) -> np.ndarray:
        """(m, K) sampled rewards (clicks, or purchases with ``reward = "purchase"``) for the
        slates shown, at ``day`` ((m,) or one day; ``None``: the world before any change)."""
        if day is None and self.conversion is None:
            return self.model.sample_clicks(requests.customer, slates, rng)
        slates = np.asarray(slates)
        clicks = self.reward_probabilities(requests.customer, slates, day, clicks=True)
        u = rng.random((2,) + clicks.shape)
        out = u[0] < clicks
        if self.conversion is not None:  # a click, then a purchase at the item's conversion rate
            out &= u[1] < self.conversion[slates]
        return out.astype(np.int8)

    def reward_probabilities(self, customers, slates, day=None, *, clicks: bool = False) -> np.ndarray:
        """(m, K) exact P(reward in each slot) of ``slates`` at ``day`` ((m,), one day or None);
        with ``clicks``, P(click) whatever the reward."""
        slates = np.asarray(slates)
        customers = np.asarray(customers)
        shift = None
        if day is not None and (self.config.drift_sd or self.config.season_amplitude):
            days = np.broadcast_to(np.asarray(day, dtype=float), customers.shape)
            shift = np.empty(slates.shape)
            for d in np.unique(days):
                rows = days == d
                day_shift = self.appeal_shift(float(d))
                assert day_shift is not None  # drift or seasons are on
                shift[rows] = day_shift[slates[rows]]
        p = self.model.attraction(customers, slates, shift=shift) * self.model.examination(slates.shape[1])
        return p if self.conversion is None or clicks else p * self.conversion[slates]

    def expected_reward(self, customers, slates, day=None) -> np.ndarray:
        """(m,) exact expected reward (clicks or purchases) of each slate for each customer."""
        if day is None and self.conversion is None:
            return self.model.expected_reward(customers, slates)
        return self.reward_probabilities(customers, slates, day).sum(axis=1)
