"""Reading a CSV of logged slots for an import: the field -> column mapping resolved against the
header (:func:`resolve`), typed cells that name their line and column when bad, the item catalog
(:func:`prescan`) and rows grouped into decisions (:func:`group_rows`). Nothing here writes to a
log; :mod:`banditrec.store.importer` turns the groups into decisions.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np


class RowError(Exception):
    """Bad input at ``line`` (1 is the header; None: not one line) and ``column``; the importer
    reports it as an ``ImportFailedError`` that also says how far the import got."""

    def __init__(self, line: int | None, column: str | None, message: str):
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


# field -> default column in a file written by banditrec.store.export.export_csv
DEFAULT_CSV_MAPPING = {
    "event": "event_id",
    "position": "position",
    "item": "item_id",
    "item_index": "item_index",
    "propensity": "propensity",
    "marginal": "marginal",
    "marginal_draws": "marginal_draws",
    "source": "source",
    "ts": "ts",
    "user": "user_id",
    "surface": "surface",
    "policy": "policy",
    "model_version": "model_version",
    "policy_params": "policy_params",
    "joint_propensity": "joint_propensity",
    "log_joint_propensity": "log_joint_propensity",
    "candidates": "candidates",
    "candidate_index": "candidate_index",
    "context": "context_*",
}
OBD_MAPPING = {  # required: each must be in the file
    "ts": "timestamp",
    "item": "item_id",
    "position": "position",
    "marginal": "propensity_score",
    "reward:click": "click",
    "categorical": "user_feature_*",
}
OBD_OPTIONAL = {"context": "user-item_affinity_*"}
_SCALAR_FIELDS = set(DEFAULT_CSV_MAPPING) - {"context"}
_LIST_FIELDS = {"context", "categorical", "group"}
_KIND_PREFIXES = ("reward", "reward_ts", "decision_reward", "decision_reward_ts")
_FIELDS_HELP = ", ".join(
    sorted(
        _SCALAR_FIELDS
        | _LIST_FIELDS
        | {"reward", "reward:<kind>", "reward_ts:<kind>", "decision_reward:<kind>", "decision_reward_ts:<kind>"}
    )
)


@dataclass(frozen=True)
class Spec:
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
            raise RowError(
                1, pattern, f"no column starts with {pattern[:-1]!r} (for {field}); header has {_show(header)}"
            )
        return found
    out = []
    for name in (p.strip() for p in pattern.split(",") if p.strip()):
        if name not in header:
            if explicit:
                raise RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
            continue
        out.append(header.index(name))
    return out


def _show(header: Sequence[str]) -> str:
    shown = ", ".join(repr(h) for h in header[:12])
    return shown + (f", ... ({len(header)} columns)" if len(header) > 12 else "")


def resolve(
    fmt: str,
    path: str,
    header: Sequence[str],
    explicit: Mapping[str, str],
    defaults: Mapping[str, str],
    kind: str,
    position_base: int,
    group_by: Sequence[str] | None,
) -> Spec:
    """Resolve mapping fields to header columns. Explicit fields must exist; defaults are used
    when their column is present."""
    header = tuple(header)
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise RowError(1, dup, f"column {dup!r} appears twice in the header")
    for field in explicit:
        base = field.split(":", 1)[0]
        if not (
            field in _SCALAR_FIELDS
            or field in _LIST_FIELDS
            or field == "reward"
            or (base in _KIND_PREFIXES and ":" in field and field.split(":", 1)[1])
        ):
            raise RowError(None, None, f"unknown mapping field {field!r}; fields are {_FIELDS_HELP}")
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
                raise RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
    # reward columns: explicit/default fields, plus every `<prefix>:<kind>` column of an export
    kinded: dict[tuple[str, str], int] = {}
    for field, name in merged.items():
        prefix, _, k = field.partition(":")
        if prefix in _KIND_PREFIXES and k:
            if name in header:
                kinded[(prefix, k)] = header.index(name)
            elif field in explicit:
                raise RowError(1, name, f"column {name!r} (for {field}) is not in the header; it has {_show(header)}")
    if fmt == "csv":
        for i, h in enumerate(header):
            prefix, _, k = h.partition(":")
            if prefix in _KIND_PREFIXES and k:
                kinded.setdefault((prefix, k), i)
    context = _columns_for(merged["context"], header, "context", "context" in explicit) if "context" in merged else []
    categorical = (
        _columns_for(merged["categorical"], header, "categorical", "categorical" in explicit)
        if "categorical" in merged
        else []
    )
    context = [i for i in context if i not in categorical]
    missing = [f for f in ("position", "item") if f not in col]
    if "propensity" not in col and "marginal" not in col:
        missing.append("propensity or marginal")
    if missing:
        what = " and ".join(
            repr(DEFAULT_CSV_MAPPING.get(f, f)) if fmt == "csv" else repr(merged.get(f, f)) for f in missing
        )
        raise RowError(
            1,
            merged.get(missing[0], missing[0]),
            f"missing column {what} ({', '.join(missing)}); header has {_show(header)}; map it with field=column",
        )
    if "candidates" in col and "candidate_index" not in col:
        raise RowError(1, header[col["candidates"]], "a candidates column needs a candidate_index column too")
    if "candidate_index" in col and "candidates" not in col:
        del col["candidate_index"]
    rewards = tuple((k, i, kinded.get(("reward_ts", k))) for (p, k), i in sorted(kinded.items()) if p == "reward")
    decision_rewards = tuple(
        (k, i, kinded.get(("decision_reward_ts", k))) for (p, k), i in sorted(kinded.items()) if p == "decision_reward"
    )
    if group_by is not None:
        group_cols = []
        for name in group_by:
            if name not in header:
                raise RowError(1, name, f"group_by column {name!r} is not in the header; it has {_show(header)}")
            group_cols.append(header.index(name))
        group = tuple(group_cols)
    elif "event" in col:
        group = (col["event"],)
    else:
        group = tuple(i for i in (col.get("ts"), col.get("user"), *categorical, *context) if i is not None)
    return Spec(
        fmt, path, header, col, tuple(context), tuple(categorical), rewards, decision_rewards, group, position_base
    )


_CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Catalog:
    """Item id -> catalog index, and the candidate list used when the file has none."""

    index: dict[str, int]
    ids: tuple[str, ...]  # candidates in index order
    indices: tuple[int, ...]

    @property
    def n_items(self) -> int:
        return (max(self.indices) + 1) if self.indices else 0


def prescan(reader, spec: Spec, n_items: int | None) -> tuple[Catalog, list[list[str]]]:
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
            raise RowError(reader.line_num, None, f"expected {width} fields as in the header, found {len(row)}")
        item = row[i_item]
        if i_index is not None:
            idx = _int_cell(row[i_index], reader.line_num, spec.header[i_index], low=0)
            seen = items.setdefault(item, idx)
            if seen != idx:
                raise RowError(
                    reader.line_num,
                    spec.header[i_index],
                    f"item {item!r} has catalog index {idx} here but {seen} on an earlier line",
                )
        else:
            items.setdefault(item, None)
        for s, c in zip(cats, spec.categorical):
            s.add(row[c])
    if i_index is not None:
        indexed = cast(dict[str, int], items)  # every item got its index above
        pairs = sorted(indexed.items(), key=lambda kv: kv[1])
        owner: dict[int, str] = {}
        for item, idx in pairs:
            if owner.setdefault(idx, item) != item:
                raise RowError(
                    None, spec.header[i_index], f"items {owner[idx]!r} and {item!r} share catalog index {idx}"
                )
        catalog = Catalog(dict(indexed), tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    elif items and all(_CANONICAL_INT.fullmatch(i) for i in items):
        n = max(int(i) for i in items) + 1
        if n_items is not None:
            if n_items < n:
                raise RowError(None, spec.header[i_item], f"n_items is {n_items} but the file has item id {n - 1}")
            n = n_items
        ids = tuple(str(i) for i in range(n))
        catalog = Catalog({i: k for k, i in enumerate(ids)}, ids, tuple(range(n)))
    else:
        ids = tuple(sorted(items))
        if n_items is not None and n_items != len(ids):
            raise RowError(
                None,
                spec.header[i_item],
                f"n_items is {n_items} but the file names {len(ids)} distinct items that are not all "
                f"integers, so they are indexed by sorted id",
            )
        catalog = Catalog({i: k for k, i in enumerate(ids)}, ids, tuple(range(len(ids))))
    return catalog, [sorted(s) for s in cats]


def _int_cell(value: str, line: int, column: str, low: int | None = None) -> int:
    try:
        v = int(value)
    except ValueError:
        raise RowError(line, column, f"expected an integer, got {value!r}") from None
    if low is not None and v < low:
        raise RowError(line, column, f"must be >= {low}, got {v}")
    return v


def float_cells(values: list[str], lines: list[int], column: str, *, allow_empty: bool = False) -> np.ndarray:
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
                raise RowError(line, column, f"expected a number, got {v!r}") from None
        raise
    finite = np.isfinite(arr)
    if allow_empty:
        finite |= np.array(blank, dtype=bool)
    if not finite.all():
        i = int(np.argmin(finite))
        raise RowError(lines[i], column, f"must be a finite number, got {values[i]!r}")
    return arr


def int_cells(values: list[str], lines: list[int], column: str, low: int = 0) -> np.ndarray:
    try:
        arr = np.array(values).astype(np.int64) if values else np.empty(0, np.int64)
    except (ValueError, OverflowError):
        for v, line in zip(values, lines):
            _int_cell(v, line, column)
        raise
    bad = arr < low
    if bad.any():
        i = int(np.argmax(bad))
        raise RowError(lines[i], column, f"must be >= {low}, got {arr[i]}")
    return arr


def timestamp_cell(value: str, line: int, column: str) -> float:
    """Unix seconds, or an ISO 8601 date-time (no zone means UTC), as float seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise RowError(line, column, f"expected Unix seconds or an ISO 8601 time, got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def group_rows(reader, spec: Spec, start_line: int, *, single: bool = False) -> Iterator[list[tuple[int, list[str]]]]:
    """Rows grouped into decisions: consecutive rows with the same grouping key form one
    decision, and a row whose position was already seen in the current group starts a new one
    (two impressions with equal keys back to back). With an event column, a repeated position
    or an event id that reappears after other rows is an error instead. ``single``: every row
    is a decision of its own."""
    width = len(spec.header)
    if single:
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise RowError(reader.line_num, None, f"expected {width} fields as in the header, found {len(row)}")
            if reader.line_num >= start_line:
                yield [(reader.line_num, row)]
        return
    i_pos = spec.col["position"]
    by_event = "event" in spec.col and spec.group == (spec.col["event"],)
    keyof = (
        operator.itemgetter(*spec.group)
        if len(spec.group) > 1
        else (lambda row, i=spec.group[0]: (row[i],))
        if spec.group
        else (lambda row: ())
    )
    seen_events: dict[str, int] = {}
    group: list[tuple[int, list[str]]] = []
    key = None
    positions: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != width:
            raise RowError(line, None, f"expected {width} fields as in the header, found {len(row)}")
        k: tuple[str, ...] = keyof(row)
        pos = row[i_pos]
        if group and k == key and pos not in positions:
            group.append((line, row))
            positions.add(pos)
            continue
        if group and k == key and by_event:
            first = next(ln for ln, r in group if r[i_pos] == pos)
            raise RowError(
                line, spec.header[i_pos], f"event {k[0]!r} has position {pos} twice (lines {first} and {line})"
            )
        if by_event:
            if k[0] in seen_events:
                raise RowError(
                    line,
                    spec.header[spec.col["event"]],
                    f"event {k[0]!r} reappears after other rows (it started at line "
                    f"{seen_events[k[0]]}); rows of a decision must be consecutive",
                )
            seen_events[k[0]] = line
        if group and group[0][0] >= start_line:
            yield group
        group, key, positions = [(line, row)], k, {pos}
    if group and group[0][0] >= start_line:
        yield group
