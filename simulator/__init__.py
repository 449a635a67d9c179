"""Simulated shops that know the truth.

* :class:`Environment` — the retail shop day by day: a catalog with product types, a directed
  complement graph, gateway items and stock; customers with preferences, segments, devices and
  long-term state (satisfaction, visit rate, churn); organic browsing, carousels under a
  position-based or cascade examination model, purchases, carts, lifetime value. Exact
  expected rewards of any slate. Configured by :class:`SimConfig` (TOML-loadable).
* :class:`Shop` — the small static world (one-shot requests, position-based clicks) that the
  off-policy-evaluation truth studies and the regret study use.

The model and its equations: ``docs/simulator.md``.
"""

from .carousel import CarouselModel, Response
from .catalog import Catalog, make_catalog
from .choice import PositionBasedModel
from .config import SimConfig
from .customers import Customers, make_customers
from .environment import DayKPIs, Environment, Requests as ShopRequests
from .history import History
from .shop import Requests, Shop, ShopConfig
from .world import Population, RetailCatalog

__all__ = [
    "CarouselModel",
    "Catalog",
    "Customers",
    "DayKPIs",
    "Environment",
    "History",
    "Population",
    "PositionBasedModel",
    "Requests",
    "Response",
    "RetailCatalog",
    "Shop",
    "ShopConfig",
    "ShopRequests",
    "SimConfig",
    "make_catalog",
    "make_customers",
]
