"""WSGI entry point for gunicorn: the decision service of a shop directory, configured by the
``BANDITREC_*`` environment ``banditrec serve`` sets; each worker builds its own engine after
the fork.

Details: docs/service.md, "The WSGI entry point (`service/wsgi.py`)".
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
    return create_shop_app(
        shop,
        os.environ.get("BANDITREC_POLICY", "linucb:alpha=1.0,epsilon=0.1"),
        os.environ.get("BANDITREC_DB", "out/serve/log.db"),
        settings=settings,
        reward_window_s=float(window) if window else None,
        process_lock=True,
        synchronous=settings.synchronous,
        checkpoint_interval_s=0.05,
    )  # WAL checkpoints off the request path (see DecisionLog)


app = _build()
if "banditrec.completer" in app.extensions:  # Monte-Carlo propensities off the request path
    app.extensions["banditrec.completer"].start()
if "banditrec.watcher" in app.extensions:  # idle workers pick up snapshots too (docs/service.md, "Reloading snapshots")
    app.extensions["banditrec.watcher"].start()
