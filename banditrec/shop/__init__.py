"""A shop's own data: input files -> ``banditrec build`` -> a versioned shop directory that
serving, learning and evaluation read. See ``docs/data-formats.md``.
"""

from .build import BuildResult, build_shop
from .config import BuildConfig
from .serving import Shop, ShopFollower, ShopWatcher, engine_for_shop, rebuild_policy

__all__ = [
    "BuildConfig",
    "BuildResult",
    "Shop",
    "ShopFollower",
    "ShopWatcher",
    "build_shop",
    "engine_for_shop",
    "rebuild_policy",
]
