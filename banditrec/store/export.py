"""Export of the decision log as tables: CSV and Parquet, one row per logged slot (a decision
joined with its slots and rewards); the reader is shared with :mod:`banditrec.store.vw`.

Details: docs/data-formats.md, "Log export (`store/export.py`)".
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BanditRecError
from .codecs import WHOLE_DECISION
from .log import DecisionLog

SCHEMA_VERSION = 1


class MissingDependencyError(BanditRecError, ImportError):
    """An optional dependency (an ``extras_require`` extra) is not installed."""


def _require_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "Parquet needs pyarrow, which is not installed: pip install 'banditrec[parquet]'", "format"
        ) from None
    return pyarrow, pyarrow.parquet


NOT_PENDING = "NOT EXISTS (SELECT 1 FROM pending p WHERE p.event_id = d.event_id)"  # store/pending.py
READ_EXPORT_SLOTS = (
    "SELECT d.seq, d.event_id, d.ts, d.user_id, d.surface, d.policy, d.model_version, d.policy_params, "
    "s.position, s.item_id, s.item_index, s.propensity, s.marginal, s.marginal_draws, s.source, "
    "d.candidates, d.candidate_index, d.context, d.joint_propensity, d.log_joint_propensity, d.arm, d.served "
    "FROM decisions d JOIN slots s ON s.event_id = d.event_id "
    f"WHERE d.seq > ? AND d.seq <= ? AND {NOT_PENDING} ORDER BY d.seq, s.position"
)
READ_EXPORT_REWARDS = (
    "SELECT r.event_id, r.position, r.kind, r.reward, r.ts{late} FROM rewards r "
    f"JOIN decisions d ON d.event_id = r.event_id WHERE d.seq > ? AND d.seq <= ? AND {NOT_PENDING}"
)
# the last seq of the next batch of decisions (seq has gaps where an insert was rolled back)
BATCH_END = "SELECT seq FROM decisions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?"

BASE_COLUMNS = (
    "event_id",
    "seq",
    "ts",
    "user_id",
    "surface",
    "policy",
    "model_version",
    "policy_params",
    "position",
    "item_id",
    "item_index",
    "propensity",
    "marginal",
    "marginal_draws",
    "source",
    "n_candidates",
    "joint_propensity",
    "log_joint_propensity",
    "arm",
    "served",
)
# what a dataset written before the columns holds: every decision was the main arm's, policy-served
ARM_DEFAULTS = {"arm": "main", "served": "policy"}
_INT_COLUMNS = {"seq", "position", "item_index", "marginal_draws", "n_candidates"}
_STR_COLUMNS = {
    "event_id",
    "user_id",
    "surface",
    "policy",
    "model_version",
    "policy_params",
    "item_id",
    "source",
    "candidates",
    "candidate_index",
    "arm",
    "served",
}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``rows`` logged slots of ``decisions`` decisions."""

    path: str
    format: str
    rows: int
    decisions: int
    columns: tuple[str, ...] = ()
    clipped: int = 0  # probabilities raised to ``min_probability`` (VW formats)


@dataclass(frozen=True)
class Layout:
    """The shape of an export, fixed before the first row is read."""

    context_width: int
    kinds: tuple[str, ...]
    has_late: bool
    candidates: bool

    @property
    def columns(self) -> tuple[str, ...]:
        cols = list(BASE_COLUMNS)
        if self.candidates:
            cols += ["candidates", "candidate_index"]
        cols += [f"context_{j}" for j in range(self.context_width)]
        for kind in self.kinds:
            cols += [f"reward:{kind}", f"reward_ts:{kind}"]
            if self.has_late:
                cols.append(f"reward_late:{kind}")
            cols += [f"decision_reward:{kind}", f"decision_reward_ts:{kind}"]
        return tuple(cols)


@dataclass
class Batch:
    """Rows in the layout's column order, plus each row's parsed context and candidate ids."""

    rows: list[tuple[Any, ...]]
    contexts: list[list[float]]
    candidates: list[list[str]]
    n_decisions: int


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def read_layout(conn: sqlite3.Connection, candidates: bool) -> Layout:
    """The export's shape from a :meth:`DecisionLog.snapshot` connection: context width, reward
    kinds, whether rewards carry a late flag; ``candidates`` adds the candidate-list columns."""
    width = conn.execute("SELECT coalesce(max(json_array_length(context)), 0) FROM decisions").fetchone()[0]
    kinds = tuple(r[0] for r in conn.execute("SELECT DISTINCT kind FROM rewards ORDER BY kind"))
    return Layout(int(width), kinds, _has_column(conn, "rewards", "late"), candidates)


def read_batches(
    conn: sqlite3.Connection, layout: Layout, batch_decisions: int, *, after_seq: int = 0, until_seq: int | None = None
) -> Iterator[Batch]:
    """Every logged slot in (seq, position) order, as rows in ``layout``'s columns, about
    ``batch_decisions`` decisions at a time (so memory stays flat on any log size); only the
    decisions with ``after_seq < seq <= until_seq`` when those are given. A layout without
    reward kinds reads no rewards."""
    until = conn.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0]
    if until_seq is not None:
        until = min(until, int(until_seq))
    late = ", r.late" if layout.has_late else ""
    reward_sql = READ_EXPORT_REWARDS.format(late=late)
    n_kinds = len(layout.kinds)
    kind_slot = {k: i for i, k in enumerate(layout.kinds)}
    after = int(after_seq)
    while after < until:
        end = conn.execute(BATCH_END, (after, until, batch_decisions - 1)).fetchone()
        end = until if end is None else end[0]
        raw = conn.execute(READ_EXPORT_SLOTS, (after, end)).fetchall()
        # (event_id, position) -> flat reward cells of every kind
        rewards: dict[tuple[str, int], list[Any]] = {}
        for event_id, position, kind, value, ts, *flag in conn.execute(reward_sql, (after, end)) if n_kinds else ():
            cells = rewards.setdefault((event_id, position), [None] * (n_kinds * 3))
            i = kind_slot[kind] * 3
            cells[i : i + 3] = (float(value), float(ts), None if not flag or flag[0] is None else int(flag[0]))
        rows, contexts, cands = [], [], []
        last_event = candidate_json = index_json = None
        context: list[float] = []  # the decision's, set by its first row
        candidate_ids: list[str] = []
        n_decisions = 0
        for (
            seq,
            event_id,
            ts,
            user_id,
            surface,
            policy,
            model_version,
            params,
            position,
            item_id,
            item_index,
            propensity,
            marginal,
            draws,
            source,
            cand_json,
            cidx_json,
            context_json,
            joint,
            log_joint,
            arm,
            served,
        ) in raw:
            if event_id != last_event:
                last_event, n_decisions = event_id, n_decisions + 1
                context = [float(c) for c in json.loads(context_json)]
                candidate_ids = [str(c) for c in json.loads(cand_json)]
                candidate_json, index_json = cand_json, cidx_json
                whole = rewards.get((event_id, WHOLE_DECISION), [None] * (n_kinds * 3))
            row = [
                event_id,
                seq,
                float(ts),
                user_id,
                surface,
                policy,
                model_version,
                params,
                position,
                item_id,
                item_index,
                float(propensity),
                float(marginal),
                draws,
                source,
                len(candidate_ids),
                float(joint),
                float(log_joint),
                arm,
                served,
            ]
            if layout.candidates:
                row += [candidate_json, index_json]
            row += context + [None] * (layout.context_width - len(context))
            mine = rewards.get((event_id, position), [None] * (n_kinds * 3))
            for k in range(n_kinds):
                row += mine[3 * k : 3 * k + 2]
                if layout.has_late:
                    row.append(mine[3 * k + 2])
                row += whole[3 * k : 3 * k + 2]
            rows.append(tuple(row))
            contexts.append(context)
            cands.append(candidate_ids)
        yield Batch(rows, contexts, cands, n_decisions)
        after = end


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str | None = "w", **kw: Any) -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and move it into place only on success, so a
    failed export never leaves a half-written file where a complete one is expected."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    open(tmp, "x").close()  # exclusive create, with the umask's permissions (mkstemp's are 0600)
    try:
        if mode is None:
            yield tmp
        else:
            with open(tmp, mode, **kw) as fh:
                yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_csv(
    log: DecisionLog, path: str | Path, *, candidates: bool = False, batch_decisions: int = 5000
) -> ExportResult:
    """Export every logged slot as one CSV row (columns: docs/data-formats.md, "Log export").

    Floats are written with ``repr`` (the shortest string that reads back as the same float64);
    a missing reward is an empty cell; late flags are 0/1.
    """
    n_rows = n_dec = 0
    with log.snapshot() as conn, atomic_output(path, "w", newline="", encoding="utf-8") as fh:
        layout = read_layout(conn, candidates)
        writer = csv.writer(fh)
        writer.writerow(layout.columns)
        for batch in read_batches(conn, layout, batch_decisions):
            writer.writerows([_csv_cell(v) for v in row] for row in batch.rows)
            n_rows += len(batch.rows)
            n_dec += batch.n_decisions
    return ExportResult(str(path), "csv", n_rows, n_dec, layout.columns)


INTERACTION_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "value", "session_id")
_INTERACTIONS = (
    # interaction events as posted, then every positive reward of a shown item (its kind is the
    # event type); a decision without a user id is its own session and "user"
    "SELECT user_id, item_id, kind, ts, NULL, event_id FROM events WHERE kind IN ('view', 'cart', 'purchase') "
    "UNION ALL "
    "SELECT CASE WHEN d.user_id = '' THEN d.event_id ELSE d.user_id END, s.item_id, r.kind, r.ts, r.reward, "
    "d.event_id FROM rewards r JOIN slots s ON s.event_id = r.event_id AND s.position = r.position "
    "JOIN decisions d ON d.event_id = r.event_id WHERE r.reward > 0 AND r.late = 0 "
    "ORDER BY 4"
)


def export_interactions(log: DecisionLog, path: str | Path) -> ExportResult:
    """The log's interaction events and positive slot rewards as an interactions file for
    ``banditrec build`` (``docs/data-formats.md``): a shop that serves banditrec, or a log imported
    from elsewhere (the Open Bandit Dataset), gives its clicks and purchases to the next build."""
    n = 0
    with log.snapshot() as conn, atomic_output(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(INTERACTION_COLUMNS)
        for row in conn.execute(_INTERACTIONS):
            writer.writerow([_csv_cell(v) for v in row])
            n += 1
    return ExportResult(str(path), "interactions", n, 0, INTERACTION_COLUMNS)


def _csv_cell(v: object) -> object:
    if isinstance(v, float):
        return repr(v)
    return v  # str, int or None (csv writes None as an empty cell)


def export_parquet(
    log: DecisionLog, path: str | Path, *, candidates: bool = False, batch_decisions: int = 20000
) -> ExportResult:
    """Export every logged slot as one Parquet row, one row group per batch of decisions.

    Types: strings, int64, float64 (nullable for context cells and rewards), bool for late
    flags. Key-value metadata: ``banditrec.schema_version``, ``banditrec.kinds`` (JSON list)
    and ``banditrec.context_width``. Needs the ``parquet`` extra (pyarrow).
    """
    pa, pq = _require_pyarrow()
    n_rows = n_dec = 0
    with log.snapshot() as conn, atomic_output(path, None) as tmp:
        layout = read_layout(conn, candidates)
        schema = parquet_schema(layout)
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in read_batches(conn, layout, batch_decisions):
                if not batch.rows:
                    continue
                writer.write_table(batch_table(schema, batch.rows))
                n_rows += len(batch.rows)
                n_dec += batch.n_decisions
    return ExportResult(str(path), "parquet", n_rows, n_dec, layout.columns)


def parquet_schema(layout: Layout, extra_metadata: dict[str, str] | None = None) -> Any:
    """The Parquet schema of an export in ``layout`` (types and metadata as :func:`export_parquet`)."""
    pa, _ = _require_pyarrow()
    fields = []
    for name in layout.columns:
        if name in _STR_COLUMNS:
            typ = pa.string()
        elif name in _INT_COLUMNS:
            typ = pa.int64()
        elif name.startswith("reward_late:"):
            typ = pa.bool_()
        else:
            typ = pa.float64()
        fields.append(pa.field(name, typ, nullable=name.startswith(("context_", "reward", "decision_reward"))))
    meta = {
        "banditrec.schema_version": str(SCHEMA_VERSION),
        "banditrec.kinds": json.dumps(list(layout.kinds)),
        "banditrec.context_width": str(layout.context_width),
        **(extra_metadata or {}),
    }
    return pa.schema(fields, metadata=meta)


def batch_table(schema: Any, rows: list[tuple[Any, ...]]) -> Any:
    """``rows`` (tuples in the schema's column order, as :func:`read_batches` yields) as a table."""
    pa, _ = _require_pyarrow()
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    arrays = [
        pa.array([None if v is None else bool(v) for v in col], f.type)
        if f.type == pa.bool_()
        else pa.array(col, f.type)
        for col, f in zip(columns, schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
