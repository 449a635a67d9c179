"""The decision log: every decision, its propensities and context, and rewards joined later.

SQLite through sqlite-utils, WAL journal and a busy timeout. One write path (``_writing``): each
decision and its slots are written in one transaction, so a crash never leaves a half-logged
decision. Readers hand arrays to the estimators; no estimator math here.

Reward window: a log opened with ``reward_window_s`` flags a reward *late* when it arrives after
``decision.ts + reward_window_s``; late rewards are kept (``rewards.late = 1``) but readers leave
them out unless asked, and a decision whose window has closed without a reward gets the default
reward. Besides decisions the log holds interaction events (view, cart, purchase), model
versions and the item catalog (ids, features, business attributes), so that a log file alone
is enough to rebuild what a policy saw.

Durability: with ``synchronous="NORMAL"`` (the default) a committed decision survives a crash
or kill of the process; a power loss or OS crash may lose the last transactions. Pass
``synchronous="FULL"`` to make every acknowledged decision survive those too, at a cost that
``make bench`` measures.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import orjson
import sqlite_utils

from ..errors import BanditRecError, ConflictError, NotFoundError, ValidationError
from ..types import Decision, LoggedBandit, Reward
from ..validation import check_finite
from .migrations import migrations

WHOLE_DECISION = -1
MAX_ABS_REWARD = 1e12  # beyond this a reward is a unit or encoding mistake, and it would
# overflow a learner's sums of squares

INSERT_DECISION = (
    "INSERT INTO decisions (event_id, ts, user_id, surface, policy, policy_params, model_version, n_slots, "
    "candidates, candidate_index, context, joint_propensity, log_joint_propensity, shop_build) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_SLOT = "INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM decisions"
TABLES = ("decisions", "slots", "rewards", "events", "model_versions", "items")
EVENT_KINDS = ("view", "cart", "purchase")

# The readers' three queries, run in one read transaction. All take the named parameters of
# ``read_params``; the decision filter is the same in each, so slots and rewards are those of
# exactly the decisions read. A window closes at ``ts + window``: a decision is read only when
# ``closed`` is NULL or its window has closed by then. Rewards are joined to slots in numpy
# by (decision, position), which is much faster than a LEFT JOIN per slot row.
_READ_FILTER = (
    "d.seq > :after AND d.seq <= :until AND (:closed IS NULL OR d.ts + :window <= :closed)"
)
READ_DECISIONS = (
    "SELECT d.seq, d.event_id, d.context, d.candidate_index, d.n_slots, "
    "(SELECT count(*) FROM slots s WHERE s.event_id = d.event_id) FROM decisions d "
    f"WHERE {_READ_FILTER} ORDER BY d.seq"
)
READ_SLOTS = (
    "SELECT d.seq, s.position, s.item_index, s.marginal, s.propensity FROM decisions d "
    "JOIN slots s ON s.event_id = d.event_id "
    # pinned slots are shown by rule (propensity 1): no policy chose them, nothing to learn
    f"WHERE {_READ_FILTER} AND s.source != 'pinned' ORDER BY d.seq, s.position"
)
# A reward is left out when it was flagged late, or (with a window) arrived after the window.
# Two plans for the same rows: driven from the decisions in range (cost grows with them, for
# short incremental reads of a long log) or scanning the rewards table (cost grows with it: the
# faster one when most of the log is read, bench choices); the reader picks by size (CROSS JOIN
# fixes the order).
_REWARD_FILTER = (
    f"WHERE {_READ_FILTER} AND r.kind = :kind "
    "AND (:include_late OR (r.late = 0 AND (:window IS NULL OR r.ts <= d.ts + :window)))"
)
READ_REWARDS = (
    "SELECT d.seq, r.position, r.reward FROM decisions d CROSS JOIN rewards r ON r.event_id = d.event_id "
    + _REWARD_FILTER
)
READ_REWARDS_SCAN = (
    "SELECT d.seq, r.position, r.reward FROM rewards r CROSS JOIN decisions d ON d.event_id = r.event_id "
    + _REWARD_FILTER
)
REWARD_SCAN_RATIO = 1.0  # scan the rewards table when it holds at most this many rows per decision read
INSERT_REWARD = "INSERT OR IGNORE INTO rewards (event_id, position, kind, reward, ts, late) VALUES (?, ?, ?, ?, ?, ?)"


def read_params(*, after_seq: int = 0, until_seq: int, kind: str = "click", window: float | None = None,
                closed_before: float | None = None, include_late: bool = False) -> dict:
    """The named parameters of the ``READ_*`` queries."""
    return {"after": int(after_seq), "until": int(until_seq), "kind": kind, "window": window,
            "closed": closed_before, "include_late": int(bool(include_late))}


def _number_lists(texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Parse JSON lists of numbers: ``(flat values, offsets (len(texts) + 1,))``.

    Fast path: one C-level parse (``np.fromstring``) of all lists joined, instead of one
    ``json.loads`` per list (faster: bench section ``choices``; exact: numpy reads decimal text
    with correct rounding, as Python does). ``np.fromstring``
    is lax -- a whitespace-only field reads as 0 (or -1.0), nested lists would flatten -- so
    that path is taken only when every non-empty text starts with ``[`` not followed by
    whitespace (so no ``[ ]``) and ends with ``]``, there is no other bracket, tab or line
    break, and there are as many values as comma-separated fields; for valid JSON that leaves
    no way to misread. Empty lists are ``[]`` as ``json.dumps`` writes them; anything else
    (``[ ]``, `` [1]``, NaN, malformed text) goes through strict ``json.loads`` row by row.
    """
    n = len(texts)
    filled = [t for t in texts if t != "[]"]
    joined = ",".join(filled)
    if (all(t[:1] == "[" and t[-1:] == "]" and t[1:2] not in " \t\n\r" for t in filled)
            and joined.count("[") == len(filled) and joined.count("]") == len(filled)
            and not any(c in joined for c in "\t\n\r")):
        lengths = np.fromiter((t.count(",") + 1 if t != "[]" else 0 for t in texts), dtype=np.int64, count=n)
        try:
            flat = np.fromstring(joined.replace("[", "").replace("]", ""), dtype=dtype, sep=",")
        except ValueError:
            flat = None
        if flat is not None and len(flat) == lengths.sum():
            return flat, np.concatenate(([0], np.cumsum(lengths)))
    lists = [np.asarray(json.loads(t), dtype=dtype) for t in texts]
    if any(a.ndim != 1 for a in lists):
        raise ValidationError("logged contexts and candidate lists must be flat lists of numbers", "candidate_index")
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=n)
    flat = np.concatenate(lists) if lists else np.empty(0, dtype)
    return flat, np.concatenate(([0], np.cumsum(lengths)))


def _float_rows(texts: list[str]) -> np.ndarray:
    """Parse equal-length JSON lists of floats into a ``(len(texts), width)`` array."""
    flat, offsets = _number_lists(texts, float)
    lengths = np.diff(offsets)
    width = int(lengths[0]) if len(texts) else 0
    if (lengths != width).any():
        raise ValidationError("logged contexts (or item features) have different lengths", "context")
    return flat.reshape(len(texts), width)


class LoggedParams(dict):
    """A read-only ``policy_params`` dict that keeps its logged JSON: a serving engine logs the
    same params with every decision, so they are serialised once, not once per decision."""

    __slots__ = ("json",)

    def __init__(self, params: dict):
        super().__init__(params)
        self.json = json.dumps(self, sort_keys=True)

    def __reduce__(self):  # copy and pickle rebuild it rather than setting items one by one
        return (LoggedParams, (dict(self),))

    def _read_only(self, *args, **kwargs):
        raise TypeError("LoggedParams is read-only; build a new one")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


def _params_json(policy_params) -> str:
    if type(policy_params) is LoggedParams:
        return policy_params.json
    return json.dumps(policy_params, sort_keys=True)


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
    slots = decision.slots
    positions = [s.position for s in slots]
    n_slots = len(slots) if decision.n_slots is None else decision.n_slots
    if n_slots == len(slots):
        if positions != list(range(len(positions))):
            raise ValidationError(f"slot positions must be 0..{len(positions) - 1} in order, got {positions}", "slots")
    elif not (isinstance(n_slots, int) and 0 < len(slots) < n_slots and positions[0] >= 0
              and positions[-1] < n_slots and all(a < b for a, b in zip(positions, positions[1:]))):
        raise ValidationError(f"a decision observed at some of its {n_slots!r} positions needs them increasing "
                              f"within 0..{n_slots - 1 if isinstance(n_slots, int) else '?'}, got {positions}",
                              "slots")
    sources = [s.source for s in slots]
    if "pinned" in sources and n_slots != len(slots):
        raise ValidationError("a partly observed decision cannot have pinned slots", "slots")
    if "pinned" in sources:  # (the pinned checks, only for decisions that pin)
        pinned = [source == "pinned" for source in sources]
        if any(pinned[i] and not pinned[i - 1] for i in range(1, len(pinned))):
            raise ValidationError("pinned slots must come first (readers number the policy's slots after them)",
                                  "slots")
        if any(p and (s.propensity != 1.0 or s.marginal != 1.0) for p, s in zip(pinned, slots)):
            raise ValidationError("a pinned slot is shown by rule: its propensity and marginal must be 1", "slots")
    row = (
        decision.event_id,
        float(decision.ts),
        decision.user_id,
        surface,
        decision.policy,
        _params_json(policy_params),
        decision.model_version,
        n_slots,
        _json_strings(decision.candidates),
        _index_json(candidate_index),
        _floats_json(context),
        float(decision.joint_propensity),
        float(decision.log_joint_propensity),
        decision.build,
    )
    slot_rows = [
        (decision.event_id, s.position, s.item_id, idx, float(s.propensity), float(s.marginal),
         int(s.marginal_draws), s.source)
        for s, idx in zip(decision.slots, _int_list(slot_index), strict=True)
    ]
    return row, slot_rows


def _json_strings(values) -> str:
    """``json.dumps(list(values))`` for a sequence of strings, the same text, faster for
    the usual ids (printable ASCII without quotes or backslashes: nothing to escape, so the
    list is its items joined); anything else goes through ``json.dumps``."""
    values = list(values)
    try:
        flat = "".join(values)  # a TypeError unless every value is a str
    except TypeError:
        return json.dumps(values)
    if flat.isascii() and flat.isprintable() and '"' not in flat and "\\" not in flat:
        return '["' + '", "'.join(values) + '"]' if values else "[]"
    return json.dumps(values)


def _index_json(values) -> str:
    """A JSON list of integers (catalog indices). orjson writes a native-endian integer array
    of any width, uint64 included, straight from its buffer (``bench/run.py --only log``, row
    (c), has the write's cost); anything else goes through a list of ints."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu" \
            and values.dtype.isnative:
        return orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return orjson.dumps(_int_list(values)).decode()


def _floats_json(values) -> str:
    """A flat JSON list of floats, each written in the shortest form that reads back to the
    same double (orjson, as ``repr`` does; the text differs from ``json.dumps`` only in
    spacing and in writing ``0.00001`` for ``1e-05``). Non-finite values are refused, as the
    log's readers could not read them back (orjson would write ``null``)."""
    flat = np.ascontiguousarray(np.asarray(values, dtype=float).ravel())
    check_finite(flat, "context")
    return orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _int_list(values) -> list[int]:
    """``[int(v) for v in values]``, without a Python loop for an integer array."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
        return values.tolist()
    return [int(v) for v in values]


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


def _object_array(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _check_name(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be a non-empty string, got {value!r}", field)
    return value


def _check_time(value, field: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a number of seconds, got {value!r}", field) from None
    if not math.isfinite(out):
        raise ValidationError(f"{field} must be finite, got {value!r}", field)
    return out


def _check_count(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValidationError(f"{field} must be a non-negative integer, got {value!r}", field)
    return int(value)


def _json_object(value, field: str) -> str:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__}", field)
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} must be JSON-serialisable with finite numbers: {exc}", field) from None


class DecisionRecord(NamedTuple):
    """One decision for :meth:`DecisionLog.write_decisions`: the arguments of
    :meth:`DecisionLog.write_decision`, in that order (a plain tuple of 5 or 6 works too)."""

    decision: Decision
    policy_params: dict
    candidate_index: Sequence[int]
    slot_index: Sequence[int]
    context: Any
    surface: str = "home"


def _in_batch(exc: BanditRecError, batch: str, index: int, event_id) -> BanditRecError:
    """``exc`` as raised by a batch method: same class and ``field``, the message prefixed with
    the item it is about, and ``batch`` (``"items"`` or ``"rewards"``), ``index`` and ``reason``
    (the unprefixed message) set, so that a caller can map it back to its own input."""
    out = type(exc)(f"{batch}[{index}] (event {event_id!r}): {exc.message}", exc.field)
    out.batch, out.index, out.reason = batch, index, exc.message
    return out


def _refusal(exc: sqlite3.IntegrityError, event_id) -> BanditRecError:
    """A schema refusal of a decision's rows as one of our errors."""
    if "UNIQUE" in str(exc) and "decisions.event_id" in str(exc):
        return ConflictError(f"event id {event_id!r} is already in the log", "event_id")
    return ValidationError(f"the log's schema refused the decision: {exc}", "slots")


def _checked_reward(reward: Reward) -> tuple[int, float]:
    """The checks of a reward that need no database: ``(position, ts)``."""
    if not math.isfinite(reward.value) or abs(reward.value) > MAX_ABS_REWARD:
        raise ValidationError(
            f"reward must be a finite number within +-{MAX_ABS_REWARD:g}, got {reward.value!r}", "reward")
    position = WHOLE_DECISION if reward.position is None else int(reward.position)
    return position, _check_time(reward.ts, "ts")


CHECKPOINT_BACKSTOP_PAGES = 8000  # ~32 MB of WAL: the writers checkpoint only if the thread falls behind


class _Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection."""

    def __init__(self, path: str, interval_s: float):
        self._stop = threading.Event()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=0)
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="banditrec-checkpoint", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:  # busy (another process checkpoints), or closing: try next time
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()


class DecisionLog:
    """The SQLite decision log. ``path=":memory:"`` gives a private in-memory log.

    ``reward_window_s``: seconds after a decision within which its rewards count; a reward
    with ``ts > decision.ts + reward_window_s`` is recorded but flagged late. ``None``: no
    window (no reward is ever late, and no window ever closes).

    ``checkpoint_interval_s``: checkpoint the WAL from a background thread this often instead
    of in the committing writer (a serving process sets it). SQLite's automatic checkpoint runs
    in whichever commit pushes the WAL past 1000 pages -- one decision in ~100 with 200
    candidates -- and that commit then copies the pages and waits for two fsyncs (5-30 ms
    here) while it still holds the write lock, so every writer queues behind it. A passive
    checkpoint on a connection of its own copies the same pages without the write lock; the
    writers' own automatic checkpoint stays as a backstop at ``CHECKPOINT_BACKSTOP_PAGES``
    (WAL mode restarts the file only after a checkpoint that no commit overlapped).
    """

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout_ms: int = 5000,
                 synchronous: str = "NORMAL", reward_window_s: float | None = None, process_lock: bool = False,
                 checkpoint_interval_s: float | None = None):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValidationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}", "synchronous")
        if reward_window_s is not None:
            reward_window_s = _check_time(reward_window_s, "reward_window_s")
            if reward_window_s < 0:
                raise ValidationError(f"reward_window_s must be >= 0, got {reward_window_s!r}", "reward_window_s")
        self.reward_window_s = reward_window_s
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_ms / 1000
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.Lock()
        # process_lock: writers of this file queue on an flock of "<path>.lock" before taking
        # SQLite's write lock. SQLite's own busy handler polls with sleeps of 1, 2, 5, 10, ...
        # ms, so processes that write often (gunicorn workers) wait milliseconds for a lock
        # held for 0.1 ms; a blocked flock wakes as soon as it is released.
        self._flock_fd = None
        if process_lock and self.path != ":memory:":
            self._flock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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
        self._checkpointer = None
        if checkpoint_interval_s is not None and self.path != ":memory:":
            interval = _check_time(checkpoint_interval_s, "checkpoint_interval_s")
            if interval <= 0:
                raise ValidationError(f"checkpoint_interval_s must be > 0, got {checkpoint_interval_s!r}",
                                      "checkpoint_interval_s")
            self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BACKSTOP_PAGES}")
            self._checkpointer = _Checkpointer(self.path, interval)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.db.close()
        if self._flock_fd is not None:
            os.close(self._flock_fd)
            self._flock_fd = None

    @contextlib.contextmanager
    def _writing(self):
        """A write transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``).

        A deferred transaction that reads before it writes fails at once with "database is
        locked" when another process commits in between (WAL cannot upgrade a stale read
        snapshot); taking the lock first makes it wait out the busy timeout instead.
        """
        with self._lock:
            if self._flock_fd is not None:
                fcntl.flock(self._flock_fd, fcntl.LOCK_EX)
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self.db.rollback()
                    raise
                self.db.commit()
            finally:
                if self._flock_fd is not None:
                    fcntl.flock(self._flock_fd, fcntl.LOCK_UN)

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
        """Write a decision and all its slots in one transaction (see :func:`decision_rows`).

        A row the schema refuses leaves nothing behind and raises :class:`ConflictError` (an
        event id already logged) or :class:`ValidationError` (a CHECK, e.g. a propensity outside
        (0, 1]).
        """
        row, slot_rows = decision_rows(decision, policy_params, candidate_index, slot_index, context, surface)
        try:
            with self._writing():
                self.db.execute(INSERT_DECISION, row)
                self.db.conn.executemany(INSERT_SLOT, slot_rows)
        except sqlite3.IntegrityError as exc:
            raise _refusal(exc, row[0]) from None

    def write_decisions(self, items: Iterable[DecisionRecord | tuple], *,
                        rewards: Iterable[Reward] = ()) -> list[str]:
        """Write many decisions, then ``rewards`` (for them or for earlier decisions), in ONE
        transaction: all of it or, on any error, none of it. Returns the status of each reward,
        as :meth:`record_rewards` does.

        ``items``: :class:`DecisionRecord` s or tuples ``(decision, policy_params,
        candidate_index, slot_index, context[, surface])``. The rows are exactly those that
        :meth:`write_decision` writes one by one, with the same checks and the same
        CHECK-constrained tables; the cost of a transaction (taking the write lock, the commit)
        is paid once per batch instead of once per decision and once per reward.

        Errors are the :class:`~banditrec.errors.BanditRecError` s the single methods raise,
        with the message prefixed by the offending entry (``items[3] (event 'e9'): ...`` or
        ``rewards[7] (event 'e2'): ...``) and ``batch`` (``"items"`` or ``"rewards"``),
        ``index`` and ``reason`` (the unprefixed message) set. A schema refusal raises
        ConflictError (an event id already logged, or twice in the batch) or ValidationError
        (a CHECK), as :meth:`write_decision` does.
        """
        rows = []
        first_of: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                record = DecisionRecord(*item)
            except TypeError:
                raise _in_batch(ValidationError(
                    "expected (decision, policy_params, candidate_index, slot_index, context[, surface]), got "
                    f"{type(item).__name__} of {len(item) if hasattr(item, '__len__') else '?'}", "items"),
                    "items", i, None) from None
            event_id = getattr(record.decision, "event_id", None)
            try:
                row, slot_rows = decision_rows(*record)
            except BanditRecError as exc:
                raise _in_batch(exc, "items", i, event_id) from None
            except (TypeError, ValueError, AttributeError) as exc:  # e.g. policy_params not JSON-able
                raise _in_batch(ValidationError(f"{type(exc).__name__}: {exc}", "items"), "items", i,
                                event_id) from exc
            first = first_of.setdefault(row[0], i)
            if first != i:
                raise _in_batch(ConflictError(f"event id {row[0]!r} is also items[{first}] of this batch",
                                              "event_id"), "items", i, row[0])
            rows.append((row, slot_rows))
        checked = self._checked_rewards(rewards)
        with self._writing():
            conn = self.db.conn
            # two executemany calls for the whole batch (decisions first: slots reference them);
            # a refusal is rare, so only then are the rows replayed one by one to name the item
            conn.execute("SAVEPOINT banditrec_batch")
            try:
                conn.executemany(INSERT_DECISION, [row for row, _ in rows])
                conn.executemany(INSERT_SLOT, [slot for _, slot_rows in rows for slot in slot_rows])
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO banditrec_batch")
                for i, (row, slot_rows) in enumerate(rows):
                    try:
                        conn.execute(INSERT_DECISION, row)
                        conn.executemany(INSERT_SLOT, slot_rows)
                    except sqlite3.IntegrityError as exc:
                        raise _in_batch(_refusal(exc, row[0]), "items", i, row[0]) from None
                raise
            conn.execute("RELEASE banditrec_batch")
            # (n_slots, ts) of the decisions just written, as the reward join reads them back
            known = {row[0]: (row[7], row[1]) for row, _ in rows}
            return self._join_rewards(checked, known)

    def record_reward(self, reward: Reward) -> str:
        """Join a reward to its decision. Returns ``"recorded"``, ``"late"`` or ``"duplicate"``.

        ``"late"``: the log has a reward window and ``reward.ts > decision.ts + window``; the
        reward is recorded with ``late = 1`` (readers leave it out unless asked). Idempotent:
        the same (event_id, position, kind) with the same value is a duplicate (late or not)
        and changes nothing; with a different value it is a :class:`ConflictError`.
        """
        position, ts = _checked_reward(reward)
        with self._writing():
            return self._join_reward(reward, position, ts, {})

    def record_rewards(self, rewards: Iterable[Reward]) -> list[str]:
        """Join many rewards in ONE transaction, all or nothing; returns each one's status.

        The statuses are those :meth:`record_reward` would return called once per reward in
        order: a reward equal to one earlier in the batch is ``"duplicate"``, and one that
        contradicts it (or one already logged) raises :class:`ConflictError`. Any error leaves
        the log unchanged and names the reward (``rewards[i] (event ...): ...``, with ``batch``,
        ``index`` and ``reason`` set as in :meth:`write_decisions`).
        """
        checked = self._checked_rewards(rewards)
        with self._writing():
            return self._join_rewards(checked, {})

    @staticmethod
    def _checked_rewards(rewards: Iterable[Reward]) -> list[tuple[Reward, int, float]]:
        out = []
        for i, reward in enumerate(rewards):
            try:
                out.append((reward, *_checked_reward(reward)))
            except BanditRecError as exc:
                raise _in_batch(exc, "rewards", i, reward.event_id) from None
        return out

    def _join_rewards(self, checked: list[tuple[Reward, int, float]], known: dict) -> list[str]:
        statuses = []
        for i, (reward, position, ts) in enumerate(checked):
            try:
                statuses.append(self._join_reward(reward, position, ts, known))
            except BanditRecError as exc:
                raise _in_batch(exc, "rewards", i, reward.event_id) from None
        return statuses

    def _join_reward(self, reward: Reward, position: int, ts: float, known: dict) -> str:
        """Inside a write transaction: insert one checked reward, or recognise a duplicate.
        ``known`` caches each decision's ``(n_slots, ts)`` by event id."""
        found = known.get(reward.event_id)
        if found is None:
            found = self.db.execute(
                "SELECT n_slots, ts FROM decisions WHERE event_id = ?", (reward.event_id,)
            ).fetchone()
            if found is None:
                raise NotFoundError(f"no decision with event_id {reward.event_id!r}", "event_id")
            known[reward.event_id] = found
        n_slots, decision_ts = found
        if not WHOLE_DECISION <= position < n_slots:
            raise ValidationError(
                f"position must be in [0, {n_slots}) for this decision, got {position}", "position"
            )
        late = self.reward_window_s is not None and ts > decision_ts + self.reward_window_s
        cur = self.db.execute(
            INSERT_REWARD, (reward.event_id, position, reward.kind, float(reward.value), ts, int(late))
        )
        if cur.rowcount == 1:
            return "late" if late else "recorded"
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

    def write_event(self, user_id: str, item_id: str, kind: str, ts: float | None = None,
                    event_id: str | None = None) -> int:
        """Log an interaction event (``kind`` view, cart or purchase); returns its ``seq``.

        ``ts`` defaults to now; ``event_id`` attributes the event to a logged decision.
        """
        _check_name(user_id, "user_id")
        _check_name(item_id, "item_id")
        if kind not in EVENT_KINDS:
            raise ValidationError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}", "kind")
        ts = time.time() if ts is None else _check_time(ts, "ts")
        if event_id is not None:
            _check_name(event_id, "event_id")
        with self._writing():
            if event_id is not None and self.db.execute(
                    "SELECT 1 FROM decisions WHERE event_id = ?", (event_id,)).fetchone() is None:
                raise NotFoundError(f"no decision with event_id {event_id!r}", "event_id")
            cur = self.db.execute(
                "INSERT INTO events (ts, user_id, item_id, kind, event_id) VALUES (?, ?, ?, ?, ?)",
                (ts, user_id, item_id, kind, event_id),
            )
            return int(cur.lastrowid)

    def write_events(self, user_ids, item_ids, kinds, ts) -> int:
        """Log many interaction events (no decision attribution) in ONE transaction, all or
        nothing; the error names the first bad entry (``events[i]``). Returns the rows written."""
        cols = [list(c) for c in (user_ids, item_ids, kinds, ts)]
        if len({len(c) for c in cols}) != 1:
            raise ValidationError(f"user_ids, item_ids, kinds and ts must have one length, got {[len(c) for c in cols]}",
                                  "events")
        rows = []
        for i, (user, item, kind, t) in enumerate(zip(*cols)):
            try:
                _check_name(user, "user_id")
                _check_name(item, "item_id")
                if kind not in EVENT_KINDS:
                    raise ValidationError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}", "kind")
                rows.append((_check_time(t, "ts"), user, item, kind))
            except BanditRecError as exc:
                raise type(exc)(f"events[{i}]: {exc.message}", exc.field) from None
        with self._writing():
            self.db.conn.executemany("INSERT INTO events (ts, user_id, item_id, kind) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def register_model(self, version: str, policy: str, params: dict, path: str | None = None,
                       sha256: str | None = None, n_updates: int = 0, trained_until_seq: int = 0) -> str:
        """Record a model version; returns ``"recorded"``, or ``"duplicate"`` when the same
        version is already registered with the same content (a different one is a
        :class:`ConflictError`). ``trained_until_seq``: the last decision it learned from."""
        _check_name(version, "version")
        _check_name(policy, "policy")
        params_text = _json_object(params, "params")
        if path is not None:
            path = _check_name(str(path), "path")
        if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                                   or any(c not in "0123456789abcdef" for c in sha256)):
            raise ValidationError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}", "sha256")
        row = (version, policy, params_text, path, sha256, _check_count(n_updates, "n_updates"),
               _check_count(trained_until_seq, "trained_until_seq"))
        with self._writing():
            existing = self.db.execute(
                "SELECT version, policy, params, path, sha256, n_updates, trained_until_seq "
                "FROM model_versions WHERE version = ?", (version,)).fetchone()
            if existing is None:
                self.db.execute(
                    "INSERT INTO model_versions (version, policy, params, created_ts, path, sha256, n_updates, "
                    "trained_until_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row[:3], time.time(), *row[3:]))
                return "recorded"
        if tuple(existing) == row:
            return "duplicate"
        raise ConflictError(f"model version {version!r} is already registered with other content", "version")

    def write_items(self, ids, features, attrs=None) -> int:
        """Write the item catalog: item ``ids[i]`` has index ``i``, ``features (n, d)`` and
        ``attrs[i]`` (a dict of business columns; default ``{}``). Returns the rows inserted.

        Idempotent: items already logged with the same content are left alone. An index that
        holds a different item, an id logged at another index, or a feature width unlike the
        logged items' is a :class:`ConflictError`.
        """
        ids = list(ids)
        for j, item in enumerate(ids):
            _check_name(item, f"ids[{j}]")
        if len(set(ids)) != len(ids):
            raise ValidationError("item ids must be unique", "ids")
        feats = np.asarray(features, dtype=float)
        if feats.ndim != 2 or len(feats) != len(ids):
            raise ValidationError(f"features must have shape ({len(ids)}, d), got {feats.shape}", "features")
        if not np.isfinite(feats).all():
            raise ValidationError("features must be finite", "features")
        if attrs is None:
            attrs = [{}] * len(ids)
        attrs = list(attrs)
        if len(attrs) != len(ids):
            raise ValidationError(f"attrs must hold one dict per item, got {len(attrs)} for {len(ids)}", "attrs")
        rows = [(i, item, json.dumps(f), _json_object(a, f"attrs[{i}]"))
                for i, (item, f, a) in enumerate(zip(ids, feats.tolist(), attrs))]
        with self._writing():
            width = self.db.execute("SELECT json_array_length(features) FROM items LIMIT 1").fetchone()
            if width is not None and rows and width[0] != feats.shape[1]:
                raise ConflictError(
                    f"logged items have {width[0]} features, these have {feats.shape[1]}", "features")
            logged = {r[0]: tuple(r) for r in self.db.execute(
                "SELECT item_index, item_id, features, attrs FROM items WHERE item_index < ?", (len(rows),))}
            new = []
            for row in rows:
                old = logged.get(row[0])
                if old is None:
                    new.append(row)
                elif old != row:
                    raise ConflictError(
                        f"item index {row[0]} already holds {'item ' + repr(old[1]) if old[1] != row[1] else 'other content'}"
                        f", not this {row[1]!r}", "ids")
            try:
                self.db.conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", new)
            except sqlite3.IntegrityError:
                raise ConflictError("an item id is already logged at another index", "ids") from None
        return len(new)

    # ---- reads --------------------------------------------------------------------------
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection on one consistent state of the log, for reads that take many
        queries (an export): they all see the log as of entering the block, never half of a
        write. Use it only inside the block.

        A file log gets a connection of its own in a read transaction (WAL), so writers carry
        on meanwhile and the snapshot does not see them. An in-memory log has only its own
        connection: the snapshot holds the log's lock, so writes from other threads wait, and
        a write from the same thread would deadlock. Writing through the connection raises
        ``sqlite3.OperationalError`` (``PRAGMA query_only``).
        """
        if self.path == ":memory:":
            with self._lock:
                conn = self.db.conn
                conn.execute("PRAGMA query_only=ON")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:  # e.g. a refused write's implicit BEGIN
                        conn.rollback()
                    conn.execute("PRAGMA query_only=OFF")
            return
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only=ON")
            conn.execute("BEGIN")
            conn.execute("SELECT 1 FROM decisions LIMIT 1").fetchall()  # the snapshot starts here
            yield conn
        finally:
            conn.close()  # ends the read transaction

    def count(self, table: str) -> int:
        if table not in TABLES:
            raise ValidationError(f"unknown table {table!r}", "table")
        with self._lock:
            return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def max_seq(self) -> int:
        """The sequence number of the last logged decision (0 when the log is empty)."""
        with self._lock:
            return self.db.execute(MAX_SEQ).fetchone()[0]

    def decisions(
        self, *, after_seq: int = 0, until_seq: int | None = None, kind: str = "click",
        default_reward: float = 0.0, closed_before: float | None = None, include_late: bool = False,
    ) -> LoggedDecisions:
        """Decisions with ``after_seq < seq <= until_seq``, slots joined to ``kind`` rewards.

        A slot (or decision) without a reward of that kind gets ``default_reward``. Reads run
        in one transaction under the write lock, so they never see half of a decision.

        ``closed_before`` (needs a reward window): only decisions whose window has closed by
        then (``ts + reward_window_s <= closed_before``) are read, so that a learner never
        reads a decision whose rewards may still arrive; a missing reward is then final and the
        default stands in for it. Decision times need not grow with ``seq``, so the ``seq``
        returned may skip decisions whose window is still open.

        Late rewards -- flagged late when recorded, or (on a log with a window) stamped after
        the decision's window -- are left out, and the default stands in, unless
        ``include_late``. Why: rewards that arrive late are not a random sample of rewards (a
        purchase after a long consideration, a retried client, a batch upload from one kind
        of device), and they are only there for decisions that happened to be read late, so
        counting them makes estimates depend on when the log was read and biases them.
        """
        window = self.reward_window_s
        if closed_before is not None:
            if window is None:
                raise ValidationError(
                    "closed_before needs a log with a reward window (reward_window_s)", "closed_before")
            closed_before = _check_time(closed_before, "closed_before")
        with self._lock, self.db.atomic():
            conn = self.db.conn
            until = conn.execute(MAX_SEQ).fetchone()[0]
            if until_seq is not None:
                until = min(until, int(until_seq))
            params = read_params(after_seq=after_seq, until_seq=until, kind=kind, window=window,
                                 closed_before=closed_before, include_late=include_late)
            dec = conn.execute(READ_DECISIONS, params).fetchall()
            slots = np.fromiter(conn.execute(READ_SLOTS, params), dtype=_SLOT_ROW)
            n_rewards = conn.execute("SELECT coalesce(max(rowid), 0) FROM rewards").fetchone()[0]  # about
            scan = n_rewards <= REWARD_SCAN_RATIO * len(dec)
            rewards = conn.execute(READ_REWARDS_SCAN if scan else READ_REWARDS, params).fetchall()
        if dec:
            seq_col, event_id, context_text, candidate_text, total_col, logged_col = map(list, zip(*dec))
        else:
            seq_col, event_id, context_text, candidate_text, total_col, logged_col = [], [], [], [], [], []
        seq = np.array(seq_col, dtype=np.int64)
        context = _float_rows(context_text)
        flat, offsets = _number_lists(candidate_text, np.int64)
        bounds = offsets.tolist()
        candidates = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        row_decision = np.searchsorted(seq, slots["seq"])
        row_slot, row_action, row_pscore = (np.ascontiguousarray(slots[c]) for c in ("position", "item_index", "marginal"))
        row_reward = np.full(len(slots), default_reward, dtype=float)
        decision_reward = np.full(len(seq), default_reward, dtype=float)
        if rewards:
            r_seq, r_pos, r_value = (np.array(c) for c in zip(*rewards))
            r_decision = np.searchsorted(seq, r_seq.astype(np.int64))
            r_pos = r_pos.astype(np.int64)
            whole = r_pos == WHOLE_DECISION
            decision_reward[r_decision[whole]] = r_value[whole]
            if len(slots):
                # slot rows are sorted by (decision, position): find each reward's row by its key
                width = int(max(row_slot.max(), r_pos.max())) + 1
                key = row_decision * width + row_slot
                r_key = r_decision[~whole] * width + r_pos[~whole]
                at = np.minimum(np.searchsorted(key, r_key), len(key) - 1)
                hit = key[at] == r_key
                row_reward[at[hit]] = r_value[~whole][hit]
        total = np.array(total_col, dtype=np.int64)
        # pinned slots come first and only in fully logged decisions: they are the logged rows
        # the reader left out
        pinned = np.array(logged_col, dtype=np.int64) - np.bincount(row_decision, minlength=len(seq))
        n_slots = total - pinned
        if len(slots):
            row_slot = row_slot - pinned[row_decision]  # the policy's slot: after the pinned ones, from 0
        return LoggedDecisions(event_id, seq, context, candidates, row_decision, row_slot, row_action, row_pscore,
                               row_reward, decision_reward, np.ascontiguousarray(slots["propensity"]), n_slots)

    def events(self, *, after_seq: int = 0, user_id: str | None = None) -> LoggedEvents:
        """Interaction events with ``seq > after_seq`` (of one user, if given), in log order."""
        sql = "SELECT seq, ts, user_id, item_id, kind, event_id FROM events WHERE seq > ?"
        args: tuple = (int(after_seq),)
        if user_id is not None:  # a separate statement, so that SQLite uses the (user_id, ts) index
            sql, args = sql + " AND user_id = ?", (*args, user_id)
        with self._lock:
            rows = self.db.conn.execute(sql + " ORDER BY seq", args).fetchall()
        cols = list(zip(*rows)) if rows else [()] * 6
        return LoggedEvents(np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=float),
                            *(_object_array(c) for c in cols[2:]))

    def recent_events(self, user_id: str, *, since_ts: float, limit: int = 50
                      ) -> tuple[list[str], list[str], list[float]]:
        """The user's interaction events with ``ts >= since_ts``, newest first, at most
        ``limit``: ``(item ids, kinds, times)``. One indexed query (``events (user_id, ts)``), cheap
        enough to run on every decision; this is the session state a decision sees, shared by
        every process that opens the log."""
        with self._lock:
            rows = self.db.conn.execute(
                "SELECT item_id, kind, ts FROM events WHERE user_id = ? AND ts >= ? ORDER BY ts DESC, seq DESC "
                "LIMIT ?", (user_id, float(since_ts), int(limit))).fetchall()
        if not rows:
            return [], [], []
        items, kinds, ts = zip(*rows)
        return list(items), list(kinds), list(ts)

    def closed_until_seq(self, *, after_seq: int, closed_before: float) -> int:
        """The largest ``seq`` such that every decision with ``after_seq < seq <= it`` has its
        reward window closed by ``closed_before`` (``after_seq`` when the next one is open).

        Decision times need not grow with ``seq`` (two processes stamp a decision, then queue
        for the write lock), so a learner that read "every closed decision after my last seq"
        could skip one still open below a closed one; reading up to this seq never does.
        """
        if self.reward_window_s is None:
            raise ValidationError("closed_until_seq needs a log with a reward window (reward_window_s)",
                                  "closed_before")
        cutoff = _check_time(closed_before, "closed_before") - self.reward_window_s
        with self._lock:
            open_seq = self.db.conn.execute(
                "SELECT min(seq) FROM decisions WHERE ts > ? AND seq > ?", (cutoff, int(after_seq))).fetchone()[0]
            if open_seq is not None:
                return int(open_seq) - 1
            return max(int(after_seq), self.db.conn.execute(MAX_SEQ).fetchone()[0])

    def model_versions(self) -> list[dict]:
        """Registered model versions, oldest first, ``params`` as a dict."""
        with self._lock:
            cur = self.db.conn.execute(
                "SELECT version, policy, params, created_ts, path, sha256, n_updates, trained_until_seq "
                "FROM model_versions ORDER BY created_ts, rowid")
            names = [c[0] for c in cur.description]
            rows = cur.fetchall()
        return [{**dict(zip(names, r)), "params": json.loads(r[2])} for r in rows]

    def items(self) -> tuple[list[str], np.ndarray, list[dict]]:
        """The logged item catalog: ``(ids, features (n, d), attrs)``, ``ids[i]`` at index ``i``."""
        with self._lock:
            rows = self.db.conn.execute(
                "SELECT item_index, item_id, features, attrs FROM items ORDER BY item_index").fetchall()
        if not rows:
            return [], np.empty((0, 0)), []
        index, ids, features, attrs = map(list, zip(*rows))
        if index[-1] != len(index) - 1:
            raise ValidationError("the logged item indices have gaps", "items")
        return ids, _float_rows(features), json.loads("[" + ",".join(attrs) + "]")

    def item_ids(self) -> dict[int, str]:
        """``{item index: item id}`` for every index the log uses: from the items table, or
        (a log served from a shop directory, which keeps its catalog there) from the candidate
        lists the decisions logged. An index logged with two ids is an error."""
        with self._lock:
            rows = self.db.conn.execute("SELECT item_index, item_id FROM items").fetchall()
            if not rows:
                rows = self.db.conn.execute(
                    "SELECT DISTINCT k.value, j.value FROM decisions d, json_each(d.candidates) j, "
                    "json_each(d.candidate_index) k WHERE j.key = k.key").fetchall()
        out: dict[int, str] = {}
        for index, item in rows:
            if out.setdefault(int(index), item) != item:
                raise ValidationError(f"the log's item index {index} holds two ids, {out[int(index)]!r} and "
                                      f"{item!r}", "items")
        return out

    def policies(self) -> list[str]:
        """The distinct policy specs that logged decisions, sorted."""
        with self._lock:
            return sorted(r[0] for r in self.db.execute("SELECT DISTINCT policy FROM decisions").fetchall())

    def integrity_ok(self) -> bool:
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_SLOT_ROW = np.dtype([("seq", np.int64), ("position", np.int64), ("item_index", np.int64), ("marginal", float),
                      ("propensity", float)])
