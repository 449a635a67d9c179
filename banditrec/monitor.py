"""The health monitor (``banditrec monitor``): reward rates with intervals, context and item-feature
drift, propensity health, sample-ratio mismatch and reward join lag, read off a decision log; each
check against a documented threshold, as a report, JSON and Prometheus gauges.

Details: docs/monitor.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
from scipy import stats

from .apprentice import Arms
from .errors import ValidationError
from .evaluation.abtest_log import Shares
from .experiment import srm_check
from .store.monitoring import MonitorRows, log_span, read_monitor_rows

ALERT_EXIT = 3  # the exit status of `banditrec monitor` when any check alerts
DAY_S = 86400.0
Z95 = NormalDist().inv_cdf(0.975)
PSI_EPS = 1e-4  # a bin's share is floored here before the PSI's log ratio
FLOOR_RTOL = 1e-5  # a propensity this far (relative) under its floor is not a violation (float32 samplers)
ARMS = ("main", "holdout", "control")


@dataclass(frozen=True)
class Thresholds:
    """The checks' thresholds (docs/monitor.md, "Thresholds"); a TOML file or ``--threshold``
    flags override any of them.

    The drift rule: a feature has drifted when its two-sample KS p-value is below
    ``drift_alpha / m`` (Bonferroni over all ``m`` context and item features tested) and its PSI
    is at least ``psi_min``. On a stationary log the two drift checks together alarm on at most a
    share ``drift_alpha`` of runs; the PSI floor keeps a large log from alarming on shifts too
    small to matter.
    """

    drift_alpha: float = 0.01
    psi_min: float = 0.1
    psi_bins: int = 10
    min_window_rows: int = 200
    max_reward_drop: float = 0.25
    reward_alpha: float = 0.01
    min_propensity: float = 1e-5
    max_floor_violation_share: float = 0.0
    min_ess_share: float = 0.01
    srm_alpha: float = 0.001
    max_late_share: float = 0.05
    max_join_lag_p99_s: float = math.inf
    ignore_features: tuple[str, ...] = ()  # names left out of the drift checks (still reported)

    def __post_init__(self):
        names = self.ignore_features
        if isinstance(names, str) or not isinstance(names, list | tuple) or not all(isinstance(x, str) for x in names):
            raise ValidationError(f"ignore_features must be a list of feature names, got {names!r}", "ignore_features")
        object.__setattr__(self, "ignore_features", tuple(names))
        for f in dataclasses.fields(self):
            if f.name == "ignore_features":
                continue
            value = getattr(self, f.name)
            kind = int if f.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValidationError(f"threshold {f.name} must be a number, got {value!r}", f.name)
            if kind is int and value != int(value):
                raise ValidationError(f"threshold {f.name} must be an integer, got {value!r}", f.name)
            object.__setattr__(self, f.name, kind(value))
        for name in ("drift_alpha", "reward_alpha", "srm_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValidationError(f"threshold {name} must be in (0, 1), got {getattr(self, name)!r}", name)
        for name in ("psi_min", "max_reward_drop", "min_propensity", "max_floor_violation_share", "min_ess_share"):
            if getattr(self, name) < 0:
                raise ValidationError(f"threshold {name} must be >= 0, got {getattr(self, name)!r}", name)
        if self.psi_bins < 2:
            raise ValidationError(f"threshold psi_bins must be >= 2, got {self.psi_bins!r}", "psi_bins")
        if self.min_window_rows < 2:
            raise ValidationError(
                f"threshold min_window_rows must be >= 2, got {self.min_window_rows!r}", "min_window_rows"
            )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, changes: dict, source: str = "thresholds") -> Thresholds:
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ValidationError(
                f"{source}: unknown threshold {unknown[0]!r} (known: {', '.join(self.names())})", unknown[0]
            )
        try:
            return dataclasses.replace(self, **changes)
        except ValidationError as exc:
            raise ValidationError(f"{source}: {exc}", exc.field) from None

    @classmethod
    def from_toml(cls, path: str | Path, base: Thresholds | None = None) -> Thresholds:
        """Thresholds from a TOML file: the keys at the top level or under ``[monitor]``."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ValidationError(f"{p}: no such thresholds file", "thresholds") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"{p}: cannot read the thresholds file: {exc}", "thresholds") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{p}: not valid TOML: {exc}", "thresholds") from None
        if "monitor" in data:
            extra = sorted(set(data) - {"monitor"})
            if extra or not isinstance(data["monitor"], dict):
                raise ValidationError(
                    f"{p}: put every threshold under [monitor] or none, found {extra[0] if extra else 'monitor'!r}",
                    "thresholds",
                )
            data = data["monitor"]
        return (base or cls()).replace(data, source=str(p))

    @classmethod
    def from_pairs(cls, pairs, base: Thresholds | None = None) -> Thresholds:
        """``NAME=VALUE`` strings (the ``--threshold`` flags); ``inf`` is allowed."""
        changes = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            try:
                changes[name.strip()] = float(value)
            except ValueError:
                changes[name.strip()] = value
            if not sep:
                raise ValidationError(f"--threshold takes NAME=VALUE, got {pair!r}", "threshold")
        return (base or cls()).replace(changes, source="--threshold")


# ---------------------------------------------------------------------------------- time windows


_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([dhms])$")
_UNITS = {"d": DAY_S, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_time(text: str | float | None, *, last_ts: float | None, name: str) -> float | None:
    """A time bound: epoch seconds, an ISO date or datetime (UTC unless it says otherwise), or
    ``-N[dhms]`` relative to the log's newest decision (``-1d``: a day before it)."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    s = text.strip()
    m = _RELATIVE.match(s)
    if m:
        if last_ts is None:
            raise ValidationError(f"{name} {text!r} is relative to the newest decision, and the log has none", name)
        return last_ts - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValidationError(
            f"{name} must be epoch seconds, an ISO date/datetime or -N[d|h|m|s], got {text!r}", name
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def parse_reference(text: str | None, *, last_ts: float | None) -> tuple[float | None, float | None] | None:
    """``START:END`` (either may be empty) as two time bounds; ``None``: no reference given."""
    if text is None:
        return None
    start, sep, end = text.rpartition(":") if text.startswith("-") or text.count(":") == 1 else ("", "", "")
    if not sep:
        # ISO datetimes carry colons: split on the one between two bounds, "A..B" also accepted
        if ".." in text:
            start, _, end = text.partition("..")
        else:
            raise ValidationError(
                f"--reference takes START:END or START..END (epoch seconds, ISO or -N[dhms]), got {text!r}",
                "reference",
            )
    a = parse_time(start or None, last_ts=last_ts, name="--reference")
    b = parse_time(end or None, last_ts=last_ts, name="--reference")
    if a is not None and b is not None and a >= b:
        raise ValidationError(f"--reference must start before it ends, got {text!r}", "reference")
    return a, b


def _day_label(day: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=int(day))).date().isoformat()


# ---------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class RateRow:
    """Reward per shown slot in one cell, with a 95% interval (``interval``: wilson or normal)."""

    by: str
    key: str
    slots: int
    reward: float
    rate: float
    lower: float
    upper: float
    interval: str


def wilson(successes: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of ``successes / n`` (vectorized; ``n > 0``)."""
    n = np.asarray(n, dtype=float)
    p = np.asarray(successes, dtype=float) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the bounds hold the rate exactly (rounding can put a bound a few ulps past it, or past 0 or 1)
    return np.clip(np.minimum(centre - half, p), 0.0, 1.0), np.clip(np.maximum(centre + half, p), 0.0, 1.0)


def rate_table(by: str, keys: np.ndarray, reward: np.ndarray, labels=None) -> list[RateRow]:
    """Reward per slot for each distinct key: a Wilson interval when every reward is 0 or 1 (a
    rate of successes), else the normal interval ``mean +- 1.96 sd / sqrt(n)``."""
    if len(keys) == 0:
        return []
    uniq, inv = np.unique(keys, return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq)).astype(float)
    total = np.bincount(inv, weights=reward, minlength=len(uniq))
    mean = total / n
    binary = bool(np.isin(reward, (0.0, 1.0)).all())
    if binary:
        lo, hi = wilson(total, n)
    else:
        sq = np.bincount(inv, weights=reward * reward, minlength=len(uniq))
        var = np.where(n > 1, (sq - n * mean * mean) / np.maximum(n - 1, 1), np.inf)
        half = Z95 * np.sqrt(np.maximum(var, 0.0) / n)
        lo, hi = mean - half, mean + half
    names = [str(labels(k)) if labels else str(k) for k in uniq.tolist()]
    return [
        RateRow(
            by,
            names[j],
            int(n[j]),
            float(total[j]),
            float(mean[j]),
            float(lo[j]),
            float(hi[j]),
            "wilson" if binary else "normal",
        )
        for j in range(len(uniq))
    ]


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index ``sum_b (c_b - r_b) ln(c_b / r_b)`` of one feature, on bins cut
    at the reference's ``1/bins .. (bins-1)/bins`` quantiles (repeated cuts merged, so a binary
    feature has two bins); shares are floored at ``PSI_EPS``."""
    return float(psi_columns(np.asarray(reference, float)[:, None], np.asarray(current, float)[:, None], bins)[0])


def psi_columns(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> np.ndarray:
    """:func:`psi` of every column of ``ref (n, d)`` against ``cur (m, d)``."""
    qs = np.quantile(ref, np.arange(1, bins) / bins, axis=0)  # (bins - 1, d)
    out = np.empty(ref.shape[1])
    for j in range(ref.shape[1]):
        edges = np.unique(qs[:, j])
        r = np.bincount(np.searchsorted(edges, ref[:, j], side="left"), minlength=len(edges) + 1) / len(ref)
        c = np.bincount(np.searchsorted(edges, cur[:, j], side="left"), minlength=len(edges) + 1) / len(cur)
        r, c = np.maximum(r, PSI_EPS), np.maximum(c, PSI_EPS)
        out[j] = float(np.sum((c - r) * np.log(c / r)))
    return out


@dataclass(frozen=True)
class FeatureShift:
    """One feature's shift from the reference window to the current one."""

    group: str  # "context" or "item"
    feature: str
    psi: float
    ks: float
    p_value: float
    mean_reference: float
    mean_current: float
    drifted: bool
    ignored: bool = False  # named in ignore_features: reported, never drifted


def kish_size(cluster: np.ndarray) -> float:
    """Kish's effective sample size ``(sum m_c)^2 / sum m_c^2`` of rows in clusters of sizes
    ``m_c`` (``cluster``: each row's cluster key): the size of an independent sample whose mean
    is as variable as the rows' when rows of a cluster are perfectly correlated."""
    if len(cluster) == 0:
        return 0.0
    _, m = np.unique(cluster, return_counts=True)
    m = m.astype(float)
    return float(m.sum() ** 2 / np.sum(m * m))


def feature_shifts(
    group: str,
    names: list[str],
    ref: np.ndarray,
    cur: np.ndarray,
    *,
    p_cut: float,
    psi_min: float,
    bins: int,
    n_eff: tuple[float, float] | None = None,
) -> list[FeatureShift]:
    """PSI and two-sample KS test per column; drifted: ``p < p_cut`` and ``PSI >= psi_min``.

    ``n_eff``: the windows' effective sizes when rows are not independent (a user's decisions, a
    slate's items); the KS p-value is then the asymptotic one (``kstwobign``) of the KS distance at
    those sizes. ``None``: scipy's ``ks_2samp`` p-value at the row counts.
    """
    if ref.shape[1] == 0:
        return []
    p_psi = psi_columns(ref, cur, bins)
    ks = stats.ks_2samp(ref, cur, axis=0, method="auto" if n_eff is None else "asymp")
    d_stat, p_val = np.atleast_1d(ks.statistic), np.atleast_1d(ks.pvalue)
    if n_eff is not None:
        n1, n2 = (max(float(x), 1.0) for x in n_eff)
        p_val = stats.kstwobign.sf(d_stat * math.sqrt(n1 * n2 / (n1 + n2)))
    p_val = np.where(np.isnan(p_val), 1.0, p_val)  # NaN: a constant column in both windows
    mr, mc = ref.mean(axis=0), cur.mean(axis=0)
    return [
        FeatureShift(
            group,
            names[j],
            float(p_psi[j]),
            float(d_stat[j]),
            float(p_val[j]),
            float(mr[j]),
            float(mc[j]),
            bool(p_val[j] < p_cut and p_psi[j] >= psi_min),
        )
        for j in range(ref.shape[1])
    ]


def effective_sample_size(weights: np.ndarray) -> float:
    """``(sum w)^2 / sum w^2`` (0 for no weights)."""
    w = np.asarray(weights, dtype=float)
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def policy_slot_rank(decision: np.ndarray, pinned: np.ndarray) -> np.ndarray:
    """Each slot's 0-based rank among its decision's policy (non-pinned) slots, in position order
    (``decision`` sorted, slots of a decision in position order)."""
    policy = (~pinned).astype(np.int64)
    csum = np.cumsum(policy)
    starts = np.r_[0, np.flatnonzero(np.diff(decision)) + 1] if len(decision) else np.empty(0, np.int64)
    before = np.zeros(len(decision), dtype=np.int64)
    if len(decision):
        first = np.repeat(starts, np.diff(np.r_[starts, len(decision)]))
        before = csum - policy - (csum[first] - policy[first])
    return before


@dataclass(frozen=True)
class PropensityHealth:
    """Propensities of the shown policy slots (pinned slots and pending ones left out).

    A floor violation: a slot's logged conditional propensity is under
    ``min_epsilon / (n_candidates - k)``, ``k`` the policy slots filled before it (the slate
    samplers explore each slot at least ``min_epsilon`` uniformly over the candidates still
    free). ESS ``(sum w)^2 / sum w^2`` of the weights ``w = target marginal / logged marginal``
    of the reference ``target``: by default the uniform policy over each decision's logged
    candidates, whose marginal in every slot is ``1 / n_candidates``.
    """

    slots: int
    pending: int
    min_propensity: float
    min_marginal: float
    floor_checked: int
    floor_violations: int
    ess: float
    ess_share: float
    target: str = "uniform over the logged candidates"

    @property
    def floor_violation_share(self) -> float:
        return self.floor_violations / self.floor_checked if self.floor_checked else 0.0


@dataclass(frozen=True)
class SRMResult:
    arms: tuple[str, ...]
    users: tuple[int, ...]
    shares: tuple[float, ...]
    chi2: float
    p_value: float


@dataclass(frozen=True)
class JoinLag:
    rewards: int
    late: int
    quantiles: dict  # "p50", "p90", "p99", "max" -> seconds

    @property
    def late_share(self) -> float:
        return self.late / self.rewards if self.rewards else 0.0


@dataclass(frozen=True)
class Check:
    """One threshold check: ``status`` is ok, alert or skipped (with ``detail`` saying why)."""

    name: str
    value: float | None
    threshold: str  # the rule, e.g. "< 1e-05"
    status: str
    detail: str = ""
    limit: float | None = None  # the rule's number

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def log_line(self) -> str:
        """``banditrec.monitor ALERT <check>=<value> threshold=<limit> rule="..." detail="..."``."""
        value = "nan" if self.value is None else f"{self.value:.6g}"
        limit = "nan" if self.limit is None else f"{self.limit:.6g}"
        line = f'banditrec.monitor ALERT {self.name}={value} threshold={limit} rule="{self.threshold}"'
        return f'{line} detail="{self.detail}"' if self.detail else line


@dataclass
class MonitorReport:
    db: str
    kind: str
    window: tuple[float, float]
    reference: tuple[float, float]
    current: tuple[float, float]
    n_decisions: int
    n_slots: int
    rates: dict[str, list[RateRow]]
    rate_windows: dict[str, RateRow | None]
    shifts: list[FeatureShift]
    drift_p_cut: float
    propensity: PropensityHealth
    srm: SRMResult | None
    lag: JoinLag
    checks: list[Check]
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    rows: MonitorRows | None = field(default=None, repr=False, compare=False)  # the window, for the plots

    @property
    def alerts(self) -> list[Check]:
        return [c for c in self.checks if c.alert]

    @property
    def exit_code(self) -> int:
        return ALERT_EXIT if self.alerts else 0

    def as_json(self) -> dict:
        out = dataclasses.asdict(dataclasses.replace(self, rows=None))
        del out["rows"]
        out["plots"] = [str(p) for p in self.plots]
        out["alerts"] = [c.name for c in self.alerts]
        out["exit_code"] = self.exit_code
        return _finite(out)

    def checks_table(self) -> str:
        lines = ["| check | value | threshold | status |", "|---|---:|---|---|"]
        for c in self.checks:
            value = "" if c.value is None else f"{c.value:.4g}"
            status = c.status.upper() if c.alert else c.status
            lines.append(f"| {c.name} | {value} | {c.threshold} | {status}{': ' + c.detail if c.detail else ''} |")
        return "\n".join(lines)

    def write_prom(self, path: str | Path) -> None:
        """The figures as gauges in the node_exporter textfile format (written atomically)."""
        from prometheus_client import CollectorRegistry, write_to_textfile

        registry = CollectorRegistry()
        self.gauges(registry)
        write_to_textfile(str(path), registry)

    def gauges(self, registry) -> None:
        """Register the report's gauges (docs/monitor.md, "Prometheus") on ``registry``."""
        from prometheus_client import Gauge

        def gauge(name, doc, labels=()):
            return Gauge(f"banditrec_monitor_{name}", doc, labelnames=labels, registry=registry)

        alert = gauge("alert", "1 when the check alerts, 0 when it passes or was skipped", ("check",))
        skipped = gauge("check_skipped", "1 when the check was skipped (too little data, no column)", ("check",))
        for c in self.checks:
            alert.labels(c.name).set(1 if c.alert else 0)
            skipped.labels(c.name).set(1 if c.status == "skipped" else 0)
        gauge("decisions", "decisions in the window").set(self.n_decisions)
        gauge("window_end_timestamp_seconds", "end of the monitored window").set(self.window[1])
        rate = gauge("reward_rate", f"{self.kind} reward per shown slot", ("by", "key"))
        lower = gauge("reward_rate_lower", "95% interval, lower end", ("by", "key"))
        upper = gauge("reward_rate_upper", "95% interval, upper end", ("by", "key"))
        slots = gauge("slots", "shown slots", ("by", "key"))
        cells = [r for table in self.rates.values() for r in table]
        cells += [dataclasses.replace(r, key=name) for name, r in self.rate_windows.items() if r is not None]
        for r in cells:
            rate.labels(r.by, r.key).set(r.rate)
            lower.labels(r.by, r.key).set(r.lower)
            upper.labels(r.by, r.key).set(r.upper)
            slots.labels(r.by, r.key).set(r.slots)
        psi_g = gauge("psi", "population stability index, reference vs current window", ("group", "feature"))
        ks_g = gauge("ks_statistic", "two-sample KS statistic", ("group", "feature"))
        p_g = gauge("ks_pvalue", "two-sample KS p-value", ("group", "feature"))
        drifted = gauge("feature_drifted", "1 when the feature meets the drift rule", ("group", "feature"))
        for s in self.shifts:
            psi_g.labels(s.group, s.feature).set(s.psi)
            ks_g.labels(s.group, s.feature).set(s.ks)
            p_g.labels(s.group, s.feature).set(s.p_value)
            drifted.labels(s.group, s.feature).set(1 if s.drifted else 0)
        p = self.propensity
        gauge("min_propensity", "smallest logged conditional propensity of a policy slot").set(p.min_propensity)
        gauge("min_marginal", "smallest logged marginal propensity of a policy slot").set(p.min_marginal)
        gauge("floor_violations", "policy slots under the exploration floor").set(p.floor_violations)
        gauge("floor_violation_share", "share of checked policy slots under the floor").set(p.floor_violation_share)
        gauge("pending_slots", "policy slots whose propensities are still pending").set(p.pending)
        gauge("ess", "effective sample size for the reference target (see docs/monitor.md)").set(p.ess)
        gauge("ess_share", "ESS / settled policy slots").set(p.ess_share)
        if self.srm is not None:
            users = gauge("arm_users", "distinct users served per arm", ("arm",))
            share = gauge("arm_share_configured", "configured share per arm", ("arm",))
            for a, n, sh in zip(self.srm.arms, self.srm.users, self.srm.shares):
                users.labels(a).set(n)
                share.labels(a).set(sh)
            gauge("srm_pvalue", "sample-ratio-mismatch chi-square p-value").set(self.srm.p_value)
        lag = gauge("join_lag_seconds", "reward ts - decision ts", ("quantile",))
        for q, v in self.lag.quantiles.items():
            lag.labels(q).set(v)
        gauge("rewards", "rewards of any kind joined to the window's decisions").set(self.lag.rewards)
        gauge("late_reward_share", "share of those rewards flagged late").set(self.lag.late_share)

    def markdown(self) -> str:
        from .monitor_plots import markdown_report

        return markdown_report(self)


def _finite(obj):
    """JSON-safe: infinities and NaN as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------- the monitor


def _contexts(rows: MonitorRows, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The logged contexts of the newest width as ``(n_kept, width)`` and the kept decisions' rows."""
    lengths = np.diff(rows.context_offsets)
    if len(lengths) == 0:
        return np.empty((0, 0)), np.empty(0, np.int64)
    width = int(lengths[-1])
    keep = np.flatnonzero(lengths == width)
    if len(keep) < len(lengths):
        notes.append(
            f"{len(lengths) - len(keep):,} decisions log a context of another width than {width}; left out of drift"
        )
    idx = rows.context_offsets[keep][:, None] + np.arange(width)[None, :]
    return rows.context_flat[idx].reshape(len(keep), width), keep


def _names(given: list[str] | None, width: int, prefix: str) -> list[str]:
    if given is not None and len(given) == width:
        return list(given)
    return [f"{prefix}[{j}]" for j in range(width)]


def _arm_shares(rows: MonitorRows, given: dict[str, float] | None) -> dict[str, float] | None:
    """Configured share of each arm: ``given``, else the ``arms`` of the most logged policy_params;
    ``main`` takes what the others leave."""
    shares = given
    if shares is None and rows.params:
        counts = np.bincount(rows.params_index, minlength=len(rows.params))
        shares = rows.params[int(np.argmax(counts))].get("arms")
    if not shares:
        return None
    if not isinstance(shares, dict):
        raise ValidationError(f"arm shares must map holdout and control to shares, got {shares!r}", "arms")
    arms = Arms(holdout=shares.get("holdout", 0.0), control=shares.get("control", 0.0))  # checks them
    if not arms.active:
        return None
    out = arms.shares()
    if out["main"] <= 0:
        raise ValidationError(f"arm shares must leave a share for 'main', got {shares!r}", "arms")
    return out


def parse_arm_shares(text: str | None) -> dict[str, float] | None:
    """``holdout=0.05,control=0.05`` as a dict (``--arm-shares``, read as ``abtest --shares``)."""
    if not text:
        return None
    shares = Shares.parse(text)
    return {"holdout": shares.holdout, "control": shares.control}


def run_monitor(
    db: str | Path,
    *,
    since=None,
    until=None,
    reference=None,
    thresholds: Thresholds | None = None,
    kind: str = "click",
    context_names: list[str] | None = None,
    item_names: list[str] | None = None,
    item_features: np.ndarray | None = None,
    arm_shares: dict[str, float] | None = None,
    target=None,
    item_cold: np.ndarray | None = None,
) -> MonitorReport:
    """Every figure and check of the monitor on the log at ``db`` (docs/monitor.md).

    ``since``/``until``: the window (time bounds as :func:`parse_time` reads them; default the
    whole log). ``reference``: ``START:END`` of the drift and reward-drop reference window;
    default the first half of the window (the current window is then the second half, else the
    whole window). ``item_features``: the shop's item features, used when the log's ``items``
    table is empty. ``target``: a :class:`~banditrec.policies.base.Policy` (as configured, not
    trained) whose ESS on the window replaces the uniform target's; it needs ``item_features``
    (and ``item_cold``, the shop's cold flags).
    """
    th = thresholds or Thresholds()
    notes: list[str] = []
    first_ts, last_ts, total = log_span(db)
    lo = parse_time(since, last_ts=last_ts, name="--since")
    hi = parse_time(until, last_ts=last_ts, name="--until")
    ref_bounds = parse_reference(reference, last_ts=last_ts)
    if total == 0:
        raise ValidationError(f"{db}: the decision log holds no decisions", "db")
    rows = read_monitor_rows(db, since=lo, until=hi, kind=kind)
    if rows.n_decisions == 0:
        raise ValidationError(
            f"{db}: no decisions in the window [{_fmt_ts(lo)}, {_fmt_ts(hi)}) "
            f"(the log spans {_fmt_ts(first_ts)} .. {_fmt_ts(last_ts)}, {total:,} decisions)",
            "since",
        )
    w_lo = float(rows.ts.min()) if lo is None else lo
    w_hi = float(np.nextafter(rows.ts.max(), np.inf)) if hi is None else hi
    # windows: the reference and the current decisions
    if ref_bounds is None:
        mid = (w_lo + w_hi) / 2
        ref_rows, ref_sel = rows, rows.ts < mid
        cur_sel = ~ref_sel
        ref_window, cur_window = (w_lo, mid), (mid, w_hi)
    else:
        ref_rows = read_monitor_rows(db, since=ref_bounds[0], until=ref_bounds[1], kind=kind)
        ref_sel = np.ones(ref_rows.n_decisions, dtype=bool)
        cur_sel = np.ones(rows.n_decisions, dtype=bool)
        ref_lo = ref_bounds[0]
        if ref_lo is None:
            ref_lo = float(ref_rows.ts.min()) if ref_rows.n_decisions else w_lo
        ref_window = (ref_lo, ref_bounds[1] if ref_bounds[1] is not None else w_hi)
        cur_window = (w_lo, w_hi)

    pinned = rows.source == "pinned"
    # reward rates (all shown slots, pinned ones included: customers saw them)
    day = np.floor(rows.ts[rows.decision] / DAY_S).astype(np.int64)
    rates = {
        "day": rate_table("day", day, rows.reward, labels=_day_label),
        "position": rate_table("position", rows.position, rows.reward),
        "source": rate_table("source", rows.source.astype(str), rows.reward),
    }
    ref_slot = _slot_mask(ref_rows, ref_sel)
    cur_slot = cur_sel[rows.decision]
    ref_reward, cur_reward = ref_rows.reward[ref_slot], rows.reward[cur_slot]
    rate_windows = {"reference": _window_rate(ref_reward), "current": _window_rate(cur_reward)}
    checks = [_reward_check(ref_reward, cur_reward, th)]

    # drift
    shifts, p_cut = _drift(
        rows, cur_sel, ref_rows, ref_sel, th, context_names, item_names, item_features, notes, checks
    )

    # propensity health
    prop = _propensity(rows, pinned, notes)
    if target is not None:
        prop = _target_ess(db, rows, prop, target, item_features, item_cold)
    checks += _propensity_checks(prop, th)

    # sample-ratio mismatch
    srm, srm_check_ = _srm(rows, arm_shares, th)
    checks.append(srm_check_)

    # join lag
    lag = _join_lag(rows)
    checks += _lag_checks(lag, th)

    return MonitorReport(
        db=str(db),
        kind=kind,
        window=(w_lo, w_hi),
        reference=ref_window,
        current=cur_window,
        n_decisions=rows.n_decisions,
        n_slots=len(rows.position),
        rates=rates,
        rate_windows=rate_windows,
        shifts=shifts,
        drift_p_cut=p_cut,
        propensity=prop,
        srm=srm,
        lag=lag,
        checks=checks,
        thresholds=th,
        notes=notes,
        rows=rows,
    )


def _fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "open"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + f" ({ts:.0f})"


def _slot_mask(rows: MonitorRows, decision_sel: np.ndarray) -> np.ndarray:
    return decision_sel[rows.decision] if len(rows.decision) else np.zeros(0, dtype=bool)


def _window_rate(reward: np.ndarray) -> RateRow | None:
    table = rate_table("window", np.zeros(len(reward), dtype=np.int64), reward)
    return table[0] if table else None


def _reward_check(ref_reward: np.ndarray, cur_reward: np.ndarray, th: Thresholds) -> Check:
    """Relative drop of the current window's reward per slot, with a one-sided two-sample z-test
    (normal approximation of the two means)."""
    threshold = f"drop > {th.max_reward_drop:g} and p < {th.reward_alpha:g}"
    n = (len(ref_reward), len(cur_reward))
    if min(n) < th.min_window_rows:
        return Check(
            "reward_drop", None, threshold, "skipped", f"slots (reference, current) = {n}, need {th.min_window_rows}"
        )
    ref, cur = float(ref_reward.mean()), float(cur_reward.mean())
    if ref <= 0:
        return Check("reward_drop", 0.0, threshold, "skipped", "no reward in the reference window")
    drop = 1.0 - cur / ref
    se = math.sqrt(float(ref_reward.var(ddof=1)) / n[0] + float(cur_reward.var(ddof=1)) / n[1])
    z = (ref - cur) / se if se > 0 else 0.0
    p = 1.0 - NormalDist().cdf(z)
    alert = drop > th.max_reward_drop and p < th.reward_alpha
    return Check(
        "reward_drop",
        drop,
        threshold,
        "alert" if alert else "ok",
        f"rate {ref:.4g} -> {cur:.4g}, p = {p:.3g}",
        th.max_reward_drop,
    )


def _drift(rows, cur_sel, ref_rows, ref_sel, th, context_names, item_names, item_features, notes, checks):
    threshold_skip = f"KS p < {th.drift_alpha:g}/m and PSI >= {th.psi_min:g}"
    ctx_cur, keep_cur = _contexts(rows, notes)
    ctx_ref, keep_ref = _contexts(ref_rows, []) if ref_rows is not rows else (ctx_cur, keep_cur)
    ctx_cur_x = ctx_cur[cur_sel[keep_cur]]
    ctx_ref_x = ctx_ref[ref_sel[keep_ref]]
    groups = []
    # rows of one user are one cluster (a user's context repeats, a slate's items go together)
    n_eff: dict[str, tuple[float, float]] = {}
    if ctx_ref_x.shape[1] == ctx_cur_x.shape[1]:
        groups.append(("context", _names(context_names, ctx_cur.shape[1], "ctx"), ctx_ref_x, ctx_cur_x))
        n_eff["context"] = (
            kish_size(ref_rows.user_id[keep_ref][ref_sel[keep_ref]]),
            kish_size(rows.user_id[keep_cur][cur_sel[keep_cur]]),
        )
    else:
        notes.append("the reference and current windows log contexts of different widths; context drift not tested")
    feats = rows.item_features
    known = rows.item_known
    if feats is None and item_features is not None:
        feats = np.asarray(item_features, dtype=float)
        known = np.ones(len(feats), dtype=bool)
    if feats is None:
        notes.append("no item features (the log's items table is empty and no --shop given); item drift not tested")
    else:
        it_cur, users_cur = _shown_features(rows, cur_sel, feats, known, notes)
        it_ref, users_ref = _shown_features(ref_rows, ref_sel, feats, known, [])
        groups.append(("item", _names(item_names, feats.shape[1], "item"), it_ref, it_cur))
        n_eff["item"] = (kish_size(users_ref), kish_size(users_cur))
    ignored = set(th.ignore_features)
    m = sum(sum(name not in ignored for name in g[1]) for g in groups)
    p_cut = th.drift_alpha / max(m, 1)
    threshold = f"features with KS p < {th.drift_alpha:g}/{m} and PSI >= {th.psi_min:g}: > 0"
    shifts: list[FeatureShift] = []
    for group in ("context", "item"):
        g = [x for x in groups if x[0] == group]
        name = f"drift_{group}"
        if not g:
            checks.append(Check(name, None, threshold_skip, "skipped", "no features"))
            continue
        _, names, ref, cur = g[0]
        if min(len(ref), len(cur)) < th.min_window_rows:
            checks.append(
                Check(
                    name,
                    None,
                    threshold,
                    "skipped",
                    f"rows (reference, current) = ({len(ref)}, {len(cur)}), need {th.min_window_rows}",
                )
            )
            continue
        found = feature_shifts(
            group, names, ref, cur, p_cut=p_cut, psi_min=th.psi_min, bins=th.psi_bins, n_eff=n_eff[group]
        )
        found = [dataclasses.replace(s, drifted=False, ignored=True) if s.feature in ignored else s for s in found]
        shifts += found
        drifted = [s for s in found if s.drifted]
        top = sorted(drifted, key=lambda s: -s.psi)[:3]
        detail = ", ".join(f"{s.feature} PSI {s.psi:.3g}" for s in top)
        checks.append(Check(name, float(len(drifted)), threshold, "alert" if drifted else "ok", detail, 0.0))
    return shifts, p_cut


def _shown_features(rows, sel, feats, known, notes) -> tuple[np.ndarray, np.ndarray]:
    """The features of the shown items of the selected decisions, and each row's user."""
    slot_sel = _slot_mask(rows, sel)
    idx = rows.item_index[slot_sel]
    ok = (idx < len(feats)) & known[np.minimum(idx, len(feats) - 1)]
    if not ok.all():
        notes.append(f"{int((~ok).sum()):,} shown slots name items without features; left out of item drift")
    return feats[idx[ok]], rows.user_id[rows.decision[slot_sel][ok]]


def _propensity(rows: MonitorRows, pinned: np.ndarray, notes: list[str]) -> PropensityHealth:
    policy = ~pinned
    prop, marg = rows.propensity[policy], rows.marginal[policy]
    pending = int(np.isnan(prop).sum())
    eps = np.asarray([p.get("min_epsilon", np.nan) for p in rows.params], dtype=float)
    eps_slot = eps[rows.params_index[rows.decision]][policy] if len(rows.params) else np.full(len(prop), np.nan)
    k = policy_slot_rank(rows.decision, pinned)[policy]
    n = rows.n_candidates[rows.decision][policy]
    free = np.maximum(n - k, 1)
    checked = ~np.isnan(prop) & ~np.isnan(eps_slot)
    floor = np.where(checked, eps_slot, 0.0) / free
    viol = checked & (prop < floor * (1 - FLOOR_RTOL))
    no_eps = int((~np.isnan(prop) & np.isnan(eps_slot)).sum())
    if no_eps:
        notes.append(f"{no_eps:,} slots were logged without min_epsilon in policy_params; floor not checked on them")
    mk = ~np.isnan(marg)
    w = (1.0 / n[mk]) / marg[mk]
    ess = effective_sample_size(w)
    return PropensityHealth(
        slots=int(policy.sum()),
        pending=pending,
        min_propensity=float(np.nanmin(prop)) if (~np.isnan(prop)).any() else math.nan,
        min_marginal=float(np.nanmin(marg)) if mk.any() else math.nan,
        floor_checked=int(checked.sum()),
        floor_violations=int(viol.sum()),
        ess=ess,
        ess_share=ess / int(mk.sum()) if mk.any() else math.nan,
    )


def _target_ess(db, rows: MonitorRows, prop: PropensityHealth, target, item_features, item_cold) -> PropensityHealth:
    """``prop`` with the ESS of ``target`` on the window's settled policy rows (the target's
    marginals replayed with the off-policy machinery, the serving floor applied as logged)."""
    from .offline import target_pscore
    from .store import DecisionLog

    if item_features is None:
        raise ValidationError("a target policy's ESS needs the shop's item features (--shop)", "target")
    eps = [p.get("min_epsilon", 0.0) for p in rows.params]
    log = DecisionLog(db)
    try:
        logged = log.decisions(after_seq=int(rows.seq.min()) - 1, until_seq=int(rows.seq.max()))
    finally:
        log.close()
    pi = target_pscore(
        target, logged, np.asarray(item_features, float), min_epsilon=float(max(eps, default=0.0)), cold=item_cold
    )
    keep = np.isin(logged.seq[logged.row_decision], rows.seq)
    w = pi[keep] / logged.row_pscore[keep]
    ess = effective_sample_size(w)
    n = int(keep.sum())
    return dataclasses.replace(prop, ess=ess, ess_share=ess / n if n else math.nan, target=target.spec)


def _propensity_checks(p: PropensityHealth, th: Thresholds) -> list[Check]:
    out = []
    if math.isnan(p.min_marginal):
        out.append(Check("min_propensity", None, f"< {th.min_propensity:g}", "skipped", "no settled policy slots"))
    else:
        low = min(p.min_propensity, p.min_marginal)
        out.append(
            Check(
                "min_propensity",
                low,
                f"< {th.min_propensity:g}",
                "alert" if low < th.min_propensity else "ok",
                "conditional or marginal",
                th.min_propensity,
            )
        )
    thr = f"> {th.max_floor_violation_share:g}"
    if p.floor_checked == 0:
        out.append(Check("floor_violations", None, thr, "skipped", "no slot logged with a min_epsilon"))
    else:
        share = p.floor_violation_share
        out.append(
            Check(
                "floor_violations",
                share,
                thr,
                "alert" if share > th.max_floor_violation_share else "ok",
                f"{p.floor_violations:,} of {p.floor_checked:,} slots",
                th.max_floor_violation_share,
            )
        )
    thr = f"< {th.min_ess_share:g}"
    if math.isnan(p.ess_share):
        out.append(Check("ess_share", None, thr, "skipped", "no settled marginals"))
    else:
        out.append(
            Check(
                "ess_share",
                p.ess_share,
                thr,
                "alert" if p.ess_share < th.min_ess_share else "ok",
                f"ESS {p.ess:,.0f} of {p.slots - p.pending:,} slots ({p.target})",
                th.min_ess_share,
            )
        )
    return out


def _srm(rows: MonitorRows, given: dict[str, float] | None, th: Thresholds) -> tuple[SRMResult | None, Check]:
    thr = f"p < {th.srm_alpha:g}"
    if rows.arm is None:
        return None, Check("srm", None, thr, "skipped", "the log has no decisions.arm column (no served groups)")
    shares = _arm_shares(rows, given)
    if shares is None:
        return None, Check(
            "srm", None, thr, "skipped", "no configured arm shares (policy_params 'arms' or --arm-shares)"
        )
    logged = np.asarray([a is not None for a in rows.arm], dtype=bool)
    if not logged.any():
        return None, Check("srm", None, thr, "skipped", "no decision in the window logs its arm")
    arm = rows.arm[logged].astype(str)
    pairs = np.unique(np.stack([arm, rows.user_id[logged].astype(str)]), axis=1)
    names, users = np.unique(pairs[0], return_counts=True)
    unknown = sorted(set(names.tolist()) - set(shares))
    if unknown:
        return None, Check(
            "srm", None, thr, "alert", f"arm {unknown[0]!r} served but has no configured share", th.srm_alpha
        )
    arms = tuple(shares)
    counts = np.asarray([int(users[names == a].sum()) for a in arms])
    res = srm_check(counts, [shares[a] for a in arms], alpha=th.srm_alpha)
    result = SRMResult(arms, tuple(int(c) for c in counts), tuple(shares[a] for a in arms), res.chi2, res.p_value)
    detail = ", ".join(f"{a} {c:,} users ({shares[a]:.3g})" for a, c in zip(arms, counts))
    return result, Check("srm", res.p_value, thr, "ok" if res.ok else "alert", detail, th.srm_alpha)


def _join_lag(rows: MonitorRows) -> JoinLag:
    lag = rows.lag_s
    q = {}
    if len(lag):
        p50, p90, p99 = np.quantile(lag, [0.5, 0.9, 0.99])
        q = {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(lag.max())}
    return JoinLag(rewards=len(lag), late=int(rows.late.sum()), quantiles=q)


def _lag_checks(lag: JoinLag, th: Thresholds) -> list[Check]:
    if lag.rewards == 0:
        return [
            Check("late_share", None, f"> {th.max_late_share:g}", "skipped", "no rewards in the window"),
            Check("join_lag_p99", None, f"> {th.max_join_lag_p99_s:g} s", "skipped", "no rewards in the window"),
        ]
    p99 = lag.quantiles["p99"]
    return [
        Check(
            "late_share",
            lag.late_share,
            f"> {th.max_late_share:g}",
            "alert" if lag.late_share > th.max_late_share else "ok",
            f"{lag.late:,} of {lag.rewards:,} rewards",
            th.max_late_share,
        ),
        Check(
            "join_lag_p99",
            p99,
            f"> {th.max_join_lag_p99_s:g} s",
            "alert" if p99 > th.max_join_lag_p99_s else "ok",
            "",
            th.max_join_lag_p99_s,
        ),
    ]
