"""The decision log: every decision, its propensities and context, and rewards joined later.

SQLite through sqlite-utils, WAL journal and a busy timeout. One write path: each decision and
its slots are written in one transaction, so a crash never leaves a half-logged decision.
Readers hand arrays to the estimators; no estimator math here.

Durability: with ``synchronous="NORMAL"`` (the default) a committed decision survives a crash
or kill of the process; a power loss or OS crash may lose the last transactions. Pass
``synchronous="FULL"`` to make every acknowledged decision survive those too, at a cost that
``make bench`` measures.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from ..errors import ConflictError, NotFoundError, ValidationError
from ..types import Decision, LoggedBandit, Reward
from .migrations import migrations

WHOLE_DECISION = -1
MAX_ABS_REWARD = 1e12  # beyond this a reward is a unit or encoding mistake, and it would
# overflow a learner's sums of squares

INSERT_DECISION = (
    "INSERT INTO decisions (event_id, ts, user_id, surface, policy, policy_params, model_version, n_slots, "
    "candidates, candidate_index, context, joint_propensity, log_joint_propensity) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_SLOT = "INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM decisions"
# both readers take (kind, after_seq, until_seq)
READ_DECISIONS = (
    "SELECT d.seq, d.event_id, d.context, d.candidate_index, r.reward FROM decisions d "
    "LEFT JOIN rewards r ON r.event_id = d.event_id AND r.position = -1 AND r.kind = ? "
    "WHERE d.seq > ? AND d.seq <= ? ORDER BY d.seq"
)
READ_SLOTS = (
    "SELECT d.seq, s.position, s.item_index, s.marginal, r.reward "
    "FROM decisions d JOIN slots s ON s.event_id = d.event_id "
    "LEFT JOIN rewards r ON r.event_id = s.event_id AND r.position = s.position AND r.kind = ? "
    "WHERE d.seq > ? AND d.seq <= ? ORDER BY d.seq, s.position"
)


def decision_rows(decision: Decision, policy_params: dict, candidate_index, slot_index, context,
                  surface: str = "home") -> tuple[tuple, list[tuple]]:
    """The ``decisions`` row and ``slots`` rows of one decision, checked for consistency.

    ``candidate_index`` holds the catalog index of each of ``decision.candidates`` and
    ``slot_index`` that of each slot's item; slots must be at positions 0..K-1 in order.
    """
    if len(slot_index) != len(decision.slots) or len(candidate_index) != len(decision.candidates):
        raise ValidationError(
            f"a decision with {len(decision.slots)} slots and {len(decision.candidates)} candidates needs "
            f"as many indices, got {len(slot_index)} and {len(candidate_index)}", "slots")
    positions = [s.position for s in decision.slots]
    if positions != list(range(len(positions))):
        raise ValidationError(f"slot positions must be 0..{len(positions) - 1} in order, got {positions}", "slots")
    row = (
        decision.event_id,
        float(decision.ts),
        decision.user_id,
        surface,
        decision.policy,
        json.dumps(policy_params, sort_keys=True),
        decision.model_version,
        len(decision.slots),
        json.dumps(list(decision.candidates)),
        json.dumps([int(i) for i in candidate_index]),
        json.dumps([float(c) for c in np.asarray(context, dtype=float).ravel()]),
        float(decision.joint_propensity),
        float(decision.log_joint_propensity),
    )
    slot_rows = [
        (decision.event_id, s.position, s.item_id, int(idx), float(s.propensity), float(s.marginal),
         int(s.marginal_draws), s.source)
        for s, idx in zip(decision.slots, slot_index, strict=True)
    ]
    return row, slot_rows


@dataclass(frozen=True)
class LoggedDecisions:
    """Logged decisions in row order, with what a policy needs to re-score them.

    ``context (D, d_c)``, ``candidates`` a list of D int arrays (catalog indices),
    ``seq (D,)`` the decisions' log sequence numbers, ``event_id`` a list of D strings,
    ``decision_reward (D,)`` the whole-decision rewards of the kind asked for (posted without a
    position; the default where none), and per logged slot ``row_decision (n,)`` (index into
    the D decisions), ``row_slot (n,)``, ``row_action (n,)``, ``row_pscore (n,)`` the logged
    marginal, ``row_reward (n,)`` with the default filled in.
    """

    event_id: list
    seq: np.ndarray
    context: np.ndarray
    candidates: list
    row_decision: np.ndarray
    row_slot: np.ndarray
    row_action: np.ndarray
    row_pscore: np.ndarray
    row_reward: np.ndarray
    decision_reward: np.ndarray

    @property
    def n_decisions(self) -> int:
        return len(self.event_id)

    def logged_bandit(self, n_actions: int, n_slots: int) -> LoggedBandit:
        return LoggedBandit(
            reward=self.row_reward,
            action=self.row_action,
            slot=self.row_slot,
            pscore=self.row_pscore,
            decision=self.row_decision,
            n_actions=n_actions,
            n_slots=n_slots,
        )


class DecisionLog:
    """The SQLite decision log. ``path=":memory:"`` gives a private in-memory log."""

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout_ms: int = 5000,
                 synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValidationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}", "synchronous")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self.db.execute("PRAGMA foreign_keys=ON")
        # Take the write lock before reading which migrations are pending, so that processes
        # opening a new log at the same moment (gunicorn workers) apply each migration once.
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(self.db)
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _writing(self):
        """A write transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``).

        A deferred transaction that reads before it writes fails at once with "database is
        locked" when another process commits in between (WAL cannot upgrade a stale read
        snapshot); taking the lock first makes it wait out the busy timeout instead.
        """
        with self._lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    # ---- writes -------------------------------------------------------------------------
    def write_decision(
        self,
        decision: Decision,
        *,
        policy_params: dict,
        candidate_index,
        slot_index,
        context,
        surface: str = "home",
    ) -> None:
        """Write a decision and all its slots in one transaction (see :func:`decision_rows`)."""
        row, slot_rows = decision_rows(decision, policy_params, candidate_index, slot_index, context, surface)
        with self._writing():
            self.db.execute(INSERT_DECISION, row)
            self.db.conn.executemany(INSERT_SLOT, slot_rows)

    def record_reward(self, reward: Reward) -> str:
        """Join a reward to its decision. Returns ``"recorded"`` or ``"duplicate"``.

        Idempotent: the same (event_id, position, kind) with the same value is a duplicate and
        changes nothing; with a different value it is a :class:`ConflictError`.
        """
        if not math.isfinite(reward.value) or abs(reward.value) > MAX_ABS_REWARD:
            raise ValidationError(
                f"reward must be a finite number within +-{MAX_ABS_REWARD:g}, got {reward.value!r}", "reward")
        position = WHOLE_DECISION if reward.position is None else int(reward.position)
        with self._writing():
            found = self.db.execute(
                "SELECT n_slots FROM decisions WHERE event_id = ?", (reward.event_id,)
            ).fetchone()
            if found is None:
                raise NotFoundError(f"no decision with event_id {reward.event_id!r}", "event_id")
            if not WHOLE_DECISION <= position < found[0]:
                raise ValidationError(
                    f"position must be in [0, {found[0]}) for this decision, got {position}", "position"
                )
            cur = self.db.execute(
                "INSERT OR IGNORE INTO rewards VALUES (?, ?, ?, ?, ?)",
                (reward.event_id, position, reward.kind, float(reward.value), float(reward.ts)),
            )
            if cur.rowcount == 1:
                return "recorded"
            (existing,) = self.db.execute(
                "SELECT reward FROM rewards WHERE event_id = ? AND position = ? AND kind = ?",
                (reward.event_id, position, reward.kind),
            ).fetchone()
        if existing == float(reward.value):
            return "duplicate"
        where = "the decision as a whole" if reward.position is None else f"position {reward.position}"
        raise ConflictError(
            f"a {reward.kind} reward of {existing} is already recorded for event {reward.event_id!r} "
            f"({where}); got {reward.value}",
            "reward",
        )

    # ---- reads --------------------------------------------------------------------------
    def count(self, table: str) -> int:
        if table not in ("decisions", "slots", "rewards"):
            raise ValidationError(f"unknown table {table!r}", "table")
        with self._lock:
            return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def max_seq(self) -> int:
        """The sequence number of the last logged decision (0 when the log is empty)."""
        with self._lock:
            return self.db.execute(MAX_SEQ).fetchone()[0]

    def decisions(
        self, *, after_seq: int = 0, until_seq: int | None = None, kind: str = "click",
        default_reward: float = 0.0,
    ) -> LoggedDecisions:
        """Decisions with ``after_seq < seq <= until_seq``, slots joined to ``kind`` rewards.

        A slot (or decision) without a reward of that kind gets ``default_reward``. Reads run
        in one transaction under the write lock, so they never see half of a decision.
        """
        with self._lock, self.db.atomic():
            until = self.db.execute(MAX_SEQ).fetchone()[0]
            if until_seq is not None:
                until = min(until, int(until_seq))
            args = (kind, int(after_seq), until)
            dec = self.db.execute(READ_DECISIONS, args).fetchall()
            rows = self.db.execute(READ_SLOTS, args).fetchall()
        seq = np.array([d[0] for d in dec], dtype=np.int64)
        contexts = [json.loads(d[2]) for d in dec]
        width = len(contexts[0]) if contexts else 0
        context = np.array(contexts, dtype=float).reshape(len(dec), width)
        candidates = [np.array(json.loads(d[3]), dtype=np.int64) for d in dec]
        decision_reward = np.array([default_reward if d[4] is None else d[4] for d in dec], dtype=float)
        if rows:
            cols = list(zip(*rows))
            reward = np.array([default_reward if r is None else r for r in cols[4]], dtype=float)
            arrays = (
                np.searchsorted(seq, np.array(cols[0], dtype=np.int64)),
                np.array(cols[1], dtype=np.int64),
                np.array(cols[2], dtype=np.int64),
                np.array(cols[3], dtype=float),
                reward,
            )
        else:
            arrays = (np.empty(0, np.int64),) * 3 + (np.empty(0),) * 2
        return LoggedDecisions([d[1] for d in dec], seq, context, candidates, *arrays, decision_reward)

    def integrity_ok(self) -> bool:
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
