"""The analysis groups of a live log as arrays: each decision's user, arm and what served it,
with its rewards summed per kind, for ``banditrec abtest --db`` (the statistics are in
:mod:`banditrec.evaluation.abtest_log`).

Details: docs/abtest.md, "Analysing a live log".
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from .log import DecisionLog

_WINDOW = "(:since IS NULL OR d.ts >= :since) AND (:until IS NULL OR d.ts < :until)"
READ_ARM_DECISIONS = (
    f"SELECT d.seq, d.user_id, d.arm, d.served, d.ts, d.n_slots FROM decisions d WHERE {_WINDOW} ORDER BY d.seq"
)
# every reward of the decisions in the window, slot and whole-decision alike, summed per kind;
# a late one (flagged, or after the log's window) is left out unless asked for, as the readers do
READ_ARM_REWARDS = (
    "SELECT d.seq, r.kind, sum(r.reward) FROM decisions d JOIN rewards r ON r.event_id = d.event_id "
    f"WHERE {_WINDOW} AND (:include_late OR (r.late = 0 AND (:window IS NULL OR r.ts <= d.ts + :window))) "
    "GROUP BY d.seq, r.kind"
)
READ_KINDS = "SELECT DISTINCT kind FROM rewards ORDER BY kind"
# the configured shares the engine logs with each decision (policy_params' "arms")
READ_SHARES = (
    "SELECT DISTINCT json_extract(d.policy_params, '$.arms') FROM decisions d "
    f"WHERE {_WINDOW} AND json_valid(d.policy_params) AND json_extract(d.policy_params, '$.arms') IS NOT NULL"
)
FIRST_ARM_TS = "SELECT min(ts) FROM decisions WHERE arm != 'main'"
READ_ARMS_BETWEEN = "SELECT seq, arm FROM decisions WHERE seq BETWEEN ? AND ?"


@dataclass(frozen=True)
class ArmDecisions:
    """The decisions of a time window, one entry per decision in seq order.

    ``user_id``, ``arm`` (``main``, ``holdout``, ``control``) and ``served`` (``policy``,
    ``baseline``) are object arrays; ``ts`` (float) and ``n_slots`` (int) ``(n,)``;
    ``reward[kind]`` ``(n,)`` the sum of the decision's ``kind`` rewards (0 where none).
    """

    user_id: np.ndarray
    arm: np.ndarray
    served: np.ndarray
    ts: np.ndarray
    n_slots: np.ndarray
    reward: dict[str, np.ndarray]

    @property
    def n_decisions(self) -> int:
        return len(self.user_id)


def reward_kinds(log: DecisionLog) -> tuple[str, ...]:
    """The reward kinds the log holds, sorted."""
    with log.snapshot() as conn:
        return tuple(k for (k,) in conn.execute(READ_KINDS))


def arm_decisions(
    log: DecisionLog,
    *,
    kinds: tuple[str, ...],
    since: float | None = None,
    until: float | None = None,
    include_late: bool = False,
) -> ArmDecisions:
    """The decisions with ``since <= ts < until`` (either bound optional) and their ``kinds``
    rewards summed per decision; late rewards count only with ``include_late``."""
    if isinstance(kinds, str) or not kinds:
        raise ValidationError("kinds must be a non-empty tuple of reward kinds", "kinds")
    params = {
        "since": since,
        "until": until,
        "include_late": bool(include_late),
        "window": log.reward_window_s,
    }
    with log.snapshot() as conn:
        rows = conn.execute(READ_ARM_DECISIONS, params).fetchall()
        rewards = conn.execute(READ_ARM_REWARDS, params).fetchall() if rows else []
    seq = np.array([r[0] for r in rows], dtype=np.int64)
    out: dict[str, np.ndarray] = {k: np.zeros(len(rows)) for k in kinds}
    if rewards:
        r_seq = np.array([r[0] for r in rewards], dtype=np.int64)
        r_kind = np.array([r[1] for r in rewards], dtype=object)
        r_value = np.array([r[2] for r in rewards], dtype=float)
        at = np.searchsorted(seq, r_seq)
        for k in kinds:
            mine = r_kind == k
            np.add.at(out[k], at[mine], r_value[mine])
    return ArmDecisions(
        user_id=np.array([r[1] for r in rows], dtype=object),
        arm=np.array([r[2] for r in rows], dtype=object),
        served=np.array([r[3] for r in rows], dtype=object),
        ts=np.array([r[4] for r in rows], dtype=float),
        n_slots=np.array([r[5] for r in rows], dtype=np.int64),
        reward=out,
    )


def logged_shares(log: DecisionLog, *, since: float | None = None, until: float | None = None) -> list[dict]:
    """The distinct arm configurations (``{"holdout": h, "control": c, "salt": s}``) the
    decisions of the window were logged with; empty when the engine did not log them."""
    params = {"since": since, "until": until}
    with log.snapshot() as conn:
        found = [v for (v,) in conn.execute(READ_SHARES, params)]
    out = []
    for value in found:
        parsed = json.loads(value) if isinstance(value, str) else value
        if isinstance(parsed, dict) and parsed not in out:
            out.append(parsed)
    return out


def first_arm_ts(log: DecisionLog) -> float | None:
    """The time of the first decision of a user in the holdout or control arm (when the arms
    were switched on); ``None`` when there is none."""
    with log.snapshot() as conn:
        value = conn.execute(FIRST_ARM_TS).fetchone()[0]
    return None if value is None else float(value)


def arms_of(log: DecisionLog, seq: np.ndarray) -> np.ndarray:
    """(n,) the arm (object array) of each decision of ``seq`` (the log's sequence numbers)."""
    seq = np.asarray(seq, dtype=np.int64)
    if not len(seq):
        return np.zeros(0, dtype=object)
    with log.snapshot() as conn:
        arm = dict(conn.execute(READ_ARMS_BETWEEN, (int(seq.min()), int(seq.max()))).fetchall())
    return np.array([arm[q] for q in seq.tolist()], dtype=object)
