"""The read side of the decision log: one consistent snapshot, counts, and the readers that hand
decisions (slots joined to their rewards), events, model versions and items to the estimators
and learners as arrays.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator

import numpy as np
import sqlite_utils

from ..errors import ValidationError
from ..types import LoggedDecisions, LoggedEvents
from .checks import check_time
from .codecs import WHOLE_DECISION, float_rows, number_lists, object_array, read_params
from .pending import SETTLE_BATCH, completion, read_recipes

MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM decisions"
INTERACTION = "kind IN ('view', 'cart', 'purchase')"  # the events that are not hides
TABLES = (
    "decisions",
    "slots",
    "rewards",
    "events",
    "model_versions",
    "items",
    "pending",
    "routed_rewards",
    "blocklist",
    "audit",
)

# The readers' three queries, run in one read transaction. All take the named parameters of
# ``read_params``; the decision filter is the same in each, so slots and rewards are those of
# exactly the decisions read. A window closes at ``ts + window``: a decision is read only when
# ``closed`` is NULL or its window has closed by then. Rewards are joined to slots in numpy
# by (decision, position), which is much faster than a LEFT JOIN per slot row.
_READ_FILTER = (
    "d.seq > :after AND d.seq <= :until AND (:closed IS NULL OR d.ts + :window <= :closed) "
    "AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.event_id = d.event_id) "  # see store/pending.py
    "AND NOT (:training AND d.arm = 'holdout')"  # the analysis holdout is never learned from
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


class LogReader:
    """The reads of :class:`~banditrec.store.log.DecisionLog` (a mixin: the log opens the
    connection ``db`` and holds ``_lock``, ``path`` and ``reward_window_s``)."""

    db: sqlite_utils.Database
    path: str
    reward_window_s: float | None
    _lock: threading.Lock
    _busy_timeout_s: float
    _settlers: list[Callable[[], object]]
    complete_pending: Callable[..., int]  # LogWriter's

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection on one consistent state of the log, for reads that take many
        queries (an export): they all see the log as of entering the block, never half of a
        write. Use it only inside the block.

        A file log gets a connection of its own in a read transaction (WAL), so writers carry
        on meanwhile and the snapshot does not see them. An in-memory log has only its own
        connection: the snapshot holds the log's lock, so writes from other threads wait, and
        a write from the same thread would deadlock. Writing through the connection raises
        ``sqlite3.OperationalError`` (``PRAGMA query_only``). Pending decisions are settled
        first (:meth:`settle_pending`); those still pending are not part of the snapshot's reads.
        """
        self.settle_pending()
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
        self,
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        kind: str = "click",
        default_reward: float = 0.0,
        closed_before: float | None = None,
        include_late: bool = False,
        training: bool = False,
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

        ``training``: leave out the analysis holdout (``arm = 'holdout'``), whose users a policy
        must never learn from; what learners read.
        """
        self.settle_pending()
        window = self.reward_window_s
        if closed_before is not None:
            if window is None:
                raise ValidationError(
                    "closed_before needs a log with a reward window (reward_window_s)", "closed_before"
                )
            closed_before = check_time(closed_before, "closed_before")
        with self._lock, self.db.atomic():
            conn = self.db.conn
            until = conn.execute(MAX_SEQ).fetchone()[0]
            if until_seq is not None:
                until = min(until, int(until_seq))
            params = read_params(
                after_seq=after_seq,
                until_seq=until,
                kind=kind,
                window=window,
                closed_before=closed_before,
                include_late=include_late,
                training=training,
            )
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
        context = float_rows(context_text)
        flat, offsets = number_lists(candidate_text, np.int64)
        bounds = offsets.tolist()
        candidates = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        row_decision = np.searchsorted(seq, slots["seq"])
        row_slot, row_action, row_pscore = (
            np.ascontiguousarray(slots[c]) for c in ("position", "item_index", "marginal")
        )
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
        return LoggedDecisions(
            event_id=event_id,
            seq=seq,
            context=context,
            candidates=candidates,
            row_decision=row_decision,
            row_slot=row_slot,
            row_action=row_action,
            row_pscore=row_pscore,
            row_reward=row_reward,
            decision_reward=decision_reward,
            row_propensity=np.ascontiguousarray(slots["propensity"]),
            n_slots=n_slots,
        )

    def settle_pending(self) -> int:
        """Complete the pending decisions that can be: those of the engines registered with
        :meth:`on_settle` (their in-memory queues), then every self-contained recipe in the log,
        in bulk. Returns the decisions still pending (readers leave them out)."""
        for complete in list(self._settlers):
            complete()
        conn = self.db.conn
        while True:
            with self._lock:
                rows = read_recipes(conn, SETTLE_BATCH)
            done = [completion(*row) for row in rows]  # the Monte Carlo, outside the log's lock
            if not done or self.complete_pending(done) == 0:
                break
        with self._lock:
            return int(conn.execute("SELECT count(*) FROM pending").fetchone()[0])

    def on_settle(self, complete: Callable[[], object]) -> None:
        """Run ``complete`` (an engine's :meth:`~banditrec.engine.Engine.complete_pending`)
        first whenever this log settles its pending decisions."""
        if complete not in self._settlers:
            self._settlers.append(complete)

    def events(self, *, after_seq: int = 0, user_id: str | None = None) -> LoggedEvents:
        """Interaction events (views, cart adds, purchases) with ``seq > after_seq`` (of one user,
        if given), in log order. Hides are negative feedback, not interactions: :meth:`hidden_items`."""
        sql = f"SELECT seq, ts, user_id, item_id, kind, event_id FROM events WHERE seq > ? AND {INTERACTION}"
        args: tuple = (int(after_seq),)
        if user_id is not None:  # a separate statement, so that SQLite uses the (user_id, ts) index
            sql, args = sql + " AND user_id = ?", (*args, user_id)
        with self._lock:
            rows = self.db.conn.execute(sql + " ORDER BY seq", args).fetchall()
        cols = list(zip(*rows)) if rows else [()] * 6
        return LoggedEvents(
            np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=float), *(object_array(c) for c in cols[2:])
        )

    def recent_events(
        self, user_id: str, *, since_ts: float, limit: int = 50
    ) -> tuple[list[str], list[str], list[float]]:
        """The user's interaction events with ``ts >= since_ts``, newest first, at most
        ``limit``: ``(item ids, kinds, times)``. One indexed query (``events (user_id, ts)``), cheap
        enough to run on every decision; this is the session state a decision sees, shared by
        every process that opens the log."""
        with self._lock:
            rows = self.db.conn.execute(
                f"SELECT item_id, kind, ts FROM events WHERE user_id = ? AND ts >= ? AND {INTERACTION} "
                "ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, float(since_ts), int(limit)),
            ).fetchall()
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
            raise ValidationError(
                "closed_until_seq needs a log with a reward window (reward_window_s)", "closed_before"
            )
        cutoff = check_time(closed_before, "closed_before") - self.reward_window_s
        with self._lock:
            open_seq = self.db.conn.execute(
                "SELECT min(seq) FROM decisions WHERE ts > ? AND seq > ?", (cutoff, int(after_seq))
            ).fetchone()[0]
            if open_seq is not None:
                return int(open_seq) - 1
            return max(int(after_seq), self.db.conn.execute(MAX_SEQ).fetchone()[0])

    def model_versions(self) -> list[dict]:
        """Registered model versions, oldest first, ``params`` as a dict."""
        with self._lock:
            cur = self.db.conn.execute(
                "SELECT version, policy, params, created_ts, path, sha256, n_updates, trained_until_seq "
                "FROM model_versions ORDER BY created_ts, rowid"
            )
            names = [c[0] for c in cur.description]
            rows = cur.fetchall()
        return [{**dict(zip(names, r)), "params": json.loads(r[2])} for r in rows]

    def items(self) -> tuple[list[str], np.ndarray, list[dict]]:
        """The logged item catalog: ``(ids, features (n, d), attrs)``, ``ids[i]`` at index ``i``."""
        with self._lock:
            rows = self.db.conn.execute(
                "SELECT item_index, item_id, features, attrs FROM items ORDER BY item_index"
            ).fetchall()
        if not rows:
            return [], np.empty((0, 0)), []
        index, ids, features, attrs = map(list, zip(*rows))
        if index[-1] != len(index) - 1:
            raise ValidationError("the logged item indices have gaps", "items")
        return ids, float_rows(features), json.loads("[" + ",".join(attrs) + "]")

    def item_ids(self) -> dict[int, str]:
        """``{item index: item id}`` for every index the log uses: from the items table, or
        (a log served from a shop directory, which keeps its catalog there) from the candidate
        lists the decisions logged. An index logged with two ids is an error."""
        with self._lock:
            rows = self.db.conn.execute("SELECT item_index, item_id FROM items").fetchall()
            if not rows:
                rows = self.db.conn.execute(
                    "SELECT DISTINCT k.value, j.value FROM decisions d, json_each(d.candidates) j, "
                    "json_each(d.candidate_index) k WHERE j.key = k.key"
                ).fetchall()
        out: dict[int, str] = {}
        for index, item in rows:
            if out.setdefault(int(index), item) != item:
                raise ValidationError(
                    f"the log's item index {index} holds two ids, {out[int(index)]!r} and {item!r}", "items"
                )
        return out

    def policies(self) -> list[str]:
        """The distinct policy specs that logged decisions, sorted."""
        with self._lock:
            return sorted(r[0] for r in self.db.execute("SELECT DISTINCT policy FROM decisions").fetchall())

    def integrity_ok(self) -> bool:
        with self._lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_SLOT_ROW = np.dtype(
    [("seq", np.int64), ("position", np.int64), ("item_index", np.int64), ("marginal", float), ("propensity", float)]
)
