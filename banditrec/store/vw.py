"""Export of the decision log for Vowpal Wabbit: text ``--cb_adf`` examples and decision-service
JSON (``--dsjson``), one contextual-bandit example per **logged slot** over all of its decision's
candidates. Reads the log as :mod:`banditrec.store.export` does.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError
from .export import ExportResult, atomic_output, read_batches, read_layout
from .log import DecisionLog

F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: VW reads probabilities as float32
F32_MAX = float(np.finfo(np.float32).max)
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


def _vw_examples(
    log: DecisionLog,
    kind: str,
    default_reward: float,
    min_probability: float | None,
    batch_decisions: int,
    counter: list[int],
) -> Iterator[_VWExample]:
    if not math.isfinite(default_reward):
        raise ValidationError(f"default_reward must be finite, got {default_reward!r}", "default_reward")
    if min_probability is not None and not (F32_TINY <= min_probability <= 1):
        raise ValidationError(
            f"min_probability must be in [{F32_TINY:.3g}, 1], got {min_probability!r}", "min_probability"
        )
    with log.snapshot() as conn:
        layout = read_layout(conn, False)
        cols = {c: i for i, c in enumerate(layout.columns)}
        i_event, i_pos, i_ts, i_item, i_marg = (cols[c] for c in ("event_id", "position", "ts", "item_id", "marginal"))
        i_reward = cols.get(f"reward:{kind}")
        if layout.kinds and kind not in layout.kinds:
            raise ValidationError(
                f"the log has no {kind!r} rewards; it has {', '.join(map(repr, layout.kinds))}", "kind"
            )
        for batch in read_batches(conn, layout, batch_decisions):
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
                            f"{where}: context value {bad[0]!r} cannot be a VW feature (VW stores float32)", "context"
                        )
                chosen = index_of.get(row[i_item])
                if chosen is None:
                    raise ValidationError(
                        f"{where}: item {row[i_item]!r} is not among the decision's {len(candidates)} candidates",
                        "item_id",
                    )
                reward = row[i_reward] if i_reward is not None else None
                reward = default_reward if reward is None else reward
                p = row[i_marg]
                if p < F32_TINY or (min_probability is not None and p < min_probability):
                    if min_probability is None:
                        raise ValidationError(
                            f"{where}: marginal propensity {p!r} would read as 0 in VW (float32), which makes VW "
                            f"skip the update; pass min_probability to clip it",
                            "marginal",
                        )
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


def export_vw(
    log: DecisionLog,
    path: str | Path,
    *,
    kind: str = "click",
    default_reward: float = 0.0,
    min_probability: float | None = None,
    batch_decisions: int = 5000,
) -> ExportResult:
    (
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
    """
        + _VW_DOC
    )
    counter = [0, 0, 0]
    with atomic_output(path, "w", encoding="utf-8") as fh:
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
        return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, OSError, ValueError):
        return repr(ts)  # not a Unix time; VW keeps Timestamp as an opaque string


def export_dsjson(
    log: DecisionLog,
    path: str | Path,
    *,
    kind: str = "click",
    default_reward: float = 0.0,
    min_probability: float | None = None,
    batch_decisions: int = 5000,
) -> ExportResult:
    (
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
    """
        + _VW_DOC
    )
    counter = [0, 0, 0]
    with atomic_output(path, "w", encoding="utf-8") as fh:
        for ex in _vw_examples(log, kind, default_reward, min_probability, batch_decisions, counter):
            shared: dict[str, Any] = {}
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
