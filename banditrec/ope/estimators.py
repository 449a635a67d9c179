"""Off-policy estimators over logged carousel data (pure array code; the store hands arrays).

Position-wise inverse propensity scoring (Li et al. 2018's independent IPS; Open Bandit
Pipeline's IIPS): under a reward that is additive over slots and where slot k's reward depends
only on the item in slot k (true of a position-based click model),

    V(pi) = E_x sum_k sum_a pi_k(a | x) q_k(x, a)

and with ``w = pi_k(a_k | x) / mu_k(a_k | x)`` -- ratios of *marginal* item-in-slot
probabilities, which banditrec logs at decision time --

    V_IPS   = (1/D) sum_d sum_{k in d} w_dk r_dk
    V_SNIPS = V_IPS / mean_rows(w)        (E[w] = 1 per row when pi is supported by mu)

``V`` is the expected reward per decision (summed over slots). Intervals treat decisions, not
rows, as the independent units (rows of one carousel share a context): normal approximation
on per-decision sums, and the delta method for the ratio in SNIPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from ..errors import ValidationError
from ..types import Estimate, LoggedBandit
from ..validation import as_1d, check_probabilities


def resolve_target_pscore(data: LoggedBandit, action_dist=None, target_pscore=None) -> np.ndarray:
    """The target policy's probability of each logged (action, slot) row, shape (n,).

    Give either ``action_dist (n, n_actions, n_slots)`` or the compact ``target_pscore (n,)``.
    """
    if (action_dist is None) == (target_pscore is None):
        raise ValidationError("give exactly one of action_dist or target_pscore", "action_dist")
    if target_pscore is not None:
        pi = as_1d(target_pscore, "target_pscore", float)
        if len(pi) != data.n_rows:
            raise ValidationError(
                f"target_pscore must have one entry per logged row ({data.n_rows}), got {len(pi)}",
                "target_pscore",
            )
    else:
        dist = np.asarray(action_dist, dtype=float)
        expected = (data.n_rows, data.n_actions, data.n_slots)
        if dist.shape != expected:
            raise ValidationError(f"action_dist must have shape {expected}, got {dist.shape}", "action_dist")
        pi = dist[np.arange(data.n_rows), data.action, data.slot]
    check_probabilities(pi, "target_pscore", allow_zero=True)
    return pi


@dataclass(frozen=True)
class IPS:
    """Inverse propensity scoring with position-wise marginal propensities."""

    level: float = 0.95
    name = "IPS"

    def __post_init__(self):
        if not 0 < self.level < 1:
            raise ValidationError(f"level must be in (0, 1), got {self.level!r}", "level")

    def row_terms(self, data: LoggedBandit, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row importance weight and weighted reward."""
        w = pi / data.pscore
        return w, w * data.reward

    def _point_and_influence(self, data, w, wr):
        per_decision = np.bincount(data.decision, weights=wr, minlength=data.n_decisions)
        return per_decision.mean(), per_decision

    def estimate(self, data: LoggedBandit, action_dist=None, *, target_pscore=None, slot: int | None = None) -> Estimate:
        """The target policy's value per decision, or of one ``slot`` alone."""
        pi = resolve_target_pscore(data, action_dist, target_pscore)
        if slot is not None:
            if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < data.n_slots:
                raise ValidationError(f"slot must be an integer in [0, {data.n_slots}), got {slot!r}", "slot")
            keep = data.slot == slot
            if not keep.any():
                raise ValidationError(f"no logged rows in slot {slot}", "slot")
            pi, data = pi[keep], data.subset(keep)
        n = data.n_decisions
        if n < 2:
            raise ValidationError(f"an interval needs at least 2 decisions, got {n}", "reward")
        w, wr = self.row_terms(data, pi)
        value, influence = self._point_and_influence(data, w, wr)
        se = float(influence.std(ddof=1) / np.sqrt(n))
        z = float(norm.ppf(0.5 + self.level / 2))
        sw, sw2 = w.sum(), (w * w).sum()
        return Estimate(
            estimator=self.name,
            value=float(value),
            lower=float(value - z * se),
            upper=float(value + z * se),
            se=se,
            n=n,
            n_rows=data.n_rows,
            ess=float(sw * sw / sw2) if sw2 > 0 else 0.0,
            max_weight=float(w.max()),
            level=self.level,
        )


@dataclass(frozen=True)
class SNIPS(IPS):
    """Self-normalised IPS: IPS divided by the mean row weight; delta-method interval."""

    name = "SNIPS"

    def _point_and_influence(self, data, w, wr):
        n_dec = data.n_decisions
        a = np.bincount(data.decision, weights=wr, minlength=n_dec)
        # per-decision weight sums, scaled so that they have mean 1 in expectation
        b = np.bincount(data.decision, weights=w, minlength=n_dec) * (n_dec / data.n_rows)
        b_mean = b.mean()
        if b_mean <= 0:
            raise ValidationError(
                "the target policy gives probability 0 to every logged action: SNIPS is undefined",
                "target_pscore",
            )
        value = a.mean() / b_mean
        return value, (a - value * b) / b_mean + value


ESTIMATORS: dict[str, type[IPS]] = {cls.name: cls for cls in (IPS, SNIPS)}
