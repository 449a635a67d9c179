"""Import of CSV files into the decision log: the Open Bandit Dataset's layout and any CSV of
logged slots mapped field by field (:func:`import_obd`, :func:`import_csv`).

A file is read twice (:mod:`banditrec.store.csvrows`: once for the item catalog and categories,
then grouped into decisions); each batch of decisions is validated completely, then written with
its rewards through :meth:`DecisionLog.write_decisions` only -- one transaction per batch, all or
nothing -- so every schema check of the log applies to imported data too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from ..errors import BanditRecError, ConflictError, ValidationError
from ..types import Decision, Reward, Slot
from .checks import MAX_ABS_REWARD
from .csvrows import (
    DEFAULT_CSV_MAPPING,
    OBD_MAPPING,
    OBD_OPTIONAL,
    Catalog,
    RowError,
    Spec,
    float_cells,
    group_rows,
    int_cells,
    prescan,
    resolve,
    timestamp_cell,
)
from .log import DecisionLog
from .writer import DecisionRecord


class ImportFailedError(ValidationError):
    """Bad input stopped an import. ``line`` and ``column`` locate it (``line`` 1 is the header);
    ``result`` says what was imported before it: that much is in the log, complete, and
    ``result.last_line + 1`` is where to resume (``start_line``) after fixing the file."""

    def __init__(self, message: str, column: str | None, line: int | None, result: ImportResult):
        super().__init__(message, column)
        self.line = line
        self.column = column
        self.result = result


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
        return {
            "encoding_id": self.encoding_id,
            "source": self.path,
            "format": self.format,
            "context_names": list(self.context_names),
            "n_items": self.n_items,
        }


class _Counts(TypedDict):
    """What an import has written so far (the fields of :class:`ImportResult` it counts)."""

    decisions: int
    slots: int
    rewards: int
    first: int | None
    last: int | None


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
    def __init__(
        self,
        spec: Spec,
        catalog: Catalog,
        categories: list[list[str]],
        *,
        kind: str,
        policy: str,
        model_version: str,
        surface: str,
        event_prefix: str,
        source: str,
        rounds: int | None = None,
    ):
        self.spec, self.catalog, self.categories = spec, catalog, categories
        self.rounds = rounds  # each row is its own round of a carousel of this many slots
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
        shared = [
            col[f]
            for f in (
                "event",
                "ts",
                "user",
                "surface",
                "policy",
                "model_version",
                "policy_params",
                "joint_propensity",
                "log_joint_propensity",
                "candidates",
                "candidate_index",
            )
            if f in col
        ]
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

        positions = (
            int_cells(cells(col["position"]), lines, name("position"), low=spec.position_base) - spec.position_base
        )
        probs = {}
        for field in ("propensity", "marginal"):
            if field in col:
                p = float_cells(cells(col[field]), lines, name(field))
                bad = ~((p > 0) & (p <= 1))
                if bad.any():
                    i = int(np.argmax(bad))
                    raise RowError(
                        lines[i], name(field), f"a propensity must be in (0, 1], got {cells(col[field])[i]!r}"
                    )
                probs[field] = p
        conditional = probs.get("propensity", probs.get("marginal"))
        marginal = probs.get("marginal", conditional)
        assert conditional is not None and marginal is not None  # resolve() requires one of the columns
        draws = (
            int_cells(cells(col["marginal_draws"]), lines, name("marginal_draws"))
            if "marginal_draws" in col
            else np.zeros(len(rows), np.int64)
        )
        items = cells(col["item"])
        if "item_index" in col:
            item_index = int_cells(cells(col["item_index"]), lines, name("item_index"))
        else:
            item_index = np.array([self.catalog.index[i] for i in items], dtype=np.int64)
        slot_rewards = []
        for kind, ci, ti in spec.rewards:
            values = float_cells(cells(ci), lines, spec.header[ci], allow_empty=True)
            self._check_rewards(values, lines, spec.header[ci])
            times = float_cells(cells(ti), lines, spec.header[ti], allow_empty=True) if ti is not None else None
            slot_rewards.append((kind, values, times))
        whole_rewards = []
        for kind, ci, ti in spec.decision_rewards:
            values = float_cells(cells(ci, firsts), first_lines, spec.header[ci], allow_empty=True)
            self._check_rewards(values, first_lines, spec.header[ci])
            times = (
                float_cells(cells(ti, firsts), first_lines, spec.header[ti], allow_empty=True)
                if ti is not None
                else None
            )
            whole_rewards.append((kind, values, times))
        contexts = np.empty((len(groups), len(spec.context)))
        for col_j, c in enumerate(spec.context):
            contexts[:, col_j] = float_cells(cells(c, firsts), first_lines, spec.header[c], allow_empty=True)
        empty = np.isnan(contexts)  # _floats lets NaN through for empty cells only
        joint = log_joint = None
        if "joint_propensity" in col:
            joint = float_cells(cells(col["joint_propensity"], firsts), first_lines, name("joint_propensity"))
        if "log_joint_propensity" in col:
            log_joint = float_cells(
                cells(col["log_joint_propensity"], firsts), first_lines, name("log_joint_propensity")
            )

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
            if self.rounds is not None:
                if pos[0] >= self.rounds:
                    raise RowError(
                        line0,
                        name("position"),
                        f"position {pos[0] + spec.position_base} is beyond the "
                        f"carousel's {self.rounds} slots (--slots)",
                    )
            elif not np.array_equal(pos, np.arange(n)):
                missing = sorted(set(range(n)) - set(pos.tolist()))
                first_bad = int(np.argmax(pos != np.arange(n)))
                raise RowError(
                    group[int(order[first_bad])][0],
                    name("position"),
                    f"the decision starting at line {line0} has positions "
                    f"{(pos + spec.position_base).tolist()}; a decision needs positions "
                    f"{spec.position_base}..{spec.position_base + n - 1} (missing "
                    f"{missing[0] + spec.position_base})",
                )
            idx = [sl.start + int(o) for o in order]
            row0 = group[0][1]
            event_id = row0[col["event"]] if "event" in col else f"{self.event_prefix}:{line0}"
            ts = timestamp_cell(row0[col["ts"]], line0, name("ts")) if "ts" in col else 0.0
            if not math.isfinite(ts):
                raise RowError(line0, name("ts"), f"must be finite, got {row0[col['ts']]!r}")
            if "candidates" in col:
                cand_ids, cand_idx = self._candidate_lists(row0, line0)
            else:
                cand_ids, cand_idx = self.candidate_ids, self.candidate_idx
            slot_items = [items[i] for i in idx]
            if len(set(slot_items)) != n:
                dup = next(i for i in slot_items if slot_items.count(i) > 1)
                raise RowError(
                    group[0][0], name("item"), f"item {dup!r} fills two slots of the decision starting at line {line0}"
                )
            if "candidates" in col:
                members = dict(zip(cand_ids, cand_idx))
                for i, it in zip(idx, slot_items):
                    if it not in members:
                        raise RowError(lines[i], name("item"), f"item {it!r} is not among the decision's candidates")
                    if members[it] != item_index[i]:
                        raise RowError(
                            lines[i],
                            spec.header[col["item_index"]] if "item_index" in col else name("item"),
                            f"item {it!r} has catalog index {item_index[i]} here but {members[it]} in candidate_index",
                        )
            slot_of = pos.tolist() if self.rounds is not None else list(range(n))
            slots = tuple(
                Slot(
                    position=k,
                    item_id=items[i],
                    propensity=float(conditional[i]),
                    marginal=float(marginal[i]),
                    source=rows[i][1][col["source"]] if "source" in col else "imported",
                    marginal_draws=int(draws[i]),
                )
                for k, i in zip(slot_of, idx)
            )
            cond = np.array([s.propensity for s in slots])
            j = float(joint[g]) if joint is not None else float(np.prod(cond))
            lj = float(log_joint[g]) if log_joint is not None else float(np.log(cond).sum())
            if not (0 <= j <= 1) or lj > 0:
                raise RowError(
                    line0,
                    name("joint_propensity") if joint is not None else None,
                    f"joint propensity must be in [0, 1] with log <= 0, got {j!r} and {lj!r}",
                )
            context = self._context(row0, contexts[g], empty[g], line0)
            params = self._params(row0, line0)
            rewards = []
            for kind, values, rts in slot_rewards:
                for k, i in zip(slot_of, idx):
                    if not math.isnan(values[i]):
                        rt = ts if rts is None or math.isnan(rts[i]) else float(rts[i])
                        rewards.append(Reward(event_id, float(values[i]), position=k, kind=kind, ts=rt))
            for kind, values, rts in whole_rewards:
                if not math.isnan(values[g]):
                    rt = ts if rts is None or math.isnan(rts[g]) else float(rts[g])
                    rewards.append(Reward(event_id, float(values[g]), position=None, kind=kind, ts=rt))
            decision = Decision(
                event_id=event_id,
                user_id=row0[col["user"]] if "user" in col else "",
                slots=slots,
                joint_propensity=j,
                log_joint_propensity=lj,
                policy=row0[col["policy"]] if "policy" in col else self.policy,
                model_version=row0[col["model_version"]] if "model_version" in col else self.model_version,
                candidates=tuple(cand_ids),
                ts=ts,
                n_slots=self.rounds if self.rounds is not None and self.rounds != n else None,
            )
            out.append(
                _Parsed(
                    line0,
                    decision,
                    params,
                    list(cand_idx),
                    [int(item_index[i]) for i in idx],
                    context,
                    row0[col["surface"]] if "surface" in col else self.surface,
                    rewards,
                )
            )
        return out

    @staticmethod
    def _check_rewards(values: np.ndarray, lines: list[int], column: str) -> None:
        bad = np.abs(np.nan_to_num(values)) > MAX_ABS_REWARD
        if bad.any():
            i = int(np.argmax(bad))
            raise RowError(lines[i], column, f"a reward must be within +-{MAX_ABS_REWARD:g}, got {values[i]!r}")

    def _same_across(self, group) -> None:
        """Rows of one decision must agree on what belongs to the decision."""
        row0 = group[0][1]
        for line, row in group[1:]:
            for c in self.shared:
                if row[c] != row0[c]:
                    raise RowError(
                        line,
                        self.spec.header[c],
                        f"{row[c]!r} differs from {row0[c]!r} on line {group[0][0]}, the first row "
                        f"of the same decision",
                    )

    def _candidate_lists(self, row, line) -> tuple[list[str], list[int]]:
        col, header = self.spec.col, self.spec.header
        try:
            ids = json.loads(row[col["candidates"]])
            idx = json.loads(row[col["candidate_index"]])
        except json.JSONDecodeError as exc:
            raise RowError(line, header[col["candidates"]], f"expected JSON lists of candidates: {exc}") from None
        if (
            not isinstance(ids, list)
            or not isinstance(idx, list)
            or len(ids) != len(idx)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx)
        ):
            raise RowError(
                line,
                header[col["candidate_index"]],
                "candidates and candidate_index must be JSON lists of the same length, of ids and of "
                "non-negative integers",
            )
        return [str(i) for i in ids], idx

    def _context(self, row, numeric: np.ndarray, empty: np.ndarray, line: int) -> np.ndarray:
        """One-hot categories, then the numeric columns. Trailing empty numeric cells shorten the
        context (an export pads narrower contexts that way); an empty cell before a filled one is
        an error."""
        if empty.any():
            width = int(np.argmax(empty))
            if not empty[width:].all():
                raise RowError(
                    line, self.spec.header[self.spec.context[width]], "empty context cell before a filled one"
                )
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
                raise RowError(line, self.spec.header[col["policy_params"]], f"expected a JSON object: {exc}") from None
            if not isinstance(params, dict):
                raise RowError(line, self.spec.header[col["policy_params"]], "expected a JSON object")
            return params
        return {"source": self.source, "file": self.file_name, "context_encoding": self.encoding_id}


def _import(
    path: str | Path,
    log: DecisionLog,
    fmt: str,
    explicit: Mapping[str, str],
    defaults: Mapping[str, str],
    *,
    kind: str,
    position_base: int,
    group_by: Sequence[str] | None,
    n_items: int | None,
    policy: str,
    model_version: str,
    surface: str,
    event_prefix: str | None,
    batch_rows: int,
    start_line: int | None,
    on_batch: Callable[[ImportResult], None] | None,
    rounds: int | None = None,
) -> ImportResult:
    path = str(path)
    start_line = 2 if start_line is None else int(start_line)
    counts: _Counts = {"decisions": 0, "slots": 0, "rewards": 0, "first": None, "last": None}
    importer: _Importer | None = None

    def result() -> ImportResult:
        return ImportResult(
            path,
            fmt,
            counts["decisions"],
            counts["slots"],
            counts["rewards"],
            counts["first"],
            counts["last"],
            importer.catalog.n_items if importer else 0,
            importer.context_names if importer else (),
            importer.encoding_id if importer else "",
        )

    def fail(line, column, message) -> ImportFailedError:
        done = result()
        where = ", ".join(
            [path] + ([f"line {line}"] if line is not None else []) + ([f"column {column!r}"] if column else [])
        )
        progress = (
            f"imported {done.decisions} decisions ({done.slots} slots, {done.rewards} rewards, lines "
            f"{done.first_line}-{done.last_line}) before stopping; they are complete in the log, and "
            f"start_line={(done.last_line or 0) + 1} resumes after the fix"
            if done.decisions
            else "nothing was imported"
        )
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
                    raise RowError(1, None, "the file is empty: expected a header line")
                spec = resolve(fmt, path, header, explicit, defaults, kind, position_base, group_by)
                catalog, categories = prescan(reader, spec, n_items)
            except RowError as err:
                raise fail(err.line, err.column, err.message) from None
            except (UnicodeDecodeError, csv.Error) as exc:
                raise fail(None, None, f"not a readable UTF-8 CSV file: {exc}") from None
            importer = _Importer(
                spec,
                catalog,
                categories,
                kind=kind,
                policy=policy,
                model_version=model_version,
                surface=surface,
                event_prefix=event_prefix or Path(path).stem,
                source=fmt,
                rounds=rounds,
            )
            fh.seek(0)
            reader = csv.reader(fh)
            next(reader)
            batch: list = []
            rows_in_batch = 0
            groups = group_rows(reader, spec, start_line, single=rounds is not None)
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
                except RowError as err:
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
        log.write_decisions(
            [
                DecisionRecord(p.decision, p.params, p.candidate_index, p.slot_index, p.context, p.surface)
                for p in parsed
            ],
            rewards=rewards,
        )
    except BanditRecError as exc:
        batch = getattr(exc, "batch", None)
        if batch is None:
            raise
        p = owner[exc.index] if batch == "rewards" else parsed[exc.index]
        if batch == "items" and isinstance(exc, ConflictError) and exc.field == "event_id":
            raise fail(
                p.line,
                None,
                f"event id {p.decision.event_id!r} is already in the log (was this file "
                f"imported before? set event_prefix or start_line)",
            ) from None
        what = f"a {rewards[exc.index].kind} reward" if batch == "rewards" else "the decision"
        raise fail(p.line, exc.field, f"the log refused {what}: {exc.reason}") from None


def import_csv(
    path: str | Path,
    log: DecisionLog,
    mapping: Mapping[str, str] | None = None,
    *,
    kind: str = "click",
    position_base: int = 0,
    group_by: Sequence[str] | None = None,
    n_items: int | None = None,
    policy: str = "imported",
    model_version: str = "",
    surface: str = "home",
    event_prefix: str | None = None,
    batch_rows: int = 10_000,
    start_line: int | None = None,
    on_batch: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a CSV with one row per logged slot, columns named by ``mapping`` (field -> column).

    Fields (defaults are the column names :func:`banditrec.store.export.export_csv` writes, used when
    present):

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
    return _import(
        path,
        log,
        "csv",
        dict(mapping or {}),
        DEFAULT_CSV_MAPPING,
        kind=kind,
        position_base=position_base,
        group_by=group_by,
        n_items=n_items,
        policy=policy,
        model_version=model_version,
        surface=surface,
        event_prefix=event_prefix,
        batch_rows=batch_rows,
        start_line=start_line,
        on_batch=on_batch,
    )


def import_obd(
    path: str | Path,
    log: DecisionLog,
    *,
    mapping: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    n_items: int | None = None,
    policy: str = "obd",
    model_version: str = "",
    surface: str = "home",
    event_prefix: str | None = None,
    batch_rows: int = 10_000,
    start_line: int | None = None,
    on_batch: Callable[[ImportResult], None] | None = None,
    slots: int | None = 3,
) -> ImportResult:
    """Import the Open Bandit Dataset's CSV layout (Saito et al. 2021, ``open_bandit_dataset/
    <policy>/<campaign>/<campaign>.csv``).

    Columns: ``timestamp, item_id, position, click, propensity_score, user_feature_0..3`` and
    ``user-item_affinity_<item>``, often after an unnamed index column (ignored). One row is one
    (impression, position); positions are 1-based and become slots 0..K-1.

    - **Rounds.** As Open Bandit Pipeline reads the data, each row is its own round: a carousel
      of ``slots`` positions (3 in ZOZOTOWN's) observed at the row's position only, logged as a
      decision of ``slots`` slots with that one slot (``Decision.n_slots``). The published
      sample's rows do not come grouped by impression.
    - **Grouping** (``slots=None``): rows of one impression share the timestamp and every user
      feature, so a decision is a run of consecutive rows with equal ``timestamp``,
      ``user_feature_*`` and ``user-item_affinity_*`` cells; a position repeating within a run
      starts the next decision. ``group_by`` replaces the key columns. A decision whose
      positions are not exactly 1..K raises, naming the line.
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
    return _import(
        path,
        log,
        "obd",
        {**OBD_MAPPING, **(mapping or {})},
        OBD_OPTIONAL,
        kind="click",
        position_base=1,
        group_by=group_by,
        n_items=n_items,
        policy=policy,
        model_version=model_version,
        surface=surface,
        event_prefix=event_prefix,
        batch_rows=batch_rows,
        start_line=start_line,
        on_batch=on_batch,
        rounds=slots,
    )


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
