"""WSGI entry point for gunicorn: the decision endpoint of the simulated demo shop.

Configured by environment: ``BANDITREC_DB`` (log path), ``BANDITREC_POLICY`` (policy spec),
``BANDITREC_SHOP_SEED`` (the shop's world seed). Each worker samples from fresh entropy, so
workers never repeat each other's event ids.
"""

from __future__ import annotations

import os

from ..demo import build_engine
from ..store import DecisionLog
from . import create_app


def _build():
    from simulator import Shop

    shop = Shop(seed=int(os.environ.get("BANDITREC_SHOP_SEED", "0")))
    log = DecisionLog(os.environ.get("BANDITREC_DB", "out/serve/log.db"))
    engine = build_engine(shop, os.environ.get("BANDITREC_POLICY", "shared-linucb:alpha=1.0,epsilon=0.1"), log, seed=None)
    return create_app(engine)


app = _build()
