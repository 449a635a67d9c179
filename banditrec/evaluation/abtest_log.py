"""The analysis holdout of a live log: ``banditrec abtest --db``.

Users are the unit (the arms are assigned by user). Each user's rewards and decisions in the
experiment window are summed, and the holdout (served by the policy, never learned from) is
compared with the control (served by the baseline) with :mod:`banditrec.experiment`: Welch
and bootstrap intervals per user, the delta method per decision, CUPED on a pre-experiment
covariate, the minimum detectable effect at the observed variance and a sample-ratio check
against the configured shares. The store hands the rows over (:mod:`banditrec.store.arms`).

Details: docs/abtest.md, "Analysing a live log".
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..apprentice import Arms
from ..errors import ValidationError
from ..experiment import SRM, Comparison, analyse, cuped, format_table, minimum_detectable_effect, srm_check
from ..store.arms import arm_decisions, first_arm_ts, logged_shares, reward_kinds
from ..store.log import DecisionLog

DAY_S = 86_400.0
ARM_NAMES = ("main", "holdout", "control")
TREATMENTS = ("holdout", "main")
CONTROL = "control"
PER_USER, PER_USER_CUPED, PER_DECISION = "{} per user", "{} per user, CUPED", "{} per decision"
DECISIONS = "decisions per user"


@dataclass(frozen=True)
class Shares:
    """The configured arm shares (``salt``: the assignment's, when known) and where they came
    from (``"log"``: the decisions' ``policy_params``; ``"option"``: the caller)."""

    holdout: float
    control: float
    salt: str | None = None
    source: str = "option"

    def __post_init__(self):
        Arms(holdout=self.holdout, control=self.control, salt=self.salt or "x")  # checks the shares

    @classmethod
    def parse(cls, text: str) -> Shares:
        """``holdout=0.05,control=0.05[,salt=S]``."""
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("holdout", "control", "salt"):
                raise ValidationError(f"shares must read holdout=H,control=C[,salt=S], got {text!r}", "shares")
            values[key.strip()] = value.strip()
        try:
            return cls(float(values.get("holdout", 0)), float(values.get("control", 0)), values.get("salt") or None)
        except ValueError:
            raise ValidationError(f"shares must be numbers, got {text!r}", "shares") from None

    def weights(self) -> dict[str, float]:
        return Arms(holdout=self.holdout, control=self.control).shares()


@dataclass(frozen=True)
class Power:
    """The smallest effect on a per-user metric that ``n_a`` control and ``n_b`` treatment
    users detect with probability ``power`` at level ``alpha``, at the observed pooled
    per-user SD ``sd`` (absolute ``mde``, and relative to the control mean)."""

    metric: str
    n_a: int
    n_b: int
    sd: float
    mde: float
    mde_relative: float
    alpha: float
    power: float


@dataclass(frozen=True)
class ArmComparison:
    """One arm against the control: its metric rows, their power and the CUPED slope per kind."""

    treatment: str
    control: str
    rows: tuple[Comparison, ...]
    power: tuple[Power, ...]
    theta: dict[str, float]


@dataclass(frozen=True)
class LogABTest:
    """``banditrec abtest --db``'s result (see the module docstring)."""

    db: str
    since: float
    until: float
    kinds: tuple[str, ...]
    covariate: str
    users: dict[str, int]
    decisions: dict[str, int]
    shares: Shares | None
    srm: SRM | None
    mismatched: int | None  # users whose logged arm is not the one their hash gives (salt known)
    crossovers: int  # users logged in more than one arm, left out
    comparisons: tuple[ArmComparison, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No sample-ratio mismatch was found (or none could be checked)."""
        return self.srm is None or self.srm.ok

    def table(self) -> str:
        """The report as text: counts, the sample-ratio check, a Markdown table per comparison
        and its power table, then the warnings."""
        lines = [
            f"banditrec abtest --db {self.db}: {_iso(self.since)} .. {_iso(self.until)} UTC, "
            f"{sum(self.decisions.values()):,} decisions of {sum(self.users.values()):,} users",
            "users:     " + ", ".join(f"{a} {self.users.get(a, 0):,}" for a in ARM_NAMES),
            "decisions: " + ", ".join(f"{a} {self.decisions.get(a, 0):,}" for a in ARM_NAMES),
        ]
        if self.shares is not None:
            w = self.shares.weights()
            salt = f", salt {self.shares.salt!r}" if self.shares.salt else ""
            lines.append(
                "shares:    "
                + ", ".join(f"{a} {w[a]:g}" for a in ARM_NAMES)
                + f" (from the {self.shares.source}{salt})"
            )
        if self.srm is not None:
            verdict = "ok" if self.srm.ok else "SAMPLE RATIO MISMATCH: the comparisons below are not trustworthy"
            lines.append(
                f"sample ratio: chi2 = {self.srm.chi2:.3f}, p = {self.srm.p_value:.4g} (alarm below "
                f"{self.srm.alpha:g}): {verdict}"
            )
        if self.mismatched is not None:
            lines.append(f"assignment: {self.mismatched} users logged in another arm than their hash gives")
        lines.append(f"CUPED covariate: {self.covariate}")
        for c in self.comparisons:
            theta = ", ".join(f"{k} {v:.4g}" for k, v in c.theta.items())
            lines += [
                "",
                f"{c.treatment} ({_role(c.treatment)}) vs {c.control} (baseline), per user"
                + (f"; CUPED theta: {theta}" if theta else ""),
                format_table(c.rows).rstrip("\n"),
            ]
            if c.power:
                p = c.power[0]
                lines += [
                    "",
                    f"minimum detectable effect at the observed variance (alpha {p.alpha:g}, power {p.power:g}):",
                    "| metric | control users | treatment users | SD per user | MDE | MDE % of control |",
                    "|---|---|---|---|---|---|",
                ]
                lines += [
                    f"| {r.metric} | {r.n_a:,} | {r.n_b:,} | {_num(r.sd)} | {_num(r.mde)} | "
                    f"{_num(100 * r.mde_relative)} |"
                    for r in c.power
                ]
        if self.warnings:
            lines += ["", "warnings:"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """The result as plain JSON values (NaN as ``None``)."""
        return _plain(asdict(self))


def _role(arm: str) -> str:
    return "the policy, not trained on" if arm == "holdout" else "the policy, trained on"


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plain(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def parse_time(value: str | float | None, name: str = "since") -> float | None:
    """Seconds since the epoch from a number, or an ISO date or date-time (UTC unless it says)."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{name} must be seconds since the epoch or an ISO date (2026-12-01, 2026-12-01T08:00), got {value!r}",
            name,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def shop_interactions(user_ids: Sequence[str], history) -> dict[str, float]:
    """Each shop user's number of items in the build's interaction history (``history``: users
    x items, rows in ``user_ids`` order): a covariate measured before the build went live."""
    counts = np.diff(history.tocsr().indptr).astype(float)
    return dict(zip(user_ids, counts.tolist()))


def _per_user(index: np.ndarray, n_users: int, values: np.ndarray) -> np.ndarray:
    return np.bincount(index, weights=values, minlength=n_users).astype(float)


def _lookup(users: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` of sorted unique ``keys`` at ``users`` (0 for a user not among them)."""
    out = np.zeros(len(users))
    if len(keys):
        at = np.minimum(np.searchsorted(keys, users), len(keys) - 1)
        hit = keys[at] == users
        out[hit] = values[at[hit]]
    return out


def _power_row(metric: str, a: np.ndarray, b: np.ndarray, alpha: float, power: float) -> Power:
    na, nb = len(a), len(b)
    sd = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    base = float(a.mean())
    mde = math.nan
    if sd > 0:
        mde = minimum_detectable_effect(
            na, baseline=base, sd=sd, relative=False, alpha=alpha, power=power, ratio=nb / na
        )
    return Power(metric, na, nb, sd, mde, mde / base if base else math.nan, alpha, power)


def analyse_log(
    log: DecisionLog,
    *,
    kinds: Sequence[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    pre_days: float = 0.0,
    covariate: Mapping[str, float] | None = None,
    shares: Shares | None = None,
    treatments: Sequence[str] = ("holdout",),
    alpha: float = 0.05,
    power: float = 0.8,
    n_boot: int = 2000,
    srm_alpha: float = 0.001,
    include_late: bool = False,
    rng=0,
) -> LogABTest:
    """Compare the log's ``treatments`` arms (``holdout``, ``main``) with its control arm.

    Parameters
    ----------
    log : DecisionLog
    kinds : sequence of str, optional
        Reward kinds to analyse; default: every kind the log holds (``click`` first).
    since, until : float, optional
        The experiment window ``since <= ts < until`` (seconds); ``since`` defaults to the first
        decision of a holdout or control user (when the arms were switched on).
    pre_days : float
        CUPED's covariate: each user's reward of the same kind in the ``pre_days`` days before
        ``since``. It must predate the arms, or the treatment moves it (warned).
    covariate : mapping of user id to float, optional
        Without ``pre_days``: a covariate measured before the experiment (for example
        :func:`shop_interactions`); users not in it count 0.
    shares : Shares, optional
        The configured shares for the sample-ratio check; default: those the decisions were
        logged with (``policy_params["arms"]``).
    alpha, power : float
        Level of the intervals and tests; power of the minimum detectable effect.
    n_boot : int
        Bootstrap resamples of users per arm.
    srm_alpha : float
        The sample-ratio alarm threshold (:func:`banditrec.experiment.srm_check`).
    include_late : bool
        Count rewards that arrived after the log's reward window.
    rng : Generator, seed or None
        The bootstrap's randomness.

    Returns
    -------
    LogABTest
    """
    name = str(log.path)
    bad = [t for t in treatments if t not in TREATMENTS]
    if bad or not treatments:
        raise ValidationError(f"treatments must be among {TREATMENTS}, got {list(treatments)!r}", "treatments")
    if not (isinstance(pre_days, (int, float)) and math.isfinite(pre_days) and pre_days >= 0):
        raise ValidationError(f"pre_days must be a number >= 0, got {pre_days!r}", "pre_days")
    have = reward_kinds(log)
    if kinds is None or not len(kinds):
        kinds = tuple(sorted(have, key=lambda k: (k != "click", k))) or ("click",)
    else:
        kinds = tuple(dict.fromkeys(kinds))
        missing = [k for k in kinds if k not in have]
        if missing and have:
            raise ValidationError(
                f"{name} has no {', '.join(map(repr, missing))} rewards; it has {', '.join(map(repr, have))}", "kind"
            )
    warnings: list[str] = []
    if not have:
        warnings.append(f"{name} holds no rewards: every user's reward is 0")
    start = since if since is not None else first_arm_ts(log)
    if start is None:
        raise ValidationError(
            f"{name} has no decision of a holdout or control user: the arms were never switched on "
            "(serve with `banditrec serve --holdout H --control C`, or `Engine(arms=Arms(holdout=H, control=C))`; "
            "docs/abtest.md, 'Analysing a live log')",
            "db",
        )
    if until is not None and until <= start:
        raise ValidationError(f"until ({until}) must be after the window's start ({start})", "until")
    dec = arm_decisions(log, kinds=kinds, since=start, until=until, include_late=include_late)
    if dec.n_decisions == 0:
        raise ValidationError(f"{name} has no decisions between {_iso(start)} and the window's end", "since")
    end = float(until) if until is not None else float(dec.ts.max())

    per_user = _per_user_totals(dec, kinds, warnings)
    kept, user_arm = per_user.kept, per_user.arm
    counts = {a: int(((user_arm == a) & kept).sum()) for a in ARM_NAMES}
    decisions = {a: int(per_user.n_decisions[(user_arm == a) & kept].sum()) for a in ARM_NAMES}
    holdout_baseline = int(((dec.arm == "holdout") & (dec.served == "baseline")).sum())
    if holdout_baseline:
        warnings.append(
            f"{holdout_baseline} decisions of holdout users were served the baseline (apprentice mode); "
            "they stay in the holdout (users are compared as assigned)"
        )

    x, cov_text = None, "none"
    if pre_days > 0:
        x = _pre_period(log, per_user.users, kinds, start, pre_days, include_late, warnings)
        cov_text = f"each user's reward of the same kind in the {pre_days:g} days before the window"
    elif covariate is not None:
        values = np.array([float(covariate.get(u, 0.0)) for u in per_user.users.tolist()])
        x = {k: values for k in kinds}
        cov_text = "each user's interactions in the shop's build (before the window)"

    if shares is None:
        found = logged_shares(log, since=start, until=until)
        if len(found) == 1:
            f = found[0]
            shares = Shares(float(f.get("holdout", 0)), float(f.get("control", 0)), f.get("salt"), "log")
        elif len(found) > 1:
            warnings.append(f"the window's decisions were logged with {len(found)} arm configurations: {found}")
    srm, mismatched = _sample_ratio(shares, counts, per_user, srm_alpha, warnings)

    streams = np.random.default_rng(rng).spawn(len(treatments))
    comparisons = tuple(
        _compare(name, per_user, treatment, x, kinds, alpha=alpha, power=power, n_boot=n_boot, rng=stream)
        for treatment, stream in zip(treatments, streams)
    )
    return LogABTest(
        db=name,
        since=float(start),
        until=end,
        kinds=tuple(kinds),
        covariate=cov_text if x is not None else "none",
        users=counts,
        decisions=decisions,
        shares=shares,
        srm=srm,
        mismatched=mismatched,
        crossovers=int((~kept).sum()),
        comparisons=comparisons,
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class _PerUser:
    """The window's totals per user (``users`` sorted): their arm, whether they are kept (in
    one arm only), their decisions and their summed reward of each kind."""

    users: np.ndarray
    arm: np.ndarray
    kept: np.ndarray
    n_decisions: np.ndarray
    reward: dict[str, np.ndarray]


def _per_user_totals(dec, kinds: Sequence[str], warnings: list[str]) -> _PerUser:
    anonymous = dec.user_id == ""
    if anonymous.any():
        warnings.append(f"{int(anonymous.sum())} decisions without a user id are left out (users are the unit)")
    keep = ~anonymous
    users, index = np.unique(dec.user_id[keep].astype(str), return_inverse=True)
    n = len(users)
    names = np.array(sorted(ARM_NAMES), dtype=object)
    code = np.searchsorted(names.astype(str), dec.arm[keep].astype(str))
    lo, hi = np.full(n, len(names)), np.full(n, -1)
    np.minimum.at(lo, index, code)
    np.maximum.at(hi, index, code)
    crossover = lo != hi
    if crossover.any():
        warnings.append(
            f"{int(crossover.sum())} users were logged in more than one arm (the shares or the salt changed "
            "within the window); they are left out"
        )
    return _PerUser(
        users=users,
        arm=names[np.minimum(lo, len(names) - 1)],
        kept=~crossover,
        n_decisions=_per_user(index, n, np.ones(len(index))),
        reward={k: _per_user(index, n, dec.reward[k][keep]) for k in kinds},
    )


def _pre_period(
    log: DecisionLog,
    users: np.ndarray,
    kinds: Sequence[str],
    start: float,
    pre_days: float,
    include_late: bool,
    warnings: list[str],
) -> dict[str, np.ndarray] | None:
    """Each user's summed reward of each kind in the ``pre_days`` days before ``start``."""
    pre = arm_decisions(log, kinds=tuple(kinds), since=start - pre_days * DAY_S, until=start, include_late=include_late)
    if pre.n_decisions == 0:
        warnings.append(f"no decisions in the {pre_days:g} days before the window: CUPED has no covariate")
        return None
    armed = int((pre.arm != "main").sum())
    if armed:
        warnings.append(
            f"{armed} decisions of the pre-period were already in an arm: the covariate may carry the "
            "treatment's effect; choose a pre-period before the arms"
        )
    p_users, p_index = np.unique(pre.user_id.astype(str), return_inverse=True)
    return {k: _lookup(users, p_users, _per_user(p_index, len(p_users), pre.reward[k])) for k in kinds}


def _sample_ratio(
    shares: Shares | None, counts: dict[str, int], per_user: _PerUser, srm_alpha: float, warnings: list[str]
) -> tuple[SRM | None, int | None]:
    """The sample-ratio check of the users per arm against ``shares``, and (with the salt) the
    users whose logged arm is not the one their hash gives."""
    if shares is None:
        warnings.append("the configured shares are unknown (pass shares=, --shares): no sample-ratio check")
        return None, None
    w = shares.weights()
    arms = [a for a in ARM_NAMES if w[a] > 0]
    srm = None
    if len(arms) >= 2 and any(counts[a] for a in arms):
        srm = srm_check([counts[a] for a in arms], [w[a] for a in arms], alpha=srm_alpha)
    stray = [a for a in ARM_NAMES if w[a] == 0 and counts[a]]
    if stray:
        warnings.append(f"users in arms whose configured share is 0: {', '.join(stray)}")
    if not shares.salt:
        return srm, None
    assigner = Arms(holdout=shares.holdout, control=shares.control, salt=shares.salt)
    kept = per_user.kept
    expected = np.array([assigner.of(u) for u in per_user.users[kept].tolist()], dtype=object)
    mismatched = int((expected != per_user.arm[kept]).sum())
    if mismatched:
        warnings.append(f"{mismatched} users were logged in another arm than the salt's hash gives")
    return srm, mismatched


def _compare(
    name: str,
    per_user: _PerUser,
    treatment: str,
    x: dict[str, np.ndarray] | None,
    kinds: Sequence[str],
    *,
    alpha: float,
    power: float,
    n_boot: int,
    rng: np.random.Generator,
) -> ArmComparison:
    """``treatment``'s users against the control's: per kind the reward per user (and CUPED's,
    with a covariate) and per decision, then the decisions per user."""
    in_control = per_user.kept & (per_user.arm == CONTROL)
    in_treat = per_user.kept & (per_user.arm == treatment)
    for arm, mask in ((CONTROL, in_control), (treatment, in_treat)):
        if mask.sum() < 2:
            raise ValidationError(
                f"{name} has {int(mask.sum())} {arm} users in the window; a comparison needs at least 2 per arm", "db"
            )
    metrics: dict[str, tuple] = {}
    power_rows = []
    theta = {}
    na, nb = per_user.n_decisions[in_control], per_user.n_decisions[in_treat]
    for k in kinds:
        ya, yb = per_user.reward[k][in_control], per_user.reward[k][in_treat]
        metrics[PER_USER.format(k)] = (ya, yb)
        power_rows.append(_power_row(PER_USER.format(k), ya, yb, alpha, power))
        if x is not None:
            xa, xb = x[k][in_control], x[k][in_treat]
            adj_a, adj_b, theta[k] = cuped(ya, yb, xa, xb)
            if theta[k] != 0.0:  # a constant covariate adjusts nothing
                metrics[PER_USER_CUPED.format(k)] = (ya, yb, (xa, xb))
                power_rows.append(_power_row(PER_USER_CUPED.format(k), adj_a, adj_b, alpha, power))
        metrics[PER_DECISION.format(k)] = (ya, na, yb, nb)
    metrics[DECISIONS] = (na, nb)
    power_rows.append(_power_row(DECISIONS, na, nb, alpha, power))
    rows = analyse(metrics, alpha=alpha, n_boot=n_boot, rng=rng)
    return ArmComparison(treatment, CONTROL, tuple(rows), tuple(power_rows), theta)
