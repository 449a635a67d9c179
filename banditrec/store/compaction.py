"""Compaction: the closed decisions of every log shard, with their rewards joined from all
shards, moved into one day-partitioned Parquet dataset (the layout of :mod:`.partitioned`) that
learning and evaluation read.

Each run adds one part file per day it touches (``day=D/part-rNNNNNN.parquet``) and then
replaces the manifest, which holds each shard's watermark (its last compacted ``seq``): parts
are written to temporary files and renamed, and the manifest is written last, so a run killed
midway leaves the dataset as it was and the next run redoes it. Decisions are numbered in the
dataset (``seq``) in time order across shards; ``shard`` and ``shard_seq`` say where each came
from.

Details: docs/deployment.md, "Serving on several machines".
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConflictError, ValidationError
from .checks import check_time
from .codecs import WHOLE_DECISION
from .codecs import number_lists as _number_lists
from .export import NOT_PENDING, Layout, _require_pyarrow, atomic_output, batch_table, parquet_schema, read_batches
from .log import DecisionLog
from .partitioned import (
    DAY_S,
    ITEMS,
    MANIFEST,
    N_SLOTS,
    Dataset,
    Partition,
    PartitionError,
    day_name,
    open_dataset,
)
from .shards import shard_of

UNSHARDED = "unsharded"  # the manifest's key of a log without a shard
SHARD = "shard"  # the shard a decision was logged by (null: unsharded), after the n_slots column
SHARD_SEQ = "shard_seq"  # its seq in that shard's log
LOCK = ".compact.lock"
BATCH_DECISIONS = 20_000


@dataclass(frozen=True)
class CompactionResult:
    """What one run did.

    ``rewards`` counts the rewards joined (``routed`` of them from another node's
    ``routed_rewards``, ``late`` of them flagged late); ``duplicates`` the copies of a reward
    seen more than once (on several nodes), counted once; ``conflicts`` the copies with another
    value (the earliest is kept); ``dropped`` routed rewards whose position is not one of their
    decision's. Routed rewards not joined by this run: ``pending`` (their decision is still
    open, or its shard, known to the dataset, was not given), ``earlier`` (an earlier run
    compacted their decision: joined then, or they arrived after it, late, and are not joined),
    ``orphans`` (their event id is not in its shard's log, or names a shard the dataset has
    never seen: a mistyped id, most likely).
    """

    out: str
    run: int
    decisions: int
    rows: int
    parts: tuple[str, ...]
    watermarks: dict[str, int]
    rewards: int = 0
    routed: int = 0
    late: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dropped: int = 0
    pending: int = 0
    earlier: int = 0
    orphans: int = 0
    orphan_ids: tuple[str, ...] = field(default=(), repr=False)
    unsettled: int = 0  # closed decisions left out: their Monte-Carlo propensities never completed
    pruned: int = 0  # decisions deleted from the shards (``prune``)
    pruned_routed: int = 0  # routed rewards deleted from the shards

    def summary(self) -> str:
        marks = ", ".join(f"{k}: {v}" for k, v in sorted(self.watermarks.items()))
        lines = [
            f"compacted {self.decisions} decisions ({self.rows} slot rows) into {len(self.parts)} part files "
            f"of {self.out} (run {self.run}); watermarks {marks}",
            f"rewards joined: {self.rewards} ({self.routed} routed from another node, {self.late} late); "
            f"duplicates {self.duplicates}, conflicts {self.conflicts}, dropped {self.dropped}",
            f"routed rewards waiting: {self.pending}; of decisions compacted before: {self.earlier}; "
            f"orphans: {self.orphans}",
        ]
        if self.unsettled:
            lines.append(
                f"left out: {self.unsettled} closed decisions whose propensities were never completed "
                "(their serving process stopped before completing them; docs/policies.md, 'Deferred marginals')"
            )
        if self.pruned or self.pruned_routed:
            lines.append(f"pruned from the shards: {self.pruned} decisions, {self.pruned_routed} routed rewards")
        if self.orphan_ids:
            lines.append("orphan event ids: " + ", ".join(self.orphan_ids[:10]) + (" ..." if self.orphans > 10 else ""))
        return "\n".join(lines)


@dataclass
class _Shard:
    log: DecisionLog
    key: str
    conn: Any = None
    watermark: int = 0
    until: int = 0
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # decisions moved, in seq order
    gseq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their dataset seq
    settled: list = field(default_factory=list)  # routed reward keys of compacted decisions


def _key(shard: int | None) -> str:
    return UNSHARDED if shard is None else str(shard)


def _write_part(table, path: Path) -> None:
    """Write one part file (temporary file, then rename)."""
    _, pq = _require_pyarrow()
    with atomic_output(path, None) as tmp:
        pq.write_table(table, tmp)


def compact(
    logs: Sequence[DecisionLog | str | os.PathLike],
    out: str | os.PathLike,
    *,
    reward_window_s: float,
    now: float | None = None,
    grace_s: float = 60.0,
    max_decisions: int | None = None,
    prune: bool = False,
) -> CompactionResult:
    """Move the closed decisions of ``logs`` (shard files or open logs) into the dataset at ``out``.

    A decision is closed when ``ts + reward_window_s + grace_s <= now`` (``grace_s`` covers
    clock differences between nodes and rewards still in flight); each shard moves its decisions
    up to the first one still open, at most ``max_decisions`` per shard per run. Every reward
    for them -- in the owner's ``rewards`` or any node's ``routed_rewards`` -- is joined once
    by ``(event_id, position, kind)``: the earliest copy wins, and it is late if the log flagged
    it or ``ts > decision ts + reward_window_s``. A closed decision whose Monte-Carlo
    propensities are still pending (its serving process stopped before completing them, and its
    recipe is not self-contained) is left out, as every reader of the log leaves it out.

    Idempotent: a second run with nothing newly closed writes nothing. A run that fails or is
    killed leaves the dataset as it was (its stray files are removed by the next run, which
    redoes its work). The window is part of the dataset: a run with another one is refused.

    ``prune``: once the manifest is written, delete from the shards what the dataset now holds
    (:meth:`DecisionLog.prune`): the routed rewards of compacted decisions on every node, then
    each shard's decisions up to its watermark. A run killed before or during the prune leaves
    rows that the next pruning run deletes. A routed reward that reaches a node after its
    decision was pruned (late in any case) is reported as an orphan.

    Raises :class:`ValidationError` for a missing log file or two inputs with one shard,
    :class:`ConflictError` for a shard file that is not the one compacted before under that
    shard, another window, or a compaction already running on ``out``, and
    :class:`~banditrec.store.partitioned.PartitionError` for an ``out`` that an export wrote.
    """
    window = check_time(reward_window_s, "reward_window_s")
    grace = check_time(grace_s, "grace_s")
    if window < 0 or grace < 0:
        raise ValidationError(
            f"reward_window_s and grace_s must be >= 0, got {window!r} and {grace!r}", "reward_window_s"
        )
    if max_decisions is not None and (isinstance(max_decisions, bool) or int(max_decisions) < 1):
        raise ValidationError(f"max_decisions must be >= 1, got {max_decisions!r}", "max_decisions")
    now = time.time() if now is None else check_time(now, "now")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PartitionError(f"{out} exists and is not a directory", "out")
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        shards = []
        for item in logs:
            if isinstance(item, DecisionLog):
                log = item
            else:
                if not Path(item).is_file():
                    raise ValidationError(f"log shard {item} does not exist", "shard")
                log = DecisionLog(Path(item))
                stack.callback(log.close)
            shards.append(_Shard(log, _key(log.shard)))
        if not shards:
            raise ValidationError("give at least one log shard", "shard")
        _check_inputs(shards)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        stack.callback(os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(f"another compaction is running on {out}", "out") from None
        with contextlib.ExitStack() as snapshots:
            for s in shards:
                s.conn = snapshots.enter_context(s.log.snapshot())
            result = _compact(shards, out, window, now - grace - window, max_decisions)
        if not prune:
            return result
        # every node's routed rewards first: while a decision is still in its shard, a routed
        # reward of it left by a killed prune is recognised as compacted, not as an orphan
        pruned = [s.log.prune(None, s.settled) for s in shards] + [s.log.prune(s.until) for s in shards]
        return dataclasses.replace(result, pruned=sum(n for n, _ in pruned), pruned_routed=sum(r for _, r in pruned))
    raise AssertionError("unreachable")  # pragma: no cover - for mypy: ExitStack may swallow


def _check_inputs(shards: list[_Shard]) -> None:
    seen: dict[str, str] = {}
    ids: dict[str, str] = {}
    for s in shards:
        if s.key in seen:
            raise ValidationError(f"logs {seen[s.key]} and {s.log.path} are both shard {s.key}", "shard")
        if s.log.log_id in ids:
            raise ValidationError(f"logs {ids[s.log.log_id]} and {s.log.path} are the same file", "shard")
        seen[s.key], ids[s.log.log_id] = s.log.path, s.log.path


def _state(out: Path, shards: list[_Shard], window: float) -> tuple[Dataset, dict]:
    if (out / MANIFEST).exists():
        ds = open_dataset(out)
        if ds.compaction is None:
            raise PartitionError(
                f"{out} was written by `banditrec export`, not by compaction; compact into another directory", "out"
            )
        state = json.loads(json.dumps(ds.compaction))  # a copy the run may change
    else:
        ds = Dataset(out, [])
        state = {"reward_window_s": window, "runs": 0, "next_seq": 1, "shards": {}}
    if float(state["reward_window_s"]) != window:
        raise ConflictError(
            f"{out} is compacted with a reward window of {state['reward_window_s']} s, not {window} s "
            "(the window decides which rewards are late; keep it for the life of the dataset)",
            "reward_window_s",
        )
    for s in shards:
        known = state["shards"].get(s.key)
        if known is not None and known["log_id"] != s.log.log_id:
            raise ConflictError(
                f"shard {s.key} of {out} was compacted from another log file (log id {known['log_id']}, up to seq "
                f"{known['watermark']}); {s.log.path} has log id {s.log.log_id}",
                "shard",
            )
        s.watermark = int(known["watermark"]) if known is not None else 0
    return ds, state


def _remove_strays(out: Path, ds: Dataset) -> None:
    """Part files no manifest lists and temporary files: what a killed run left."""
    listed = {Path(p.path).resolve() for p in ds.partitions}
    for path in [*out.glob("day=*/part-r*.parquet"), *out.glob("day=*/.part-r*.part"), *out.glob(".*.part")]:
        if path.resolve() not in listed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _compact(shards: list[_Shard], out: Path, window: float, cutoff: float, max_decisions: int | None):
    pa, _ = _require_pyarrow()
    ds, state = _state(out, shards, window)
    old_state = json.loads(json.dumps(state))
    _remove_strays(out, ds)
    run = int(state["runs"]) + 1
    # the decisions to move: per shard, up to the first one still open
    decisions: dict[str, tuple[int, int, float, int]] = {}  # event id -> (shard index, seq, ts, n_slots)
    order = []
    unsettled = 0
    for i, s in enumerate(shards):
        conn = s.conn
        open_seq = conn.execute(
            "SELECT min(seq) FROM decisions WHERE ts > ? AND seq > ?", (cutoff, s.watermark)
        ).fetchone()[0]
        until = conn.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0]
        if open_seq is not None:
            until = int(open_seq) - 1
        if max_decisions is not None:
            end = conn.execute(
                "SELECT seq FROM decisions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?",
                (s.watermark, until, int(max_decisions) - 1),
            ).fetchone()
            until = until if end is None else int(end[0])
        s.until = max(s.watermark, int(until))
        rows = conn.execute(
            f"SELECT seq, ts, event_id, n_slots FROM decisions d WHERE seq > ? AND seq <= ? AND {NOT_PENDING} "
            "ORDER BY seq",
            (s.watermark, s.until),
        ).fetchall()
        unsettled += conn.execute(
            "SELECT count(*) FROM decisions d JOIN pending p ON p.event_id = d.event_id WHERE d.seq > ? AND d.seq <= ?",
            (s.watermark, s.until),
        ).fetchone()[0]
        rank = -1 if s.log.shard is None else s.log.shard
        for seq, ts, event_id, n_slots in rows:
            if event_id in decisions:
                raise ConflictError(f"event id {event_id!r} is logged by two shards", "event_id")
            decisions[event_id] = (i, int(seq), float(ts), int(n_slots))
            order.append((float(ts), rank, int(seq), i))
        s.seq = np.array([r[0] for r in rows], dtype=np.int64)
    order.sort()
    next_seq = int(state["next_seq"])
    gseq_of = {(i, seq): next_seq + k for k, (_, _, seq, i) in enumerate(order)}
    for i, s in enumerate(shards):
        s.gseq = np.array([gseq_of[(i, q)] for q in s.seq.tolist()], dtype=np.int64)

    joined, counts = _join(shards, decisions, window, known=set(state["shards"]))
    parts: list[Partition] = []
    n_rows = 0
    if decisions:
        table = _rows(shards, decisions, joined)
        n_rows = table.num_rows
        parts = _write_days(table, out, run)
        _write_items(shards, out)
        state["runs"] = run
        state["next_seq"] = next_seq + len(decisions)
    for s in shards:
        state["shards"][s.key] = {"log_id": s.log.log_id, "watermark": s.until}
    if parts or state != old_state or not (out / MANIFEST).exists():
        every = sorted([*ds.partitions, *parts], key=lambda p: (p.day, str(p.path)))
        n_items = _n_items(out)
        result = Dataset(out, every, (n_items, 0), compaction=state)
        with atomic_output(out / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(result.manifest(), fh, indent=1)
    return CompactionResult(
        out=str(out),
        run=run if parts else int(old_state["runs"]),
        decisions=len(decisions),
        rows=n_rows,
        parts=tuple(str(p.path.relative_to(out)) for p in parts),
        watermarks={s.key: s.until for s in shards},
        unsettled=unsettled,
        **counts,
    )


def _join(shards: list[_Shard], decisions: dict, window: float, known: set[str]) -> tuple[dict, dict]:
    """The rewards of the moved decisions, one per (event_id, position, kind): ``{key: (value,
    ts, late)}``; and the counts of :class:`CompactionResult`."""
    best: dict[tuple[str, int, str], tuple[float, int, float, bool]] = {}
    counts = dict(rewards=0, routed=0, late=0, duplicates=0, conflicts=0, dropped=0, pending=0, earlier=0, orphans=0)
    orphan_ids: list[str] = []
    by_key = {s.key: s for s in shards}

    def offer(event_id: str, position: int, kind: str, value: float, ts: float, late: bool, rank: int) -> None:
        _, _, decision_ts, n_slots = decisions[event_id]
        if not WHOLE_DECISION <= position < n_slots:
            counts["dropped"] += 1
            return
        key = (event_id, position, kind)
        late = bool(late) or ts > decision_ts + window
        prev = best.get(key)
        if prev is not None:
            counts["duplicates" if prev[2] == value else "conflicts"] += 1
            if (prev[0], prev[1]) <= (ts, rank):
                return
        best[key] = (ts, rank, value, late)

    for s in shards:
        for event_id, position, kind, value, ts, late in s.conn.execute(
            "SELECT r.event_id, r.position, r.kind, r.reward, r.ts, r.late FROM rewards r "
            f"JOIN decisions d ON d.event_id = r.event_id WHERE d.seq > ? AND d.seq <= ? AND {NOT_PENDING}",
            (s.watermark, s.until),
        ):
            offer(event_id, int(position), kind, float(value), float(ts), bool(late), 0)
    for rank, s in enumerate(shards, start=1):
        waiting: dict[str, list[tuple[str, int, str]]] = {}  # owner shard key -> routed keys to look up
        for event_id, position, kind, value, ts in s.conn.execute(
            "SELECT event_id, position, kind, reward, ts FROM routed_rewards"
        ):
            if event_id in decisions:
                offer(event_id, int(position), kind, float(value), float(ts), False, rank)
                s.settled.append((event_id, position, kind))
            else:
                waiting.setdefault(str(shard_of(event_id)), []).append((event_id, position, kind))
        for owner_key, keys in waiting.items():
            owner = by_key.get(owner_key)
            if owner is None and owner_key in known:  # its shard was not given: it waits for one that has it
                counts["pending"] += len(keys)
                continue
            if owner is None:  # a shard no run has seen: a mistyped id, most likely
                counts["orphans"] += len(keys)
                orphan_ids.extend(k[0] for k in keys)
                continue
            seqs = _seqs_of(owner.conn, sorted({k[0] for k in keys}))
            for key in keys:
                seq = seqs.get(key[0])
                if seq is None:
                    counts["orphans"] += 1
                    orphan_ids.append(key[0])
                elif seq <= owner.watermark:
                    counts["earlier"] += 1
                    s.settled.append(key)
                else:
                    counts["pending"] += 1
    for _, rank, _, late in best.values():
        counts["rewards"] += 1
        counts["routed"] += rank > 0
        counts["late"] += late
    joined = {key: (value, ts, late) for key, (ts, _, value, late) in best.items()}
    return joined, {**counts, "orphan_ids": tuple(orphan_ids)}


def _seqs_of(conn, event_ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in range(0, len(event_ids), 500):
        chunk = event_ids[a : a + 500]
        marks = ",".join("?" * len(chunk))
        out.update(
            (e, int(q))
            for e, q in conn.execute(f"SELECT event_id, seq FROM decisions WHERE event_id IN ({marks})", chunk)
        )
    return out


def _final_layout(width: int, joined: dict) -> tuple[Layout, Layout]:
    kinds = tuple(sorted({kind for _, _, kind in joined}))
    return Layout(width, (), False, True), Layout(width, kinds, True, True)


def _rows(shards: list[_Shard], decisions: dict, joined: dict):
    """Every slot row of the moved decisions, with the dataset's columns, in dataset seq order."""
    pa, _ = _require_pyarrow()
    width = 0
    for s in shards:
        if len(s.seq):
            width = max(
                width,
                s.conn.execute(
                    "SELECT coalesce(max(json_array_length(context)), 0) FROM decisions WHERE seq > ? AND seq <= ?",
                    (s.watermark, s.until),
                ).fetchone()[0],
            )
    read_layout, layout = _final_layout(int(width), joined)
    base = parquet_schema(read_layout)
    tables = []
    for s in shards:
        if not len(s.seq):
            continue
        for batch in read_batches(s.conn, read_layout, BATCH_DECISIONS, after_seq=s.watermark, until_seq=s.until):
            if not batch.rows:
                continue
            t = batch_table(base, batch.rows)
            local = t.column("seq").to_numpy()
            t = t.set_column(
                t.schema.get_field_index("seq"), base.field("seq"), pa.array(s.gseq[np.searchsorted(s.seq, local)])
            )
            t = t.append_column(pa.field(SHARD, pa.int64()), pa.array([s.log.shard] * t.num_rows, pa.int64()))
            t = t.append_column(pa.field(SHARD_SEQ, pa.int64(), nullable=False), pa.array(local, pa.int64()))
            tables.append(t)
    table = pa.concat_tables(tables)
    event_ids = table.column("event_id").to_pylist()
    positions = table.column("position").to_pylist()
    columns = [table.column(name) for name in read_layout.columns]
    for kind in layout.kinds:
        slot = [joined.get((e, p, kind)) for e, p in zip(event_ids, positions)]
        whole = [joined.get((e, WHOLE_DECISION, kind)) for e in event_ids]
        whole = [None if w is None or w[2] else w for w in whole]  # a late whole-decision reward is left out
        columns += [
            pa.array([None if r is None else r[0] for r in slot], pa.float64()),
            pa.array([None if r is None else r[1] for r in slot], pa.float64()),
            pa.array([None if r is None else r[2] for r in slot], pa.bool_()),
            pa.array([None if r is None else r[0] for r in whole], pa.float64()),
            pa.array([None if r is None else r[1] for r in whole], pa.float64()),
        ]
    columns.append(pa.array([decisions[e][3] for e in event_ids], pa.int64()))
    columns += [table.column(SHARD), table.column(SHARD_SEQ)]
    schema = _schema(layout, {})
    out = pa.Table.from_arrays(columns, schema=schema)
    return out.sort_by([("seq", "ascending"), ("position", "ascending")])


def _schema(layout: Layout, metadata: dict[str, str]):
    pa, _ = _require_pyarrow()
    schema = parquet_schema(layout, metadata)
    return (
        schema.append(pa.field(N_SLOTS, pa.int64(), nullable=False))
        .append(pa.field(SHARD, pa.int64()))
        .append(pa.field(SHARD_SEQ, pa.int64(), nullable=False))
    )


def _write_days(table, out: Path, run: int) -> list[Partition]:
    """One part file per day of ``table``; their manifest entries."""
    pa, _ = _require_pyarrow()
    import pyarrow.compute as pc

    day = np.floor(table.column("ts").to_numpy() / DAY_S).astype(np.int64)
    parts = []
    for d in np.unique(day).tolist():
        name = day_name(d)
        part = table.filter(pa.array(day == d))
        meta = dict(part.schema.metadata or {})
        meta[b"banditrec.day"] = name.encode()
        meta[b"banditrec.compaction_run"] = str(run).encode()
        part = part.replace_schema_metadata(meta)
        path = out / f"day={name}" / f"part-r{run:06d}.parquet"
        _write_part(part, path)
        seq = part.column("seq").to_numpy()
        flat, _ = _number_lists(part.column("candidate_index").to_pylist(), np.int64)
        n_rewards = sum(
            part.num_rows - part.column(c).null_count
            for c in part.column_names
            if c.startswith(("reward:", "decision_reward:"))
        )
        parts.append(
            Partition(
                day=name,
                path=path,
                decisions=int(len(np.unique(seq))),
                rows=part.num_rows,
                min_seq=int(seq.min()),
                max_seq=int(seq.max()),
                rewards=int(n_rewards),
                max_reward_rowid=0,
                max_position=int(pc.max(part.column("position")).as_py()),
                max_item=max(int(pc.max(part.column("item_index")).as_py()), int(flat.max()) if len(flat) else -1),
            )
        )
    return parts


def _write_items(shards: list[_Shard], out: Path) -> None:
    """The item table: the longest of the shards' catalogs, which must agree where they overlap."""
    pa, pq = _require_pyarrow()
    ids: list[str] = []
    features = np.zeros((0, 0))
    source = ""
    for s in shards:
        s_ids, s_features, _ = s.log.items()
        if not len(s_ids):
            continue
        n = min(len(ids), len(s_ids))
        if ids and (ids[:n] != s_ids[:n] or not np.array_equal(features[:n], s_features[:n])):
            raise ConflictError(f"the item catalogs of {source} and {s.log.path} differ", "items")
        if len(s_ids) > len(ids):
            ids, features, source = list(s_ids), np.asarray(s_features, dtype=float), s.log.path
    features = features.reshape(len(ids), -1) if len(ids) else np.zeros((0, 0))
    cols = {"item_id": pa.array(ids, pa.string()), "item_index": pa.array(np.arange(len(ids)), pa.int64())}
    cols.update({f"feature_{j}": pa.array(features[:, j]) for j in range(features.shape[1])})
    with atomic_output(out / ITEMS, None) as tmp:
        pq.write_table(pa.table(cols), tmp)


def _n_items(out: Path) -> int:
    _, pq = _require_pyarrow()
    path = out / ITEMS
    return int(pq.ParquetFile(path).metadata.num_rows) if path.exists() else 0


__all__ = ["SHARD", "SHARD_SEQ", "UNSHARDED", "CompactionResult", "compact"]
