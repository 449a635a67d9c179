"""The decision service: a Flask application factory around an :class:`~banditrec.engine.Engine`.

Blueprints per resource (``decisions``, ``feedback``, ``models``, ``ops``); request and
response models in :mod:`.schemas` validate requests and generate ``/openapi.json``; every
error is JSON naming the field (:mod:`.errors`); bearer-token auth (:mod:`.auth`); Prometheus
metrics (:mod:`.metrics`); snapshot reloads (:mod:`.reload`). No policy or estimator logic here.
"""

from __future__ import annotations

import time

from flask import Flask, g, request

from ..engine import Engine
from ..errors import ValidationError
from . import decisions, errors, feedback, models, modes, ops
from .config import ServiceConfig
from .jsonio import OrjsonProvider
from .metrics import Metrics
from .openapi import document
from .reload import SnapshotWatcher


def create_app(
    engine: Engine,
    config: dict | None = None,
    *,
    settings: ServiceConfig | None = None,
    policy_env=None,
    shop_watcher=None,
) -> Flask:
    """Build the app serving ``engine``.

    Parameters
    ----------
    engine : Engine
        Decides, logs and records rewards; the app's routes call it.
    config : dict, optional
        Flask settings to override.
    settings : ServiceConfig, optional
        The service's own settings (auth token, size limits, batch size, snapshot directory);
        default: all routes open, no snapshots.
    policy_env : dict or callable, optional
        What reloading a snapshot needs to rebuild the policy (as given to
        :func:`banditrec.policies.make`, or a function returning it); required when
        ``settings.snapshots`` is set.
    shop_watcher : ShopWatcher, optional
        Installs rebuilt shop directories: requests look for one as they look for snapshots.

    Returns
    -------
    Flask
        The WSGI app (routes in docs/service.md).

    Raises
    ------
    ValueError
        ``settings.snapshots`` without ``policy_env``, or ``settings.shard`` unlike the shard of
        the engine's log.
    """
    settings = settings or ServiceConfig()
    if settings.shard is not None and engine.log.shard != settings.shard:
        raise ValidationError(
            f"create_app: settings.shard is {settings.shard} but the engine logs to "
            f"{'an unsharded log' if engine.log.shard is None else f'shard {engine.log.shard}'} "
            "(open its DecisionLog with shard=...)",
            "shard",
        )
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes)
    app.json = OrjsonProvider(app)
    app.json.sort_keys = False  # keep the response models' field order
    if config:
        app.config.update(config)
    metrics = Metrics()
    app.extensions["banditrec.engine"] = engine
    app.extensions["banditrec.settings"] = settings
    app.extensions["banditrec.metrics"] = metrics
    if settings.snapshots is not None:
        if policy_env is None:
            raise ValueError("create_app: settings.snapshots needs policy_env to rebuild reloaded policies")

        def _reloaded(result: str) -> None:
            metrics.reloads.labels(result).inc()
            if result != "refused":  # the per-worker model gauge follows the worker's own reloads
                metrics.set_model(engine)

        watcher = SnapshotWatcher(
            settings.snapshots,
            engine,
            policy_env,
            check_interval_s=settings.reload_check_ms / 1000,
            on_result=_reloaded,
        )
        app.extensions["banditrec.watcher"] = watcher
        # a worker (re)started after the learner published serves what the running ones serve:
        # the pointer's snapshot, or the newest valid one when the pointer is unusable (reload.py)
        watcher.refresh()
    if shop_watcher is not None:
        app.extensions["banditrec.shop_watcher"] = shop_watcher
        app.extensions["banditrec.shop_looks"] = _Throttle(shop_watcher.check)
    errors.register(app)
    for module in (decisions, feedback, models, modes, ops):
        app.register_blueprint(module.bp)

    @app.before_request
    def _start_timer():
        g.banditrec_t0 = time.perf_counter()
        looks = app.extensions.get("banditrec.shop_looks")
        if looks is not None:  # a rebuilt shop first: a snapshot may be for its catalog
            looks()
        watcher = app.extensions.get("banditrec.watcher")
        if watcher is not None:  # a stat of the snapshot pointer at most every 10 ms; a load if it changed
            watcher.maybe_reload()

    @app.after_request
    def _count(response):
        t0 = g.pop("banditrec_t0", None)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if t0 is not None:
            metrics.child(metrics.latency, route).observe(time.perf_counter() - t0)
        metrics.child(metrics.requests, route, request.method, str(response.status_code)).inc()
        return response

    metrics.set_model(engine)
    metrics.set_shop(engine)
    app.extensions["banditrec.openapi"] = document(app)
    return app


class _Throttle:
    """Calls ``check`` at most every ``REQUEST_LOOK_S`` (as requests look for snapshots)."""

    def __init__(self, check):
        from .reload import REQUEST_LOOK_S

        self.check, self.every, self.next = check, REQUEST_LOOK_S, 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + self.every
            self.check()


__all__ = ["ServiceConfig", "create_app"]
