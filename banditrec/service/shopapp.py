"""The decision service of a shop directory: what ``banditrec serve --shop DIR`` runs in each
worker, and what the demo and the tests build in process."""

from __future__ import annotations

import atexit
import logging
import threading
import time

from flask import Flask

from ..shop import ShopWatcher, engine_for_shop
from ..shop.serving import open_newest_valid
from ..store import DecisionLog
from . import create_app
from .config import ServiceConfig


def create_shop_app(
    shop_dir,
    policy: str,
    db,
    *,
    settings: ServiceConfig | None = None,
    reward_window_s: float | None = 3600.0,
    n_candidates: int = 30,
    min_epsilon: float = 0.01,
    seed=None,
    clock=time.time,
    process_lock: bool = False,
    checkpoint_interval_s=None,
    synchronous: str = "NORMAL",
    config: dict | None = None,
) -> Flask:
    """A service app serving the current build of ``shop_dir`` with a new ``policy``, logging
    to ``db``; newer builds of the directory and, with ``settings.snapshots``, the learner's
    snapshots are picked up while it serves.

    Parameters
    ----------
    shop_dir : path
        A shop directory made by ``banditrec build``; its pointer's build, or the newest valid
        build when the pointer is unusable.
    policy : str
        A policy spec (``"linucb:alpha=0.5"``).
    db : path
        The SQLite decision log (created if missing).
    settings : ServiceConfig, optional
        Auth token, limits, snapshot directory (as :func:`create_app`).
    reward_window_s : float or None, default 3600
        Rewards later than this after their decision are recorded but flagged late.
    n_candidates, min_epsilon, seed, clock
        The engine's: candidates per request, the serving exploration floor, its entropy,
        its time source.
    process_lock, checkpoint_interval_s, synchronous
        The log's: an flock queue for writers of several processes, WAL checkpoints from a
        background thread, SQLite's ``synchronous`` (``"FULL"``: durable through power loss).
    config : dict, optional
        Flask settings to override.

    Returns
    -------
    Flask
        The WSGI app.

    Raises
    ------
    ValidationError
        No build of ``shop_dir`` loads and verifies, or a bad policy spec or setting.
    """
    shop, refused = open_newest_valid(shop_dir)
    log = DecisionLog(
        db,
        reward_window_s=reward_window_s,
        process_lock=process_lock,
        checkpoint_interval_s=checkpoint_interval_s,
        synchronous=synchronous,
        shard=None if settings is None else settings.shard,
    )
    serving = settings or ServiceConfig()
    engine = engine_for_shop(
        shop,
        policy,
        log,
        n_candidates=n_candidates,
        min_epsilon=min_epsilon,
        seed=seed,
        clock=clock,
        arms=serving.arms(),
        mode=serving.mode,
    )
    app_ref: dict = {}

    def reloaded(result: str) -> None:
        app = app_ref.get("app")
        if app is not None:
            metrics = app.extensions["banditrec.metrics"]
            metrics.shop_reloads.labels(result).inc()
            if result == "loaded":
                metrics.set_shop(engine)

    watcher = ShopWatcher(shop_dir, engine, shop, on_result=reloaded)
    if refused is not None:
        import logging

        watcher.last_error = refused
        logging.getLogger("banditrec.service").error(
            "shop build refused: %s; serving the newest valid build %s", refused, shop.build
        )
    app = create_app(
        engine, config, settings=settings, policy_env=lambda: watcher.shop.policy_env(), shop_watcher=watcher
    )
    app_ref["app"] = app
    if (settings or ServiceConfig()).defer_marginals:
        engine.defer_marginals = True
        app.extensions["banditrec.completer"] = PendingCompleter(engine)
    return app


class PendingCompleter:
    """Completes the engine's pending decisions (:meth:`Engine.complete_pending`) every
    ``interval_s`` from a daemon thread, off the request path, and once more at exit."""

    def __init__(self, engine, interval_s: float = 0.05):
        self.engine, self.interval_s = engine, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="banditrec-pending", daemon=True)
            self._thread.start()
            atexit.register(self.stop)

    def _run(self) -> None:
        log = logging.getLogger("banditrec.service")
        while not self._stop.wait(self.interval_s):
            try:
                self.engine.complete_pending()
            except Exception:  # logged and retried by the next read of the log; never kills the thread
                log.exception("completing pending propensities failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.engine.complete_pending()
