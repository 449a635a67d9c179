"""WSGI entry point for gunicorn: the decision service of the simulated demo shop.

Configured by environment (``banditrec serve`` sets these): ``BANDITREC_DB`` (log path),
``BANDITREC_POLICY`` (policy spec), ``BANDITREC_SHOP_SEED`` (the shop's world seed),
``BANDITREC_REWARD_WINDOW_S`` (the log's reward window, seconds), and the service settings of
:class:`~banditrec.service.config.ServiceConfig` (token, limits, ``BANDITREC_SNAPSHOTS``,
``BANDITREC_DURABLE``).
Each worker builds its own engine after the fork and samples from fresh entropy, so workers
never repeat each other's event ids or share a SQLite connection.
"""

from __future__ import annotations

import os

from ..demo import build_engine, policy_env
from ..store import DecisionLog
from . import create_app
from .config import ServiceConfig


def _build():
    from simulator import Shop

    settings = ServiceConfig.from_env()
    shop = Shop(seed=int(os.environ.get("BANDITREC_SHOP_SEED", "0")))
    window = os.environ.get("BANDITREC_REWARD_WINDOW_S", "3600")
    log = DecisionLog(os.environ.get("BANDITREC_DB", "out/serve/log.db"),
                      reward_window_s=float(window) if window else None, process_lock=True,
                      synchronous=settings.synchronous,
                      checkpoint_interval_s=0.05)  # WAL checkpoints off the request path (see DecisionLog)
    engine = build_engine(shop, os.environ.get("BANDITREC_POLICY", "shared-linucb:alpha=1.0,epsilon=0.1"), log,
                          seed=None)
    return create_app(engine, settings=settings, policy_env=policy_env(shop, engine.cf))


app = _build()
if "banditrec.watcher" in app.extensions:  # idle workers pick up snapshots too (reload.py says why)
    app.extensions["banditrec.watcher"].start()
