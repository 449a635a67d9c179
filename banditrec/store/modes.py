"""Serving modes and gate verdicts in the log (migration 0008).

Every switch between apprentice and live serving is a row of ``serving_modes``: who asked,
why, and the safe-deploy verdict it relied on; the newest row is the mode every serving
process reads. ``gate_verdicts`` holds the verdicts ``banditrec evaluate --record`` wrote.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import ValidationError
from .checks import check_name, check_time

MODES = ("apprentice", "live")
_VERDICT_COLUMNS = (
    "seq",
    "ts",
    "policy",
    "spec",
    "safe",
    "estimator",
    "value",
    "lower",
    "upper",
    "baseline",
    "n_decisions",
    "reason",
)


def check_mode(mode: Any, field: str = "mode") -> str:
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", field)
    return str(mode)


class ModesStore:
    """The log's serving-mode history and gate verdicts (mixed into ``DecisionLog``)."""

    db: Any
    _writing: Any

    def serving_mode(self) -> dict | None:
        """The newest mode switch (``seq, ts, mode, actor, reason, gate``), or ``None``."""
        row = self.db.execute(
            "SELECT seq, ts, mode, actor, reason, gate FROM serving_modes ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _mode_row(row)

    def mode_history(self) -> list[dict]:
        """Every mode switch, oldest first."""
        rows = self.db.execute("SELECT seq, ts, mode, actor, reason, gate FROM serving_modes ORDER BY seq").fetchall()
        return [_mode_row(r) for r in rows]

    def set_serving_mode(
        self, mode: str, *, actor: str, reason: str, gate: dict | None = None, ts: float | None = None
    ) -> dict:
        """Record a switch to ``mode`` (every process serving this log follows within its
        refresh interval); returns the row."""
        mode = check_mode(mode)
        check_name(actor, "actor")
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a mode switch needs a reason (a non-empty string)", "reason")
        ts = time.time() if ts is None else check_time(ts, "ts")
        with self._writing():
            cur = self.db.execute(
                "INSERT INTO serving_modes (ts, mode, actor, reason, gate) VALUES (?, ?, ?, ?, ?)",
                (ts, mode, actor, reason, None if gate is None else json.dumps(gate, sort_keys=True)),
            )
            seq = int(cur.lastrowid)
            # the log's one audit trail (store/blocklist.py) records it too, in the same transaction
            detail = {"mode_seq": seq, "reason": reason, "gate": gate}
            self._audit_row(ts, actor, "serving_mode", mode, detail)  # type: ignore[attr-defined]
        return {"seq": seq, "ts": ts, "mode": mode, "actor": actor, "reason": reason, "gate": gate}

    def record_verdicts(self, rows: list[dict], ts: float | None = None) -> int:
        """Write safe-deploy verdicts (dicts with ``_VERDICT_COLUMNS`` but ``seq``/``ts``)."""
        ts = time.time() if ts is None else check_time(ts, "ts")
        cols = _VERDICT_COLUMNS[2:]
        values = [(ts, *(r[c] for c in cols)) for r in rows]
        with self._writing():
            self.db.conn.executemany(
                f"INSERT INTO gate_verdicts (ts, {', '.join(cols)}) VALUES ({', '.join('?' * (len(cols) + 1))})",
                values,
            )
        return len(values)

    def latest_verdict(self, policy: str | None = None) -> dict | None:
        """The newest recorded verdict (for ``policy``'s registry name when given)."""
        where, args = ("WHERE policy = ?", (policy,)) if policy is not None else ("", ())
        row = self.db.execute(
            f"SELECT {', '.join(_VERDICT_COLUMNS)} FROM gate_verdicts {where} ORDER BY seq DESC LIMIT 1", args
        ).fetchone()
        if row is None:
            return None
        out = dict(zip(_VERDICT_COLUMNS, row))
        out["safe"] = bool(out["safe"])
        return out


def _mode_row(row) -> dict:
    seq, ts, mode, actor, reason, gate = row
    return {
        "seq": seq,
        "ts": ts,
        "mode": mode,
        "actor": actor,
        "reason": reason,
        "gate": None if gate is None else json.loads(gate),
    }


READ_BASELINE_SLOTS = (
    "SELECT d.seq, d.shadow, s.position, s.item_id, s.policy_marginal, "
    "(SELECT r.reward FROM rewards r WHERE r.event_id = s.event_id AND r.position = s.position AND r.kind = ?) "
    "FROM decisions d JOIN slots s ON s.event_id = d.event_id "
    "WHERE d.served = 'baseline' AND s.policy_marginal IS NOT NULL ORDER BY d.seq, s.position"
)


def baseline_slots(conn, kind: str = "click"):
    """Every baseline-served slot that logged the policy's probability: ``(seq, shadow JSON,
    position, item_id, policy_marginal, reward or None)`` rows, in log order."""
    return conn.execute(READ_BASELINE_SLOTS, (kind,)).fetchall()
