"""Prometheus metrics: requests and latency per route, decisions, rewards, events, the
exploration share, the apprentice's match rate, the serving mode and the newest gate verdict, and
the model version each worker serves (multiprocess mode under gunicorn).

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

from ..store.modes import MODES

disable_created_metrics()  # no *_created series: timestamps of process start, noise in a scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
            "banditrec_slots",
            "Slots the policy filled, by whether the item is not its greedy choice given the slots before "
            "(unknown: a policy that does not expose it, vw-ccb).",
            ["explored"],
            registry=r,
        )
        self.apprentice_slots = Counter(
            "banditrec_apprentice_slots", "Baseline-served slots (apprentice mode, control arm).", registry=r
        )
        self.apprentice_match = Counter(
            "banditrec_apprentice_match",
            "Sum over baseline-served slots of the policy's probability of the baseline's item there.",
            registry=r,
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
        explored = kept = unknown = baseline = 0
        match = 0.0
        for d in decisions:
            if d.served == "baseline":
                for s in d.slots:
                    if s.policy_marginal is not None:
                        baseline += 1
                        match += s.policy_marginal
                continue
            flags = d.greedy
            if flags is None:
                unknown += sum(s.source != "pinned" for s in d.slots)
                continue
            greedy = sum(flags)
            kept += greedy
            explored += len(flags) - greedy
        self.child(self.decisions, route).inc(len(decisions))
        for label, n in (("true", explored), ("false", kept), ("unknown", unknown)):
            if n:
                self.child(self.slots, label).inc(n)
        if baseline:
            self.apprentice_slots.inc(baseline)
            self.apprentice_match.inc(match)

    def exposition(self, engine=None, monitor_prom: str | None = None) -> bytes:
        """The Prometheus text format of every worker's metrics (or this app's), with the
        shares computed from them and, given the ``engine``, its log's serving mode and the
        newest safe-deploy verdict for the served policy; with ``monitor_prom``, the gauges the
        newest ``banditrec monitor --prom`` run wrote there (nothing while the file is missing)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        slots = {"true": 0.0, "false": 0.0, "unknown": 0.0}
        sums = {"banditrec_apprentice_slots_total": 0.0, "banditrec_apprentice_match_total": 0.0}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "banditrec_slots_total":
                    slots[sample.labels.get("explored", "unknown")] += sample.value
                elif sample.name in sums:
                    sums[sample.name] += sample.value
        total = slots["true"] + slots["false"]
        lines = [
            _gauge(
                "banditrec_exploration_share",
                "Share of policy-filled slots whose item is not the policy's greedy choice given the slots before.",
                slots["true"] / total if total else 0.0,
            )
        ]
        n_base = sums["banditrec_apprentice_slots_total"]
        if n_base:
            lines.append(
                _gauge(
                    "banditrec_apprentice_match_rate",
                    "Mean probability the policy gave the baseline's item in its slot (baseline-served slots).",
                    sums["banditrec_apprentice_match_total"] / n_base,
                )
            )
        if engine is not None:
            mode = engine.mode
            lines.append(
                "# HELP banditrec_serving_mode 1 for the serving mode of this log.\n"
                "# TYPE banditrec_serving_mode gauge\n"
                + "".join(f'banditrec_serving_mode{{mode="{m}"}} {float(m == mode)!r}\n' for m in MODES)
            )
            verdict = engine.log.latest_verdict(engine.policy.name)
            if verdict is not None:
                lines.append(
                    _gauge(
                        "banditrec_estimated_lift",
                        "The newest recorded verdict's estimate of the served policy minus the logging policy's "
                        "value, per decision (banditrec evaluate --record).",
                        verdict["value"] - verdict["baseline"],
                    )
                )
                lines.append(
                    _gauge(
                        "banditrec_gate_safe",
                        "1 when that verdict cleared the safe-deploy gate.",
                        float(verdict["safe"]),
                    )
                )
        if monitor_prom:
            try:
                with open(monitor_prom, "rb") as fh:
                    lines.append(fh.read().decode("utf-8", "replace"))
            except OSError:  # not written yet, or being replaced: the next scrape has it
                pass
        return text + "".join(lines).encode()


def _gauge(name: str, help_text: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {float(value)!r}\n"
