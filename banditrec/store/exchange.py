"""Moving decision logs in and out: CSV, Parquet, Vowpal Wabbit (text and DSJSON), and CSV input
such as the Open Bandit Dataset's.

Export reads the log and writes one row (or one VW example) per **logged slot**: decisions joined
with their slots and the rewards recorded for them. Import reads a CSV, groups its rows into
decisions and writes each batch of them with its rewards through :meth:`DecisionLog.write_decisions`
only (one transaction per batch, all or nothing), so every schema check of the log applies to
imported data too.

Exported columns (CSV and Parquet, in this order)
-------------------------------------------------
``event_id, seq, ts, user_id, surface, policy, model_version, policy_params, position, item_id,
item_index, propensity, marginal, marginal_draws, source, n_candidates, joint_propensity,
log_joint_propensity`` then, with ``candidates=True``, ``candidates, candidate_index`` (JSON
lists), then ``context_0 .. context_{d-1}``, then per reward kind present in the log
``reward:<kind>, reward_ts:<kind>`` (the reward of this slot), ``reward_late:<kind>`` (only when
the log's rewards table has a ``late`` column) and ``decision_reward:<kind>,
decision_reward_ts:<kind>`` (a reward posted for the decision as a whole, repeated on each of its
slots). ``propensity`` is the conditional P(item | context, earlier slots), ``marginal`` the
P(slot holds item | context) that estimators divide by. A reward that was never recorded is an
empty cell (CSV) or null (Parquet), never a made-up 0. Floats are written with ``repr``, which
round-trips every float64 exactly. The Parquet file carries ``banditrec.schema_version`` (this
module's :data:`SCHEMA_VERSION`) in its key-value metadata.

The CSV export reads back with :func:`import_csv` and no mapping: every number comes back
bit-for-bit (``seq`` is re-assigned by the target log, and late flags are not imported because
the log has no public write path for them).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import math
import operator
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import BanditRecError, ConflictError, ValidationError
from ..types import Decision, Reward, Slot
from .log import MAX_ABS_REWARD, WHOLE_DECISION, DecisionLog, DecisionRecord

SCHEMA_VERSION = 1
EXPORT_FORMATS = ("csv", "parquet", "vw", "dsjson")
IMPORT_FORMATS = ("obd", "csv")
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: VW reads probabilities as float32
F32_MAX = float(np.finfo(np.float32).max)


class MissingDependencyError(BanditRecError, ImportError):
    """An optional dependency (an ``extras_require`` extra) is not installed."""


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "Parquet needs pyarrow, which is not installed: pip install 'banditrec[parquet]'", "format"
        ) from None
    return pyarrow, pyarrow.parquet


# ================================================================================================
# export
# ================================================================================================

READ_EXPORT_SLOTS = (
    "SELECT d.seq, d.event_id, d.ts, d.user_id, d.surface, d.policy, d.model_version, d.policy_params, "
    "s.position, s.item_id, s.item_index, s.propensity, s.marginal, s.marginal_draws, s.source, "
    "d.candidates, d.candidate_index, d.context, d.joint_propensity, d.log_joint_propensity "
    "FROM decisions d JOIN slots s ON s.event_id = d.event_id "
    "WHERE d.seq > ? AND d.seq <= ? ORDER BY d.seq, s.position"
)
READ_EXPORT_REWARDS = (
    "SELECT r.event_id, r.position, r.kind, r.reward, r.ts{late} FROM rewards r "
    "JOIN decisions d ON d.event_id = r.event_id WHERE d.seq > ? AND d.seq <= ?"
)
# the last seq of the next batch of decisions (seq has gaps where an insert was rolled back)
BATCH_END = "SELECT seq FROM decisions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?"

BASE_COLUMNS = ("event_id", "seq", "ts", "user_id", "surface", "policy", "model_version", "policy_params",
                "position", "item_id", "item_index", "propensity", "marginal", "marginal_draws", "source",
                "n_candidates", "joint_propensity", "log_joint_propensity")
_INT_COLUMNS = {"seq", "position", "item_index", "marginal_draws", "n_candidates"}
_STR_COLUMNS = {"event_id", "user_id", "surface", "policy", "model_version", "policy_params", "item_id", "source",
                "candidates", "candidate_index"}


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
class _Layout:
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
class _Batch:
    """Rows in the layout's column order, plus each row's parsed context and candidate ids."""

    rows: list[tuple]
    contexts: list[list[float]]
    candidates: list[list[str]]
    n_decisions: int


def _has_column(conn, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def _layout(conn, candidates: bool) -> _Layout:
    width = conn.execute("SELECT coalesce(max(json_array_length(context)), 0) FROM decisions").fetchone()[0]
    kinds = tuple(r[0] for r in conn.execute("SELECT DISTINCT kind FROM rewards ORDER BY kind"))
    return _Layout(int(width), kinds, _has_column(conn, "rewards", "late"), candidates)


def _read_batches(conn, layout: _Layout, batch_decisions: int) -> Iterator[_Batch]:
    until = conn.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0]
    late = ", r.late" if layout.has_late else ""
    reward_sql = READ_EXPORT_REWARDS.format(late=late)
    n_kinds = len(layout.kinds)
    kind_slot = {k: i for i, k in enumerate(layout.kinds)}
    after = 0
    while after < until:
        end = conn.execute(BATCH_END, (after, until, batch_decisions - 1)).fetchone()
        end = until if end is None else end[0]
        raw = conn.execute(READ_EXPORT_SLOTS, (after, end)).fetchall()
        # (event_id, position) -> flat reward cells of every kind
        rewards: dict[tuple[str, int], list] = {}
        for event_id, position, kind, value, ts, *flag in conn.execute(reward_sql, (after, end)):
            cells = rewards.setdefault((event_id, position), [None] * (n_kinds * 3))
            i = kind_slot[kind] * 3
            cells[i:i + 3] = (float(value), float(ts), None if not flag or flag[0] is None else int(flag[0]))
        rows, contexts, cands = [], [], []
        last_event, context, candidate_ids, candidate_json, index_json = None, None, None, None, None
        n_decisions = 0
        for (seq, event_id, ts, user_id, surface, policy, model_version, params, position, item_id, item_index,
             propensity, marginal, draws, source, cand_json, cidx_json, context_json, joint, log_joint) in raw:
            if event_id != last_event:
                last_event, n_decisions = event_id, n_decisions + 1
                context = [float(c) for c in json.loads(context_json)]
                candidate_ids = [str(c) for c in json.loads(cand_json)]
                candidate_json, index_json = cand_json, cidx_json
                whole = rewards.get((event_id, WHOLE_DECISION), [None] * (n_kinds * 3))
            row = [event_id, seq, float(ts), user_id, surface, policy, model_version, params, position, item_id,
                   item_index, float(propensity), float(marginal), draws, source, len(candidate_ids), float(joint),
                   float(log_joint)]
            if layout.candidates:
                row += [candidate_json, index_json]
            row += context + [None] * (layout.context_width - len(context))
            mine = rewards.get((event_id, position), [None] * (n_kinds * 3))
            for k in range(n_kinds):
                row += mine[3 * k:3 * k + 2]
                if layout.has_late:
                    row.append(mine[3 * k + 2])
                row += whole[3 * k:3 * k + 2]
            rows.append(tuple(row))
            contexts.append(context)
            cands.append(candidate_ids)
        yield _Batch(rows, contexts, cands, n_decisions)
        after = end


@contextlib.contextmanager
def _atomic_output(path: str | Path, mode: str = "w", **kw):
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


def export_csv(log: DecisionLog, path: str | Path, *, candidates: bool = False,
               batch_decisions: int = 5000) -> ExportResult:
    """Export every logged slot as one CSV row (columns in the module docstring).

    Floats are written with ``repr`` (the shortest string that reads back as the same float64);
    a missing reward is an empty cell; late flags are 0/1.
    """
    n_rows = n_dec = 0
    with log.snapshot() as conn, _atomic_output(path, "w", newline="", encoding="utf-8") as fh:
        layout = _layout(conn, candidates)
        writer = csv.writer(fh)
        writer.writerow(layout.columns)
        for batch in _read_batches(conn, layout, batch_decisions):
            writer.writerows([_csv_cell(v) for v in row] for row in batch.rows)
            n_rows += len(batch.rows)
            n_dec += batch.n_decisions
    return ExportResult(str(path), "csv", n_rows, n_dec, layout.columns)


def _csv_cell(v):
    if isinstance(v, float):
        return repr(v)
    return v  # str, int or None (csv writes None as an empty cell)


def export_parquet(log: DecisionLog, path: str | Path, *, candidates: bool = False,
                   batch_decisions: int = 20000) -> ExportResult:
    """Export every logged slot as one Parquet row, one row group per batch of decisions.

    Types: strings, int64, float64 (nullable for context cells and rewards), bool for late
    flags. Key-value metadata: ``banditrec.schema_version``, ``banditrec.kinds`` (JSON list)
    and ``banditrec.context_width``. Needs the ``parquet`` extra (pyarrow).
    """
    pa, pq = _require_pyarrow()
    n_rows = n_dec = 0
    with log.snapshot() as conn, _atomic_output(path, None) as tmp:
        layout = _layout(conn, candidates)
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
        meta = {"banditrec.schema_version": str(SCHEMA_VERSION), "banditrec.kinds": json.dumps(list(layout.kinds)),
                "banditrec.context_width": str(layout.context_width)}
        schema = pa.schema(fields, metadata=meta)
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _read_batches(conn, layout, batch_decisions):
                if not batch.rows:
                    continue
                columns = list(zip(*batch.rows))
                arrays = [pa.array([None if v is None else bool(v) for v in col], f.type)
                          if f.type == pa.bool_() else pa.array(col, f.type)
                          for col, f in zip(columns, fields)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                n_rows += len(batch.rows)
                n_dec += batch.n_decisions
    return ExportResult(str(path), "parquet", n_rows, n_dec, layout.columns)


# ---- Vowpal Wabbit -----------------------------------------------------------------------------

_VW_SPECIAL = re.compile(r"[\s|:%]")


def vw_escape(name: str) -> str:
    """An item id made safe as a VW feature value: whitespace, ``|``, ``:`` and ``%`` are
    percent-encoded (``%20``, ``%7C``, ``%3A``, ``%25``...), so distinct ids stay distinct.

    VW's text format splits on whitespace and ``|`` and reads ``:`` as a value separator; its
    JSON reader replaces those characters with ``_`` (so ``a b`` and ``a_b`` would collide).
    """
    return _VW_SPECIAL.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


@dataclass(frozen=True)
class _VWExample:
    """One logged slot as a contextual-bandit example over its decision's candidates."""

    event_id: str
    position: int
    ts: float
    context: list[float]
    candidates: list[str]
    chosen: int  # index into candidates
    cost: float
    probability: float


def _vw_examples(log: DecisionLog, kind: str, default_reward: float, min_probability: float | None,
                 batch_decisions: int, counter: list[int]) -> Iterator[_VWExample]:
    if not math.isfinite(default_reward):
        raise ValidationError(f"default_reward must be finite, got {default_reward!r}", "default_reward")
    if min_probability is not None and not (F32_TINY <= min_probability <= 1):
        raise ValidationError(f"min_probability must be in [{F32_TINY:.3g}, 1], got {min_probability!r}",
                              "min_probability")
    with log.snapshot() as conn:
        layout = _layout(conn, False)
        cols = {c: i for i, c in enumerate(layout.columns)}
        i_event, i_pos, i_ts, i_item, i_marg = (cols[c] for c in ("event_id", "position", "ts", "item_id", "marginal"))
        i_reward = cols.get(f"reward:{kind}")
        if layout.kinds and kind not in layout.kinds:
            raise ValidationError(f"the log has no {kind!r} rewards; it has {', '.join(map(repr, layout.kinds))}",
                                  "kind")
        for batch in _read_batches(conn, layout, batch_decisions):
            counter[1] += batch.n_decisions
            index_of: dict[str, int] = {}
            last = None
            for row, context, candidates in zip(batch.rows, batch.contexts, batch.candidates):
                event_id, position = row[i_event], row[i_pos]
                where = f"event {event_id!r}, position {position}"
                if candidates is not last:
                    last = candidates
                    index_of = {c: j for j, c in enumerate(candidates)}
                    bad = [c for c in context if not (math.isfinite(c) and abs(c) <= F32_MAX)]
                    if bad:
                        raise ValidationError(
                            f"{where}: context value {bad[0]!r} cannot be a VW feature (VW stores float32)", "context")
                chosen = index_of.get(row[i_item])
                if chosen is None:
                    raise ValidationError(f"{where}: item {row[i_item]!r} is not among the decision's "
                                          f"{len(candidates)} candidates", "item_id")
                reward = row[i_reward] if i_reward is not None else None
                reward = default_reward if reward is None else reward
                p = row[i_marg]
                if p < F32_TINY or (min_probability is not None and p < min_probability):
                    if min_probability is None:
                        raise ValidationError(
                            f"{where}: marginal propensity {p!r} would read as 0 in VW (float32), which makes VW "
                            f"skip the update; pass min_probability to clip it", "marginal")
                    p = min_probability
                    counter[2] += 1
                counter[0] += 1
                yield _VWExample(event_id, position, row[i_ts], context, candidates, chosen, 0.0 - reward, p)


_VW_DOC = """
    Each logged slot becomes one contextual-bandit example over **all** of its decision's
    candidates, with the shown item labelled ``cost = -reward`` (the ``kind`` reward of that
    slot, ``default_reward`` where none was recorded) and ``probability = the slot's logged
    marginal`` P(slot k holds item | context).

    Why the marginal and not the conditional P(item | context, earlier slots): VW weights each
    labelled example by 1/p, and what it learns from a slot's example is the value of showing
    that item *in that slot* for that context. Summed over the logging policy's draws,
    1[slot k holds a] * r / p has expectation E[r | a in slot k, x] only when p is the marginal.
    With the conditional, the draws where an earlier slot already took ``a`` contribute
    nothing, so the sum estimates P(a not shown earlier | x) * E[r | a in slot k, x]: the items
    the logging policy likes best (the ones it usually shows earlier) are under-credited in
    every later slot. The marginal is also a distribution over the whole candidate list, which
    is exactly the action set each exported example carries. For slot 0 the two are equal.

    A probability that would read as 0 in VW's float32 (below ~1.2e-38) raises
    ValidationError, since VW silently learns nothing from it; ``min_probability`` clips such
    probabilities (and any below it) instead, and ``ExportResult.clipped`` counts them.
"""


def export_vw(log: DecisionLog, path: str | Path, *, kind: str = "click", default_reward: float = 0.0,
              min_probability: float | None = None, batch_decisions: int = 5000) -> ExportResult:
    """Export as VW text multi-line ``--cb_adf`` / ``--cb_explore_adf`` examples, one per logged slot.

    Layout of one example (examples are separated by an empty line)::

        shared |User c0:0.25 c1:-1.5
        |Action id=i17
        0:-1.0:0.0873 |Action id=i42
        |Action id=i3

    ``c<j>`` is context column ``j`` (zeros are left out, as VW ignores them), the action lines
    follow the decision's candidate order, item ids are escaped by :func:`vw_escape`. The
    namespaces start with different letters, so ``-q UA`` crosses user and action features.
    Train with e.g. ``python -m vowpalwabbit --cb_explore_adf -q UA -d FILE``.
    """ + _VW_DOC
    counter = [0, 0, 0]
    with _atomic_output(path, "w", encoding="utf-8") as fh:
        for ex in _vw_examples(log, kind, default_reward, min_probability, batch_decisions, counter):
            feats = " ".join(f"c{j}:{v!r}" for j, v in enumerate(ex.context) if v != 0.0)
            lines = [f"shared |User {feats}".rstrip()]
            for j, item in enumerate(ex.candidates):
                label = f"0:{ex.cost!r}:{ex.probability!r} " if j == ex.chosen else ""
                lines.append(f"{label}|Action id={vw_escape(item)}")
            fh.write("\n".join(lines) + "\n\n")
    return ExportResult(str(path), "vw", counter[0], counter[1], clipped=counter[2])


def _iso(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, OSError, ValueError):
        return repr(ts)  # not a Unix time; VW keeps Timestamp as an opaque string


def export_dsjson(log: DecisionLog, path: str | Path, *, kind: str = "click", default_reward: float = 0.0,
                  min_probability: float | None = None, batch_decisions: int = 5000) -> ExportResult:
    """Export as VW decision-service JSON (``--dsjson --cb_explore_adf``), one line per logged slot.

    One line (wrapped here)::

        {"_label_cost": -1.0, "_label_probability": 0.0873, "_label_Action": 2, "_labelIndex": 1,
         "Timestamp": "2024-05-01T12:00:00.000000Z", "Version": "1", "EventId": "<event_id>/<position>",
         "a": [2, 1, 3], "c": {"User": {"c0": 0.25, "c1": -1.5},
                               "_multi": [{"Action": {"id": "i17"}}, {"Action": {"id": "i42"}},
                                          {"Action": {"id": "i3"}}]},
         "p": [0.0873]}

    ``_labelIndex`` is the 0-based index of the shown item in ``_multi`` (the candidate order)
    and ``_label_Action`` the same as a 1-based action id; ``a`` lists every action id with the
    shown one first, as the decision service logs its ranking (VW skips a line whose ``a`` is
    empty). Only the shown item's probability was logged for a slot, so ``p`` holds that one
    number, aligned with ``a[0]``; VW learns from ``_label_probability`` and ``_label_cost``.
    ``EventId`` is the decision's event id and the slot position, unique per line.
    """ + _VW_DOC
    counter = [0, 0, 0]
    with _atomic_output(path, "w", encoding="utf-8") as fh:
        for ex in _vw_examples(log, kind, default_reward, min_probability, batch_decisions, counter):
            shared: dict = {}
            feats = {f"c{j}": v for j, v in enumerate(ex.context) if v != 0.0}
            if feats:
                shared["User"] = feats
            shared["_multi"] = [{"Action": {"id": vw_escape(item)}} for item in ex.candidates]
            order = [ex.chosen + 1] + [j + 1 for j in range(len(ex.candidates)) if j != ex.chosen]
            line = {
                "_label_cost": ex.cost,
                "_label_probability": ex.probability,
                "_label_Action": ex.chosen + 1,
                "_labelIndex": ex.chosen,
                "Timestamp": _iso(ex.ts),
                "Version": "1",
                "EventId": f"{ex.event_id}/{ex.position}",
                "a": order,
                "c": shared,
                "p": [ex.probability],
            }
            fh.write(json.dumps(line, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
    return ExportResult(str(path), "dsjson", counter[0], counter[1], clipped=counter[2])


def export_log(log: DecisionLog, path: str | Path, format: str, *, kind: str = "click", default_reward: float = 0.0,
               min_probability: float | None = None, candidates: bool = False) -> ExportResult:
    """Export ``log`` to ``path`` in ``format`` (one of :data:`EXPORT_FORMATS`).

    ``kind``, ``default_reward`` and ``min_probability`` apply to the VW formats, which carry
    one reward per example; CSV and Parquet carry every kind. ``candidates`` adds the
    decision's candidate ids and catalog indices (JSON lists) to CSV and Parquet rows.
    """
    if format in ("csv", "parquet"):
        fn = export_csv if format == "csv" else export_parquet
        return fn(log, path, candidates=candidates)
    if format in ("vw", "dsjson"):
        fn = export_vw if format == "vw" else export_dsjson
        return fn(log, path, kind=kind, default_reward=default_reward, min_probability=min_probability)
    raise ValidationError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}", "format")


# ================================================================================================
# import
# ================================================================================================

class ImportFailedError(ValidationError):
    """Bad input stopped an import. ``line`` and ``column`` locate it (``line`` 1 is the header);
    ``result`` says what was imported before it: that much is in the log, complete, and
    ``result.last_line + 1`` is where to resume (``start_line``) after fixing the file."""

    def __init__(self, message: str, column: str | None, line: int | None, result: "ImportResult"):
        super().__init__(message, column)
        self.line = line
        self.column = column
        self.result = result


class _RowError(Exception):
    def __init__(self, line: int | None, column: str | None, message: str):
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote. ``context_names[j]`` names context column ``j`` of every imported
    decision (``col=value`` for a one-hot category); ``encoding_id`` (a hash of those names) is
    also in each decision's ``policy_params["context_encoding"]`` unless the file mapped
    ``policy_params`` itself."""

    path: str
    format: str
    decisions: int
    slots: int
    rewards: int
    first_line: int | None
    last_line: int | None
    n_items: int
    context_names: tuple[str, ...]
    encoding_id: str

    def encoding(self) -> dict:
        """The context encoding as a JSON-able dict, to keep beside the log."""
        return {"encoding_id": self.encoding_id, "source": self.path, "format": self.format,
                "context_names": list(self.context_names), "n_items": self.n_items}


# field -> default column in a file exported by this module
DEFAULT_CSV_MAPPING = {
    "event": "event_id", "position": "position", "item": "item_id", "item_index": "item_index",
    "propensity": "propensity", "marginal": "marginal", "marginal_draws": "marginal_draws", "source": "source",
    "ts": "ts", "user": "user_id", "surface": "surface", "policy": "policy", "model_version": "model_version",
    "policy_params": "policy_params", "joint_propensity": "joint_propensity",
    "log_joint_propensity": "log_joint_propensity", "candidates": "candidates", "candidate_index": "candidate_index",
    "context": "context_*",
}
OBD_MAPPING = {  # required: each must be in the file
    "ts": "timestamp", "item": "item_id", "position": "position", "marginal": "propensity_score",
    "reward:click": "click", "categorical": "user_feature_*",
}
OBD_OPTIONAL = {"context": "user-item_affinity_*"}
_SCALAR_FIELDS = set(DEFAULT_CSV_MAPPING) - {"context"}
_LIST_FIELDS = {"context", "categorical", "group"}
_KIND_PREFIXES = ("reward", "reward_ts", "decision_reward", "decision_reward_ts")
_FIELDS_HELP = ", ".join(sorted(_SCALAR_FIELDS | _LIST_FIELDS | {"reward", "reward:<kind>", "reward_ts:<kind>",
                                                                   "decision_reward:<kind>",
                                                                   "decision_reward_ts:<kind>"}))


@dataclass(frozen=True)
class _Spec:
    """A mapping resolved against a file's header: field -> column index."""

    fmt: str
    path: str
    header: tuple[str, ...]
    col: dict[str, int]  # scalar fields present
    context: tuple[int, ...]
    categorical: tuple[int, ...]
    rewards: tuple[tuple[str, int, int | None], ...]  # (kind, reward col, ts col)
    decision_rewards: tuple[tuple[str, int, int | None], ...]
    group: tuple[int, ...]
    position_base: int

    def name(self, i: int | None) -> str | None:
        return None if i is None else self.header[i]


def _columns_for(pattern: str, header: Sequence[str], field: str, explicit: bool) -> list[int]:
    """``prefix*`` or a comma-separated list of columns -> indices, in header order for a prefix."""
    if pattern.endswith("*"):
        found = [i for i, h in enumerate(header) if h.startswith(pattern[:-1])]
        if not found and explicit:
            raise _RowError(1, pattern, f"no column starts with {pattern[:-1]!r} (for {field}); header has "
                                        f"{_show(header)}")
        return found
    out = []
    for name in (p.strip() for p in pattern.split(",") if p.strip()):
        if name not in header:
            if explicit:
                raise _RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
            continue
        out.append(header.index(name))
    return out


def _show(header: Sequence[str]) -> str:
    shown = ", ".join(repr(h) for h in header[:12])
    return shown + (f", ... ({len(header)} columns)" if len(header) > 12 else "")


def _resolve(fmt: str, path: str, header: Sequence[str], explicit: Mapping[str, str], defaults: Mapping[str, str],
             kind: str, position_base: int, group_by: Sequence[str] | None) -> _Spec:
    """Resolve mapping fields to header columns. Explicit fields must exist; defaults are used
    when their column is present."""
    header = tuple(header)
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise _RowError(1, dup, f"column {dup!r} appears twice in the header")
    for field in explicit:
        base = field.split(":", 1)[0]
        if not (field in _SCALAR_FIELDS or field in _LIST_FIELDS or field == "reward"
                or (base in _KIND_PREFIXES and ":" in field and field.split(":", 1)[1])):
            raise _RowError(None, None, f"unknown mapping field {field!r}; fields are {_FIELDS_HELP}")
    merged = {**defaults, **explicit}
    if "reward" in merged:
        merged.setdefault(f"reward:{kind}", merged.pop("reward"))
    col: dict[str, int] = {}
    for field in _SCALAR_FIELDS:
        if field in merged:
            name = merged[field]
            if name in header:
                col[field] = header.index(name)
            elif field in explicit:
                raise _RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
    # reward columns: explicit/default fields, plus every `<prefix>:<kind>` column of an export
    kinded: dict[tuple[str, str], int] = {}
    for field, name in merged.items():
        prefix, _, k = field.partition(":")
        if prefix in _KIND_PREFIXES and k:
            if name in header:
                kinded[(prefix, k)] = header.index(name)
            elif field in explicit:
                raise _RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
    if fmt == "csv":
        for i, h in enumerate(header):
            prefix, _, k = h.partition(":")
            if prefix in _KIND_PREFIXES and k:
                kinded.setdefault((prefix, k), i)
    context = _columns_for(merged["context"], header, "context", "context" in explicit) if "context" in merged else []
    categorical = (_columns_for(merged["categorical"], header, "categorical", "categorical" in explicit)
                   if "categorical" in merged else [])
    context = [i for i in context if i not in categorical]
    missing = [f for f in ("position", "item") if f not in col]
    if "propensity" not in col and "marginal" not in col:
        missing.append("propensity or marginal")
    if missing:
        what = " and ".join(repr(DEFAULT_CSV_MAPPING.get(f, f)) if fmt == "csv" else repr(merged.get(f, f))
                            for f in missing)
        raise _RowError(1, merged.get(missing[0], missing[0]),
                        f"missing column {what} ({', '.join(missing)}); header has {_show(header)}; "
                        f"map it with field=column")
    if "candidates" in col and "candidate_index" not in col:
        raise _RowError(1, header[col["candidates"]], "a candidates column needs a candidate_index column too")
    if "candidate_index" in col and "candidates" not in col:
        del col["candidate_index"]
    rewards = tuple((k, i, kinded.get(("reward_ts", k))) for (p, k), i in sorted(kinded.items()) if p == "reward")
    decision_rewards = tuple((k, i, kinded.get(("decision_reward_ts", k)))
                             for (p, k), i in sorted(kinded.items()) if p == "decision_reward")
    if group_by is not None:
        group_cols = []
        for name in group_by:
            if name not in header:
                raise _RowError(1, name, f"group_by column {name!r} is not in the header; it has {_show(header)}")
            group_cols.append(header.index(name))
        group = tuple(group_cols)
    elif "event" in col:
        group = (col["event"],)
    else:
        group = tuple(i for i in (col.get("ts"), col.get("user"), *categorical, *context) if i is not None)
    return _Spec(fmt, path, header, col, tuple(context), tuple(categorical), rewards, decision_rewards, group,
                 position_base)


_CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class _Catalog:
    """Item id -> catalog index, and the candidate list used when the file has none."""

    index: dict[str, int]
    ids: tuple[str, ...]  # candidates in index order
    indices: tuple[int, ...]

    @property
    def n_items(self) -> int:
        return (max(self.indices) + 1) if self.indices else 0


def _prescan(reader, spec: _Spec, n_items: int | None) -> tuple[_Catalog, list[list[str]]]:
    """One pass over the rows for what every batch needs up front: the item catalog and the
    categories of each categorical column (sorted, so the one-hot order never depends on row
    order or on where an import resumes)."""
    i_item, i_index = spec.col["item"], spec.col.get("item_index")
    items: dict[str, int | None] = {}
    cats: list[set[str]] = [set() for _ in spec.categorical]
    width = len(spec.header)
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            raise _RowError(reader.line_num, None, f"expected {width} fields as in the header, found {len(row)}")
        item = row[i_item]
        if i_index is not None:
            idx = _int_cell(row[i_index], reader.line_num, spec.header[i_index], low=0)
            seen = items.setdefault(item, idx)
            if seen != idx:
                raise _RowError(reader.line_num, spec.header[i_index],
                                f"item {item!r} has catalog index {idx} here but {seen} on an earlier line")
        else:
            items.setdefault(item, None)
        for s, c in zip(cats, spec.categorical):
            s.add(row[c])
    if i_index is not None:
        pairs = sorted(items.items(), key=lambda kv: kv[1])
        owner: dict[int, str] = {}
        for item, idx in pairs:
            if owner.setdefault(idx, item) != item:
                raise _RowError(None, spec.header[i_index],
                                f"items {owner[idx]!r} and {item!r} share catalog index {idx}")
        catalog = _Catalog(dict(items), tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    elif items and all(_CANONICAL_INT.fullmatch(i) for i in items):
        n = max(int(i) for i in items) + 1
        if n_items is not None:
            if n_items < n:
                raise _RowError(None, spec.header[i_item], f"n_items is {n_items} but the file has item id {n - 1}")
            n = n_items
        ids = tuple(str(i) for i in range(n))
        catalog = _Catalog({i: k for k, i in enumerate(ids)}, ids, tuple(range(n)))
    else:
        ids = tuple(sorted(items))
        if n_items is not None and n_items != len(ids):
            raise _RowError(None, spec.header[i_item],
                            f"n_items is {n_items} but the file names {len(ids)} distinct items that are not all "
                            f"integers, so they are indexed by sorted id")
        catalog = _Catalog({i: k for k, i in enumerate(ids)}, ids, tuple(range(len(ids))))
    return catalog, [sorted(s) for s in cats]


def _int_cell(value: str, line: int, column: str, low: int | None = None) -> int:
    try:
        v = int(value)
    except ValueError:
        raise _RowError(line, column, f"expected an integer, got {value!r}") from None
    if low is not None and v < low:
        raise _RowError(line, column, f"must be >= {low}, got {v}")
    return v


def _floats(values: list[str], lines: list[int], column: str, *, allow_empty: bool = False) -> np.ndarray:
    """Parse a column of cells as float64 in one numpy call (correctly rounded, so ``repr``
    strings come back bit-for-bit); empty cells become NaN when allowed. Non-finite values and
    non-numbers raise naming the first offending line."""
    cells = values
    if allow_empty:
        blank = [not v.strip() for v in values]
        cells = ["nan" if b else v for v, b in zip(values, blank)]
    try:
        arr = np.array(cells, dtype=np.float64)
    except ValueError:
        for v, line in zip(cells, lines):
            try:
                float(v)
            except ValueError:
                raise _RowError(line, column, f"expected a number, got {v!r}") from None
        raise
    finite = np.isfinite(arr)
    if allow_empty:
        finite |= np.array(blank, dtype=bool)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _RowError(lines[i], column, f"must be a finite number, got {values[i]!r}")
    return arr


def _ints(values: list[str], lines: list[int], column: str, low: int = 0) -> np.ndarray:
    try:
        arr = np.array(values).astype(np.int64) if values else np.empty(0, np.int64)
    except (ValueError, OverflowError):
        for v, line in zip(values, lines):
            _int_cell(v, line, column)
        raise
    bad = arr < low
    if bad.any():
        i = int(np.argmax(bad))
        raise _RowError(lines[i], column, f"must be >= {low}, got {arr[i]}")
    return arr


def _timestamp(value: str, line: int, column: str) -> float:
    """Unix seconds, or an ISO 8601 date-time (no zone means UTC), as float seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise _RowError(line, column, f"expected Unix seconds or an ISO 8601 time, got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def _groups(reader, spec: _Spec, start_line: int) -> Iterator[list[tuple[int, list[str]]]]:
    """Rows grouped into decisions: consecutive rows with the same grouping key form one
    decision, and a row whose position was already seen in the current group starts a new one
    (two impressions with equal keys back to back). With an event column, a repeated position
    or an event id that reappears after other rows is an error instead."""
    width = len(spec.header)
    i_pos = spec.col["position"]
    by_event = "event" in spec.col and spec.group == (spec.col["event"],)
    keyof = (operator.itemgetter(*spec.group) if len(spec.group) > 1
             else (lambda row, i=spec.group[0]: (row[i],)) if spec.group else (lambda row: ()))
    seen_events: dict[str, int] = {}
    group: list[tuple[int, list[str]]] = []
    key = None
    positions: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != width:
            raise _RowError(line, None, f"expected {width} fields as in the header, found {len(row)}")
        k = keyof(row)
        pos = row[i_pos]
        if group and k == key and pos not in positions:
            group.append((line, row))
            positions.add(pos)
            continue
        if group and k == key and by_event:
            first = next(ln for ln, r in group if r[i_pos] == pos)
            raise _RowError(line, spec.header[i_pos],
                            f"event {k[0]!r} has position {pos} twice (lines {first} and {line})")
        if by_event:
            if k[0] in seen_events:
                raise _RowError(line, spec.header[spec.col["event"]],
                                f"event {k[0]!r} reappears after other rows (it started at line "
                                f"{seen_events[k[0]]}); rows of a decision must be consecutive")
            seen_events[k[0]] = line
        if group and group[0][0] >= start_line:
            yield group
        group, key, positions = [(line, row)], k, {pos}
    if group and group[0][0] >= start_line:
        yield group


@dataclass
class _Parsed:
    """A decision ready to write, and the line of its first row."""

    line: int
    decision: Decision
    params: dict
    candidate_index: list[int]
    slot_index: list[int]
    context: np.ndarray
    surface: str
    rewards: list[Reward]


class _Importer:
    def __init__(self, spec: _Spec, catalog: _Catalog, categories: list[list[str]], *, kind: str, policy: str,
                 model_version: str, surface: str, event_prefix: str, source: str):
        self.spec, self.catalog, self.categories = spec, catalog, categories
        self.kind, self.policy, self.model_version, self.surface = kind, policy, model_version, surface
        self.event_prefix, self.source = event_prefix, source
        names = [spec.header[c] + "=" + v for c, cats in zip(spec.categorical, categories) for v in cats]
        names += [spec.header[c] for c in spec.context]
        self.context_names = tuple(names)
        self.encoding_id = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
        self.onehot = [{v: j for j, v in enumerate(cats)} for cats in categories]
        self.candidate_ids = list(catalog.ids)
        self.candidate_idx = list(catalog.indices)
        # columns every row of a decision must agree on, less the grouping key (equal by construction)
        col = spec.col
        shared = [col[f] for f in ("event", "ts", "user", "surface", "policy", "model_version", "policy_params",
                                   "joint_propensity", "log_joint_propensity", "candidates", "candidate_index")
                  if f in col]
        shared += [*spec.context, *spec.categorical, *(ci for _, ci, _ in spec.decision_rewards)]
        key = set(spec.group)
        self.shared = [c for c in shared if c not in key]
        self.file_name = Path(spec.path).name

    def parse(self, groups: list[list[tuple[int, list[str]]]]) -> list[_Parsed]:
        """Validate and convert a batch of decisions; numeric columns in one numpy call each."""
        spec, col = self.spec, self.spec.col
        rows = [r for g in groups for r in g]
        lines = [ln for ln, _ in rows]
        firsts = [g[0] for g in groups]
        first_lines = [ln for ln, _ in firsts]

        def cells(i, which=rows):
            return [r[i] for _, r in which]

        def name(field):
            return spec.header[col[field]]

        positions = _ints(cells(col["position"]), lines, name("position"), low=spec.position_base) - spec.position_base
        probs = {}
        for field in ("propensity", "marginal"):
            if field in col:
                p = _floats(cells(col[field]), lines, name(field))
                bad = ~((p > 0) & (p <= 1))
                if bad.any():
                    i = int(np.argmax(bad))
                    raise _RowError(lines[i], name(field), f"a propensity must be in (0, 1], got {cells(col[field])[i]!r}")
                probs[field] = p
        conditional = probs.get("propensity", probs.get("marginal"))
        marginal = probs.get("marginal", conditional)
        draws = (_ints(cells(col["marginal_draws"]), lines, name("marginal_draws"))
                 if "marginal_draws" in col else np.zeros(len(rows), np.int64))
        items = cells(col["item"])
        if "item_index" in col:
            item_index = _ints(cells(col["item_index"]), lines, name("item_index"))
        else:
            item_index = np.array([self.catalog.index[i] for i in items], dtype=np.int64)
        slot_rewards = []
        for kind, ci, ti in spec.rewards:
            values = _floats(cells(ci), lines, spec.header[ci], allow_empty=True)
            self._check_rewards(values, lines, spec.header[ci])
            ts = _floats(cells(ti), lines, spec.header[ti], allow_empty=True) if ti is not None else None
            slot_rewards.append((kind, values, ts))
        whole_rewards = []
        for kind, ci, ti in spec.decision_rewards:
            values = _floats(cells(ci, firsts), first_lines, spec.header[ci], allow_empty=True)
            self._check_rewards(values, first_lines, spec.header[ci])
            ts = _floats(cells(ti, firsts), first_lines, spec.header[ti], allow_empty=True) if ti is not None else None
            whole_rewards.append((kind, values, ts))
        contexts = np.empty((len(groups), len(spec.context)))
        for j, c in enumerate(spec.context):
            contexts[:, j] = _floats(cells(c, firsts), first_lines, spec.header[c], allow_empty=True)
        empty = np.isnan(contexts)  # _floats lets NaN through for empty cells only
        joint = log_joint = None
        if "joint_propensity" in col:
            joint = _floats(cells(col["joint_propensity"], firsts), first_lines, name("joint_propensity"))
        if "log_joint_propensity" in col:
            log_joint = _floats(cells(col["log_joint_propensity"], firsts), first_lines, name("log_joint_propensity"))

        out = []
        start = 0
        for g, group in enumerate(groups):
            n = len(group)
            sl = slice(start, start + n)
            start += n
            line0 = group[0][0]
            self._same_across(group)
            order = np.argsort(positions[sl], kind="stable")
            pos = positions[sl][order]
            if not np.array_equal(pos, np.arange(n)):
                missing = sorted(set(range(n)) - set(pos.tolist()))
                bad = int(np.argmax(pos != np.arange(n)))
                raise _RowError(group[int(order[bad])][0], name("position"),
                                f"the decision starting at line {line0} has positions "
                                f"{(pos + spec.position_base).tolist()}; a decision needs positions "
                                f"{spec.position_base}..{spec.position_base + n - 1} (missing "
                                f"{missing[0] + spec.position_base})")
            idx = [sl.start + int(o) for o in order]
            row0 = group[0][1]
            event_id = row0[col["event"]] if "event" in col else f"{self.event_prefix}:{line0}"
            ts = _timestamp(row0[col["ts"]], line0, name("ts")) if "ts" in col else 0.0
            if not math.isfinite(ts):
                raise _RowError(line0, name("ts"), f"must be finite, got {row0[col['ts']]!r}")
            if "candidates" in col:
                cand_ids, cand_idx = self._candidate_lists(row0, line0)
            else:
                cand_ids, cand_idx = self.candidate_ids, self.candidate_idx
            slot_items = [items[i] for i in idx]
            if len(set(slot_items)) != n:
                dup = next(i for i in slot_items if slot_items.count(i) > 1)
                raise _RowError(group[0][0], name("item"), f"item {dup!r} fills two slots of the decision starting "
                                                            f"at line {line0}")
            if "candidates" in col:
                members = dict(zip(cand_ids, cand_idx))
                for i, it in zip(idx, slot_items):
                    if it not in members:
                        raise _RowError(lines[i], name("item"), f"item {it!r} is not among the decision's candidates")
                    if members[it] != item_index[i]:
                        raise _RowError(lines[i], spec.header[col["item_index"]] if "item_index" in col else name("item"),
                                        f"item {it!r} has catalog index {item_index[i]} here but {members[it]} in "
                                        f"candidate_index")
            slots = tuple(Slot(position=k, item_id=items[i], propensity=float(conditional[i]),
                               marginal=float(marginal[i]),
                               source=rows[i][1][col["source"]] if "source" in col else "imported",
                               marginal_draws=int(draws[i]))
                          for k, i in enumerate(idx))
            cond = np.array([s.propensity for s in slots])
            j = float(joint[g]) if joint is not None else float(np.prod(cond))
            lj = float(log_joint[g]) if log_joint is not None else float(np.log(cond).sum())
            if not (0 <= j <= 1) or lj > 0:
                raise _RowError(line0, name("joint_propensity") if joint is not None else None,
                                f"joint propensity must be in [0, 1] with log <= 0, got {j!r} and {lj!r}")
            context = self._context(row0, contexts[g], empty[g], line0)
            params = self._params(row0, line0)
            rewards = []
            for kind, values, rts in slot_rewards:
                for k, i in enumerate(idx):
                    if not math.isnan(values[i]):
                        rt = ts if rts is None or math.isnan(rts[i]) else float(rts[i])
                        rewards.append(Reward(event_id, float(values[i]), position=k, kind=kind, ts=rt))
            for kind, values, rts in whole_rewards:
                if not math.isnan(values[g]):
                    rt = ts if rts is None or math.isnan(rts[g]) else float(rts[g])
                    rewards.append(Reward(event_id, float(values[g]), position=None, kind=kind, ts=rt))
            decision = Decision(
                event_id=event_id, user_id=row0[col["user"]] if "user" in col else "", slots=slots,
                joint_propensity=j, log_joint_propensity=lj,
                policy=row0[col["policy"]] if "policy" in col else self.policy,
                model_version=row0[col["model_version"]] if "model_version" in col else self.model_version,
                candidates=tuple(cand_ids), ts=ts)
            out.append(_Parsed(line0, decision, params, list(cand_idx), [int(item_index[i]) for i in idx], context,
                               row0[col["surface"]] if "surface" in col else self.surface, rewards))
        return out

    @staticmethod
    def _check_rewards(values: np.ndarray, lines: list[int], column: str) -> None:
        bad = np.abs(np.nan_to_num(values)) > MAX_ABS_REWARD
        if bad.any():
            i = int(np.argmax(bad))
            raise _RowError(lines[i], column, f"a reward must be within +-{MAX_ABS_REWARD:g}, got {values[i]!r}")

    def _same_across(self, group) -> None:
        """Rows of one decision must agree on what belongs to the decision."""
        row0 = group[0][1]
        for line, row in group[1:]:
            for c in self.shared:
                if row[c] != row0[c]:
                    raise _RowError(line, self.spec.header[c],
                                    f"{row[c]!r} differs from {row0[c]!r} on line {group[0][0]}, the first row "
                                    f"of the same decision")

    def _candidate_lists(self, row, line) -> tuple[list[str], list[int]]:
        col, header = self.spec.col, self.spec.header
        try:
            ids = json.loads(row[col["candidates"]])
            idx = json.loads(row[col["candidate_index"]])
        except json.JSONDecodeError as exc:
            raise _RowError(line, header[col["candidates"]], f"expected JSON lists of candidates: {exc}") from None
        if (not isinstance(ids, list) or not isinstance(idx, list) or len(ids) != len(idx)
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx)):
            raise _RowError(line, header[col["candidate_index"]],
                            "candidates and candidate_index must be JSON lists of the same length, of ids and of "
                            "non-negative integers")
        return [str(i) for i in ids], idx

    def _context(self, row, numeric: np.ndarray, empty: np.ndarray, line: int) -> np.ndarray:
        """One-hot categories, then the numeric columns. Trailing empty numeric cells shorten the
        context (an export pads narrower contexts that way); an empty cell before a filled one is
        an error."""
        if empty.any():
            width = int(np.argmax(empty))
            if not empty[width:].all():
                raise _RowError(line, self.spec.header[self.spec.context[width]],
                                "empty context cell before a filled one")
            numeric = numeric[:width]
        parts = []
        for c, table in zip(self.spec.categorical, self.onehot):
            v = np.zeros(len(table))
            v[table[row[c]]] = 1.0
            parts.append(v)
        parts.append(numeric)
        return np.concatenate(parts)

    def _params(self, row, line) -> dict:
        col = self.spec.col
        if "policy_params" in col:
            try:
                params = json.loads(row[col["policy_params"]])
            except json.JSONDecodeError as exc:
                raise _RowError(line, self.spec.header[col["policy_params"]], f"expected a JSON object: {exc}") from None
            if not isinstance(params, dict):
                raise _RowError(line, self.spec.header[col["policy_params"]], "expected a JSON object")
            return params
        return {"source": self.source, "file": self.file_name, "context_encoding": self.encoding_id}


def _import(path: str | Path, log: DecisionLog, fmt: str, explicit: Mapping[str, str], defaults: Mapping[str, str],
            *, kind: str, position_base: int, group_by: Sequence[str] | None, n_items: int | None, policy: str,
            model_version: str, surface: str, event_prefix: str | None, batch_rows: int,
            start_line: int | None, on_batch: Callable[[ImportResult], None] | None) -> ImportResult:
    path = str(path)
    start_line = 2 if start_line is None else int(start_line)
    counts = {"decisions": 0, "slots": 0, "rewards": 0, "first": None, "last": None}
    importer: _Importer | None = None

    def result() -> ImportResult:
        return ImportResult(path, fmt, counts["decisions"], counts["slots"], counts["rewards"], counts["first"],
                            counts["last"], importer.catalog.n_items if importer else 0,
                            importer.context_names if importer else (), importer.encoding_id if importer else "")

    def fail(line, column, message) -> ImportFailedError:
        done = result()
        where = ", ".join([path] + ([f"line {line}"] if line is not None else [])
                          + ([f"column {column!r}"] if column else []))
        progress = (f"imported {done.decisions} decisions ({done.slots} slots, {done.rewards} rewards, lines "
                    f"{done.first_line}-{done.last_line}) before stopping; they are complete in the log, and "
                    f"start_line={done.last_line + 1} resumes after the fix"
                    if done.decisions else "nothing was imported")
        return ImportFailedError(f"{where}: {message}; {progress}", column, line, done)

    if batch_rows < 1:
        raise ValidationError(f"batch_rows must be >= 1, got {batch_rows}", "batch_rows")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}", "path") from None
    try:
        with fh:
            try:
                reader = csv.reader(fh)
                header = next(reader, None)
                if not header:
                    raise _RowError(1, None, "the file is empty: expected a header line")
                spec = _resolve(fmt, path, header, explicit, defaults, kind, position_base, group_by)
                catalog, categories = _prescan(reader, spec, n_items)
            except _RowError as err:
                raise fail(err.line, err.column, err.message) from None
            except (UnicodeDecodeError, csv.Error) as exc:
                raise fail(None, None, f"not a readable UTF-8 CSV file: {exc}") from None
            importer = _Importer(spec, catalog, categories, kind=kind, policy=policy, model_version=model_version,
                                 surface=surface, event_prefix=event_prefix or Path(path).stem, source=fmt)
            fh.seek(0)
            reader = csv.reader(fh)
            next(reader)
            batch: list = []
            rows_in_batch = 0
            groups = _groups(reader, spec, start_line)
            while True:
                try:
                    group = next(groups, None)
                    if group is not None:
                        batch.append(group)
                        rows_in_batch += len(group)
                        if rows_in_batch < batch_rows:
                            continue
                    if not batch:
                        break
                    parsed = importer.parse(batch)
                except _RowError as err:
                    raise fail(err.line, err.column, err.message) from None
                except (UnicodeDecodeError, csv.Error) as exc:
                    raise fail(reader.line_num, None, f"not a readable UTF-8 CSV line: {exc}") from None
                _write(log, parsed, fail)
                counts["decisions"] += len(parsed)
                counts["slots"] += sum(len(p.decision.slots) for p in parsed)
                counts["rewards"] += sum(len(p.rewards) for p in parsed)
                counts["first"] = counts["first"] or parsed[0].line
                counts["last"] = batch[-1][-1][0]
                if on_batch is not None:
                    on_batch(result())
                batch, rows_in_batch = [], 0
                if group is None:
                    break
    finally:
        fh.close()
    return result()


def _write(log: DecisionLog, parsed: list[_Parsed], fail) -> None:
    """A batch of decisions and their rewards through the log's public batch write: one
    transaction, all or nothing, so a refused batch leaves the log as the batches before left it."""
    rewards = [r for p in parsed for r in p.rewards]
    owner = [p for p in parsed for _ in p.rewards]
    try:
        log.write_decisions([DecisionRecord(p.decision, p.params, p.candidate_index, p.slot_index, p.context,
                                            p.surface) for p in parsed], rewards=rewards)
    except BanditRecError as exc:
        batch = getattr(exc, "batch", None)
        if batch is None:
            raise
        p = owner[exc.index] if batch == "rewards" else parsed[exc.index]
        if batch == "items" and isinstance(exc, ConflictError) and exc.field == "event_id":
            raise fail(p.line, None, f"event id {p.decision.event_id!r} is already in the log (was this file "
                                     f"imported before? set event_prefix or start_line)") from None
        what = f"a {rewards[exc.index].kind} reward" if batch == "rewards" else "the decision"
        raise fail(p.line, exc.field, f"the log refused {what}: {exc.reason}") from None


def import_csv(path: str | Path, log: DecisionLog, mapping: Mapping[str, str] | None = None, *, kind: str = "click",
               position_base: int = 0, group_by: Sequence[str] | None = None, n_items: int | None = None,
               policy: str = "imported", model_version: str = "", surface: str = "home",
               event_prefix: str | None = None, batch_rows: int = 10_000, start_line: int | None = None,
               on_batch: Callable[[ImportResult], None] | None = None) -> ImportResult:
    """Import a CSV with one row per logged slot, columns named by ``mapping`` (field -> column).

    Fields (defaults are the column names :func:`export_csv` writes, used when present):

    - ``position`` (required), 0-based unless ``position_base=1``; ``item`` (required) the item id
    - ``propensity`` the conditional and/or ``marginal`` P(slot holds item | x), each in (0, 1];
      at least one is required, and a missing one takes the other's value
    - ``event`` the event id; rows of one decision must then be consecutive. Without it a
      decision is a run of consecutive rows with equal ``group_by`` columns (default: ts, user and
      context columns), and a position repeating within the run starts the next decision; its
      event id is ``<event_prefix>:<line of its first row>`` (``event_prefix`` defaults to the
      file's stem)
    - ``reward`` a reward of kind ``kind``; ``reward:<kind>``, ``decision_reward:<kind>`` (the
      decision as a whole) and ``reward_ts:<kind>`` / ``decision_reward_ts:<kind>`` for more;
      an empty cell records no reward
    - ``context``: ``prefix*`` or ``a,b,c``, numeric context columns; ``categorical`` likewise,
      one-hot encoded over the file's sorted distinct values, before the numeric ones
    - ``ts`` (Unix seconds or ISO 8601), ``user``, ``item_index``, ``marginal_draws``, ``source``,
      ``surface``, ``policy``, ``model_version``, ``policy_params`` (JSON), ``joint_propensity``,
      ``log_joint_propensity``, ``candidates`` with ``candidate_index`` (JSON lists)

    Catalog indices come from ``item_index`` when mapped; otherwise item ids that are all
    non-negative integers are their own index (``n_items`` can extend the catalog past the
    largest id), and any other ids are indexed in sorted order. Without a candidates column,
    every decision's candidates are the whole catalog. Rows within a decision may come in any
    position order; the positions must be exactly ``0..K-1``.

    The file is read twice: once for the catalog and categories, then in batches of about
    ``batch_rows`` rows, each validated completely and then written in one transaction with its
    rewards, all or nothing. Bad input, or a decision the log refuses, raises
    :class:`ImportFailedError` (a ``ValidationError``) naming the line and column; the batches
    before it stay in the log, complete, the batch it is in is not written, and the error's
    ``result`` says how far the import got. ``on_batch`` is called with the running result
    after each batch.
    """
    return _import(path, log, "csv", dict(mapping or {}), DEFAULT_CSV_MAPPING, kind=kind, position_base=position_base,
                   group_by=group_by, n_items=n_items, policy=policy, model_version=model_version, surface=surface,
                   event_prefix=event_prefix, batch_rows=batch_rows, start_line=start_line, on_batch=on_batch)


def import_obd(path: str | Path, log: DecisionLog, *, mapping: Mapping[str, str] | None = None,
               group_by: Sequence[str] | None = None, n_items: int | None = None, policy: str = "obd",
               model_version: str = "", surface: str = "home", event_prefix: str | None = None,
               batch_rows: int = 10_000, start_line: int | None = None,
               on_batch: Callable[[ImportResult], None] | None = None) -> ImportResult:
    """Import the Open Bandit Dataset's CSV layout (Saito et al. 2021, ``open_bandit_dataset/
    <policy>/<campaign>/<campaign>.csv``).

    Columns: ``timestamp, item_id, position, click, propensity_score, user_feature_0..3`` and
    ``user-item_affinity_<item>``, often after an unnamed index column (ignored). One row is one
    (impression, position); positions are 1-based and become slots 0..K-1.

    - **Grouping.** Rows of one impression share the timestamp and every user feature, so a
      decision is a run of consecutive rows with equal ``timestamp``, ``user_feature_*`` and
      ``user-item_affinity_*`` cells; a position repeating within a run starts the next
      decision. ``group_by`` replaces the key columns. A decision whose positions are not
      exactly 1..K raises, naming the line.
    - **Probabilities.** ``propensity_score`` is the logging policy's probability of the item
      at that position, the marginal the estimators need; it is also stored as the
      conditional, which OBD does not publish (for its uniform random policy the true
      conditional is 1/(n_items - k), slightly larger).
    - **Candidates** are all items ``0..n_items-1`` (``n_items`` defaults to the largest id + 1;
      pass 80 for the "all" campaign when a sample misses some items).
    - **Context.** ``user_feature_*`` (hashed categories) are one-hot encoded, column by
      column in sorted category order, followed by the affinities as floats;
      ``ImportResult.context_names`` records the encoding.
    - **Rewards.** ``click`` is recorded as a ``click`` reward at its position.

    ``mapping`` overrides column names (fields as in :func:`import_csv`); errors and batching
    as in :func:`import_csv`.
    """
    return _import(path, log, "obd", {**OBD_MAPPING, **(mapping or {})}, OBD_OPTIONAL, kind="click", position_base=1,
                   group_by=group_by, n_items=n_items, policy=policy, model_version=model_version, surface=surface,
                   event_prefix=event_prefix, batch_rows=batch_rows, start_line=start_line, on_batch=on_batch)


def import_file(path: str | Path, log: DecisionLog, format: str, mapping: Mapping[str, str] | None = None,
                **kw) -> ImportResult:
    """Import ``path`` in ``format`` (one of :data:`IMPORT_FORMATS`)."""
    if format == "obd":
        return import_obd(path, log, mapping=mapping, **kw)
    if format == "csv":
        return import_csv(path, log, mapping, **kw)
    raise ValidationError(f"unknown import format {format!r}; expected one of {', '.join(IMPORT_FORMATS)}", "format")


def parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    """``["field=column", ...]`` (the CLI's ``--map``) -> a mapping; the field is checked on import."""
    out = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ValidationError(f"--map takes field=column, got {pair!r}", "map")
        if field.strip() in out:
            raise ValidationError(f"--map gives {field.strip()!r} twice", "map")
        out[field.strip()] = column.strip()
    return out
