"""What an apprentice log says about switching: how often the policy agrees with the baseline,
and the safe-deploy verdicts ``banditrec evaluate --record`` writes for ``banditrec mode live``.

The estimated lift of switching is the evaluation's own: on a log the baseline served, the
logging policy is the baseline, so a candidate's estimate minus the logging policy's on-policy
value is the lift, and the verdict is the safe-deploy gate. The baseline gives every item it
does not show probability 0, so the estimate of a policy that shows other items rests on the
reward model there (DR, DM); IPS and SNIPS see only the slots where the two agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..policies import parse_spec
from ..store.modes import baseline_slots
from .pipeline import Evaluation


@dataclass(frozen=True)
class ApprenticeSummary:
    """Baseline-served slots of a log and how the policy saw them.

    ``match_rate``: the mean probability the policy gave the baseline's item in its slot (what
    share of slots it would have filled the same way, in expectation); ``shadow_agreement``:
    the share of slots where the slate it actually drew holds the same item; ``reward_rate``:
    the baseline's mean reward per slot (slots without a reward count 0)."""

    n_decisions: int
    n_slots: int
    match_rate: float
    shadow_agreement: float
    reward_rate: float

    def lines(self) -> list[str]:
        return [
            f"apprentice: {self.n_decisions} decisions ({self.n_slots} slots) served by the baseline",
            f"  match rate (policy's mean probability of the baseline's item): {self.match_rate:.4f}",
            f"  the policy's drawn slate agreed on {self.shadow_agreement:.4f} of the slots",
            f"  the baseline's reward per slot: {self.reward_rate:.4f}",
        ]

    def as_json(self) -> dict:
        return {
            "n_decisions": self.n_decisions,
            "n_slots": self.n_slots,
            "match_rate": self.match_rate,
            "shadow_agreement": self.shadow_agreement,
            "reward_rate": self.reward_rate,
        }


def apprentice_summary(log, kind: str = "click") -> ApprenticeSummary | None:
    """The :class:`ApprenticeSummary` of ``log`` (a :class:`~banditrec.store.DecisionLog`), or
    ``None`` when the baseline served nothing."""
    with log.snapshot() as conn:
        rows = baseline_slots(conn, kind)
    if not rows:
        return None
    seq = np.array([r[0] for r in rows], dtype=np.int64)
    marg = np.array([r[4] for r in rows], dtype=float)
    reward = np.array([0.0 if r[5] is None else r[5] for r in rows], dtype=float)
    agree = 0
    drawn: list = []
    first = 0
    for k, (s, shadow, position, item, *_) in enumerate(rows):
        if k == 0 or s != rows[k - 1][0]:  # a decision's first baseline slot: after its pinned ones
            drawn, first = (json.loads(shadow) if shadow else []), position
        j = position - first
        agree += j < len(drawn) and drawn[j] == item
    return ApprenticeSummary(
        n_decisions=len(np.unique(seq)),
        n_slots=len(rows),
        match_rate=float(marg.mean()),
        shadow_agreement=agree / len(rows),
        reward_rate=float(reward.mean()),
    )


def verdict_rows(result: Evaluation) -> list[dict]:
    """One ``gate_verdicts`` row per candidate of ``result`` (its primary estimator)."""
    out = []
    for c in result.candidates:
        name = c.gate or result.primary
        e = c.estimates.get(name) or c.estimates[result.primary]
        out.append(
            {
                "policy": parse_spec(c.spec)[0],
                "spec": c.spec,
                "safe": int(c.safe),
                "estimator": name if name in c.estimates else result.primary,
                "value": e.value,
                "lower": e.lower,
                "upper": e.upper,
                "baseline": result.logging.value,
                "n_decisions": result.n_eval,
                "reason": c.reason,
            }
        )
    return out
