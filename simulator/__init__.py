"""Simulated shops that know the truth: :class:`Environment` (the retail shop day by day) and
:class:`Shop` (the small static world of the truth and regret studies).

Details: docs/simulator.md, "The package (`simulator/__init__.py`)".
"""

from .carousel import CarouselModel, Response
from .catalog import Catalog, make_catalog
from .choice import PositionBasedModel
from .config import SimConfig
from .customers import Customers, make_customers
from .environment import DayKPIs, Environment
from .environment import Requests as ShopRequests
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
