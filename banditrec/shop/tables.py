"""Reading a shop's input files (CSV or Parquet) into typed columns whose errors say where.

Every cell is read as text first (CSV) or as stored (Parquet) and converted here, so that a bad
cell is reported as ``items.csv, line 17, column 'price': expected a number, found 'abc'``.
CSV lines are counted exactly, quoted line breaks included. See ``docs/data-formats.md``.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ValidationError

TRUE = ("1", "true", "t", "yes", "y")
FALSE = ("0", "false", "f", "no", "n")
MILLIS_FROM = 1e11  # epoch seconds beyond this are year 5138: the file holds milliseconds


class InputError(ValidationError):
    """Bad input in a shop file: ``path``, ``line`` (1 is a CSV header; Parquet counts rows from 1)
    and ``column`` locate it, ``message`` says what was found."""

    def __init__(self, path: str, line: int | None, column: str | None, message: str, *, unit: str = "line"):
        where = ", ".join(
            [Path(path).name]
            + ([f"{unit} {line}"] if line is not None else [])
            + ([f"column {column!r}"] if column is not None else [])
        )
        super().__init__(f"{where}: {message}", column)
        self.path, self.line, self.column = path, line, column


@dataclass
class Table:
    """One input file's columns (pyarrow arrays), renamed to field names by the mapping."""

    path: str
    fmt: str  # "csv" or "parquet"
    columns: dict[str, pa.Array]
    n_rows: int

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def error(self, row: int | None, column: str | None, message: str) -> InputError:
        """An :class:`InputError` at data row ``row`` (0-based) of ``column``."""
        if row is None:
            return InputError(self.path, None, column, message)
        if self.fmt == "parquet":
            return InputError(self.path, row + 1, column, message, unit="row")
        return InputError(self.path, csv_line(self.path, row), column, message)

    # ---- typed columns -------------------------------------------------------------------------
    def text(self, name: str, *, required: bool = True) -> pa.Array:
        """The column as an Arrow string array (empty cells as ""); an empty cell is an error
        when ``required``."""
        arr = self.columns[name]
        if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
            arr = pc.cast(arr, pa.string())
        if required:
            empty = pc.or_kleene(pc.is_null(arr), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0))
            if pc.any(empty).as_py():
                self._refuse(
                    empty.to_numpy(zero_copy_only=False), name, lambda v: "a value is required, found an empty cell"
                )
        return arr.fill_null("")

    def strings(self, name: str, *, required: bool = True) -> np.ndarray:
        """The column as an object array of ``str``; an empty cell is an error when ``required``."""
        return np.asarray(self.text(name, required=required).to_numpy(zero_copy_only=False), dtype=object)

    def numbers(self, name: str, *, required: bool = False) -> np.ndarray:
        """The column as float64; empty cells are NaN (an error when ``required``)."""
        arr = self.columns[name]
        if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
            out = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(float)
            out[pc.is_null(arr).to_numpy(zero_copy_only=False)] = np.nan
        else:
            text = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
            empty = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_length(text), 0)).to_numpy(zero_copy_only=False)
            out = np.full(self.n_rows, np.nan)
            values = text.to_numpy(zero_copy_only=False)[~empty]
            try:
                out[~empty] = np.asarray(values, dtype=float)
            except ValueError:
                bad = np.zeros(self.n_rows, bool)
                bad[np.flatnonzero(~empty)] = [not is_float(v) for v in values]
                self._refuse(bad, name, lambda v: f"expected a number, found {v!r}")
            if required:
                self._refuse(empty, name, lambda v: "a number is required, found an empty cell")
        self._refuse(np.isinf(out), name, lambda v: f"expected a finite number, found {v!r}")
        if required:
            self._refuse(np.isnan(out), name, lambda v: "a number is required, found an empty cell")
        return out

    def booleans(self, name: str, default: bool = True) -> np.ndarray:
        """true/false, 1/0, yes/no (any case); an empty cell is ``default``."""
        arr = self.columns[name]
        if pa.types.is_boolean(arr.type):
            return arr.fill_null(default).to_numpy(zero_copy_only=False).astype(bool)
        if pa.types.is_integer(arr.type):
            arr = pc.cast(arr, pa.string())
        text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))).fill_null("")
        truthy = pc.is_in(text, pa.array(TRUE)).to_numpy(zero_copy_only=False)
        falsy = pc.is_in(text, pa.array(FALSE)).to_numpy(zero_copy_only=False)
        empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
        self._refuse(~(truthy | falsy | empty), name, lambda v: f"expected true/false, 1/0 or yes/no, found {v!r}")
        return np.where(empty, default, truthy)

    def timestamps(self, name: str, *, unit: str = "s", required: bool = True) -> np.ndarray:
        """Seconds since the Unix epoch (UTC) as float64, from epoch numbers in ``unit`` ("s" or
        "ms") or ISO-8601 text (``2024-05-01``, ``2024-05-01T09:30:00``, with an optional
        fraction and a ``Z`` or ``+02:00`` offset; without one, UTC)."""
        arr = self.columns[name]
        scale = 1e-3 if unit == "ms" else 1.0
        if pa.types.is_timestamp(arr.type):
            us = pc.cast(arr, pa.timestamp("us", tz=arr.type.tz)).cast(pa.int64())
            out = us.to_numpy(zero_copy_only=False).astype(float) / 1e6
        elif pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
            out = self.numbers(name) * scale
        else:
            text = pc.utf8_trim_whitespace(pc.cast(arr, pa.string())).fill_null("")
            values = text.to_numpy(zero_copy_only=False)
            out = np.full(self.n_rows, np.nan)
            empty = values == ""
            numeric = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$").to_numpy(
                zero_copy_only=False
            )
            out[numeric] = np.asarray(values[numeric], dtype=float) * scale
            iso = ~numeric & ~empty
            if iso.any():
                fast = _arrow_iso_seconds(pc.filter(text, pa.array(iso)))
                if fast is not None:
                    out[iso] = fast
                else:
                    out[iso] = _iso_seconds(
                        values[iso],
                        lambda j, v: self.error(
                            int(np.flatnonzero(iso)[j]),
                            name,
                            f"expected a timestamp (ISO-8601 or epoch seconds), found {v!r}",
                        ),
                    )
        if required:
            self._refuse(np.isnan(out), name, lambda v: "a timestamp is required, found an empty cell")
        if unit == "s":
            self._refuse(
                np.abs(np.nan_to_num(out)) >= MILLIS_FROM,
                name,
                lambda v: (
                    f"epoch seconds expected, found {v!r}, which looks like milliseconds "
                    '(set timestamp_unit = "ms" under [interactions] in the build config)'
                ),
            )
        return out

    def _refuse(self, bad: np.ndarray, name: str, message) -> None:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            value = self.columns[name][row].as_py()
            raise self.error(row, name, message(value))


def is_float(text: str) -> bool:
    """Whether ``float(text)`` parses."""
    try:
        float(text)
    except ValueError:
        return False
    return True


_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def _arrow_iso_seconds(text: pa.Array) -> np.ndarray | None:
    """Epoch seconds of ISO-8601 strings that all share one form Arrow casts in C (all with a
    zone offset or ``Z``, or all without one, meaning UTC); None otherwise (the exact parser
    then finds the bad cell)."""
    for unit in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            stamps = pc.cast(text, unit)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if stamps.null_count:
            return None
        return pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    return None


def _iso_seconds(values: np.ndarray, error) -> np.ndarray:
    """ISO-8601 strings to epoch seconds; ``error(j, value)`` builds the exception for item j."""
    offsets = np.zeros(len(values))
    bare = np.empty(len(values), dtype=object)
    for j, v in enumerate(values.tolist()):
        m = _OFFSET.search(v)
        if m is None:
            bare[j] = v.replace(" ", "T", 1)
            continue
        bare[j] = v[: m.start()].replace(" ", "T", 1)
        tz = m.group(1)
        if tz != "Z":
            sign = -1.0 if tz[0] == "-" else 1.0
            digits = tz[1:].replace(":", "")
            offsets[j] = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    try:
        parsed = np.array(bare.tolist(), dtype="datetime64[us]")
    except ValueError:
        for j, v in enumerate(bare.tolist()):
            try:
                np.datetime64(v, "us")
            except ValueError:
                raise error(j, values[j]) from None
        raise
    bad = np.isnat(parsed)
    if bad.any():
        j = int(np.argmax(bad))
        raise error(j, values[j])
    return parsed.astype(np.int64) / 1e6 - offsets


def csv_line(path: str, row: int) -> int:
    """The line on which data row ``row`` (0-based) of the CSV file ``path`` starts."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        line = 1
        for i, _ in enumerate(reader):
            if i == row + 1:
                return line
            line = reader.line_num + 1
    return line


def read_table(
    path, *, fields: dict[str, str], required: tuple[str, ...], what: str, columns: tuple[str, ...] | None = None
) -> Table:
    """Read ``path`` (``.csv`` or ``.parquet``), renaming each column named in ``fields``
    (field -> column) to its field. ``required`` fields must be present; ``columns``, when
    given, limits which other columns are kept. ``what`` names the file's role in messages."""
    path = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(path, None, None, f"no such {what} file")
    if p.stat().st_size == 0:
        raise InputError(path, None, None, f"the {what} file is empty")
    fmt = "parquet" if p.suffix.lower() in (".parquet", ".pq") else "csv"
    table = _read_parquet(path) if fmt == "parquet" else _read_csv(path)
    header = list(table.column_names)
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise InputError(path, 1 if fmt == "csv" else None, dup, "this column appears twice in the header")
    by_column = {col: field for field, col in fields.items()}
    out: dict[str, pa.Array] = {}
    for name in header:
        field = by_column.get(name, name if name not in fields else None)
        if field is None or (columns is not None and field not in columns and field not in required):
            continue
        col = table.column(name)
        out[field] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    for field in required:
        if field not in out:
            col = fields.get(field, field)
            hint = f" (mapped from --map {field}={col})" if col != field else f" (or map one with --map {field}=COLUMN)"
            raise InputError(
                path,
                1 if fmt == "csv" else None,
                col,
                f"the {what} file needs a column {col!r}{hint}; its header has {_show(header)}",
            )
    if table.num_rows == 0:
        raise InputError(path, None, None, f"the {what} file has a header but no rows")
    return Table(path=path, fmt=fmt, columns=out, n_rows=table.num_rows)


def _show(header) -> str:
    shown = ", ".join(repr(h) for h in header[:12])
    return shown + (f", ... ({len(header)} columns)" if len(header) > 12 else "")


def _read_csv(path: str) -> pa.Table:
    import pyarrow.csv as pcsv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise InputError(path, 1, None, "the first line must be a header naming the columns")
    if any(not h.strip() for h in header[1:]):
        j = next(i for i, h in enumerate(header) if i and not h.strip())
        raise InputError(path, 1, None, f"column {j + 1} of the header has no name")
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(use_threads=True, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(path, _arrow_row_line(path, str(exc)), None, _arrow_message(str(exc))) from None
    if not header[0].strip():  # an unnamed first column: a row index written by pandas; not data
        table = table.drop_columns([table.column_names[0]])
    return table


def _arrow_row_line(path: str, message: str) -> int | None:
    m = re.search(r"[Rr]ow #?(\d+)", message)
    return int(m.group(1)) if m else None


def _arrow_message(message: str) -> str:
    m = re.search(r"Expected (\d+) columns, got (\d+)", message)
    if m:
        return f"expected {m.group(1)} cells as in the header, found {m.group(2)}"
    if "UTF8" in message or "utf-8" in message.lower():
        return "the file is not valid UTF-8 text"
    return f"the file cannot be read as CSV: {message.splitlines()[0]}"


def _read_parquet(path: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, None, None, f"the file cannot be read as Parquet: {exc}") from None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
