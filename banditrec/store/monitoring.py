"""The decision log as the health monitor reads it (``banditrec monitor``): one read-only snapshot
of a time window's decisions, their shown slots with the reward each earned, the reward join lags
and the log's item features. Details: docs/monitor.md.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NotFoundError, ValidationError
from .codecs import float_rows, number_lists

_WINDOW = "(:since IS NULL OR d.ts >= :since) AND (:until IS NULL OR d.ts < :until)"
_DECISIONS = (
    "SELECT d.seq, d.ts, d.user_id, d.policy_params, json_array_length(d.candidate_index), d.context{arm} "
    f"FROM decisions d WHERE {_WINDOW} ORDER BY d.seq"
)
# a slot's reward: the sum of its rewards of the kind that arrived in time (late ones are counted
# by the join-lag figures, not here); pending propensities read as NULL
_SLOTS = (
    "SELECT d.seq, s.position, s.item_index, s.propensity, s.marginal, s.source, "
    "(SELECT coalesce(sum(r.reward), 0.0) FROM rewards r WHERE r.event_id = s.event_id "
    "AND r.position = s.position AND r.kind = :kind AND r.late = 0) "
    f"FROM decisions d JOIN slots s ON s.event_id = d.event_id WHERE {_WINDOW} ORDER BY d.seq, s.position"
)
_LAGS = f"SELECT r.ts - d.ts, r.late, r.kind FROM decisions d JOIN rewards r ON r.event_id = d.event_id WHERE {_WINDOW}"
_SPAN = "SELECT min(ts), max(ts), count(*) FROM decisions"


@dataclass(frozen=True)
class MonitorRows:
    """One window of the log, as arrays.

    Per decision ``(n,)``: ``seq``, ``ts``, ``user_id``, ``n_candidates``, ``params_index`` (into ``params``,
    the distinct logged ``policy_params``), ``arm`` (``None`` when the log has no ``arm`` column),
    and the logged contexts as ``context_flat`` with ``context_offsets (n + 1,)``.
    Per shown slot ``(m,)``: ``decision`` (row in the decision arrays), ``position``,
    ``item_index``, ``propensity`` and ``marginal`` (NaN while pending), ``source`` and
    ``reward`` (the slot's in-time reward of the kind read).
    Per reward of any kind ``(r,)``: ``lag_s`` (reward ts - decision ts), ``late`` and ``lag_kind``.
    ``item_features``: the log's ``items`` table as a dense ``(max index + 1, d)`` array with
    ``item_known`` marking the indices it holds (``None``: the table is empty).
    ``log_span``: ``(first ts, last ts, decisions)`` of the whole log.
    """

    seq: np.ndarray
    ts: np.ndarray
    user_id: np.ndarray
    n_candidates: np.ndarray
    params: list[dict]
    params_index: np.ndarray
    arm: np.ndarray | None
    context_flat: np.ndarray
    context_offsets: np.ndarray
    decision: np.ndarray
    position: np.ndarray
    item_index: np.ndarray
    propensity: np.ndarray
    marginal: np.ndarray
    source: np.ndarray
    reward: np.ndarray
    lag_s: np.ndarray
    late: np.ndarray
    lag_kind: np.ndarray
    item_features: np.ndarray | None
    item_known: np.ndarray | None
    log_span: tuple[float | None, float | None, int]

    @property
    def n_decisions(self) -> int:
        return len(self.ts)


def _connect(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: no such decision log (no file there)", "db")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ValidationError(f"{p} is not a decision log: {exc}", "db") from None
    missing = sorted({"decisions", "slots", "rewards", "items"} - names)
    if missing:
        conn.close()
        raise ValidationError(f"{p} is not a decision log: it has no table {missing[0]!r}", "db")
    return conn


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def log_span(path: str | Path) -> tuple[float | None, float | None, int]:
    """``(first ts, last ts, decisions)`` of the whole log at ``path``."""
    conn = _connect(path)
    try:
        span = conn.execute(_SPAN).fetchone()
    finally:
        conn.close()
    return span[0], span[1], int(span[2])


def read_monitor_rows(
    path: str | Path, *, since: float | None = None, until: float | None = None, kind: str = "click"
) -> MonitorRows:
    """The decisions with ``since <= ts < until`` (``None``: open) of the log at ``path``, read
    read-only in one transaction (a serving process may write meanwhile)."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN")
        arm = has_column(conn, "decisions", "arm")
        args = {"since": since, "until": until, "kind": kind}
        span = conn.execute(_SPAN).fetchone()
        dec = conn.execute(_DECISIONS.format(arm=", d.arm" if arm else ""), args).fetchall()
        slots = conn.execute(_SLOTS, args).fetchall()
        lags = conn.execute(_LAGS, args).fetchall()
        items = conn.execute("SELECT item_index, features FROM items ORDER BY item_index").fetchall()
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise ValidationError(f"{path}: cannot read the decision log: {exc}", "db") from None
    finally:
        conn.close()
    seq = np.fromiter((r[0] for r in dec), dtype=np.int64, count=len(dec))
    texts: dict[str, int] = {}
    params_index = np.fromiter((texts.setdefault(r[3], len(texts)) for r in dec), dtype=np.int64, count=len(dec))
    params = [json.loads(t) for t in texts]
    ctx_flat, ctx_off = number_lists([r[5] for r in dec], float)
    slot_seq = np.fromiter((r[0] for r in slots), dtype=np.int64, count=len(slots))
    features: np.ndarray | None
    known: np.ndarray | None
    if items:
        index = np.fromiter((r[0] for r in items), dtype=np.int64, count=len(items))
        rows = float_rows([r[1] for r in items])
        features = np.zeros((int(index.max()) + 1, rows.shape[1]))
        known = np.zeros(int(index.max()) + 1, dtype=bool)
        features[index], known[index] = rows, True
    else:
        features, known = None, None

    def col(rows, j, dtype):
        return np.asarray([r[j] for r in rows], dtype=dtype).reshape(len(rows))

    return MonitorRows(
        seq=seq,
        ts=col(dec, 1, float),
        user_id=col(dec, 2, object),
        n_candidates=col(dec, 4, np.int64),
        params=params,
        params_index=params_index,
        arm=col(dec, 6, object) if arm else None,
        context_flat=ctx_flat,
        context_offsets=ctx_off,
        decision=np.searchsorted(seq, slot_seq),
        position=col(slots, 1, np.int64),
        item_index=col(slots, 2, np.int64),
        propensity=np.asarray([np.nan if r[3] is None else r[3] for r in slots], dtype=float),
        marginal=np.asarray([np.nan if r[4] is None else r[4] for r in slots], dtype=float),
        source=col(slots, 5, object),
        reward=col(slots, 6, float),
        lag_s=col(lags, 0, float),
        late=col(lags, 1, bool),
        lag_kind=col(lags, 2, object),
        item_features=features,
        item_known=known,
        log_span=(span[0], span[1], int(span[2])),
    )
