"""The few records every part of banditrec shares.

Plain frozen dataclasses with numpy arrays inside; nothing heavy is imported here. One *row*
is one slot of one decision.

Details: docs/how-it-works.md, "The records (`types.py`)".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .validation import (
    ValidationError,
    as_1d,
    check_finite,
    check_int_range,
    check_probabilities,
    check_same_length,
)


def _frozen(arr: np.ndarray) -> np.ndarray:
    out = np.array(arr, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Slot:
    """One filled carousel position and the probabilities recorded when it was sampled.

    ``propensity`` is P(item | context, items in earlier slots), ``marginal`` is
    P(slot ``position`` holds item | context); ``marginal_draws`` is 0 when the marginal is
    exact, otherwise the number of Monte-Carlo draws it was estimated from.
    """

    position: int
    item_id: str
    propensity: float
    marginal: float
    source: str = "candidates"
    marginal_draws: int = 0
    # a baseline-served slot (apprentice mode, the control arm): the policy's probability that
    # this slot holds this item; None when the policy filled the slot
    policy_marginal: float | None = None


@dataclass(frozen=True)
class Contribution:
    """One named term of an explained score (``feature`` is e.g. ``ctx:device=mobile × item:price``,
    or ``other``: the terms left out of the top ones, summed)."""

    feature: str
    value: float


@dataclass(frozen=True)
class Explanation:
    """Why a slot's item scored what it did (docs/explanations.md).

    Available: ``score == base + bonus + objective`` and ``base`` is the sum of
    ``contributions`` (the largest by magnitude, then ``other``), to floating tolerance.
    ``score`` is what the sampler ranked by; ``bonus`` the exploration part (``kind`` says
    which); ``objective`` what the business blend added. Not available: ``why`` says so, the
    numbers are ``None``.
    """

    available: bool
    kind: str | None = None
    score: float | None = None
    base: float | None = None
    bonus: float | None = None
    objective: float | None = None
    contributions: tuple[Contribution, ...] = ()
    why: str | None = None

    @classmethod
    def unavailable(cls, why: str) -> Explanation:
        return cls(available=False, why=why)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the decide response's ``explanation`` (every key, always)."""
        return {
            "available": self.available,
            "kind": self.kind,
            "score": self.score,
            "base": self.base,
            "bonus": self.bonus,
            "objective": self.objective,
            "contributions": [{"feature": c.feature, "value": c.value} for c in self.contributions],
            "why": self.why,
        }


@dataclass(frozen=True)
class Decision:
    """A served carousel: what was shown, how likely it was, and what produced it."""

    event_id: str
    user_id: str
    slots: tuple[Slot, ...]
    joint_propensity: float  # product of the slots' conditionals; may underflow to 0
    log_joint_propensity: float  # its logarithm, which does not
    policy: str
    model_version: str
    candidates: tuple[str, ...]
    ts: float
    build: str | None = None  # the shop-directory build that served it, if any
    # the carousel's length when ``slots`` holds only some of its positions (an imported log
    # that observed one position per round, as the Open Bandit Dataset does); None: all of them
    n_slots: int | None = None
    # the source that proposed each of ``candidates`` (same order); None: the request brought them
    candidate_sources: tuple[str, ...] | None = None
    arm: str = "main"  # the user's analysis group: main, holdout (never learned from) or control
    served: str = "policy"  # what filled the slots: the policy, or the request's baseline
    shadow: tuple[str, ...] | None = None  # baseline-served: the slate the policy drew instead
    # per policy-filled slot, whether it holds the policy's greedy choice given the slots before
    # (not logged; the service's exploration share); None: not known for this policy
    greedy: tuple[bool, ...] | None = None
    # one per slot when the decision was asked to explain itself (``Engine.decide(explain=True)``)
    explanations: tuple[Explanation, ...] | None = None


@dataclass(frozen=True)
class Reward:
    """A reward joined to a decision by ``event_id`` (and ``position`` for one slot)."""

    event_id: str
    value: float
    position: int | None = None
    kind: str = "click"
    ts: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """An off-policy estimate of a policy's value with its interval and diagnostics.

    ``value`` is the expected reward *per decision* (summed over its slots).
    ``n`` counts decisions, ``n_rows`` logged slots. ``ess`` is the effective sample size
    (sum w)^2 / sum w^2 of the row weights; ``max_weight`` the largest importance weight;
    ``unsupported`` the target's mean probability, per row, on items never logged in that slot
    (None when the target was given compactly). ``warnings`` says why not to trust it, if so;
    ``interval`` is ``"normal"`` or ``"bootstrap"``.
    """

    estimator: str
    value: float
    lower: float
    upper: float
    se: float
    n: int
    n_rows: int
    ess: float
    max_weight: float
    level: float = 0.95
    unsupported: float | None = None
    warnings: tuple[str, ...] = ()
    interval: str = "normal"

    def covers(self, truth: float) -> bool:
        return bool(self.lower <= truth <= self.upper)


@dataclass(frozen=True, kw_only=True, eq=False)
class LoggedBandit:
    """Logged carousel data as arrays, in the shared vocabulary. Construct by keyword.

    Arrays are copied and made read-only, so a caller's arrays are never aliased or mutated.
    """

    reward: np.ndarray
    action: np.ndarray
    slot: np.ndarray
    pscore: np.ndarray
    n_actions: int
    n_slots: int
    decision: np.ndarray | None = None
    context: np.ndarray | None = None
    _n_decisions: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        reward = as_1d(self.reward, "reward", float)
        action = as_1d(self.action, "action")
        slot = as_1d(self.slot, "slot")
        pscore = as_1d(self.pscore, "pscore", float)
        n = check_same_length(reward=reward, action=action, slot=slot, pscore=pscore)
        if n == 0:
            raise ValidationError("logged data must have at least one row, got 0", "reward")
        for name, value in (("n_actions", self.n_actions), ("n_slots", self.n_slots)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, got {value!r}", name)
        check_finite(reward, "reward")
        check_int_range(action, "action", 0, int(self.n_actions))
        check_int_range(slot, "slot", 0, int(self.n_slots))
        check_probabilities(pscore, "pscore")
        if self.decision is None:
            decision = np.arange(n)
        else:
            decision = as_1d(self.decision, "decision")
            check_same_length(reward=reward, decision=decision)
            check_int_range(decision, "decision", 0, np.iinfo(np.int64).max)
            # compact to 0..D-1 so that bincount over decisions is dense; logs come grouped
            # and sorted, which needs one pass instead of a sort
            step = np.diff(decision)
            if (step >= 0).all():
                decision = np.r_[0, np.cumsum(step > 0)]
            else:
                _, decision = np.unique(decision, return_inverse=True)
        context = None
        if self.context is not None:
            context = np.asarray(self.context, dtype=float)
            if context.ndim != 2 or len(context) != n:
                raise ValidationError(f"context must have shape (n, d) with n={n}, got {context.shape}", "context")
            check_finite(context, "context")
            context = _frozen(context)
        object.__setattr__(self, "reward", _frozen(reward))
        object.__setattr__(self, "action", _frozen(action.astype(np.int64)))
        object.__setattr__(self, "slot", _frozen(slot.astype(np.int64)))
        object.__setattr__(self, "pscore", _frozen(pscore))
        object.__setattr__(self, "decision", _frozen(decision.astype(np.int64)))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "n_actions", int(self.n_actions))
        object.__setattr__(self, "n_slots", int(self.n_slots))
        object.__setattr__(self, "_n_decisions", int(decision.max()) + 1)

    @property
    def n_rows(self) -> int:
        return len(self.reward)

    def subset(self, rows: np.ndarray) -> LoggedBandit:
        """The rows selected by a boolean mask or index array, as a new ``LoggedBandit``."""
        assert self.decision is not None  # __post_init__ always fills it in
        return LoggedBandit(
            reward=self.reward[rows],
            action=self.action[rows],
            slot=self.slot[rows],
            pscore=self.pscore[rows],
            decision=self.decision[rows],
            context=None if self.context is None else self.context[rows],
            n_actions=self.n_actions,
            n_slots=self.n_slots,
        )

    @property
    def n_decisions(self) -> int:
        return self._n_decisions


@dataclass(frozen=True)
class LoggedDecisions:
    """Logged decisions in row order, with what a policy needs to re-score them.

    ``context (D, d_c)``, ``candidates`` a list of D int arrays (catalog indices),
    ``seq (D,)`` the decisions' log sequence numbers, ``event_id`` a list of D strings,
    ``decision_reward (D,)`` the whole-decision rewards of the kind asked for (posted without a
    position; the default where none, or where the only one is late), and per logged slot
    ``row_decision (n,)`` (index into the D decisions, non-decreasing), ``row_slot (n,)``,
    ``row_action (n,)``, ``row_pscore (n,)`` the logged marginal, ``row_reward (n,)`` with the
    default filled in the same way. Pinned slots (shown by rule, propensity 1) are left out,
    and ``row_slot`` is the policy's slot: the carousel position minus the decision's pinned
    slots, which always come first. ``n_slots (D,)``: the slots each decision's policy filled
    (its carousel less the pinned ones), also where only some were logged (an imported log
    that observed one position per round); None: as many as it has rows.
    """

    event_id: list[str]
    seq: np.ndarray
    context: np.ndarray
    candidates: list[np.ndarray]
    row_decision: np.ndarray
    row_slot: np.ndarray
    row_action: np.ndarray
    row_pscore: np.ndarray
    row_reward: np.ndarray
    decision_reward: np.ndarray
    row_propensity: np.ndarray | None = None  # (n,) the conditional P(item | earlier slots)
    n_slots: np.ndarray | None = None

    @property
    def n_decisions(self) -> int:
        return len(self.event_id)

    def slots_per_decision(self) -> np.ndarray:
        """(D,) how many slots each decision's policy filled (see ``n_slots``)."""
        if self.n_slots is not None:
            return self.n_slots
        return np.bincount(self.row_decision, minlength=self.n_decisions)

    def logged_bandit(self, n_actions: int, n_slots: int, *, with_context: bool = False) -> LoggedBandit:
        """The rows as estimator input; ``with_context`` adds each row's decision context
        (what a reward model fitted on the log needs)."""
        return LoggedBandit(
            reward=self.row_reward,
            action=self.row_action,
            slot=self.row_slot,
            pscore=self.row_pscore,
            decision=self.row_decision,
            context=self.context[self.row_decision] if with_context else None,
            n_actions=n_actions,
            n_slots=n_slots,
        )

    def take(self, lo: int, hi: int) -> LoggedDecisions:
        """Decisions ``lo <= d < hi`` (in row order) with their slot rows, ``row_decision``
        renumbered from 0."""
        if not 0 <= lo <= hi <= self.n_decisions:
            raise ValidationError(f"take needs 0 <= lo <= hi <= {self.n_decisions}, got {lo}, {hi}", "lo")
        rows = slice(*np.searchsorted(self.row_decision, [lo, hi]).tolist())
        return self._pick(slice(lo, hi), rows, self.row_decision[rows] - lo)

    def between(self, after_seq: int, until_seq: int | None = None) -> LoggedDecisions:
        """The decisions with ``after_seq < seq <= until_seq`` (no upper bound when None), as
        :meth:`DecisionLog.decisions <banditrec.store.log.DecisionLog.decisions>` selects them."""
        keep = self.seq > after_seq
        if until_seq is not None:
            keep &= self.seq <= until_seq
        return self.subset(keep)

    def subset(self, keep: np.ndarray) -> LoggedDecisions:
        """The decisions where ``keep (D,)`` is True, with their rows, ``row_decision`` renumbered."""
        keep = np.asarray(keep, dtype=bool)
        rows = keep[self.row_decision]
        return self._pick(np.flatnonzero(keep), rows, (np.cumsum(keep) - 1)[self.row_decision[rows]])

    def _pick(
        self, decisions: slice | np.ndarray, rows: slice | np.ndarray, row_decision: np.ndarray
    ) -> LoggedDecisions:
        """The ``decisions`` (a slice or increasing indices), their ``rows`` and renumbered ``row_decision``."""
        listed: Callable[[list[Any]], list[Any]]
        if isinstance(decisions, slice):
            listed = lambda values: values[decisions]  # noqa: E731
        else:
            listed = lambda values: [values[d] for d in decisions.tolist()]  # noqa: E731
        return LoggedDecisions(
            event_id=listed(self.event_id),
            seq=self.seq[decisions],
            context=self.context[decisions],
            candidates=listed(self.candidates),
            row_decision=row_decision,
            row_slot=self.row_slot[rows],
            row_action=self.row_action[rows],
            row_pscore=self.row_pscore[rows],
            row_reward=self.row_reward[rows],
            decision_reward=self.decision_reward[decisions],
            row_propensity=None if self.row_propensity is None else self.row_propensity[rows],
            n_slots=None if self.n_slots is None else self.n_slots[decisions],
        )

    @classmethod
    def concat(cls, parts: list[LoggedDecisions]) -> LoggedDecisions:
        """Several records (in log order) as one. ``row_propensity`` is kept when every part has
        it; ``n_slots`` when any part has it (the others' from their rows)."""
        parts = list(parts)
        if not parts:
            raise ValidationError("concat needs at least one part", "parts")
        offsets = np.cumsum([0] + [p.n_decisions for p in parts[:-1]]).tolist()
        cat: Callable[[str], np.ndarray] = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            event_id=[e for p in parts for e in p.event_id],
            seq=cat("seq"),
            context=cat("context"),
            candidates=[c for p in parts for c in p.candidates],
            row_decision=np.concatenate([p.row_decision + o for p, o in zip(parts, offsets)]),
            row_slot=cat("row_slot"),
            row_action=cat("row_action"),
            row_pscore=cat("row_pscore"),
            row_reward=cat("row_reward"),
            decision_reward=cat("decision_reward"),
            row_propensity=None if any(p.row_propensity is None for p in parts) else cat("row_propensity"),
            n_slots=None
            if all(p.n_slots is None for p in parts)
            else np.concatenate([p.slots_per_decision() for p in parts]),
        )

    @classmethod
    def from_slates(
        cls,
        context: np.ndarray,
        candidates: list[np.ndarray],
        slates: np.ndarray,
        *,
        marginal: ArrayLike,
        propensity: ArrayLike,
        reward: ArrayLike,
        event_id: list[str] | None = None,
        seq: np.ndarray | None = None,
        decision_reward: np.ndarray | None = None,
    ) -> LoggedDecisions:
        """Decisions that each filled all K slots: decision ``i`` showed ``slates[i, k]``
        (catalog index, one of ``candidates[i]``) in slot ``k``. ``marginal``, ``propensity``
        and ``reward`` hold one value per slot, ``(D, K)`` or flat in row order. Defaults:
        ``event_id`` ``"0", "1", ...``, ``seq`` ``1..D``, ``decision_reward`` 0."""
        slates = np.asarray(slates)
        if slates.ndim != 2:
            raise ValidationError(f"slates must have shape (D, K), got {slates.shape}", "slates")
        m, k = slates.shape
        row_pscore, row_propensity = np.ravel(marginal), np.ravel(propensity)
        row_reward = np.ravel(reward).astype(float)
        for name, values in (("marginal", row_pscore), ("propensity", row_propensity), ("reward", row_reward)):
            if values.shape != (m * k,):
                raise ValidationError(f"{name} must hold one value per slot, {m} x {k}, got {values.size}", name)
        if len(candidates) != m or len(context) != m:
            raise ValidationError(
                f"{m} slates need as many contexts and candidate lists, got {len(context)} and {len(candidates)}",
                "candidates",
            )
        return cls(
            event_id=[str(i) for i in range(m)] if event_id is None else list(event_id),
            seq=np.arange(1, m + 1) if seq is None else np.asarray(seq),
            context=context,
            candidates=list(candidates),
            row_decision=np.repeat(np.arange(m), k),
            row_slot=np.tile(np.arange(k), m),
            row_action=slates.ravel(),
            row_pscore=row_pscore,
            row_reward=row_reward,
            decision_reward=np.zeros(m) if decision_reward is None else np.asarray(decision_reward, dtype=float),
            row_propensity=row_propensity,
        )


@dataclass(frozen=True)
class LoggedEvents:
    """Interaction events in log order: ``seq (n,)`` int64, ``ts (n,)`` float, and object
    arrays ``user_id``, ``item_id``, ``kind`` (view, cart or purchase) and ``event_id`` (the
    decision an event is attributed to, or None)."""

    seq: np.ndarray
    ts: np.ndarray
    user_id: np.ndarray
    item_id: np.ndarray
    kind: np.ndarray
    event_id: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)
