"""The decision log: every decision, its propensities and context, and rewards joined later.

SQLite (WAL, busy timeout) through sqlite-utils; :class:`DecisionLog` joins the write path
(:mod:`.writer`) and the readers (:mod:`.reader`), with JSON codecs in :mod:`.codecs`.

Details: docs/data-formats.md, "The decision log (`store/log.py`)".
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from ..errors import ConflictError, ValidationError
from .blocklist import FeedbackLog
from .checks import check_time
from .migrations import migrations
from .modes import ModesStore
from .reader import LogReader
from .shards import check_shard
from .writer import LogWriter

CHECKPOINT_BACKSTOP_PAGES = 8000  # ~32 MB of WAL: the writers checkpoint only if the thread falls behind


class Checkpointer:
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


class DecisionLog(LogReader, LogWriter, ModesStore, FeedbackLog):
    """The SQLite decision log. ``path=":memory:"`` gives a private in-memory log.

    ``reward_window_s``: seconds after a decision within which its rewards count; a reward
    with ``ts > decision.ts + reward_window_s`` is recorded but flagged late. ``None``: no
    window (no reward is ever late, and no window ever closes).

    ``checkpoint_interval_s``: checkpoint the WAL from a background thread this often instead
    of in the committing writer (a serving process sets it). SQLite's automatic checkpoint runs
    in whichever commit pushes the WAL past 1000 pages, and that commit then copies the pages
    and waits for two fsyncs while it still holds the write lock, so every writer queues behind
    it. A passive
    checkpoint on a connection of its own copies the same pages without the write lock; the
    writers' own automatic checkpoint stays as a backstop at ``CHECKPOINT_BACKSTOP_PAGES``
    (WAL mode restarts the file only after a checkpoint that no commit overlapped).

    ``shard``: the shard number of a serving node's log (docs/deployment.md, "Serving on several
    machines"). The file records it: a new or empty log takes it, a log that records another
    shard, or that holds decisions logged unsharded, is refused. ``None`` opens the log as it
    is; :attr:`shard` is then what the file records (``None``: unsharded). A sharded log takes
    only decisions whose event id carries its shard, and keeps rewards for other shards' event
    ids in ``routed_rewards`` for compaction to join (:meth:`record_reward`). :attr:`log_id` is
    a random id the file keeps for life, by which compaction tells shard files apart.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        busy_timeout_ms: int = 5000,
        synchronous: str = "NORMAL",
        reward_window_s: float | None = None,
        process_lock: bool = False,
        checkpoint_interval_s: float | None = None,
        shard: int | None = None,
    ):
        if shard is not None:
            shard = check_shard(shard)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValidationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}", "synchronous")
        if reward_window_s is not None:
            reward_window_s = check_time(reward_window_s, "reward_window_s")
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
        self._settlers: list = []  # engines' completers of pending decisions (LogReader.on_settle)
        # process_lock: writers of this file queue on an flock of "<path>.lock" before taking
        # SQLite's write lock. SQLite's own busy handler polls with sleeps of 1, 2, 5, 10, ...
        # ms, so processes that write often (gunicorn workers) wait milliseconds for a lock
        # held far shorter; a blocked flock wakes as soon as it is released.
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
            self.shard, self.log_id = self._claim_shard(shard)
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()
        self._checkpointer = None
        if checkpoint_interval_s is not None and self.path != ":memory:":
            interval = check_time(checkpoint_interval_s, "checkpoint_interval_s")
            if interval <= 0:
                raise ValidationError(
                    f"checkpoint_interval_s must be > 0, got {checkpoint_interval_s!r}", "checkpoint_interval_s"
                )
            self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BACKSTOP_PAGES}")
            self._checkpointer = Checkpointer(self.path, interval)

    def _claim_shard(self, shard: int | None) -> tuple[int | None, str]:
        """Inside the opening transaction: the file's shard (recording ``shard`` on a new log)
        and its log id (created on first open)."""
        conn = self.db.conn
        conn.execute("INSERT OR IGNORE INTO log_meta VALUES ('log_id', ?)", (secrets.token_hex(8),))
        log_id = conn.execute("SELECT value FROM log_meta WHERE key = 'log_id'").fetchone()[0]
        row = conn.execute("SELECT value FROM log_meta WHERE key = 'shard'").fetchone()
        recorded = None if row is None else int(row[0])
        if shard is None or recorded == shard:
            return recorded, log_id
        if recorded is not None:
            raise ConflictError(f"the log {self.path} is shard {recorded}, not shard {shard}", "shard")
        n = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        if n:
            raise ValidationError(
                f"the log {self.path} holds {n} decisions logged unsharded, whose event ids carry no shard; "
                f"give shard {shard} a new log file",
                "shard",
            )
        conn.execute("INSERT INTO log_meta VALUES ('shard', ?)", (str(shard),))
        return shard, log_id

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.db.close()
        if self._flock_fd is not None:
            os.close(self._flock_fd)
            self._flock_fd = None
