"""A simulated shop that knows the truth: catalog, customers, a position-based click model."""

from .catalog import Catalog, make_catalog
from .choice import PositionBasedModel
from .customers import Customers, make_customers
from .shop import Requests, Shop, ShopConfig

__all__ = [
    "Catalog",
    "Customers",
    "PositionBasedModel",
    "Requests",
    "Shop",
    "ShopConfig",
    "make_catalog",
    "make_customers",
]
