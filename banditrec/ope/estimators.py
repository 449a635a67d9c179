"""Off-policy estimators over logged carousel data (pure array code; the store hands arrays):
IPS, ClippedIPS, SNIPS, DM, DR, SNDR, SwitchDR, Replay and SlatePI, position-wise, per decision,
each with a delta-method interval and a bootstrap from the same per-decision terms.

Details: docs/evaluation.md, "The estimators (`ope/estimators.py`)".
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from ..errors import ValidationError
from ..types import Estimate, LoggedBandit
from ..validation import as_1d, check_finite, check_probabilities
from .reward_model import RewardModel, default_reward_model

LOW_ESS = 300  # fewer effective rows than this and a normal interval undercovers (heavy weights)
LOW_ESS_SHARE = 0.01  # ... or fewer than this share of the rows
MAX_WEIGHT_SHARE = 0.1  # one row carrying more than this share of the total weight
MAX_UNSUPPORTED = 0.01  # target mass on items never logged in that slot
SUM_TOL = 1e-6
_SEED_SALT = 0x0FE57  # mixed into estimator seeds


class OPEWarning(UserWarning):
    """An estimate was computed, but its diagnostics say it should not be trusted."""


# ---- inputs ------------------------------------------------------------------------------
@dataclass
class RowInputs:
    """What the estimators need about the target policy and reward model, per logged row."""

    pi: np.ndarray
    dist: np.ndarray | None = None  # the caller's action_dist (n, A, K), or None
    slot: np.ndarray | None = None
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    rows: np.ndarray | None = None  # rows of ``dist`` these inputs refer to (after a subset)

    @functools.cached_property
    def target_rows(self) -> np.ndarray:
        """(n, A): the target's distribution over items in each row's own slot."""
        rows = np.arange(len(self.pi)) if self.rows is None else self.rows
        assert self.dist is not None  # only the inputs of an action_dist have target rows
        return self.dist[rows, :, self.slot]

    def subset(self, keep: np.ndarray) -> RowInputs:
        base = np.arange(len(self.pi)) if self.rows is None else self.rows
        return RowInputs(
            pi=self.pi[keep],
            dist=self.dist,
            slot=None if self.slot is None else self.slot[keep],
            q_logged=None if self.q_logged is None else self.q_logged[keep],
            q_target=None if self.q_target is None else self.q_target[keep],
            rows=base[keep],
        )


def _check_action_dist(data: LoggedBandit, action_dist: ArrayLike) -> np.ndarray:
    dist = np.asarray(action_dist, dtype=float)
    expected = (data.n_rows, data.n_actions, data.n_slots)
    if dist.shape != expected:
        raise ValidationError(f"action_dist must have shape {expected}, got {dist.shape}", "action_dist")
    sums = np.einsum("iak->ik", dist)  # faster than dist.sum(axis=1) over the middle axis (bench choices)
    if not np.abs(sums - 1.0).max() <= SUM_TOL:  # also true for NaN: locate the first bad row
        bad = np.flatnonzero((np.abs(sums - 1.0) > SUM_TOL).any(axis=1) | ~np.isfinite(sums).all(axis=1))
        i = int(bad[0])
        k = int(
            np.argmax(np.abs(sums[i] - 1.0) > SUM_TOL)
            if np.isfinite(sums[i]).all()
            else np.argmin(np.isfinite(sums[i]))
        )
        raise ValidationError(
            f"action_dist[i, :, k] must be a probability distribution over actions (sum 1), "
            f"found sum {float(sums[i, k])!r} at row {i}, slot {k}",
            "action_dist",
        )
    if dist.min() < 0:
        i, a, k = (int(v) for v in np.unravel_index(int(np.argmin(dist)), dist.shape))
        raise ValidationError(
            f"action_dist must be >= 0, found {float(dist[i, a, k])!r} at row {i}, action {a}, slot {k}", "action_dist"
        )
    return dist


def _flat_index(data: LoggedBandit) -> np.ndarray:
    """Index of each row's logged (action, slot) in a raveled (n, n_actions, n_slots) array
    (one 1-D gather is about twice as fast as three-array fancy indexing)."""
    index: np.ndarray = (np.arange(data.n_rows) * data.n_actions + data.action) * data.n_slots + data.slot
    return index


def _row_array(value: ArrayLike, name: str, n: int) -> np.ndarray:
    arr = as_1d(value, name, float)
    if len(arr) != n:
        raise ValidationError(f"{name} must have one entry per logged row ({n}), got {len(arr)}", name)
    check_finite(arr, name)
    return arr


def resolve_target_pscore(
    data: LoggedBandit, action_dist: ArrayLike | None = None, target_pscore: ArrayLike | None = None
) -> np.ndarray:
    """The target policy's probability of each logged (action, slot) row, shape (n,).

    Give either ``action_dist (n, n_actions, n_slots)`` or the compact ``target_pscore (n,)``.
    """
    return _resolve(data, action_dist, target_pscore).pi


def _resolve(data: LoggedBandit, action_dist: ArrayLike | None, target_pscore: ArrayLike | None) -> RowInputs:
    if (action_dist is None) == (target_pscore is None):
        raise ValidationError("give exactly one of action_dist or target_pscore", "action_dist")
    if target_pscore is not None:
        pi = as_1d(target_pscore, "target_pscore", float)
        if len(pi) != data.n_rows:
            raise ValidationError(
                f"target_pscore must have one entry per logged row ({data.n_rows}), got {len(pi)}",
                "target_pscore",
            )
        check_probabilities(pi, "target_pscore", allow_zero=True)
        return RowInputs(pi=pi)
    assert action_dist is not None  # exactly one of the two was given
    dist = _check_action_dist(data, action_dist)
    pi = dist.ravel()[_flat_index(data)]
    return RowInputs(pi=pi, dist=dist, slot=data.slot)


# ---- per-decision terms and their combination ----------------------------------------------
def per_decision(data: LoggedBandit, x: np.ndarray) -> np.ndarray:
    """Sum a per-row array within each decision, shape (D,).

    When every row is its own decision the rows are returned as they are: every statistic
    computed from these terms is invariant to the order of the decisions.
    """
    if data.n_decisions == data.n_rows:
        return x
    assert data.decision is not None  # LoggedBandit fills it in
    return np.bincount(data.decision, weights=x, minlength=data.n_decisions)


@dataclass(frozen=True)
class Terms:
    """Per-decision terms: ``V = mean(plain) + sum_j mean(num[j]) / mean(den[j])``."""

    plain: np.ndarray
    ratios: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    @property
    def n(self) -> int:
        return len(self.plain)

    def value_and_influence(self) -> tuple[float, np.ndarray]:
        p_mean = self.plain.mean()
        value = p_mean
        influence = self.plain - p_mean
        for num, den in self.ratios:
            b = den.mean()
            if b <= 0:
                raise ValidationError(
                    "the target policy gives probability 0 to every logged action: a self-normalised "
                    "estimate is undefined",
                    "target_pscore",
                )
            r = num.mean() / b
            value = value + r
            influence = influence + (num - r * den) / b
        return float(value), influence

    def padded(self, n_total: int) -> Terms:
        """These terms among ``n_total`` decisions, the others contributing nothing.

        Used for one slot's value: decisions that did not log that slot add 0 to the plain
        part, and each ratio is scaled by the share of decisions present (its denominator's
        mean must stay a per-present-decision normaliser).
        """
        extra = n_total - self.n
        if extra <= 0:
            return self
        pad = np.zeros(extra)
        return Terms(
            np.concatenate([self.plain, pad]),
            tuple(
                (np.concatenate([num, pad]), np.concatenate([den, pad]) * (n_total / self.n))
                for num, den in self.ratios
            ),
        )

    def bootstrap(self, n_boot: int, rng: np.random.Generator, chunk_elems: int = 4_000_000) -> np.ndarray:
        """``n_boot`` replicates of the value, decisions resampled with replacement.

        One ``rng.integers(0, D, size=(B, D))`` draw per chunk of replicates; memory is bounded
        by ``chunk_elems`` indices at a time.
        """
        D = self.n
        per = max(1, chunk_elems // D)
        out = np.empty(n_boot)
        for start in range(0, n_boot, per):
            stop = min(n_boot, start + per)
            idx = rng.integers(0, D, size=(stop - start, D))
            rep = self.plain[idx].mean(axis=1)
            for num, den in self.ratios:
                d = den[idx].mean(axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rep = rep + np.where(d > 0, num[idx].mean(axis=1) / np.where(d > 0, d, 1), np.nan)
            out[start:stop] = rep
        return out


@dataclass(frozen=True)
class Moments:
    """What a set of per-decision :class:`Terms` reduces to, so that partitions of a log can be
    estimated apart and combined: the point value and its delta-method interval come from these.

    Columns ``z = [plain, num_1, den_1, num_2, den_2, ...]`` per decision. ``mean (m,)`` and
    ``m2 (m, m)`` -- the centred cross-products ``sum_d (z_d - mean)(z_d - mean)^T`` -- are
    Chan et al. (1979)'s pairwise-combinable form of the sums ``sum z`` and ``sum z z^T`` (the
    same information; combining centred sums does not lose digits to ``sum z^2 - n mean^2``).
    ``n`` counts decisions, ``n_present`` those that had rows (a per-slot estimate counts the
    others as 0 and rescales each ratio's denominator by ``n / n_present``, as
    :meth:`Terms.padded`); ``n_rows``, ``sw``, ``sw2`` and ``max_w`` are the row-level weight
    sums the diagnostics need. The in-process :meth:`IPS.estimate` goes through this class too.
    """

    n: int
    n_present: int
    mean: np.ndarray
    m2: np.ndarray
    n_rows: int
    sw: float
    sw2: float
    max_w: float
    per_row: bool = False

    @classmethod
    def of(cls, terms: Terms, w: np.ndarray, n_total: int | None = None, *, per_row: bool = False) -> Moments:
        """The moments of ``terms`` (and row weights ``w``), among ``n_total`` decisions.

        ``per_row``: the ratios' denominators are per-decision weight sums scaled to a mean row
        weight (SNIPS, SNDR: ``_row_share``); that scale, ``decisions / rows``, is a property of
        the whole log, so it is taken out here and put back by :meth:`value_and_se`.
        """
        cols = [terms.plain]
        unscale = len(w) / terms.n if per_row and terms.n else 1.0
        for num, den in terms.ratios:
            cols += [num, den * unscale if per_row else den]
        z = np.column_stack(cols) if terms.n else np.zeros((0, len(cols)))
        mean = z.mean(axis=0) if terms.n else np.zeros(len(cols))
        c = z - mean
        own = cls(
            n=terms.n,
            n_present=terms.n,
            mean=mean,
            m2=c.T @ c,
            n_rows=len(w),
            sw=float(w.sum()),
            sw2=float((w * w).sum()),
            max_w=float(w.max()) if len(w) else -np.inf,
            per_row=per_row,
        )
        if n_total is not None and n_total > terms.n:
            own = own.combine(cls.zeros(len(cols), n_total - terms.n, per_row=per_row))
        return own

    @classmethod
    def zeros(cls, width: int, n: int, *, per_row: bool = False) -> Moments:
        """``n`` decisions without rows (they add 0 to every column)."""
        return cls(
            n=n,
            n_present=0,
            mean=np.zeros(width),
            m2=np.zeros((width, width)),
            n_rows=0,
            sw=0.0,
            sw2=0.0,
            max_w=-np.inf,
            per_row=per_row,
        )

    def combine(self, other: Moments) -> Moments:
        """The moments of both sets of decisions (Chan et al.'s pairwise update)."""
        if self.mean.shape != other.mean.shape or self.per_row != other.per_row:
            raise ValidationError(
                f"cannot combine moments of {len(self.mean)} and {len(other.mean)} columns (different estimators?)",
                "moments",
            )
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(
            n=n,
            n_present=self.n_present + other.n_present,
            mean=mean,
            m2=m2,
            n_rows=self.n_rows + other.n_rows,
            sw=self.sw + other.sw,
            sw2=self.sw2 + other.sw2,
            max_w=max(self.max_w, other.max_w),
            per_row=self.per_row,
        )

    @staticmethod
    def total(parts: Iterable[Moments | None]) -> Moments:
        """Combine an iterable of moments (``None`` entries -- empty partitions -- skipped)."""
        out: Moments | None = None
        for part in parts:
            if part is not None:
                out = part if out is None else out.combine(part)
        if out is None:
            raise ValidationError("no logged rows to estimate from: every partition was empty", "reward")
        return out

    def value_and_se(self) -> tuple[float, float]:
        """``V = mean(p) + sum_j mean(a_j) / mean(b_j)`` and its delta-method standard error
        ``sqrt(c^T Cov(z) c / n)``, ``c`` the gradient of V in the column means."""
        scale = np.ones(len(self.mean))
        if self.per_row and self.n_rows:
            scale[2::2] = self.n / self.n_rows  # per-decision weight sums -> mean row weight
        elif 0 < self.n_present < self.n:
            scale[2::2] = self.n / self.n_present  # the ratios' denominators, as Terms.padded
        mean = self.mean * scale
        grad = np.zeros(len(mean))
        grad[0] = 1.0
        value = float(mean[0])
        for j in range(1, len(mean), 2):
            b = mean[j + 1]
            if not b > 0:
                raise ValidationError(
                    "the target policy gives probability 0 to every logged action: a self-normalised "
                    "estimate is undefined",
                    "target_pscore",
                )
            r = mean[j] / b
            value += r
            grad[j], grad[j + 1] = 1.0 / b, -r / b
        cov = (self.m2 * np.outer(scale, scale)) / (self.n - 1)
        var = max(float(grad @ cov @ grad), 0.0)
        return float(value), float(np.sqrt(var / self.n))


# ---- estimators ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class IPS:
    """Inverse propensity scoring with position-wise marginal propensities.

    Parameters
    ----------
    level : float, default 0.95
        Confidence level of the interval, in (0, 1).
    interval : {"normal", "bootstrap"}
        ``"normal"``: delta method over decisions; ``"bootstrap"``: percentile interval from
        ``n_bootstrap`` resamples of the decisions.
    n_bootstrap : int, default 2000
        Bootstrap resamples (at least 100).
    seed : int or None
        Seeds the bootstrap and, for estimators that need them, cross-fitting folds and
        replay's sampling. ``None`` draws fresh entropy.

    Raises
    ------
    ValidationError
        A parameter out of range, naming it.
    """

    level: float = 0.95
    interval: str = "normal"
    n_bootstrap: int = 2000
    seed: int | None = None
    name: ClassVar[str] = "IPS"
    needs_q: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (isinstance(self.level, float | int) and 0 < self.level < 1):
            raise ValidationError(f"level must be in (0, 1), got {self.level!r}", "level")
        if self.interval not in ("normal", "bootstrap"):
            raise ValidationError(f"interval must be 'normal' or 'bootstrap', got {self.interval!r}", "interval")
        if isinstance(self.n_bootstrap, bool) or not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 100:
            raise ValidationError(f"n_bootstrap must be an integer >= 100, got {self.n_bootstrap!r}", "n_bootstrap")

    # -- what each estimator defines
    def weights(self, data: LoggedBandit, inputs: RowInputs) -> np.ndarray:
        w: np.ndarray = inputs.pi / data.pscore
        return w

    def terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray) -> Terms:
        return Terms(per_decision(data, w * data.reward))

    # -- shared machinery
    def _streams(self) -> tuple[np.random.Generator, np.random.Generator]:
        # salted, so that an estimator seeded with s never reuses the streams of the
        # simulation or logging policy a caller seeded with the same s
        entropy = None if self.seed is None else [int(self.seed), _SEED_SALT]
        boot, other = (np.random.default_rng(c) for c in np.random.SeedSequence(entropy).spawn(2))
        return boot, other

    def _inputs(
        self,
        data: LoggedBandit,
        action_dist: ArrayLike | None,
        target_pscore: ArrayLike | None,
        q_hat: ArrayLike | None,
        q_hat_logged: ArrayLike | None,
        q_hat_target: ArrayLike | None,
        rng: np.random.Generator | None,
    ) -> RowInputs:
        inputs = _resolve(data, action_dist, target_pscore)
        if not self.needs_q:
            if any(v is not None for v in (q_hat, q_hat_logged, q_hat_target)):
                raise ValidationError(f"{self.name} does not use a reward model; q_hat was given", "q_hat")
            return inputs
        if q_hat is not None:
            if q_hat_logged is not None or q_hat_target is not None:
                raise ValidationError("give q_hat or the compact q_hat_logged/q_hat_target, not both", "q_hat")
            q = np.asarray(q_hat, dtype=float)
            expected = (data.n_rows, data.n_actions, data.n_slots)
            if q.shape != expected:
                raise ValidationError(f"q_hat must have shape {expected}, got {q.shape}", "q_hat")
            if inputs.dist is None:
                raise ValidationError(
                    "with q_hat, give the target as action_dist (the DM term needs pi over "
                    "every action), or give q_hat_target",
                    "action_dist",
                )
            inputs.q_logged = q.ravel()[_flat_index(data)]
            # every slot's sum_a pi q, then each row's own slot: cheaper than gathering rows
            inputs.q_target = np.einsum("iak,iak->ik", inputs.dist, q)[np.arange(data.n_rows), data.slot]
            check_finite(inputs.q_logged, "q_hat")
            check_finite(inputs.q_target, "q_hat")
        elif q_hat_logged is not None or q_hat_target is not None:
            if q_hat_logged is None or q_hat_target is None:
                raise ValidationError("give both q_hat_logged and q_hat_target", "q_hat_logged")
            inputs.q_logged = _row_array(q_hat_logged, "q_hat_logged", data.n_rows)
            inputs.q_target = _row_array(q_hat_target, "q_hat_target", data.n_rows)
        else:
            if inputs.dist is None:
                raise ValidationError(
                    f"{self.name} fits a reward model when q_hat is not given, which needs the target as "
                    "action_dist; or pass q_hat_logged and q_hat_target",
                    "action_dist",
                )
            # needs_q: the DM family, which has the reward model; partial() gives q_hat, so rng is set
            assert isinstance(self, DM) and rng is not None
            inputs.q_logged, inputs.q_target = self.reward_model.cross_fit(
                data, inputs.target_rows, n_folds=self.n_folds, rng=rng
            )
        return inputs

    def estimate(
        self,
        data: LoggedBandit,
        action_dist: ArrayLike | None = None,
        *,
        target_pscore: ArrayLike | None = None,
        q_hat: ArrayLike | None = None,
        q_hat_logged: ArrayLike | None = None,
        q_hat_target: ArrayLike | None = None,
        slot: int | None = None,
    ) -> Estimate:
        """The target policy's value per decision (or of one ``slot`` alone), with an interval.

        Parameters
        ----------
        data : LoggedBandit
            The log: one row per logged slot, with its marginal propensity ``pscore``.
        action_dist : array (n, n_actions, n_slots), optional
            The target policy, ``pi(a at k | x_i)``; or give ``target_pscore``.
        target_pscore : array (n,), optional
            The target's probability of each row's logged item in its slot.
        q_hat : array (n, n_actions, n_slots), optional
            DM family only: reward-model predictions; or the compact ``q_hat_logged (n,)`` and
            ``q_hat_target (n,)``. With none of them a cross-fitted reward model is fitted on
            the log (needs ``action_dist``).
        slot : int, optional
            Estimate one slot's value alone (per decision of the whole log).

        Returns
        -------
        Estimate
            Value, interval, standard error and diagnostics (ESS, largest weight, unsupported
            mass, warnings).

        Raises
        ------
        ValidationError
            Inputs of the wrong shape or range, a target given twice or not at all, fewer
            than 2 decisions, or an estimator the inputs do not suit (e.g. ``q_hat`` to IPS).
        """
        boot_rng, other_rng = self._streams()
        inputs = self._inputs(data, action_dist, target_pscore, q_hat, q_hat_logged, q_hat_target, other_rng)
        n_all = data.n_decisions
        if slot is not None:
            if self.name == "SlatePI":
                raise ValidationError(
                    "SlatePI estimates the whole slate from its total reward; it has no per-slot estimate", "slot"
                )
            if isinstance(slot, bool) or not isinstance(slot, int | np.integer) or not 0 <= slot < data.n_slots:
                raise ValidationError(f"slot must be an integer in [0, {data.n_slots}), got {slot!r}", "slot")
            keep = data.slot == slot
            if not keep.any():
                raise ValidationError(f"no logged rows in slot {slot}", "slot")
            inputs, data = inputs.subset(keep), data.subset(keep)
        if n_all < 2:
            raise ValidationError(f"an interval needs at least 2 decisions, got {n_all}", "reward")
        w = self.weights(data, inputs)
        terms = self._terms(data, inputs, w, other_rng)
        # one slot's value is per decision of the whole log: decisions without it count 0
        moments = Moments.of(terms, w, n_all, per_row=self.row_normalised)
        boot = terms.padded(n_all) if self.interval == "bootstrap" else None
        return self.finish(moments, unsupported=_unsupported_share(data, inputs), terms=boot, boot_rng=boot_rng)

    def decision_terms(self, data: LoggedBandit, *, target_pscore: ArrayLike) -> Terms:
        """The per-decision terms behind :meth:`estimate` for a target given by its row
        probabilities: two targets' terms on the same log give a paired difference (the
        difference of their influence functions). IPS-family estimators only."""
        if self.needs_q:
            raise ValidationError(
                f"{self.name} needs a reward model; decision_terms takes IPS-family estimators", "estimator"
            )
        _, other_rng = self._streams()
        inputs = self._inputs(data, None, target_pscore, None, None, None, other_rng)
        return self._terms(data, inputs, self.weights(data, inputs), other_rng)

    mergeable: ClassVar[bool] = True  # its terms are per-decision sums needing nothing global
    n_ratios: ClassVar[int] = 0
    row_normalised: ClassVar[bool] = False  # ratio denominators are _row_share (SNIPS, SNDR)

    def partial(
        self,
        data: LoggedBandit | None,
        action_dist: ArrayLike | None = None,
        *,
        target_pscore: ArrayLike | None = None,
        q_hat: ArrayLike | None = None,
        q_hat_logged: ArrayLike | None = None,
        q_hat_target: ArrayLike | None = None,
        slot: int | None = None,
        n_decisions: int = 0,
    ) -> Moments:
        """This part of a log reduced to :class:`Moments`; :meth:`finish` of the
        :meth:`Moments.total` of every part is :meth:`estimate` of the whole log.

        Decisions must not straddle parts. DM-family estimators need ``q_hat`` (or the compact
        pair): a reward model fitted on one part alone would differ from one fitted on the
        whole. ``data=None`` stands for a part without rows (``n_decisions`` of them, 0 for an
        empty file).
        """
        if not self.mergeable:
            raise ValidationError(
                f"{self.name} needs the whole log at once (it is not a sum of per-decision terms); use estimate()",
                "estimator",
            )
        if self.interval != "normal":
            raise ValidationError(
                "a partitioned estimate has the normal (delta-method) interval only; a "
                "bootstrap needs every decision in one place",
                "interval",
            )
        width = 1 + 2 * self.n_ratios
        if data is None:
            return Moments.zeros(width, int(n_decisions), per_row=self.row_normalised)
        if self.needs_q and q_hat is None and q_hat_logged is None and q_hat_target is None:
            raise ValidationError(
                f"{self.name}.partial needs q_hat or q_hat_logged/q_hat_target: a reward model "
                "fitted on one partition alone is not the model of the whole log",
                "q_hat",
            )
        inputs = self._inputs(data, action_dist, target_pscore, q_hat, q_hat_logged, q_hat_target, None)
        n_all = data.n_decisions
        if slot is not None:
            keep = data.slot == slot
            if not keep.any():
                return Moments.zeros(width, n_all, per_row=self.row_normalised)
            inputs, data = inputs.subset(keep), data.subset(keep)
        w = self.weights(data, inputs)
        return Moments.of(self._terms(data, inputs, w, None), w, n_all, per_row=self.row_normalised)

    def per_slot(self, data: LoggedBandit, action_dist: ArrayLike | None = None, **kwargs: Any) -> list[Estimate]:
        """One estimate per slot that has logged rows (slot ``k``'s value alone)."""
        return [self.estimate(data, action_dist, slot=k, **kwargs) for k in np.unique(data.slot).tolist()]

    def _terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray, rng: np.random.Generator | None) -> Terms:
        return self.terms(data, inputs, w)

    def finish(
        self,
        moments: Moments,
        *,
        unsupported: float | None = None,
        terms: Terms | None = None,
        boot_rng: np.random.Generator | None = None,
    ) -> Estimate:
        """The :class:`Estimate` from (combined) moments: value, standard error, interval and
        diagnostics. A bootstrap interval also needs the raw ``terms`` and ``boot_rng``."""
        if moments.n < 2:
            raise ValidationError(f"an interval needs at least 2 decisions, got {moments.n}", "reward")
        value, se = moments.value_and_se()
        dropped = 0
        if self.interval == "normal":
            z = float(norm.ppf(0.5 + self.level / 2))
            lower, upper = value - z * se, value + z * se
        else:
            if terms is None or boot_rng is None:
                raise ValidationError("a bootstrap interval needs the per-decision terms", "interval")
            reps = terms.bootstrap(self.n_bootstrap, boot_rng)
            dropped = int((~np.isfinite(reps)).sum())
            reps = reps[np.isfinite(reps)]
            tail = (1 - self.level) / 2
            lower, upper = (float(v) for v in np.quantile(reps, [tail, 1 - tail]))
        sw, sw2 = moments.sw, moments.sw2
        ess = sw * sw / sw2 if sw2 > 0 else 0.0
        max_w = moments.max_w
        notes = _diagnose(self.name, ess, moments.n_rows, max_w, sw, unsupported)
        if self.interval == "bootstrap" and dropped > 0.01 * self.n_bootstrap:
            notes.append(
                f"{self.name}: {dropped} of {self.n_bootstrap} bootstrap resamples had no weight on the "
                "target and were dropped; the interval is conditional on some overlap"
            )
        for msg in notes:
            warnings.warn(msg, OPEWarning, stacklevel=3)
        return Estimate(
            estimator=self.name,
            value=value,
            lower=float(lower),
            upper=float(upper),
            se=se,
            n=moments.n,
            n_rows=moments.n_rows,
            ess=ess,
            max_weight=max_w,
            level=self.level,
            unsupported=unsupported,
            warnings=tuple(notes),
            interval=self.interval,
        )


def _unsupported_share(data: LoggedBandit, inputs: RowInputs) -> float | None:
    """Mean target mass, per row, on items never logged in that row's slot (None if unknown).

    A coarse, context-free notion of support: the log cannot say how the target would fare on
    an item the logger never showed in that slot, so IPS counts it as earning nothing and
    DM/DR extrapolate the reward model there.
    """
    if inputs.dist is None:
        return None
    seen = np.zeros((data.n_actions, data.n_slots), dtype=bool)
    seen[data.action, data.slot] = True
    if seen.all():
        return 0.0
    mass = 0.0
    for k in np.unique(data.slot).tolist():
        unseen = np.flatnonzero(~seen[:, k])
        if unseen.size:
            rows = np.flatnonzero(data.slot == k)
            src = rows if inputs.rows is None else inputs.rows[rows]
            mass += float(inputs.dist[src[:, None], unseen[None, :], k].sum())
    return mass / data.n_rows


def _diagnose(name: str, ess: float, n_rows: int, max_w: float, sw: float, unsupported: float | None) -> list[str]:
    notes = []
    if ess < LOW_ESS or ess < LOW_ESS_SHARE * n_rows:
        notes.append(
            f"{name}: effective sample size {ess:.0f} of {n_rows} rows: the log barely overlaps the "
            "target policy, so the estimate rests on a few rows"
        )
    if sw > 0 and max_w / sw > MAX_WEIGHT_SHARE:
        notes.append(f"{name}: one row carries {max_w / sw:.0%} of the total importance weight")
    if unsupported is not None and unsupported > MAX_UNSUPPORTED:
        notes.append(
            f"{name}: the target puts {unsupported:.1%} of its probability on items never logged in "
            "that slot; the log cannot see how they would do"
        )
    return notes


@dataclass(frozen=True, kw_only=True)
class ClippedIPS(IPS):
    """IPS with importance weights clipped at ``lambda_``: biased towards 0, lower variance.

    Parameters
    ----------
    lambda_ : float, default 10.0
        The largest importance weight kept; the rest as :class:`IPS`.
    """

    lambda_: float = 10.0
    name: ClassVar[str] = "ClippedIPS"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.lambda_, int | float) and self.lambda_ > 0):
            raise ValidationError(f"lambda_ must be a positive number, got {self.lambda_!r}", "lambda_")

    def weights(self, data: LoggedBandit, inputs: RowInputs) -> np.ndarray:
        w: np.ndarray = np.minimum(inputs.pi / data.pscore, self.lambda_)
        return w


def _row_share(data: LoggedBandit, w: np.ndarray) -> np.ndarray:
    """Per-decision weight sums scaled so that their mean is the mean row weight (about 1)."""
    return per_decision(data, w) * (data.n_decisions / data.n_rows)


@dataclass(frozen=True, kw_only=True)
class SNIPS(IPS):
    """Self-normalised IPS: IPS divided by the mean row weight; delta-method interval."""

    name: ClassVar[str] = "SNIPS"
    n_ratios: ClassVar[int] = 1
    row_normalised: ClassVar[bool] = True

    def terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray) -> Terms:
        return Terms(np.zeros(data.n_decisions), ((per_decision(data, w * data.reward), _row_share(data, w)),))


@dataclass(frozen=True, kw_only=True)
class DM(IPS):
    """Direct method: the reward model's value of the target. Its interval ignores the
    model's own error, so it covers the truth only when the model is right.

    Parameters
    ----------
    reward_model : RewardModel, default logistic
        Cross-fitted on the log with ``n_folds`` folds drawn from ``seed`` when ``estimate`` is
        given no ``q_hat``.
    n_folds : int, default 2
        Cross-fitting folds.
    seed : int, default 0
        The DM family defaults to 0 so that an estimate does not change between runs; the rest
        as :class:`IPS`.
    """

    reward_model: RewardModel = field(default_factory=default_reward_model)
    n_folds: int = 2
    seed: int | None = 0
    name: ClassVar[str] = "DM"
    needs_q: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValidationError(f"n_folds must be an integer >= 2, got {self.n_folds!r}", "n_folds")
        if not isinstance(self.reward_model, RewardModel):
            raise ValidationError(
                f"reward_model must be a RewardModel (ridge, logistic, gbt), got {type(self.reward_model).__name__}",
                "reward_model",
            )

    def terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray) -> Terms:
        assert inputs.q_target is not None  # _inputs sets it for the DM family
        return Terms(per_decision(data, inputs.q_target))


@dataclass(frozen=True, kw_only=True)
class DR(DM):
    """Doubly robust: the model's value plus an importance-weighted correction of its error."""

    name: ClassVar[str] = "DR"

    def correction_weights(self, w: np.ndarray) -> np.ndarray:
        return w

    def terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray) -> Terms:
        assert inputs.q_target is not None and inputs.q_logged is not None  # _inputs sets both
        cw = self.correction_weights(w)
        return Terms(per_decision(data, inputs.q_target + cw * (data.reward - inputs.q_logged)))


@dataclass(frozen=True, kw_only=True)
class SNDR(DM):
    """Self-normalised doubly robust: DR's correction divided by the mean row weight."""

    name: ClassVar[str] = "SNDR"
    n_ratios: ClassVar[int] = 1
    row_normalised: ClassVar[bool] = True

    def terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray) -> Terms:
        assert inputs.q_target is not None and inputs.q_logged is not None  # _inputs sets both
        corr = per_decision(data, w * (data.reward - inputs.q_logged))
        return Terms(per_decision(data, inputs.q_target), ((corr, _row_share(data, w)),))


@dataclass(frozen=True, kw_only=True)
class SwitchDR(DR):
    """Switch-DR: DR's correction on rows with ``w <= lambda_``, the model alone elsewhere.

    Parameters
    ----------
    lambda_ : float, default 10.0
        Rows with a larger importance weight use the reward model alone; the rest as :class:`DM`.
    """

    lambda_: float = 10.0
    name: ClassVar[str] = "SwitchDR"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.lambda_, int | float) and self.lambda_ > 0):
            raise ValidationError(f"lambda_ must be a positive number, got {self.lambda_!r}", "lambda_")

    def correction_weights(self, w: np.ndarray) -> np.ndarray:
        return np.where(w <= self.lambda_, w, 0.0)


def _uniform_per_slot(data: LoggedBandit, who: str) -> None:
    """Equal propensities in each slot, of a logger that did randomise: ``1/p`` is a whole
    number ``m`` of candidates (more than 1 when there is more than one action), at least the
    number of distinct items logged there."""
    for k in np.unique(data.slot).tolist():
        in_k = data.slot == k
        p = data.pscore[in_k]
        lo, hi = float(p.min()), float(p.max())
        if hi > lo * (1 + 1e-9):
            raise ValidationError(
                f"{who} needs a uniformly random logging policy; logged propensities in slot {k} range from "
                f"{lo:.4g} to {hi:.4g} (use IPS or DR for this log)",
                "pscore",
            )
        m = 1.0 / hi
        distinct = len(np.unique(data.action[in_k]))
        deterministic = m < 2 - 1e-9 and data.n_actions > 1  # one item, always: nothing was randomised
        if deterministic or abs(m - round(m)) > 1e-6 * m or distinct > round(m):
            raise ValidationError(
                f"{who} needs a uniformly random logging policy; slot {k} logs propensity {hi:.4g} for "
                f"{distinct} distinct items, which no uniform choice among 1/p candidates gives",
                "pscore",
            )


@dataclass(frozen=True, kw_only=True)
class Replay(IPS):
    """Li et al. (2011)'s replay for logs from a uniformly random policy.

    A row counts when the target policy, sampled in that row's slot, shows the logged item
    (probability ``pi_i``; sampled with the estimator's ``seed``, exact for a deterministic
    target); slot k's value is the mean reward of its counted rows, and the decision's value
    the sum over slots. Unbiased (as a ratio, consistent) only under uniform logging, which is
    checked: in each slot every logged propensity must be equal.
    """

    name: ClassVar[str] = "Replay"
    mergeable: ClassVar[bool] = False  # a sampled match per row and per-slot counts of the whole log

    def _terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray, rng: np.random.Generator | None) -> Terms:
        assert rng is not None  # not mergeable: only estimate() computes its terms, with a stream
        _uniform_per_slot(data, self.name)
        match = (rng.random(data.n_rows) < inputs.pi).astype(float)
        ratios = []
        for k in np.unique(data.slot).tolist():
            in_k = (data.slot == k).astype(float)
            m = match * in_k
            if m.sum() < 2:
                raise ValidationError(
                    f"replay matched {int(m.sum())} logged rows in slot {k}; it needs at "
                    "least 2 (log more, or use IPS)",
                    "target_pscore",
                )
            # the mean matched reward is slot k's value among decisions that show slot k;
            # scaling the denominator by D / D_k counts decisions without slot k as 0
            share = data.n_decisions / np.count_nonzero(per_decision(data, in_k))
            ratios.append((per_decision(data, m * data.reward), per_decision(data, m) * share))
        return Terms(np.zeros(data.n_decisions), tuple(ratios))


def _pi_coefficients(m: np.ndarray, k: int) -> np.ndarray:
    """Pseudo-inverse weights for uniform logging of k of m items without replacement, (len(m), 3).

    ``Gamma = E_mu[1_s 1_s^T] = I/m + ((J_k - I) kron (J_m - I)) / (m (m - 1))`` over slot-item
    indicators. Its eigenspaces are the Kronecker products of {1, 1-perp} for slots and items,
    with eigenvalues k/m, (m-k)/(m(m-1)) (zero when m = k), 0 and 1/(m-1); summing the inverse
    eigenvalues times the projections of ``1_s`` gives ``Gamma^+ 1_s`` in closed form. It takes
    three values: on the logged (slot, item) pairs ``1/k + m - 1``, on a logged item in another
    slot ``1/k``, on an item not logged ``1/k - (m-1)/(m-k)`` (for m = k: ``1/k + (m-1)(1 - 1/k)``,
    ``1/k - (m-1)/k``; no item is absent). A test checks this against ``np.linalg.pinv``.
    """
    m = np.asarray(m, dtype=float)
    full = m == k
    here = np.where(full, 1 / k + (m - 1) * (1 - 1 / k), 1 / k + m - 1)
    elsewhere = np.where(full, 1 / k - (m - 1) / k, 1 / k)
    with np.errstate(divide="ignore", invalid="ignore"):
        absent = np.where(full, 0.0, 1 / k - (m - 1) / np.where(full, 1, m - k))
    return np.stack([here, elsewhere, absent], axis=-1)


@dataclass(frozen=True, kw_only=True)
class SlatePI(IPS):
    """The pseudo-inverse slate estimator (Swaminathan et al. 2017) from whole-slate rewards.

    Uses only each decision's total reward ``r_d = sum_k r_dk`` (e.g. a purchase anywhere in the
    carousel) and is unbiased when that reward is additive over (slot, item) pairs:
    ``V = mean_d r_d (a T1_d + b (T_d - T1_d) + c (K - T_d))`` with ``T1_d = sum_j pi_j(s_dj)``
    and ``T_d = sum_ij pi_j(s_di)`` for the logged slate ``s_d``; (a, b, c) are the entries of
    ``Gamma^+ 1_s``. Implemented for uniformly random logging without replacement (every
    row's propensity ``1/m`` with m candidates), checked; needs ``action_dist`` (the target's
    marginal of every logged item in every slot).
    """

    name: ClassVar[str] = "SlatePI"
    mergeable: ClassVar[bool] = False  # needs the dense action_dist of whole slates

    def _terms(self, data: LoggedBandit, inputs: RowInputs, w: np.ndarray, rng: np.random.Generator | None) -> Terms:
        if inputs.dist is None:
            raise ValidationError(
                "SlatePI needs the target as action_dist (its marginal of every logged item in every slot)",
                "action_dist",
            )
        D, K = data.n_decisions, data.n_slots
        assert data.decision is not None  # LoggedBandit fills it in
        counts = np.bincount(data.decision, minlength=D)
        if (counts != K).any():
            d = int(np.argmax(counts != K))
            raise ValidationError(
                f"SlatePI needs every decision to fill all {K} slots; decision {d} logged {counts[d]} rows", "slot"
            )
        order = np.lexsort((data.slot, data.decision)).reshape(D, K)
        if (data.slot[order] != np.arange(K)).any():
            raise ValidationError("SlatePI needs each decision to log slots 0..K-1 once each", "slot")
        p = data.pscore[order]
        m_float = 1.0 / p
        m = np.rint(m_float).astype(np.int64)
        if (np.abs(m_float - m) > 1e-6 * m).any() or (m != m[:, :1]).any() or (m < K).any():
            raise ValidationError(
                "SlatePI needs uniformly random logging without replacement: every logged "
                "propensity of a decision must be 1/m for its number m >= K of candidates",
                "pscore",
            )
        items = data.action[order]  # (D, K) logged item of slot j
        if K > 1:
            srt = np.sort(items, axis=1)
            if (srt[:, 1:] == srt[:, :-1]).any():
                d = int(np.argmax((srt[:, 1:] == srt[:, :-1]).any(axis=1)))
                raise ValidationError(
                    f"SlatePI needs distinct items within a slate; decision {d} shows an item twice", "action"
                )
        rows_of = order if inputs.rows is None else inputs.rows[order]
        if K > 1 and not (inputs.dist[rows_of[:, 1:]] == inputs.dist[rows_of[:, :1]]).all():
            raise ValidationError(
                "SlatePI needs one target distribution per decision: the rows of a decision "
                "must carry the same action_dist",
                "action_dist",
            )
        base = rows_of[:, 0]
        pij = inputs.dist[base[:, None, None], items[:, :, None], np.arange(K)[None, None, :]]  # pi_j(s_i)
        t1 = np.einsum("dii->d", pij)
        t = pij.sum(axis=(1, 2))
        coef = _pi_coefficients(m[:, 0], K)
        weight = coef[:, 0] * t1 + coef[:, 1] * (t - t1) + coef[:, 2] * (K - t)
        slate_reward = data.reward[order].sum(axis=1)
        return Terms(slate_reward * weight)


ESTIMATORS: dict[str, type[IPS]] = {
    cls.name: cls for cls in (IPS, ClippedIPS, SNIPS, DM, DR, SNDR, SwitchDR, Replay, SlatePI)
}
