"""Serving beside the shop's own carousel: apprentice mode, the analysis holdout, and which
slots explored.

- **Apprentice mode.** The request's baseline slate (the shop's current ranking) is served bit
  for bit. The policy still scores the request; the log keeps what it would have drawn
  (``decisions.shadow``) and its probability of each baseline item in its slot
  (``slots.policy_marginal``). The baseline's slots are logged with propensity 1, which is
  what the baseline, a deterministic logger, gave them. Learning and evaluation read them
  like any logged slot. The switch to live serving is a row of the log
  (:class:`ServingMode`), so that every serving process follows it.
- **Analysis holdout.** :class:`Arms` puts a salted share of users in ``holdout`` (served by
  the policy, never learned from) and a share in ``control`` (served by the baseline), for
  ``banditrec abtest --db``.

Details: docs/production.md.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .errors import ConflictError, ValidationError
from .experiment import hash_unit
from .store.modes import check_mode

MODE_REFRESH_S = 1.0  # how often a serving process re-reads the log's mode


@dataclass(frozen=True)
class Arms:
    """The analysis holdout: ``holdout`` and ``control`` shares of users, by a salted hash of
    the user id (:func:`banditrec.experiment.hash_unit`); the rest are ``main``.

    The assignment is a pure function of the id and the salt, so every process and every
    later analysis agrees on it. Changing the salt reshuffles everyone.
    """

    holdout: float = 0.0
    control: float = 0.0
    salt: str = "banditrec-holdout"

    def __post_init__(self):
        for name in ("holdout", "control"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValidationError(f"{name} must be a share in [0, 1], got {value!r}", name)
        if self.holdout + self.control > 1.0:
            raise ValidationError(
                f"holdout + control must be at most 1, got {self.holdout} + {self.control}", "holdout"
            )
        if not isinstance(self.salt, str) or not self.salt:
            raise ValidationError("salt must be a non-empty string", "salt")

    @property
    def active(self) -> bool:
        return self.holdout > 0 or self.control > 0

    def of(self, user_id: str) -> str:
        """The arm of ``user_id``: ``holdout`` for u < holdout, ``control`` for u < holdout +
        control, else ``main`` (u: the user's hash in [0, 1))."""
        if not self.active:
            return "main"
        u = float(hash_unit([user_id], self.salt)[0])
        if u < self.holdout:
            return "holdout"
        if u < self.holdout + self.control:
            return "control"
        return "main"

    def logged(self) -> dict:
        """What each decision's ``policy_params`` records under ``"arms"``."""
        return {"holdout": self.holdout, "control": self.control, "salt": self.salt}

    def shares(self) -> dict[str, float]:
        """Each arm's configured share (what the SRM check compares the counts with)."""
        return {"main": 1.0 - self.holdout - self.control, "holdout": self.holdout, "control": self.control}


class ServingMode:
    """The serving mode of the processes sharing a log: the log's newest switch
    (``read()``: :meth:`DecisionLog.serving_mode`), else ``default``. Re-read at most every
    ``refresh_s`` seconds, so a switch reaches every process within that time without a
    restart, at one indexed read per process per interval."""

    def __init__(self, read, default: str = "live", refresh_s: float = MODE_REFRESH_S, clock=time.monotonic):
        self.read = read
        self.default = check_mode(default)
        self.refresh_s = float(refresh_s)
        self._clock = clock
        self._mode = self.default
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> str:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            row = self.read()
            with self._lock:
                self._mode = self.default if row is None else row["mode"]
                self._read_at = now
        return self._mode

    def refresh(self) -> str:
        """Re-read the log now."""
        self._read_at = None
        return self.current()


def baseline_slate(items, baseline, n_slots: int, excluded) -> np.ndarray:
    """The catalog indices of the first ``n_slots`` items of the request's ``baseline`` (item
    ids, best first) that are not ``excluded`` (pinned, excluded by the request, hidden or
    blocked): what a baseline-served decision shows."""
    if isinstance(baseline, str) or not isinstance(baseline, list | tuple):
        raise ValidationError("baseline must be a list of item ids, best first", "baseline")
    idx = items.index_of(list(baseline), "baseline")
    if len(np.unique(idx)) != len(idx):
        raise ValidationError("baseline lists an item twice", "baseline")
    if len(excluded):
        idx = idx[~np.isin(idx, excluded)]
    if len(idx) < n_slots:
        raise ValidationError(
            f"baseline has {len(idx)} servable items (after pinned and excluded ones), fewer than the {n_slots} "
            "slots to fill",
            "baseline",
        )
    return idx[:n_slots].astype(np.int64)


def greedy_flags(dist, index: np.ndarray) -> np.ndarray | None:
    """(K,) whether each slot of the sampled slate ``index`` holds the policy's greedy choice
    given the slots before it: the best-scoring (or heaviest) candidate not yet shown, ties
    counting as greedy. ``None`` for a distribution that does not expose its scores (VW's
    ccb slates; Thompson sampling before its posterior draws exist)."""
    values = getattr(dist, "scores", None)  # EpsilonGreedySlate
    if values is None:
        values = getattr(dist, "values", None)  # SequentialSlate and Plackett-Luce: weights or scores
    if values is None and getattr(dist, "_scores", None) is not None:  # SampledRankingSlate, drawn
        values = dist._scores.mean(axis=0)  # the posterior mean ranking
    if values is None:
        return None
    values = np.asarray(values, dtype=float)
    index = np.asarray(index, dtype=np.int64)
    # before slot k, k items are shown: the best of the rest is among the k + 1 best overall
    m = min(len(index) + 1, len(values))
    top = np.argpartition(-values, m - 1)[:m] if m < len(values) else np.arange(len(values))
    top = top[np.argsort(-values[top], kind="stable")]
    ranked = list(zip(values[top].tolist(), top.tolist()))
    shown: set[int] = set()
    out = np.empty(len(index), dtype=bool)
    for k, (i, v) in enumerate(zip(index.tolist(), values[index].tolist())):
        out[k] = v >= next(best for best, j in ranked if j not in shown)
        shown.add(i)
    return out


def switch_mode(
    log, mode: str, *, policy: str, actor: str, reason: str, force: bool = False, ts: float | None = None
) -> dict:
    """Record a switch of ``log``'s serving mode to ``mode`` and return the row.

    Going live needs the newest safe-deploy verdict recorded for ``policy`` (its registry
    name; :meth:`DecisionLog.record_verdicts`, written by ``banditrec evaluate --record``) to
    be safe; ``force`` overrides, and the row says so. Going back to apprentice is always
    allowed. ``ts``: the switch's time (default now; the service passes its engine's clock).

    Raises
    ------
    ConflictError
        Going live without a safe verdict and without ``force``.
    """
    mode = check_mode(mode)
    gate = None
    if mode == "live":
        verdict = log.latest_verdict(policy)
        if not force:
            if verdict is None:
                raise ConflictError(
                    f"no safe-deploy verdict is recorded for {policy!r} in {log.path}: run `banditrec evaluate "
                    "--db LOG --policy SPEC --record` on the apprentice log first (or force the switch)",
                    "mode",
                )
            if not verdict["safe"]:
                raise ConflictError(
                    f"the newest verdict for {policy!r} (seq {verdict['seq']}, {verdict['spec']}) is not safe: "
                    f"{verdict['reason']}",
                    "mode",
                )
        gate = {"verdict": verdict, "forced": bool(force)}
    return log.set_serving_mode(mode, actor=actor, reason=reason, gate=gate, ts=ts)
