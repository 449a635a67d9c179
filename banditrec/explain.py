"""Per-slot explanations of a sampled slate: each shown item's score split into its top feature
contributions, the rest summed, the exploration bonus and the business blend, exactly.

Details: docs/explanations.md.
"""

from __future__ import annotations

import numpy as np

from .errors import ValidationError
from .policies import Policy, Request
from .policies.base import SENSITIVITY
from .policies.slate import SlateSample
from .policies.terms import FeatureNames, ScoreTerms, Unexplained
from .types import Contribution, Explanation

TOP = 5
"""Contributions listed per slot before the rest is summed into ``other``."""


def blend_affine(policy: Policy, request: Request, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, c)``, each (n,), with ``policy.blend(request, raw) == a * raw + c``.

    The value column multiplies ``max(raw, 0)`` (``a = value`` where ``raw > 0``, else 0); the
    objective blend is affine per request, ``(1 - w) (s - lo) / span + w objective``.
    """
    a, c = np.ones(len(raw)), np.zeros(len(raw))
    s = raw
    if policy.value_weight is not None:
        v = policy.value_weight[request.items]
        a = np.where(raw > 0, v, 0.0)
        s = np.maximum(raw, 0.0) * v
    w = SENSITIVITY[policy.config.sensitivity]
    if w:
        assert policy.objective_value is not None  # a sensitivity other than off needs an objective column
        lo, span = s.min(), s.max() - s.min()
        scale = (1.0 - w) / span if span > 0 else 0.0
        a = a * scale
        c = w * policy.objective_value[request.items] - (scale * lo if span > 0 else 0.0)
    return a, c


def _slot(terms: ScoreTerms, j: int, a: float, c: float, bonus: float, top: int) -> Explanation:
    values = a * terms.values[j]
    order = np.argsort(-np.abs(values), kind="stable")
    shown = order[:top]
    parts = [Contribution(terms.names[i], float(values[i])) for i in shown.tolist()]
    if len(order) > top:
        parts.append(Contribution("other", float(values[order[top:]].sum())))
    base = float(values.sum())
    return Explanation(
        available=True,
        kind=terms.kind,
        score=base + bonus + c,
        base=base,
        bonus=bonus,
        objective=c,
        contributions=tuple(parts),
        why=terms.note or None,
    )


def explain_slate(
    policy: Policy,
    request: Request,
    sample: SlateSample,
    names: FeatureNames | None = None,
    *,
    index=None,
    top: int = TOP,
) -> tuple[Explanation, ...]:
    """One :class:`~banditrec.types.Explanation` per slot of ``sample`` (drawn from ``policy``'s
    distribution for ``request``), from the policy's state as it is now: call it before the
    model changes. Reads no random stream. ``index``: the candidate positions to explain
    instead of the slate's (a baseline served in its place), scored as the slate was.

    ``score`` is what the sampler ranked by: the policy's blended score, or for a posterior-draw
    policy the served draw (``sample.served``), whose ``bonus`` is the draw minus the mean.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValidationError(f"top must be an integer >= 1, got {top!r}", "top")
    terms = policy.score_terms(request, names or FeatureNames())
    index = (sample.index if index is None else np.asarray(index, dtype=np.int64)).tolist()
    if isinstance(terms, Unexplained):
        return tuple(Explanation.unavailable(terms.why) for _ in index)
    base = terms.base
    if terms.kind == "posterior-draw":
        served = sample.served
        if served is None or policy.config.sensitivity != "off":
            why = (
                f"{policy.name} ranked by a posterior draw that min-max scaling blended with an objective; "
                "the draw's split into the mean's features is not kept"
                if served is not None
                else f"{policy.name}'s slate did not keep the posterior draw it ranked by"
            )
            return tuple(Explanation.unavailable(why) for _ in index)
        a = (
            np.ones(len(base))
            if policy.value_weight is None
            else np.where(served > 0, policy.value_weight[request.items], 0.0)
        )
        bonus = served - a * base  # the draw minus the mean, in the sampler's units
        return tuple(_slot(terms, j, float(a[j]), 0.0, float(bonus[j]), top) for j in index)
    raw = base + terms.bonus
    a, c = blend_affine(policy, request, raw) if terms.blended else (np.ones(len(raw)), np.zeros(len(raw)))
    return tuple(_slot(terms, j, float(a[j]), float(c[j]), float(a[j] * terms.bonus[j]), top) for j in index)
