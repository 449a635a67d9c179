"""Negative feedback and the global block list in the decision log: users' hide events (with
their scope and expiry), the items no user may be shown, and the audit trail of admin changes.

Details: docs/feedback.md.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import sqlite_utils

from ..errors import BanditRecError, NotFoundError, ValidationError
from ..types import Reward
from .checks import check_count, check_name, check_time, checked_reward, json_object

HIDE_KINDS = ("hide", "not_interested")  # both suppress alike; the log keeps the word the client used
HIDE_SCOPES = ("item", "type")
GENERATION_KEY = "blocklist_generation"


class Hide(NamedTuple):
    """One unexpired hide of a user: the item named, and whether it hides the item or its type."""

    item_id: str
    scope: str
    expires_ts: float


class BlockedItem(NamedTuple):
    item_id: str
    ts: float
    reason: str
    actor: str


class AuditRow(NamedTuple):
    seq: int
    ts: float
    actor: str
    action: str
    subject: str
    detail: dict


class HideResult(NamedTuple):
    """What :meth:`FeedbackLog.write_hide` logged: the event's ``seq``, when the hide ends, and
    the negative reward's status (``None``: no reward asked for; ``"kept_existing"``: the slot
    already had a reward of that kind, which stands)."""

    seq: int
    expires_ts: float
    reward_status: str | None


class _Blocked(NamedTuple):
    data_version: int
    generation: str
    ids: frozenset


class FeedbackLog:
    """The part of :class:`~banditrec.store.DecisionLog` that writes and reads hides, the block
    list and the audit trail (a mixin: it uses the log's connection and write transaction)."""

    db: sqlite_utils.Database
    _lock: threading.Lock
    _blocked_cache: _Blocked | None = None

    # ---- hides -----------------------------------------------------------------------------
    def write_hide(
        self,
        user_id: str,
        item_id: str,
        *,
        kind: str = "hide",
        scope: str = "item",
        ts: float,
        ttl_s: float,
        event_id: str | None = None,
        reward: Reward | None = None,
    ) -> HideResult:
        """Log that ``user_id`` does not want ``item_id`` (``scope="type"``: any item of its type)
        for ``ttl_s`` seconds from ``ts``; decisions for that user leave it out until then.

        ``event_id`` attributes the hide to a logged decision. ``reward`` (of that decision's
        slot) is joined in the same transaction as the event, unless the slot already has a
        reward of that kind: the log's reward join keeps the first value per
        ``(event_id, position, kind)``, so an earlier reward stands and the hide is still logged.
        """
        check_name(user_id, "user_id")
        check_name(item_id, "item_id")
        if kind not in HIDE_KINDS:
            raise ValidationError(f"kind must be one of {', '.join(HIDE_KINDS)}, got {kind!r}", "kind")
        if scope not in HIDE_SCOPES:
            raise ValidationError(f"scope must be one of {', '.join(HIDE_SCOPES)}, got {scope!r}", "scope")
        ts = check_time(ts, "ts")
        ttl = check_time(ttl_s, "ttl_s")
        if ttl <= 0:
            raise ValidationError(f"ttl_s must be > 0 seconds, got {ttl_s!r}", "ttl_s")
        if event_id is not None:
            check_name(event_id, "event_id")
        checked = None if reward is None else checked_reward(reward)
        expires = ts + ttl
        with self._writing():  # type: ignore[attr-defined]
            if (
                event_id is not None
                and self.db.execute("SELECT 1 FROM decisions WHERE event_id = ?", (event_id,)).fetchone() is None
            ):
                raise NotFoundError(f"no decision with event_id {event_id!r}", "event_id")
            cur = self.db.execute(
                "INSERT INTO events (ts, user_id, item_id, kind, event_id, scope, expires_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ts, user_id, item_id, kind, event_id, scope, expires),
            )
            status = None
            if reward is not None and checked is not None:
                status = self._negative_reward(reward, *checked)
        return HideResult(int(cur.lastrowid or 0), expires, status)

    def _negative_reward(self, reward: Reward, position: int, ts: float) -> str:
        """Inside the hide's transaction: join ``reward`` unless its slot has one of its kind."""
        existing = self.db.execute(
            "SELECT 1 FROM rewards WHERE event_id = ? AND position = ? AND kind = ?",
            (reward.event_id, position, reward.kind),
        ).fetchone()
        if existing is not None:
            return "kept_existing"
        return self._join_reward(reward, position, ts, {})  # type: ignore[attr-defined]

    def has_decision(self, event_id: str) -> bool:
        with self._lock:
            return (
                self.db.conn.execute("SELECT 1 FROM decisions WHERE event_id = ?", (event_id,)).fetchone() is not None
            )

    def slot_of(self, event_id: str, item_id: str) -> int | None:
        """The position at which decision ``event_id`` showed ``item_id`` (``None``: not shown)."""
        with self._lock:
            row = self.db.conn.execute(
                "SELECT position FROM slots WHERE event_id = ? AND item_id = ? ORDER BY position LIMIT 1",
                (event_id, item_id),
            ).fetchone()
        return None if row is None else int(row[0])

    def shown_at(self, event_id: str, position: int) -> str | None:
        """The item decision ``event_id`` showed at ``position`` (``None``: no such slot)."""
        with self._lock:
            row = self.db.conn.execute(
                "SELECT item_id FROM slots WHERE event_id = ? AND position = ?", (event_id, int(position))
            ).fetchone()
        return None if row is None else str(row[0])

    def hide_expiry(self, user_id: str) -> float | None:
        """When the user's last hide to expire expires (``None``: the user never hid anything)."""
        with self._lock:
            row = self.db.conn.execute(
                "SELECT max(expires_ts) FROM events WHERE user_id = ? AND expires_ts IS NOT NULL", (user_id,)
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def hidden_items(self, user_id: str, now: float) -> list[Hide]:
        """The user's hides still in force at ``now`` (``expires_ts > now``, whatever their
        ``ts``), newest first. One query on the partial index of hides, cheap per decision."""
        with self._lock:
            rows = self.db.conn.execute(
                "SELECT item_id, scope, expires_ts FROM events WHERE user_id = ? AND expires_ts > ? ORDER BY seq DESC",
                (user_id, float(now)),
            ).fetchall()
        return [Hide(item, scope or "item", float(exp)) for item, scope, exp in rows]

    # ---- the block list --------------------------------------------------------------------
    def block(self, item_ids: Sequence[str], *, reason: str, actor: str, ts: float | None = None) -> list[str]:
        """Block ``item_ids`` for every user; returns each one's status, ``"blocked"`` or
        ``"already_blocked"`` (unchanged: its first reason stands). One transaction with an
        audit row per item blocked, and a new block-list generation when any was."""
        ids = _checked_ids(item_ids)
        check_name(reason, "reason")
        check_name(actor, "actor")
        ts = time.time() if ts is None else check_time(ts, "ts")
        statuses = []
        with self._writing():  # type: ignore[attr-defined]
            for item in ids:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO blocklist (item_id, ts, reason, actor) VALUES (?, ?, ?, ?)",
                    (item, ts, reason, actor),
                )
                if cur.rowcount == 1:
                    self._audit_row(ts, actor, "block", item, {"reason": reason})
                    statuses.append("blocked")
                else:
                    statuses.append("already_blocked")
            if "blocked" in statuses:
                self._bump_generation()
        self._blocked_cache = None  # this connection's own commits do not change data_version
        return statuses

    def unblock(self, item_id: str, *, actor: str, reason: str = "", ts: float | None = None) -> BlockedItem:
        """Lift the block of ``item_id``; returns the entry removed (not blocked:
        :class:`NotFoundError`). One transaction with its audit row."""
        check_name(item_id, "item_id")
        check_name(actor, "actor")
        if not isinstance(reason, str):
            raise ValidationError(f"reason must be a string, got {reason!r}", "reason")
        ts = time.time() if ts is None else check_time(ts, "ts")
        with self._writing():  # type: ignore[attr-defined]
            row = self.db.execute(
                "SELECT item_id, ts, reason, actor FROM blocklist WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"item {item_id!r} is not on the block list", "item_id")
            self.db.execute("DELETE FROM blocklist WHERE item_id = ?", (item_id,))
            entry = BlockedItem(*row)
            self._audit_row(
                ts,
                actor,
                "unblock",
                item_id,
                {"reason": reason, "blocked_ts": entry.ts, "blocked_reason": entry.reason},
            )
            self._bump_generation()
        self._blocked_cache = None
        return entry

    def blocklist(self) -> list[BlockedItem]:
        """Every blocked item, by item id."""
        with self._lock:
            rows = self.db.conn.execute("SELECT item_id, ts, reason, actor FROM blocklist ORDER BY item_id").fetchall()
        return [BlockedItem(*r) for r in rows]

    def blocked_ids(self) -> frozenset:
        """The ids of the blocked items, as of the last commit by any connection.

        Cached: each call costs one ``PRAGMA data_version`` (which changes when another
        connection commits anything); only then is the block list's generation read, and the
        list itself only when the generation moved. The same object is returned until the list
        changes, so callers may cache what they derive from it by identity.
        """
        with self._lock:
            conn = self.db.conn
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            cached = self._blocked_cache
            if cached is not None and cached.data_version == version:
                return cached.ids
            generation = _generation(conn)
            if cached is not None and cached.generation == generation:
                self._blocked_cache = cached._replace(data_version=version)
                return cached.ids
            ids = frozenset(r[0] for r in conn.execute("SELECT item_id FROM blocklist"))
            self._blocked_cache = _Blocked(version, generation, ids)
            return ids

    def _bump_generation(self) -> None:
        self.db.execute(
            "INSERT INTO log_meta (key, value) VALUES (?, '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (GENERATION_KEY,),
        )

    # ---- the audit trail -------------------------------------------------------------------
    def audit(
        self, action: str, subject: str, detail: dict | None = None, *, actor: str, ts: float | None = None
    ) -> int:
        """Append one audit row (e.g. ``audit("serving_mode", "home", {"from": ..., "to": ...},
        actor="ops")``) in a transaction of its own; returns its ``seq``."""
        check_name(action, "action")
        check_name(subject, "subject")
        check_name(actor, "actor")
        ts = time.time() if ts is None else check_time(ts, "ts")
        with self._writing():  # type: ignore[attr-defined]
            return self._audit_row(ts, actor, action, subject, {} if detail is None else detail)

    def _audit_row(self, ts: float, actor: str, action: str, subject: str, detail: dict) -> int:
        cur = self.db.execute(
            "INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (ts, actor, action, subject, json_object(detail, "detail")),
        )
        return int(cur.lastrowid or 0)

    def audit_rows(
        self, *, after_seq: int = 0, action: str | None = None, subject: str | None = None, limit: int | None = None
    ) -> list[AuditRow]:
        """Audit rows with ``seq > after_seq`` (of one action and subject, if given), oldest first."""
        sql = "SELECT seq, ts, actor, action, subject, detail FROM audit WHERE seq > ?"
        args: list[object] = [check_count(after_seq, "after_seq")]
        if action is not None:
            sql, args = sql + " AND action = ?", [*args, action]
        if subject is not None:
            sql, args = sql + " AND subject = ?", [*args, subject]
        sql += " ORDER BY seq"
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, check_count(limit, "limit")]
        with self._lock:
            rows = self.db.conn.execute(sql, args).fetchall()
        return [AuditRow(int(s), float(t), a, act, subj, json.loads(d)) for s, t, a, act, subj, d in rows]


def _generation(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM log_meta WHERE key = ?", (GENERATION_KEY,)).fetchone()
    return "0" if row is None else str(row[0])


def _checked_ids(item_ids: Iterable[str]) -> list[str]:
    if isinstance(item_ids, str):
        raise ValidationError("item_ids must be a list of item ids, got a string", "item_ids")
    ids = list(item_ids)
    if not ids:
        raise ValidationError("item_ids must name at least one item", "item_ids")
    for i, item in enumerate(ids):
        try:
            check_name(item, "item_id")
        except BanditRecError as exc:
            raise ValidationError(f"item_ids[{i}]: {exc.message}", "item_ids") from None
    if len(set(ids)) != len(ids):
        raise ValidationError("item_ids lists an item twice", "item_ids")
    return ids
