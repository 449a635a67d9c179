"""The simulated shop's configuration: one frozen dataclass, documented defaults, TOML files;
a bad or unknown key raises a ValidationError naming it.

Details: docs/simulator.md, "Configuration (`simulator/config.py`)".
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from banditrec.errors import ValidationError

CLICK_MODELS = ("pbm", "cascade")
DEVICES = ("desktop", "mobile", "app")


def _f(default, doc: str, kind: str, low=None, high=None, *, low_open=False):
    return field(default=default, metadata={"doc": doc, "kind": kind, "low": low, "high": high, "low_open": low_open})


@dataclass(frozen=True)
class SimConfig:
    # ---- catalog ---------------------------------------------------------------------------
    n_items: int = _f(5000, "items in the catalog", "int", 1)
    n_types: int = _f(100, "product types (every item has one; items of a type are substitutes)", "int", 1)
    n_categories: int = _f(10, "categories grouping the product types", "int", 1)
    dim: int = _f(8, "dimension of the latent taste space of items and customers", "int", 1)
    price_log_mean: float = _f(3.0, "mean of a type's log price", "float")
    price_log_sd: float = _f(0.8, "spread of log prices across types", "float", 0.0)
    item_price_log_sd: float = _f(0.3, "spread of log prices within a type", "float", 0.0)
    margin_rate_low: float = _f(0.1, "lowest margin as a share of price", "float", 0.0, 1.0)
    margin_rate_high: float = _f(0.4, "highest margin as a share of price", "float", 0.0, 1.0)
    extra_columns: tuple = _f(
        ("royalty",), "extra numeric business columns, each uniform in [0, extra_column_max_share] x price", "names"
    )
    extra_column_max_share: float = _f(0.15, "upper bound of an extra column as a share of price", "float", 0.0)
    consumable_share: float = _f(
        0.2, "share of product types that are consumables (reordered on a cycle)", "float", 0.0, 1.0
    )
    reorder_days_low: int = _f(14, "shortest reorder cycle of a consumable type, in days", "int", 1)
    reorder_days_high: int = _f(60, "longest reorder cycle of a consumable type, in days", "int", 1)
    reorder_customer_spread: float = _f(
        0.25, "sd of a customer's log reorder cycle of a consumable type around the type's (lognormal)", "float", 0.0
    )
    reorder_noise: float = _f(
        0.3, "sd of the log of each realised reorder interval around the customer's cycle (lognormal)", "float", 0.0
    )
    replenish_rate: float = _f(
        0.8,
        "chance that a customer buys a consumable again on their own when it comes due (else they lapse until "
        "they next buy the type)",
        "float",
        0.0,
        1.0,
    )
    reorder_loyalty: float = _f(
        0.8,
        "chance that a replenishment is the item bought last (else the customer's pick among a few of the type)",
        "float",
        0.0,
        1.0,
    )
    gateway_share: float = _f(0.03, "share of items that are gateway products", "float", 0.0, 1.0)
    gateway_price_factor: float = _f(
        0.7, "a gateway item's price relative to its type's (entry products are cheaper)", "float", 0.0, low_open=True
    )
    complements_per_type: int = _f(
        3, "complement partners drawn per product type (edges point from the pricier type to the cheaper)", "int", 0
    )
    new_item_share: float = _f(
        0.05, "share of items launched on day 0 or later: no pre-period history (cold start)", "float", 0.0, 1.0
    )
    launch_days: int = _f(1, "new items launch on days 0 .. launch_days-1, evenly (1: all on day 0)", "int", 1)
    bias_sd: float = _f(
        0.5, "spread of each item's hidden appeal (logit), which no published feature explains", "float", 0.0
    )
    drift_sd: float = _f(0.0, "daily step of each item's appeal random walk (logit; 0: no drift)", "float", 0.0)
    season_amplitude: float = _f(
        0.0, "amplitude of each product type's seasonal appeal (logit; 0: no seasons)", "float", 0.0
    )
    season_days: float = _f(30.0, "the seasons' period in days", "float", 0.0, low_open=True)
    mix_shift_day: int = _f(0, "day (0-based, serving days) from which the device mix shifts (mix_shift_share)", "int")
    mix_shift_share: float = _f(
        0.0, "share of customers who switch to mobile on mix_shift_day (0: no shift)", "float", 0.0, 1.0
    )
    brands_per_category: int = _f(12, "brands in each category (item metadata)", "int", 1)
    stock_level: int = _f(40, "units of an item in stock after a restock", "int", 1)
    restock_days: float = _f(5.0, "mean days until an item that ran out is restocked", "float", 1.0)
    # ---- customers -------------------------------------------------------------------------
    n_customers: int = _f(20_000, "customers", "int", 1)
    n_segments: int = _f(4, "customer segments (each shifts the preference vectors)", "int", 1, 10_000)
    preference_scale: float = _f(
        1.34, "scale of preference vectors (sd of preference . latent is about 1.1 x this)", "float", 0.0
    )
    context_noise: float = _f(0.5, "noise of the observed taste profile sent as context", "float", 0.0)
    price_sensitivity: float = _f(
        0.8, "median price sensitivity (logit per unit of log price above the catalog median)", "float", 0.0
    )
    price_sensitivity_sd: float = _f(0.5, "log-normal spread of price sensitivity across customers", "float", 0.0)
    visit_rate: float = _f(
        0.15,
        "mean daily visit rate of a new customer (Gamma with shape 2 across customers)",
        "float",
        0.0,
        low_open=True,
    )
    churn_hazard: float = _f(0.004, "median daily churn hazard of a new customer", "float", 0.0, 1.0)
    # ---- a visit ---------------------------------------------------------------------------
    views_per_visit: float = _f(3.0, "mean organic item views per visit (at least one)", "float", 1.0)
    organic_purchase: float = _f(
        0.25, "chance that a visit's browsing ends in a purchase, times the purchase probability", "float", 0.0, 1.0
    )
    complement_purchase: float = _f(
        0.35, "chance that a purchase of a type with complements adds one of them to the basket", "float", 0.0, 1.0
    )
    cart_checkout: float = _f(0.3, "chance that an item in the cart is bought at a later visit", "float", 0.0, 1.0)
    cart_days: int = _f(14, "days an item stays in the cart", "int", 1)
    # ---- the carousel: examination and choice ---------------------------------------------
    click_model: str = _f("pbm", "examination model: 'pbm' (position-based) or 'cascade'", "choice")
    eta: float = _f(
        1.0, "position-based model: slot k (0-based) is examined with probability (k+1)^-(eta*device_eta)", "float", 0.0
    )
    device_eta: tuple = _f((1.0, 1.4, 1.0), "examination decay multiplier per device (desktop, mobile, app)", "floats")
    cascade_patience: float = _f(
        0.9, "cascade model: chance of looking at the next slot after skipping one", "float", 0.0, 1.0
    )
    base_logit: float = _f(-3.0, "attraction logit of an average item for an average customer", "float")
    complement_boost: float = _f(
        1.5, "attraction logit added per unit of complement weight to what is owned or in the cart", "float", 0.0
    )
    owned_penalty: float = _f(1.5, "attraction logit removed when a non-consumable type is already owned", "float", 0.0)
    reorder_boost: float = _f(1.0, "attraction logit added when a consumable type is due for reorder", "float", 0.0)
    purchase_logit: float = _f(-1.0, "purchase-given-click logit before price and complements", "float")
    cart_rate: float = _f(0.3, "chance that a click without a purchase adds the item to the cart", "float", 0.0, 1.0)
    # ---- long-term dynamics -----------------------------------------------------------------
    satisfaction_weight: float = _f(
        0.3, "weight of a visit's experience in satisfaction (a moving average over visits)", "float", 0.0, 1.0
    )
    satisfaction_decay: float = _f(0.99, "daily decay of satisfaction towards 0", "float", 0.0, 1.0)
    satisfaction_per_purchase: float = _f(
        0.5, "experience added per purchase in a visit (at most 3 count)", "float", 0.0
    )
    satisfaction_relevance: float = _f(
        2.0,
        "experience added per unit of a carousel's examination-weighted mean attraction above the shop's average",
        "float",
        0.0,
    )
    visit_satisfaction: float = _f(1.0, "visit rate is multiplied by exp(this x satisfaction)", "float", 0.0)
    churn_satisfaction: float = _f(1.0, "churn hazard is multiplied by exp(-this x satisfaction)", "float", 0.0)
    gateway_visit_boost: float = _f(
        0.6, "after a gateway purchase the visit rate is multiplied by 1 + this", "float", 0.0
    )
    gateway_churn_cut: float = _f(
        0.6, "after a gateway purchase the churn hazard is multiplied by 1 - this", "float", 0.0, 1.0
    )
    annual_discount: float = _f(0.10, "yearly discount rate of lifetime value", "float", 0.0)
    ltv_horizon_days: int = _f(90, "days of margin counted in lifetime value", "int", 1)
    history_days: int = _f(30, "days of the pre-period (organic browsing only) that builds purchase history", "int", 0)
    # ---- state sizes -----------------------------------------------------------------------
    recent_purchases: int = _f(8, "purchases remembered per customer (owned types, complements)", "int", 1, 1000)
    recent_views: int = _f(5, "views remembered per customer", "int", 1, 1000)
    cart_size: int = _f(3, "items a cart holds", "int", 1, 1000)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        object.__setattr__(self, "extra_columns", tuple(self.extra_columns))
        object.__setattr__(self, "device_eta", tuple(float(x) for x in self.device_eta))
        pairs = [("margin_rate_low", "margin_rate_high"), ("reorder_days_low", "reorder_days_high")]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValidationError(
                    f"SimConfig.{low} ({getattr(self, low)!r}) must not exceed {high} ({getattr(self, high)!r})", low
                )
        if self.n_types > self.n_items:
            raise ValidationError(
                f"SimConfig.n_types ({self.n_types}) must not exceed n_items ({self.n_items}): every "
                "type needs an item",
                "n_types",
            )
        if self.n_categories > self.n_types:
            raise ValidationError(
                f"SimConfig.n_categories ({self.n_categories}) must not exceed n_types ({self.n_types})", "n_categories"
            )
        if len(self.device_eta) != len(DEVICES):
            raise ValidationError(
                f"SimConfig.device_eta must have {len(DEVICES)} numbers ({', '.join(DEVICES)}), got "
                f"{len(self.device_eta)}",
                "device_eta",
            )

    # ---- construction ----------------------------------------------------------------------
    def replace(self, **changes) -> SimConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValidationError(f"SimConfig has no field {unknown[0]!r}", unknown[0])
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> SimConfig:
        """Fields from a (possibly table-grouped) mapping, as a TOML file gives it."""
        flat: dict = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if isinstance(value, dict) and key not in names:
                for sub, v in value.items():
                    _put(flat, sub, v, f"{source} [{key}]", names)
            else:
                _put(flat, key, value, source, names)
        return cls(**flat)

    @classmethod
    def from_toml(cls, path) -> SimConfig:
        return cls.from_dict(read_toml(path), source=str(path))

    def to_dict(self) -> dict:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, default and meaning."""
        lines = []
        for f in dataclasses.fields(cls):
            lines.append(f"{f.name:<26} {f.default!r:<22} {f.metadata['doc']}")
        return "\n".join(lines)

    # ---- derived ----------------------------------------------------------------------------
    @property
    def daily_discount(self) -> float:
        return (1.0 + self.annual_discount) ** (-1.0 / 365.0)


def _put(flat, key, value, source, names):
    if key not in names:
        raise ValidationError(f"{source}: unknown setting {key!r} (SimConfig.describe() lists them)", key)
    if key in flat:
        raise ValidationError(f"{source}: setting {key!r} is given twice", key)
    flat[key] = value


def _check(f, value) -> None:
    m = f.metadata
    name, kind = f.name, m["kind"]

    def bad(what):
        raise ValidationError(f"SimConfig.{name} must be {what}, got {value!r}", name)

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            bad("an integer")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad("a finite number")
    elif kind == "choice":
        if value not in CLICK_MODELS:
            bad(" or ".join(repr(c) for c in CLICK_MODELS))
        return
    elif kind == "names":
        if (
            isinstance(value, str)
            or not isinstance(value, (list, tuple))
            or not all(isinstance(v, str) and v.isidentifier() for v in value)
        ):
            bad("a list of column names (identifiers)")
        if len(set(value)) != len(value) or {"price", "margin"} & set(value):
            bad("distinct names other than 'price' and 'margin'")
        return
    elif kind == "floats":
        if (
            isinstance(value, str)
            or not isinstance(value, (list, tuple))
            or not all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in value
            )
        ):
            bad("a list of non-negative numbers")
        return
    low, high = m["low"], m["high"]
    if low is not None and (value < low or (m["low_open"] and value == low)):
        bad(f"{'>' if m['low_open'] else '>='} {low}")
    if high is not None and value > high:
        bad(f"<= {high}")


def read_toml(path, what: str = "config file") -> dict:
    """A TOML file's contents; a missing or malformed file is a ValidationError naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValidationError(f"{what} {str(path)!r} does not exist", "config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{what} {str(path)!r} is not valid TOML: {exc}", "config") from None
