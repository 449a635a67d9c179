"""The three input files as typed arrays: the catalog, the interactions, the users.

Formats and every rule checked here are in ``docs/data-formats.md``. Ids are strings of any
characters; a duplicate item or user id is refused; interactions naming an item the catalog
does not hold, or an event type no setting claims, are counted and reported (:class:`Events`
keeps the counts), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ValidationError
from .config import BuildConfig
from .tables import InputError, Table, read_table

ITEM_RESERVED = ("item_id", "type", "price", "in_stock", "created_at")
TEXT_DEFAULT = ("title", "description")
EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "value", "quantity", "session_id")
KIND_CODES = {"view": 0, "cart": 1, "purchase": 2}


@dataclass
class Catalog:
    """The items file: ``ids (n,)`` and typed attribute columns, in file order."""

    path: str
    ids: np.ndarray  # object array of str
    type: np.ndarray | None  # object array of str ("" where missing)
    numeric: dict[str, np.ndarray]  # float64, NaN where missing; price first when present
    categorical: dict[str, np.ndarray]  # object arrays of str ("" where missing)
    text: dict[str, np.ndarray]
    in_stock: np.ndarray  # bool
    created_at: np.ndarray  # float seconds, NaN where missing

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Catalog:
        pick = lambda d: {k: v[rows] for k, v in d.items()}  # noqa: E731
        return Catalog(
            self.path,
            self.ids[rows],
            None if self.type is None else self.type[rows],
            pick(self.numeric),
            pick(self.categorical),
            pick(self.text),
            self.in_stock[rows],
            self.created_at[rows],
        )


@dataclass
class Events:
    """The interactions file, resolved against the catalog and the users."""

    path: str
    n_rows: int
    user: np.ndarray  # (E,) int64 user index
    item: np.ndarray  # (E,) int64 item index (catalog order)
    kind: np.ndarray  # (E,) int8: 0 view, 1 cart, 2 purchase
    ts: np.ndarray  # (E,) float seconds
    value: np.ndarray | None  # (E,) float, NaN where missing
    quantity: np.ndarray | None
    session: np.ndarray | None  # (E,) int64 session index, or None: sessions by time gaps
    user_ids: np.ndarray  # object array: every user index's id
    unknown_items: int = 0
    unknown_item_examples: list = field(default_factory=list)
    unknown_users: int = 0  # interactions of users absent from the users file (kept)
    ignored_types: dict = field(default_factory=dict)  # event_type -> rows left out

    def report(self) -> list[str]:
        """What was counted and left out, one line each (empty when nothing was)."""
        out = []
        if self.unknown_items:
            ex = ", ".join(repr(x) for x in self.unknown_item_examples)
            out.append(
                f"{self.unknown_items:,} interactions name an item the catalog does not hold (left out; e.g. {ex})"
            )
        if self.ignored_types:
            shown = ", ".join(f"{k!r} ({v:,})" for k, v in sorted(self.ignored_types.items(), key=lambda kv: -kv[1]))
            out.append(
                f"{sum(self.ignored_types.values()):,} interactions have an event_type no setting counts as "
                f"a view, cart or purchase (left out): {shown}"
            )
        if self.unknown_users:
            out.append(
                f"{self.unknown_users:,} interactions are by users absent from the users file (kept, "
                "without attributes)"
            )
        return out


@dataclass
class Users:
    """The users file (optional): ids, a segment and attribute columns, in file order."""

    path: str | None
    ids: np.ndarray
    segment: np.ndarray | None  # object array of str
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]


def _unique_ids(table: Table, ids: np.ndarray, what: str) -> None:
    arr = pa.array(ids, type=pa.string())
    counts = pc.value_counts(arr)
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        value = dup[0].as_py()
        rows = np.flatnonzero(ids == value)
        first = table.error(int(rows[0]), f"{what}_id", "")
        raise table.error(
            int(rows[1]),
            f"{what}_id",
            f"duplicate {what} id {value!r} (first at {first.args[0].split(',')[1].strip()})",
        )


def _column_roles(table: Table, config: BuildConfig) -> tuple[list, list, list]:
    """(numeric, categorical, text) attribute columns of the items file."""
    present = [c for c in table.columns if c not in ITEM_RESERVED]
    for name in (*(config.text_columns or ()), *(config.categorical_columns or ()), *(config.numeric_columns or ())):
        if name not in table and name not in ITEM_RESERVED:
            raise table.error(None, name, "the build config names this column, but the items file has no such column")
    text = list(config.text_columns) if config.text_columns is not None else [c for c in TEXT_DEFAULT if c in table]
    if config.numeric_columns is not None:
        numeric = [c for c in config.numeric_columns if c not in text]
    else:
        numeric = [
            c
            for c in present
            if c not in text and c not in (config.categorical_columns or ()) and _all_numbers(table.columns[c])
        ]
    if config.categorical_columns is not None:
        categorical = list(config.categorical_columns)
    else:
        categorical = [c for c in present if c not in text and c not in numeric]
    return numeric, categorical, text


def _all_numbers(arr: pa.Array) -> bool:
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return True
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return False
    text = pc.utf8_trim_whitespace(arr)
    filled = pc.filter(text, pc.greater(pc.utf8_length(text), 0))
    if len(filled) == 0:
        return False
    return bool(pc.all(pc.match_substring_regex(filled, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")).as_py())


def read_catalog(path, config: BuildConfig, fields: dict[str, str]) -> Catalog:
    """Read and check the items file (``fields``: field -> column renames)."""
    table = read_table(path, fields=fields, required=("item_id",), what="items")
    ids = table.strings("item_id")
    _unique_ids(table, ids, "item")
    numeric_cols, categorical_cols, text_cols = _column_roles(table, config)
    numeric = {}
    if "price" in table:
        numeric["price"] = table.numbers("price")
        bad = numeric["price"] < 0
        if bad.any():
            raise table.error(int(np.argmax(bad)), "price", f"a price must be >= 0, found {numeric['price'][bad][0]!r}")
    numeric.update({c: table.numbers(c) for c in numeric_cols})
    return Catalog(
        path=str(path),
        ids=ids,
        type=table.strings("type", required=False) if "type" in table else None,
        numeric=numeric,
        categorical={c: table.strings(c, required=False) for c in categorical_cols},
        text={c: table.strings(c, required=False) for c in text_cols},
        in_stock=table.booleans("in_stock") if "in_stock" in table else np.ones(table.n_rows, bool),
        created_at=(
            table.timestamps("created_at", required=False) if "created_at" in table else np.full(table.n_rows, np.nan)
        ),
    )


def read_users(path, config: BuildConfig, fields: dict[str, str]) -> Users:
    table = read_table(path, fields=fields, required=("user_id",), what="users")
    ids = table.strings("user_id")
    _unique_ids(table, ids, "user")
    seg = config.segment_column
    others = [c for c in table.columns if c not in ("user_id", seg)]
    numeric = {c: table.numbers(c) for c in others if _all_numbers(table.columns[c])}
    categorical = {c: table.strings(c, required=False) for c in others if c not in numeric}
    return Users(
        path=str(path),
        ids=ids,
        segment=table.strings(seg, required=False) if seg in table else None,
        numeric=numeric,
        categorical=categorical,
    )


def read_events(path, config: BuildConfig, fields: dict[str, str], item_ids: np.ndarray, users: Users | None) -> Events:
    """Read and check the interactions file, resolving item ids against ``item_ids`` (the
    build's index order) and user ids against ``users`` (users not in it are appended)."""
    table = read_table(
        path,
        fields=fields,
        required=("user_id", "item_id", "event_type", "timestamp"),
        what="interactions",
        columns=EVENT_FIELDS,
    )
    user_text = table.text("user_id")
    item_text = table.text("item_id")
    ts = table.timestamps("timestamp", unit=config.timestamp_unit)
    types = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(table.columns["event_type"], pa.string())))
    table.strings("event_type")  # an empty event_type is an error naming its line
    kind_of = config.event_kind()
    names = pa.array(list(kind_of), type=pa.string())
    codes_of_names = np.array([KIND_CODES[kind_of[n]] for n in names.to_pylist()], dtype=np.int8)
    where = pc.index_in(types, value_set=names)
    claimed = pc.is_valid(where).to_numpy(zero_copy_only=False)
    kinds = np.full(table.n_rows, -1, dtype=np.int8)
    kinds[claimed] = codes_of_names[where.fill_null(0).to_numpy(zero_copy_only=False)[claimed]]
    ignored = {}
    if not claimed.all():
        counts = pc.value_counts(pc.filter(types, pc.is_null(where)))
        ignored = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    item_pos = pc.index_in(item_text, value_set=pa.array(item_ids, type=pa.string()))
    unknown = pc.is_null(item_pos).to_numpy(zero_copy_only=False)
    item = item_pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    examples = list(dict.fromkeys(pc.filter(item_text, pa.array(unknown)).slice(0, 50).to_pylist()))[:3]
    # users: the users file's order first, then interaction-only users in order of appearance
    known_users = users.ids if users is not None else np.empty(0, dtype=object)
    enc = pc.dictionary_encode(user_text)
    distinct = np.asarray(enc.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    pos = pc.index_in(enc.dictionary, value_set=pa.array(known_users, type=pa.string()))
    missing = pc.is_null(pos).to_numpy(zero_copy_only=False)
    to_index = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    to_index[missing] = len(known_users) + np.arange(int(missing.sum()))
    user = to_index[enc.indices.to_numpy(zero_copy_only=False)]
    user_ids = np.concatenate([known_users, distinct[missing]]) if missing.any() else known_users.copy()
    unknown_users = int(missing[enc.indices.to_numpy(zero_copy_only=False)].sum()) if users is not None else 0
    keep = (kinds >= 0) & ~unknown
    session = None
    if "session_id" in table:
        enc_s = pc.dictionary_encode(table.text("session_id", required=False))
        session = enc_s.indices.to_numpy(zero_copy_only=False).astype(np.int64)[keep]
    value = table.numbers("value")[keep] if "value" in table else None
    quantity = None
    if "quantity" in table:
        quantity = table.numbers("quantity")
        bad = quantity < 0
        if bad.any():
            raise table.error(int(np.argmax(bad)), "quantity", f"a quantity must be >= 0, found {quantity[bad][0]!r}")
        quantity = quantity[keep]
    if not keep.any():
        raise InputError(
            str(path),
            None,
            None,
            "no interaction is usable: every row names an unknown item or an event type no setting "
            "counts as a view, cart or purchase",
        )
    return Events(
        path=str(path),
        n_rows=table.n_rows,
        user=user[keep],
        item=item[keep],
        kind=kinds[keep],
        ts=ts[keep],
        value=value,
        quantity=quantity,
        session=session,
        user_ids=user_ids,
        unknown_items=int(unknown.sum()),
        unknown_item_examples=examples,
        unknown_users=unknown_users,
        ignored_types=ignored,
    )


def parse_mapping(pairs) -> dict[str, dict[str, str]]:
    """``--map`` values (``FIELD=COLUMN`` or ``FILE.FIELD=COLUMN``, FILE one of items,
    interactions, users) as ``{file: {field: column}}``; a bare FIELD applies to every file."""
    out: dict[str, dict[str, str]] = {"items": {}, "interactions": {}, "users": {}}
    for pair in pairs:
        key, eq, column = pair.partition("=")
        key, column = key.strip(), column.strip()
        if not eq or not key or not column:
            raise ValidationError(f"--map takes FIELD=COLUMN (or FILE.FIELD=COLUMN), got {pair!r}", "map")
        file, dot, fld = key.partition(".")
        files = [file] if dot else list(out)
        if dot and file not in out:
            raise ValidationError(f"--map {pair}: FILE must be items, interactions or users, got {file!r}", "map")
        for f in files:
            if (fld if dot else key) in out[f] and dot:
                raise ValidationError(f"--map {pair}: {key} is mapped twice", "map")
            out[f][fld if dot else key] = column
    return out
