"""WSGI entry point for gunicorn: the decision service of a shop directory.

Configured by environment (``banditrec serve`` sets these): ``BANDITREC_SHOP`` (the shop
directory), ``BANDITREC_DB`` (log path), ``BANDITREC_POLICY`` (policy spec),
``BANDITREC_REWARD_WINDOW_S`` (the log's reward window, seconds), and the service settings of
:class:`~banditrec.service.config.ServiceConfig` (token, limits, ``BANDITREC_SNAPSHOTS``,
``BANDITREC_DURABLE``).
Each worker builds its own engine after the fork and samples from fresh entropy, so workers
never repeat each other's event ids or share a SQLite connection.
"""

from __future__ import annotations

import os

from .config import ServiceConfig
from .shopapp import create_shop_app


def _build():
    shop = os.environ.get("BANDITREC_SHOP")
    if not shop:
        raise SystemExit("BANDITREC_SHOP is not set: `banditrec serve --shop DIR` serves a shop directory")
    settings = ServiceConfig.from_env()
    window = os.environ.get("BANDITREC_REWARD_WINDOW_S", "3600")
    return create_shop_app(shop, os.environ.get("BANDITREC_POLICY", "shared-linucb:alpha=1.0,epsilon=0.1"),
                           os.environ.get("BANDITREC_DB", "out/serve/log.db"), settings=settings,
                           reward_window_s=float(window) if window else None, process_lock=True,
                           synchronous=settings.synchronous,
                           checkpoint_interval_s=0.05)  # WAL checkpoints off the request path (see DecisionLog)


app = _build()
if "banditrec.watcher" in app.extensions:  # idle workers pick up snapshots too (reload.py says why)
    app.extensions["banditrec.watcher"].start()
