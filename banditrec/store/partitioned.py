"""The decision log as Parquet partitioned by day (``DIR/day=YYYY-MM-DD/part-0.parquet``), for
engines that read a directory of files (Dask here; Spark reads the same layout).

Re-exports rewrite only the days that changed; readers check every file against the manifest
and give the same records as :meth:`DecisionLog.decisions`.

Details: docs/data-formats.md, "The day-partitioned export (`store/partitioned.py`)".
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BanditRecError
from ..types import LoggedDecisions
from .codecs import number_lists as _number_lists
from .export import (
    ARM_DEFAULTS,
    SCHEMA_VERSION,
    _require_pyarrow,
    atomic_output,
    batch_table,
    parquet_schema,
    read_batches,
    read_layout,
)
from .log import DecisionLog

FORMAT = "banditrec.partitioned/1"
MANIFEST = "_banditrec.json"
N_SLOTS = "n_slots"  # the decision's carousel length, on each of its rows (after the export's columns)
ITEMS = "_items.parquet"
DAY_S = 86_400.0

# the UTC day of a decision; SQLite's CAST truncates towards 0, so negative times step down one
_DAY_SQL = "(CAST(d.ts / 86400.0 AS INTEGER) - (d.ts < 0 AND d.ts != CAST(d.ts / 86400.0 AS INTEGER) * 86400.0))"
_DAY_STATS = f"SELECT {_DAY_SQL} AS day, count(*), min(d.seq), max(d.seq) FROM decisions d GROUP BY day ORDER BY day"
_DAY_REWARDS = (
    f"SELECT {_DAY_SQL} AS day, count(r.rowid), coalesce(max(r.rowid), 0) FROM rewards r "
    "JOIN decisions d ON d.event_id = r.event_id GROUP BY day"
)
_ITEMS_STATS = "SELECT count(*), coalesce(max(rowid), 0) FROM items"
_DAY_N_SLOTS = "SELECT seq, n_slots FROM decisions WHERE seq >= ? AND seq <= ?"


class PartitionError(BanditRecError, ValueError):
    """A partitioned log is missing a file, or a file is not what the manifest says."""


@dataclass(frozen=True)
class Partition:
    """One day's file and what the manifest records about it."""

    day: str
    path: Path
    decisions: int
    rows: int
    min_seq: int
    max_seq: int
    rewards: int
    max_reward_rowid: int
    max_position: int
    max_item: int

    def fingerprint(self) -> tuple:
        return (self.decisions, self.min_seq, self.max_seq, self.rewards, self.max_reward_rowid)


@dataclass
class Dataset:
    """A partitioned log: its directory, partitions (by day) and item table."""

    root: Path
    partitions: list[Partition]
    items_fingerprint: tuple = (0, 0)
    written: list[str] = field(default_factory=list)  # days (re)written by the last export
    kept: list[str] = field(default_factory=list)  # days left as they were
    compaction: dict | None = None  # a compacted dataset's watermarks (store/compaction.py); None: an export

    @property
    def n_decisions(self) -> int:
        return sum(p.decisions for p in self.partitions)

    @property
    def n_rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def n_slots(self) -> int:
        """An upper bound of the policy slot (carousel positions) over every partition."""
        return 1 + max((p.max_position for p in self.partitions), default=0)

    @property
    def max_item(self) -> int:
        return max((p.max_item for p in self.partitions), default=-1)

    def manifest(self) -> dict:
        extra = {} if self.compaction is None else {"compaction": self.compaction}
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "items": ITEMS,
            "items_fingerprint": list(self.items_fingerprint),
            "partitions": [
                {
                    "day": p.day,
                    "path": str(p.path.relative_to(self.root)),
                    "decisions": p.decisions,
                    "rows": p.rows,
                    "min_seq": p.min_seq,
                    "max_seq": p.max_seq,
                    "rewards": p.rewards,
                    "max_reward_rowid": p.max_reward_rowid,
                    "max_position": p.max_position,
                    "max_item": p.max_item,
                }
                for p in self.partitions
            ],
            **extra,
        }


def day_name(day: int) -> str:
    """``YYYY-MM-DD`` of a day number (days since 1970-01-01, UTC)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


def open_dataset(root: str | Path) -> Dataset:
    """The partitioned log at ``root``, from its manifest (:class:`PartitionError` if it is not one)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise PartitionError(f"no partitioned log at {root}: not a directory", "parquet")
    if not path.exists():
        raise PartitionError(
            f"{root} is not a partitioned banditrec log: {path} is missing "
            "(write one with `banditrec export --format parquet --partition-by day`)",
            "parquet",
        )
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise PartitionError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}", "parquet")
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise PartitionError(
                f"{path}: schema version {meta.get('schema_version')!r}, this banditrec reads {SCHEMA_VERSION}",
                "parquet",
            )
        parts = [
            Partition(
                day=e["day"],
                path=root / e["path"],
                decisions=int(e["decisions"]),
                rows=int(e["rows"]),
                min_seq=int(e["min_seq"]),
                max_seq=int(e["max_seq"]),
                rewards=int(e["rewards"]),
                max_reward_rowid=int(e["max_reward_rowid"]),
                max_position=int(e["max_position"]),
                max_item=int(e["max_item"]),
            )
            for e in meta["partitions"]
        ]
    except PartitionError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise PartitionError(f"{path} is not a readable manifest: {type(exc).__name__}: {exc}", "parquet") from None
    compaction = meta.get("compaction")
    if compaction is not None and not isinstance(compaction, dict):
        raise PartitionError(f"{path}: compaction must be an object, got {type(compaction).__name__}", "parquet")
    return Dataset(root, parts, tuple(meta.get("items_fingerprint", (0, 0))), compaction=compaction)


def export_partitioned(log: DecisionLog, out: str | Path, *, batch_decisions: int = 20000) -> Dataset:
    """Write (or bring up to date) the day-partitioned Parquet export of ``log`` at ``out``.

    Days whose fingerprint matches the manifest are left untouched; the others are (re)written.
    Needs the ``parquet`` extra (pyarrow).
    """
    pa, pq = _require_pyarrow()
    import pyarrow.compute as pc

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PartitionError(f"{out} exists and is not a directory", "out")
    old = open_dataset(out) if (out / MANIFEST).exists() else Dataset(out, [])
    if old.compaction is not None:
        raise PartitionError(
            f"{out} is a compacted dataset of log shards (banditrec compact); export to another directory", "out"
        )
    by_day = {p.day: p for p in old.partitions}
    result = Dataset(out, [], old.items_fingerprint)
    with log.snapshot() as conn:
        layout = read_layout(conn, candidates=True)
        rewards = {int(d): (int(n), int(m)) for d, n, m in conn.execute(_DAY_REWARDS)}
        for day, n_dec, lo, hi in conn.execute(_DAY_STATS).fetchall():
            name = day_name(day)
            n_rew, max_rid = rewards.get(int(day), (0, 0))
            fp = (int(n_dec), int(lo), int(hi), n_rew, max_rid)
            prev = by_day.get(name)
            if prev is not None and prev.fingerprint() == fp and _intact(prev):
                result.partitions.append(prev)
                result.kept.append(name)
                continue
            path = out / f"day={name}" / "part-0.parquet"
            base = parquet_schema(layout, {"banditrec.day": name})
            schema = base.append(pa.field(N_SLOTS, pa.int64(), nullable=False))
            n_slots_of = dict(conn.execute(_DAY_N_SLOTS, (int(lo), int(hi))).fetchall())
            n_rows = max_pos = 0
            max_item = -1
            with atomic_output(path, None) as tmp, pq.ParquetWriter(tmp, schema) as writer:
                for batch in read_batches(conn, layout, batch_decisions, after_seq=int(lo) - 1, until_seq=int(hi)):
                    if not batch.rows:
                        continue
                    table = batch_table(base, batch.rows)
                    seqs = table.column("seq").to_pylist()
                    table = table.append_column(
                        schema.field(N_SLOTS), pa.array([n_slots_of[q] for q in seqs], pa.int64())
                    )
                    ts = table.column("ts").to_numpy()
                    mine = np.floor(ts / DAY_S).astype(np.int64) == int(day)
                    if not mine.all():  # decisions of other days logged in between (clock skew)
                        table = table.filter(pa.array(mine))
                    if table.num_rows == 0:
                        continue
                    writer.write_table(table)
                    n_rows += table.num_rows
                    max_pos = max(max_pos, int(pc.max(table.column("position")).as_py()))
                    flat, _ = _number_lists(table.column("candidate_index").to_pylist(), np.int64)
                    max_item = max(
                        max_item, int(pc.max(table.column("item_index")).as_py()), int(flat.max()) if len(flat) else -1
                    )
            result.partitions.append(
                Partition(
                    day=name,
                    path=path,
                    decisions=int(n_dec),
                    rows=n_rows,
                    min_seq=int(lo),
                    max_seq=int(hi),
                    rewards=n_rew,
                    max_reward_rowid=max_rid,
                    max_position=max_pos,
                    max_item=max_item,
                )
            )
            result.written.append(name)
        items_fp = tuple(int(v) for v in conn.execute(_ITEMS_STATS).fetchone())
    if items_fp != tuple(old.items_fingerprint) or not (out / ITEMS).exists():
        ids, features, _ = log.items()
        # a log without an item table (decisions written directly) has no features to reshape
        features = np.asarray(features, dtype=float).reshape(len(ids), -1) if len(ids) else np.zeros((0, 0))
        cols = {"item_id": pa.array(list(ids), pa.string()), "item_index": pa.array(np.arange(len(ids)), pa.int64())}
        cols.update({f"feature_{j}": pa.array(features[:, j]) for j in range(features.shape[1])})
        with atomic_output(out / ITEMS, None) as tmp:
            pq.write_table(pa.table(cols), tmp)
    result.items_fingerprint = items_fp
    with atomic_output(out / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(result.manifest(), fh, indent=1)
    return result


def _intact(part: Partition) -> bool:
    """Whether the partition's file is there, its footer says the manifest's row count and it
    has the ``n_slots``, ``arm`` and ``served`` columns (a file written before them is rewritten)."""
    _, pq = _require_pyarrow()
    try:
        pf = pq.ParquetFile(part.path)
        names = set(pf.schema_arrow.names)
        return pf.metadata.num_rows == part.rows and {N_SLOTS, *ARM_DEFAULTS} <= names
    except Exception:  # noqa: BLE001 -- missing, truncated, not Parquet: rewrite it
        return False


def read_partition(part: Partition, columns: list[str] | None = None):
    """The partition's table (``columns`` only, when given), checked against the manifest."""
    _, pq = _require_pyarrow()
    import pyarrow as pa

    path = Path(part.path)
    if not path.exists():
        raise PartitionError(
            f"partition file {path} (day {part.day}) is missing: the manifest lists it; re-run the export", "parquet"
        )
    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        version = meta.get(b"banditrec.schema_version")
        if version is None or int(version) != SCHEMA_VERSION:
            raise PartitionError(
                f"partition file {path} has schema version {version!r}, expected {SCHEMA_VERSION}", "parquet"
            )
        if pf.metadata.num_rows != part.rows:
            raise PartitionError(
                f"partition file {path} has {pf.metadata.num_rows} rows, the manifest says "
                f"{part.rows}: it was replaced or truncated",
                "parquet",
            )
        if columns is not None:
            have = set(pf.schema_arrow.names)
            columns = [c for c in columns if c in have]
        return pf.read(columns=columns)
    except PartitionError:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise PartitionError(f"partition file {path} is not a readable Parquet file: {exc}", "parquet") from None


def read_items(root: str | Path) -> np.ndarray:
    """The item features (n_items, d) from ``_items.parquet`` ((0, 0) when the log had none)."""
    _, pq = _require_pyarrow()
    import pyarrow as pa

    path = Path(root) / ITEMS
    if not path.exists():
        raise PartitionError(f"item table {path} is missing; re-run the export", "parquet")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise PartitionError(f"item table {path} is not a readable Parquet file: {exc}", "parquet") from None
    names = [n for n in table.column_names if n.startswith("feature_")]
    if not names:
        return np.zeros((table.num_rows, 0))
    return np.column_stack([table.column(n).to_numpy() for n in names]).astype(float)


def partition_arms(table) -> np.ndarray:
    """(rows,) each row's ``arm`` (object array); ``main`` throughout for a partition written
    before the column."""
    if "arm" not in table.column_names:
        return np.full(table.num_rows, ARM_DEFAULTS["arm"], dtype=object)
    return np.asarray(table.column("arm").to_numpy(zero_copy_only=False), dtype=object)


def partition_decisions(
    table, *, kind: str = "click", default_reward: float = 0.0, first_decision: int = 0, training: bool = False
) -> LoggedDecisions:
    """A partition's table as :class:`LoggedDecisions` (what :meth:`DecisionLog.decisions` gives
    for the same decisions), from decision ``first_decision`` on (in seq order; counted before
    ``training`` leaves any out).

    ``training``: leave out the analysis holdout (``arm == "holdout"``), as
    ``DecisionLog.decisions(training=True)`` does; what learners read.
    """
    seq_all = table.column("seq").to_numpy()
    seq, first_row = np.unique(seq_all, return_index=True)  # rows come in (seq, position) order
    seq, first_row = seq[first_decision:], first_row[first_decision:]
    row0 = int(first_row[0]) if len(first_row) else table.num_rows
    table = table.slice(row0)
    seq_all = seq_all[row0:]
    first_row = first_row - row0
    if training:
        learnable = partition_arms(table) != "holdout"
        if not learnable.all():
            import pyarrow as pa

            table = table.filter(pa.array(learnable))
            seq_all = seq_all[learnable]
            seq, first_row = np.unique(seq_all, return_index=True)
    n = table.num_rows
    width = sum(1 for c in table.column_names if c.startswith("context_"))
    if width:
        ctx = np.column_stack([table.column(f"context_{j}").to_numpy(zero_copy_only=False) for j in range(width)])
        context = np.nan_to_num(ctx[first_row].astype(float), nan=0.0)
    else:
        context = np.zeros((len(seq), 0))
    flat, offsets = _number_lists(table.column("candidate_index").take(first_row).to_pylist(), np.int64)
    bounds = offsets.tolist()
    candidates = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    event_id = table.column("event_id").take(first_row).to_pylist()

    def reward_column(name: str, rows: np.ndarray | None = None) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n if rows is None else len(rows), default_reward)
        col = table.column(name) if rows is None else table.column(name).take(rows)
        return np.array(col.fill_null(default_reward).to_numpy(zero_copy_only=False), dtype=float)

    reward = reward_column(f"reward:{kind}")
    if f"reward_late:{kind}" in table.column_names:
        late = np.asarray(table.column(f"reward_late:{kind}").fill_null(False).to_numpy(zero_copy_only=False), bool)
        reward[late] = default_reward
    decision_reward = reward_column(f"decision_reward:{kind}", first_row)
    pinned_row = np.asarray(table.column("source").to_numpy(zero_copy_only=False)) == "pinned"
    keep = ~pinned_row
    decision_of_row = np.searchsorted(seq, seq_all)
    # as DecisionLog.decisions: pinned slots come first and only in fully logged decisions, so
    # the policy's slot is the position less the decision's pinned slots -- not less its first
    # logged position, which a partly observed decision (seen at position 2 only) does not start at
    pinned = np.bincount(decision_of_row[pinned_row], minlength=len(seq))
    row_decision = decision_of_row[keep]
    row_slot = table.column("position").to_numpy()[keep] - pinned[row_decision]
    if N_SLOTS in table.column_names:
        n_slots = table.column(N_SLOTS).to_numpy()[first_row] - pinned
    else:  # a partition written before the column: every decision must be fully observed
        logged = np.bincount(decision_of_row, minlength=len(seq))
        last = np.zeros(len(seq), dtype=np.int64)
        np.maximum.at(last, decision_of_row, table.column("position").to_numpy())
        if (last + 1 != logged).any():
            raise PartitionError(
                f"a partition of this export holds partly observed decisions but no {N_SLOTS} "
                "column (it was written by an older banditrec); re-run the export",
                "parquet",
            )
        n_slots = logged - pinned
    return LoggedDecisions(
        event_id=event_id,
        seq=seq.astype(np.int64),
        context=context,
        candidates=candidates,
        row_decision=row_decision,
        row_slot=row_slot,
        row_action=table.column("item_index").to_numpy()[keep],
        row_pscore=table.column("marginal").to_numpy()[keep],
        row_reward=reward[keep],
        decision_reward=decision_reward,
        row_propensity=table.column("propensity").to_numpy()[keep],
        n_slots=n_slots.astype(np.int64),
    )
