"""Prometheus metrics: requests and latency per route, decisions, rewards, events, the
exploration share, and the model version each worker serves (multiprocess mode under gunicorn).

Details: docs/service.md, "Metrics (`service/metrics.py`)".
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the route)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: timestamps of process start, noise in a scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EXPLORED_BELOW = 0.5


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The app's metrics, registered in a registry of its own (so that several apps can live
    in one process, as in the tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "banditrec_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "banditrec_http_request_duration_seconds",
            "Time from the request reaching Flask to the response leaving it, per route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter("banditrec_decisions", "Decisions served and logged.", ["route"], registry=r)
        self.slots = Counter(
            "banditrec_slots", "Carousel slots served, by whether the slot explored.", ["explored"], registry=r
        )
        self.rewards = Counter("banditrec_rewards", "Rewards posted, by outcome.", ["status"], registry=r)
        self.events = Counter("banditrec_events", "Interaction events recorded.", ["kind"], registry=r)
        self.reloads = Counter("banditrec_model_reloads", "Snapshot reloads, by outcome.", ["result"], registry=r)
        self.shop_reloads = Counter(
            "banditrec_shop_reloads", "Shop-directory build reloads, by outcome.", ["result"], registry=r
        )
        self.model = Gauge(
            "banditrec_model_info",
            "1 for the model version this process serves.",
            ["policy", "version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._model_labels: tuple[str, str] | None = None
        self.shop = Gauge(
            "banditrec_shop_build_info",
            "1 for the shop-directory build this process serves.",
            ["build"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._shop_build: str | None = None
        self._children: dict = {}  # (metric, labels) -> labelled child: labels() is not free per request

    def child(self, metric, *labels):
        """``metric.labels(*labels)``, looked up once per distinct label tuple."""
        key = (id(metric), labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*labels)
        return got

    def set_model(self, engine) -> None:
        """Point the model gauge at what ``engine`` serves now: called when the app is built
        and by the snapshot watcher after each load (the only way the served model changes),
        so each worker's gauge follows its own reloads. The watcher's lock serialises them."""
        labels = (engine.policy.name, engine.model_version)
        if self._model_labels == labels:
            return
        if self._model_labels is not None:  # 0, not removed: multiprocess files keep removed values
            self.model.labels(*self._model_labels).set(0)
        self.model.labels(*labels).set(1)
        self._model_labels = labels

    def set_shop(self, engine) -> None:
        """Point the shop-build gauge at the build ``engine`` serves (as :meth:`set_model`)."""
        build = engine.build
        if build is None or build == self._shop_build:
            return
        if self._shop_build is not None:
            self.shop.labels(self._shop_build).set(0)
        self.shop.labels(build).set(1)
        self._shop_build = build

    def observe_decisions(self, decisions, route: str) -> None:
        explored = kept = 0
        for d in decisions:
            for s in d.slots:
                if s.source == "pinned":
                    continue
                if s.propensity < EXPLORED_BELOW:
                    explored += 1
                else:
                    kept += 1
        self.child(self.decisions, route).inc(len(decisions))
        if explored:
            self.child(self.slots, "true").inc(explored)
        if kept:
            self.child(self.slots, "false").inc(kept)

    def exposition(self) -> bytes:
        """The Prometheus text format of every worker's metrics (or this app's)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        slots = {"true": 0.0, "false": 0.0}
        for family in registry.collect():
            if family.name == "banditrec_slots":
                for sample in family.samples:
                    if sample.name == "banditrec_slots_total":
                        slots[sample.labels.get("explored", "false")] += sample.value
        total = slots["true"] + slots["false"]
        share = slots["true"] / total if total else 0.0
        extra = (
            "# HELP banditrec_exploration_share Share of served slots that explored "
            f"(conditional propensity < {EXPLORED_BELOW}).\n"
            "# TYPE banditrec_exploration_share gauge\n"
            f"banditrec_exploration_share {share!r}\n"
        )
        return text + extra.encode()
