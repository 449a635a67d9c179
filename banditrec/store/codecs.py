"""How the decision log encodes its values: the JSON texts of decision rows and the number lists
readers parse back, the named parameters of the readers' queries, and a decision's rows.

No SQL runs here; :mod:`.writer` and :mod:`.reader` use these on both sides of the log.
"""

from __future__ import annotations

import json

import numpy as np
import orjson

from ..errors import ValidationError
from ..types import Decision
from ..validation import check_finite

WHOLE_DECISION = -1  # the position of a reward for the decision as a whole


def read_params(
    *,
    after_seq: int = 0,
    until_seq: int,
    kind: str = "click",
    window: float | None = None,
    closed_before: float | None = None,
    include_late: bool = False,
    training: bool = False,
) -> dict:
    """The named parameters of the ``READ_*`` queries."""
    return {
        "after": int(after_seq),
        "until": int(until_seq),
        "kind": kind,
        "window": window,
        "closed": closed_before,
        "include_late": int(bool(include_late)),
        "training": int(bool(training)),
    }


def number_lists(texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Parse JSON lists of numbers: ``(flat values, offsets (len(texts) + 1,))``.

    Fast path: one C-level parse (``np.fromstring``) of all lists joined, instead of one
    ``json.loads`` per list (faster: bench section ``choices``; exact: numpy reads decimal text
    with correct rounding, as Python does). ``np.fromstring``
    is lax -- a whitespace-only field reads as 0 (or -1.0), nested lists would flatten -- so
    that path is taken only when every non-empty text starts with ``[`` not followed by
    whitespace (so no ``[ ]``) and ends with ``]``, there is no other bracket, tab or line
    break, and there are as many values as comma-separated fields; for valid JSON that leaves
    no way to misread. Empty lists are ``[]`` as ``json.dumps`` writes them; anything else
    (``[ ]``, `` [1]``, NaN, malformed text) goes through strict ``json.loads`` row by row.
    """
    n = len(texts)
    filled = [t for t in texts if t != "[]"]
    joined = ",".join(filled)
    if (
        all(t[:1] == "[" and t[-1:] == "]" and t[1:2] not in " \t\n\r" for t in filled)
        and joined.count("[") == len(filled)
        and joined.count("]") == len(filled)
        and not any(c in joined for c in "\t\n\r")
    ):
        lengths = np.fromiter((t.count(",") + 1 if t != "[]" else 0 for t in texts), dtype=np.int64, count=n)
        try:
            flat = np.fromstring(joined.replace("[", "").replace("]", ""), dtype=dtype, sep=",")
        except ValueError:
            flat = None
        if flat is not None and len(flat) == lengths.sum():
            return flat, np.concatenate(([0], np.cumsum(lengths)))
    lists = [np.asarray(json.loads(t), dtype=dtype) for t in texts]
    if any(a.ndim != 1 for a in lists):
        raise ValidationError("logged contexts and candidate lists must be flat lists of numbers", "candidate_index")
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=n)
    flat = np.concatenate(lists) if lists else np.empty(0, dtype)
    return flat, np.concatenate(([0], np.cumsum(lengths)))


def float_rows(texts: list[str]) -> np.ndarray:
    """Parse equal-length JSON lists of floats into a ``(len(texts), width)`` array."""
    flat, offsets = number_lists(texts, float)
    lengths = np.diff(offsets)
    width = int(lengths[0]) if len(texts) else 0
    if (lengths != width).any():
        raise ValidationError("logged contexts (or item features) have different lengths", "context")
    return flat.reshape(len(texts), width)


class LoggedParams(dict):
    """A read-only ``policy_params`` dict that keeps its logged JSON: a serving engine logs the
    same params with every decision, so they are serialised once, not once per decision."""

    __slots__ = ("json",)

    def __init__(self, params: dict):
        super().__init__(params)
        self.json = json.dumps(self, sort_keys=True)

    def __reduce__(self):  # copy and pickle rebuild it rather than setting items one by one
        return (LoggedParams, (dict(self),))

    def _read_only(self, *args, **kwargs):
        raise TypeError("LoggedParams is read-only; build a new one")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


def _params_json(policy_params) -> str:
    if type(policy_params) is LoggedParams:
        return policy_params.json
    return json.dumps(policy_params, sort_keys=True)


ARMS = ("main", "holdout", "control")  # decisions.arm (migration 0008)
SERVED = ("policy", "baseline")  # decisions.served


def decision_rows(
    decision: Decision,
    policy_params: dict,
    candidate_index,
    slot_index,
    context,
    surface: str = "home",
    pending: bytes | bool = False,
) -> tuple[tuple, list[tuple]]:
    """The ``decisions`` row and ``slots`` rows of one decision, checked for consistency.

    ``candidate_index`` holds the catalog index of each of ``decision.candidates`` and
    ``slot_index`` that of each slot's item; slots must be at positions 0..K-1 in order. NaN
    propensities (logged as NULL) are refused unless the decision is ``pending``.
    """
    if not pending:  # one sum: a NaN anywhere makes it NaN (values left for later: pending only)
        total = decision.joint_propensity + decision.log_joint_propensity
        total += sum(s.propensity + s.marginal for s in decision.slots)
        if total != total:
            raise ValidationError("a propensity is NaN in a decision that is not pending", "slots")
    if len(slot_index) != len(decision.slots) or len(candidate_index) != len(decision.candidates):
        raise ValidationError(
            f"a decision with {len(decision.slots)} slots and {len(decision.candidates)} candidates needs "
            f"as many indices, got {len(slot_index)} and {len(candidate_index)}",
            "slots",
        )
    if decision.arm not in ARMS:
        raise ValidationError(f"arm must be one of {', '.join(ARMS)}, got {decision.arm!r}", "arm")
    if decision.served not in SERVED:
        raise ValidationError(f"served must be one of {', '.join(SERVED)}, got {decision.served!r}", "served")
    slots = decision.slots
    positions = [s.position for s in slots]
    n_slots = len(slots) if decision.n_slots is None else decision.n_slots
    if n_slots == len(slots):
        if positions != list(range(len(positions))):
            raise ValidationError(f"slot positions must be 0..{len(positions) - 1} in order, got {positions}", "slots")
    elif not (
        isinstance(n_slots, int)
        and 0 < len(slots) < n_slots
        and positions[0] >= 0
        and positions[-1] < n_slots
        and all(a < b for a, b in zip(positions, positions[1:]))
    ):
        raise ValidationError(
            f"a decision observed at some of its {n_slots!r} positions needs them increasing "
            f"within 0..{n_slots - 1 if isinstance(n_slots, int) else '?'}, got {positions}",
            "slots",
        )
    sources = [s.source for s in slots]
    if "pinned" in sources and n_slots != len(slots):
        raise ValidationError("a partly observed decision cannot have pinned slots", "slots")
    if "pinned" in sources:  # (the pinned checks, only for decisions that pin)
        pinned = [source == "pinned" for source in sources]
        if any(pinned[i] and not pinned[i - 1] for i in range(1, len(pinned))):
            raise ValidationError(
                "pinned slots must come first (readers number the policy's slots after them)", "slots"
            )
        if any(p and (s.propensity != 1.0 or s.marginal != 1.0) for p, s in zip(pinned, slots)):
            raise ValidationError("a pinned slot is shown by rule: its propensity and marginal must be 1", "slots")
    row = (
        decision.event_id,
        float(decision.ts),
        decision.user_id,
        surface,
        decision.policy,
        _params_json(policy_params),
        decision.model_version,
        n_slots,
        json_strings(decision.candidates),
        index_json(candidate_index),
        floats_json(context),
        float(decision.joint_propensity),
        float(decision.log_joint_propensity),
        decision.build,
        None if decision.candidate_sources is None else json_strings(decision.candidate_sources),
        decision.arm,
        decision.served,
        None if decision.shadow is None else json_strings(decision.shadow),
    )
    slot_rows = [
        (
            decision.event_id,
            s.position,
            s.item_id,
            idx,
            float(s.propensity),
            float(s.marginal),
            int(s.marginal_draws),
            s.source,
            None if s.policy_marginal is None else float(s.policy_marginal),
        )
        for s, idx in zip(decision.slots, _int_list(slot_index), strict=True)
    ]
    return row, slot_rows


def json_strings(values) -> str:
    """``json.dumps(list(values))`` for a sequence of strings, the same text, faster for
    the usual ids (printable ASCII without quotes or backslashes: nothing to escape, so the
    list is its items joined); anything else goes through ``json.dumps``."""
    values = list(values)
    try:
        flat = "".join(values)  # a TypeError unless every value is a str
    except TypeError:
        return json.dumps(values)
    if flat.isascii() and flat.isprintable() and '"' not in flat and "\\" not in flat:
        return '["' + '", "'.join(values) + '"]' if values else "[]"
    return json.dumps(values)


def index_json(values) -> str:
    """A JSON list of integers (catalog indices). orjson writes a native-endian integer array
    of any width, uint64 included, straight from its buffer (``bench/run.py --only log``, row
    (c), has the write's cost); anything else goes through a list of ints."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu" and values.dtype.isnative:
        return orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return orjson.dumps(_int_list(values)).decode()


def floats_json(values) -> str:
    """A flat JSON list of floats, each written in the shortest form that reads back to the
    same double (orjson, as ``repr`` does; the text differs from ``json.dumps`` only in
    spacing and in writing ``0.00001`` for ``1e-05``). Non-finite values are refused, as the
    log's readers could not read them back (orjson would write ``null``)."""
    flat = np.ascontiguousarray(np.asarray(values, dtype=float).ravel())
    check_finite(flat, "context")
    return orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _int_list(values) -> list[int]:
    """``[int(v) for v in values]``, without a Python loop for an integer array."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":
        return values.tolist()
    return [int(v) for v in values]


def object_array(values) -> np.ndarray:
    """``values`` as a 1-D object array (``np.array`` would make a 2-D array of equal-length tuples)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
