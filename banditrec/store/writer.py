"""The write path of the decision log: one locking write transaction (``_writing``), decisions
with their slots, rewards joined to them, interaction events, model versions and items, each
checked before anything is written; and the background WAL checkpointer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import sqlite_utils

from ..errors import BanditRecError, ConflictError, NotFoundError, ValidationError
from ..types import Decision, Reward
from .checks import check_count, check_name, check_time, checked_reward, json_object
from .codecs import WHOLE_DECISION, decision_rows
from .shards import shard_of

DECISION_COLUMNS = (
    "event_id, ts, user_id, surface, policy, policy_params, model_version, n_slots, candidates, candidate_index, "
    "context, joint_propensity, log_joint_propensity, shop_build, candidate_sources, arm, served, shadow"
).split(", ")
SLOT_COLUMNS = (
    "event_id, position, item_id, item_index, propensity, marginal, marginal_draws, source, policy_marginal"
).split(", ")


def insert_sql(table: str, columns) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...)``."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


INSERT_DECISION = insert_sql("decisions", DECISION_COLUMNS)
INSERT_SLOT = insert_sql("slots", SLOT_COLUMNS)
INSERT_PENDING = "INSERT INTO pending (event_id, recipe) VALUES (?, ?)"
EVENT_KINDS = ("view", "cart", "purchase")
INSERT_REWARD = "INSERT OR IGNORE INTO rewards (event_id, position, kind, reward, ts, late) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_ROUTED = "INSERT OR IGNORE INTO routed_rewards (event_id, position, kind, reward, ts) VALUES (?, ?, ?, ?, ?)"


class DecisionRecord(NamedTuple):
    """One decision for :meth:`DecisionLog.write_decisions`: the arguments of
    :meth:`DecisionLog.write_decision`, in that order (a plain tuple of 5 or 6 works too)."""

    decision: Decision
    policy_params: dict
    candidate_index: Sequence[int] | np.ndarray
    slot_index: Sequence[int] | np.ndarray
    context: Any
    surface: str = "home"
    pending: bytes | bool = False  # Monte-Carlo propensities left for later: True, or the recipe


def _in_batch(exc: BanditRecError, batch: str, index: int, event_id) -> BanditRecError:
    """``exc`` as raised by a batch method: same class and ``field``, the message prefixed with
    the item it is about, and ``batch`` (``"items"`` or ``"rewards"``), ``index`` and ``reason``
    (the unprefixed message) set, so that a caller can map it back to its own input."""
    out = type(exc)(f"{batch}[{index}] (event {event_id!r}): {exc.message}", exc.field)
    out.batch, out.index, out.reason = batch, index, exc.message
    return out


class Completion(NamedTuple):
    """The Monte-Carlo propensities of a pending decision's policy slots, from position ``first``
    (after its pinned slots) on."""

    event_id: str
    first: int
    propensity: np.ndarray
    marginal: np.ndarray
    marginal_draws: int
    joint: float
    log_joint: float

    @classmethod
    def of(cls, event_id: str, first: int, sample) -> Completion:
        """The completion that logs a completed :class:`~banditrec.policies.slate.SlateSample`."""
        return cls(
            event_id,
            first,
            sample.propensity,
            sample.marginal,
            int(sample.marginal_draws),
            sample.joint,
            sample.log_joint,
        )


def _pending_row(event_id: str, pending: bytes | bool) -> tuple:
    return (event_id, pending if isinstance(pending, bytes) else None)


def _refusal(exc: sqlite3.IntegrityError, event_id) -> BanditRecError:
    """A schema refusal of a decision's rows as one of our errors."""
    if "UNIQUE" in str(exc) and "decisions.event_id" in str(exc):
        return ConflictError(f"event id {event_id!r} is already in the log", "event_id")
    return ValidationError(f"the log's schema refused the decision: {exc}", "slots")


class LogWriter:
    """The writes of :class:`~banditrec.store.log.DecisionLog` (a mixin: the log opens the
    connection ``db`` and holds ``_lock``, ``_flock_fd`` and ``reward_window_s``)."""

    db: sqlite_utils.Database
    reward_window_s: float | None
    shard: int | None
    _lock: threading.Lock
    _flock_fd: int | None

    def _check_owned(self, event_id) -> None:
        """On a sharded log: ``event_id`` must carry this log's shard (else a reward posted
        elsewhere would be routed to the wrong shard)."""
        if self.shard is not None and shard_of(event_id) != self.shard:
            raise ValidationError(
                f"event id {event_id!r} carries shard {shard_of(event_id)}; this log is shard {self.shard}",
                "event_id",
            )

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
        pending: bytes | bool = False,
    ) -> None:
        """Write a decision and all its slots in one transaction (see :func:`decision_rows`);
        ``pending``: its Monte-Carlo propensities are NaN, to be completed later
        (:meth:`complete_pending`), with the recipe that re-derives them when there is one.

        A row the schema refuses leaves nothing behind and raises :class:`ConflictError` (an
        event id already logged) or :class:`ValidationError` (a CHECK, e.g. a propensity outside
        (0, 1]).
        """
        row, slot_rows = decision_rows(decision, policy_params, candidate_index, slot_index, context, surface, pending)
        self._check_owned(row[0])
        try:
            with self._writing():
                self.db.execute(INSERT_DECISION, row)
                self.db.conn.executemany(INSERT_SLOT, slot_rows)
                if pending:
                    self.db.execute(INSERT_PENDING, _pending_row(row[0], pending))
        except sqlite3.IntegrityError as exc:
            raise _refusal(exc, row[0]) from None

    def write_decisions(self, items: Iterable[DecisionRecord | tuple], *, rewards: Iterable[Reward] = ()) -> list[str]:
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
        pending_rows: list[tuple] = []
        first_of: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                record = DecisionRecord(*item)
            except TypeError:
                raise _in_batch(
                    ValidationError(
                        "expected (decision, policy_params, candidate_index, slot_index, context[, surface]), got "
                        f"{type(item).__name__} of {len(item) if hasattr(item, '__len__') else '?'}",
                        "items",
                    ),
                    "items",
                    i,
                    None,
                ) from None
            event_id = getattr(record.decision, "event_id", None)
            try:
                row, slot_rows = decision_rows(*record)
                self._check_owned(row[0])
            except BanditRecError as exc:
                raise _in_batch(exc, "items", i, event_id) from None
            except (TypeError, ValueError, AttributeError) as exc:  # e.g. policy_params not JSON-able
                raise _in_batch(ValidationError(f"{type(exc).__name__}: {exc}", "items"), "items", i, event_id) from exc
            first = first_of.setdefault(row[0], i)
            if first != i:
                raise _in_batch(
                    ConflictError(f"event id {row[0]!r} is also items[{first}] of this batch", "event_id"),
                    "items",
                    i,
                    row[0],
                )
            rows.append((row, slot_rows))
            if record.pending:
                pending_rows.append(_pending_row(row[0], record.pending))
        checked = self._checked_rewards(rewards)
        with self._writing():
            conn = self.db.conn
            # two executemany calls for the whole batch (decisions first: slots reference them);
            # a refusal is rare, so only then are the rows replayed one by one to name the item
            conn.execute("SAVEPOINT banditrec_batch")
            try:
                conn.executemany(INSERT_DECISION, [row for row, _ in rows])
                conn.executemany(INSERT_SLOT, [slot for _, slot_rows in rows for slot in slot_rows])
                if pending_rows:
                    conn.executemany(INSERT_PENDING, pending_rows)
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

    def complete_pending(self, completions: Iterable[Completion]) -> int:
        """Write the Monte-Carlo propensities of pending decisions (:class:`Completion` s) and
        take them off the pending list, in one transaction. A decision no longer pending is
        skipped (completing is idempotent). Returns the decisions completed."""
        rows = list(completions)
        for c in rows:
            probs = np.concatenate([c.propensity, c.marginal])
            if not (np.isfinite(probs).all() and (probs > 0).all() and (probs <= 1).all()) or not c.log_joint <= 0:
                raise ValidationError(f"completed propensities of event {c.event_id!r} are not in (0, 1]", "slots")
        slot_rows = [
            (float(p), float(m), int(c.marginal_draws), c.event_id, c.first + k, c.event_id)
            for c in rows
            for k, (p, m) in enumerate(zip(c.propensity.tolist(), c.marginal.tolist()))
        ]
        with self._writing():
            conn = self.db.conn
            conn.executemany(
                "UPDATE slots SET propensity = ?, marginal = ?, marginal_draws = ? WHERE event_id = ? AND position = ? "
                "AND EXISTS (SELECT 1 FROM pending WHERE event_id = ?)",
                slot_rows,
            )
            conn.executemany(
                "UPDATE decisions SET joint_propensity = ?, log_joint_propensity = ? WHERE event_id = ? "
                "AND EXISTS (SELECT 1 FROM pending WHERE event_id = ?)",
                [(float(c.joint), float(c.log_joint), c.event_id, c.event_id) for c in rows],
            )
            before = conn.total_changes
            conn.executemany("DELETE FROM pending WHERE event_id = ?", [(c.event_id,) for c in rows])
            return conn.total_changes - before

    def record_reward(self, reward: Reward) -> str:
        """Join a reward to its decision. Returns ``"recorded"``, ``"late"`` or ``"duplicate"``.

        ``"late"``: the log has a reward window and ``reward.ts > decision.ts + window``; the
        reward is recorded with ``late = 1`` (readers leave it out unless asked). Idempotent:
        the same (event_id, position, kind) with the same value is a duplicate (late or not)
        and changes nothing; with a different value it is a :class:`ConflictError`.

        ``"routed"`` (a sharded log only): the event id carries another shard; the reward is
        kept in ``routed_rewards`` for compaction to join to its decision (whose position
        range and reward window are checked there), with the same duplicate rule.
        """
        position, ts = checked_reward(reward)
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
                out.append((reward, *checked_reward(reward)))
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
        if found is None and self.shard is not None and shard_of(reward.event_id) != self.shard:
            return self._route_reward(reward, position, ts)
        if found is None:
            found = self.db.execute(
                "SELECT n_slots, ts FROM decisions WHERE event_id = ?", (reward.event_id,)
            ).fetchone()
            if found is None:
                raise NotFoundError(f"no decision with event_id {reward.event_id!r}", "event_id")
            known[reward.event_id] = found
        n_slots, decision_ts = found
        if not WHOLE_DECISION <= position < n_slots:
            raise ValidationError(f"position must be in [0, {n_slots}) for this decision, got {position}", "position")
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

    def _route_reward(self, reward: Reward, position: int, ts: float) -> str:
        """Inside a write transaction: keep a reward for another shard's decision."""
        key = (reward.event_id, position, reward.kind)
        if self.db.execute(INSERT_ROUTED, (*key, float(reward.value), ts)).rowcount == 1:
            return "routed"
        (existing,) = self.db.execute(
            "SELECT reward FROM routed_rewards WHERE event_id = ? AND position = ? AND kind = ?", key
        ).fetchone()
        if existing == float(reward.value):
            return "duplicate"
        raise ConflictError(
            f"a {reward.kind} reward of {existing} is already routed for event {reward.event_id!r} "
            f"(shard {shard_of(reward.event_id)}); got {reward.value}",
            "reward",
        )

    def prune(self, until_seq: int | None, routed: Iterable[tuple[str, int, str]] = ()) -> tuple[int, int]:
        """Delete what compaction has moved: the decisions with ``seq <= until_seq`` (with
        their slots and rewards; one an interaction event is attributed to, or one still
        pending, stays; ``None``: none) and the ``routed`` rewards, by ``(event_id, position, kind)``. One transaction;
        returns ``(decisions, routed rewards)`` deleted. Call it only once the dataset's
        manifest records ``until_seq`` as this shard's watermark."""
        until = 0 if until_seq is None else check_count(until_seq, "until_seq")
        gone = (
            "SELECT event_id FROM decisions WHERE seq <= :until "
            "AND event_id NOT IN (SELECT event_id FROM events WHERE event_id IS NOT NULL) "
            "AND event_id NOT IN (SELECT event_id FROM pending)"
        )
        with self._writing():
            conn = self.db.conn
            n_routed = conn.executemany(
                "DELETE FROM routed_rewards WHERE event_id = ? AND position = ? AND kind = ?", list(routed)
            ).rowcount
            conn.execute(f"DELETE FROM rewards WHERE event_id IN ({gone})", {"until": until})
            conn.execute(f"DELETE FROM slots WHERE event_id IN ({gone})", {"until": until})
            n = conn.execute(f"DELETE FROM decisions WHERE event_id IN ({gone})", {"until": until}).rowcount
        return int(n), int(max(n_routed, 0))

    def write_event(
        self, user_id: str, item_id: str, kind: str, ts: float | None = None, event_id: str | None = None
    ) -> int:
        """Log an interaction event (``kind`` view, cart or purchase); returns its ``seq``.

        ``ts`` defaults to now; ``event_id`` attributes the event to a logged decision.
        """
        check_name(user_id, "user_id")
        check_name(item_id, "item_id")
        if kind not in EVENT_KINDS:
            raise ValidationError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}", "kind")
        ts = time.time() if ts is None else check_time(ts, "ts")
        if event_id is not None:
            check_name(event_id, "event_id")
        with self._writing():
            if (
                event_id is not None
                and self.db.execute("SELECT 1 FROM decisions WHERE event_id = ?", (event_id,)).fetchone() is None
            ):
                raise NotFoundError(f"no decision with event_id {event_id!r}", "event_id")
            cur = self.db.execute(
                "INSERT INTO events (ts, user_id, item_id, kind, event_id) VALUES (?, ?, ?, ?, ?)",
                (ts, user_id, item_id, kind, event_id),
            )
            assert cur.lastrowid is not None  # an INSERT sets it
            return int(cur.lastrowid)

    def write_events(self, user_ids, item_ids, kinds, ts) -> int:
        """Log many interaction events (no decision attribution) in ONE transaction, all or
        nothing; the error names the first bad entry (``events[i]``). Returns the rows written."""
        cols = [list(c) for c in (user_ids, item_ids, kinds, ts)]
        if len({len(c) for c in cols}) != 1:
            raise ValidationError(
                f"user_ids, item_ids, kinds and ts must have one length, got {[len(c) for c in cols]}", "events"
            )
        rows = []
        for i, (user, item, kind, t) in enumerate(zip(*cols)):
            try:
                check_name(user, "user_id")
                check_name(item, "item_id")
                if kind not in EVENT_KINDS:
                    raise ValidationError(f"kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}", "kind")
                rows.append((check_time(t, "ts"), user, item, kind))
            except BanditRecError as exc:
                raise type(exc)(f"events[{i}]: {exc.message}", exc.field) from None
        with self._writing():
            self.db.conn.executemany("INSERT INTO events (ts, user_id, item_id, kind) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def register_model(
        self,
        version: str,
        policy: str,
        params: dict,
        path: str | None = None,
        sha256: str | None = None,
        n_updates: int = 0,
        trained_until_seq: int = 0,
    ) -> str:
        """Record a model version; returns ``"recorded"``, or ``"duplicate"`` when the same
        version is already registered with the same content (a different one is a
        :class:`ConflictError`). ``trained_until_seq``: the last decision it learned from."""
        check_name(version, "version")
        check_name(policy, "policy")
        params_text = json_object(params, "params")
        if path is not None:
            path = check_name(str(path), "path")
        if sha256 is not None and (
            not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)
        ):
            raise ValidationError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}", "sha256")
        row = (
            version,
            policy,
            params_text,
            path,
            sha256,
            check_count(n_updates, "n_updates"),
            check_count(trained_until_seq, "trained_until_seq"),
        )
        with self._writing():
            existing = self.db.execute(
                "SELECT version, policy, params, path, sha256, n_updates, trained_until_seq "
                "FROM model_versions WHERE version = ?",
                (version,),
            ).fetchone()
            if existing is None:
                self.db.execute(
                    "INSERT INTO model_versions (version, policy, params, created_ts, path, sha256, n_updates, "
                    "trained_until_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row[:3], time.time(), *row[3:]),
                )
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
            check_name(item, f"ids[{j}]")
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
        rows = [
            (i, item, json.dumps(f), json_object(a, f"attrs[{i}]"))
            for i, (item, f, a) in enumerate(zip(ids, feats.tolist(), attrs))
        ]
        with self._writing():
            width = self.db.execute("SELECT json_array_length(features) FROM items LIMIT 1").fetchone()
            if width is not None and rows and width[0] != feats.shape[1]:
                raise ConflictError(f"logged items have {width[0]} features, these have {feats.shape[1]}", "features")
            logged = {
                r[0]: tuple(r)
                for r in self.db.execute(
                    "SELECT item_index, item_id, features, attrs FROM items WHERE item_index < ?", (len(rows),)
                )
            }
            new = []
            for row in rows:
                old = logged.get(row[0])
                if old is None:
                    new.append(row)
                elif old != row:
                    raise ConflictError(
                        f"item index {row[0]} already holds "
                        f"{'item ' + repr(old[1]) if old[1] != row[1] else 'other content'}"
                        f", not this {row[1]!r}",
                        "ids",
                    )
            try:
                self.db.conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", new)
            except sqlite3.IntegrityError:
                raise ConflictError("an item id is already logged at another index", "ids") from None
        return len(new)
