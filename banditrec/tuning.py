"""Choosing a policy's hyper-parameters from the log: ``banditrec evaluate --tune GRID``. The
setting with the highest simultaneous (Bonferroni) lower bound wins, so its interval stays
honest after the selection.

Details: docs/evaluation.md, "Tuning (`banditrec/tuning.py`)".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from scipy.stats import norm

from .errors import ValidationError
from .policies import parse_spec
from .types import Estimate

MAX_SETTINGS = 100
RULE = "highest {primary} lower bound, intervals simultaneous over the {k} settings (Bonferroni)"


def expand_grid(grid: str) -> list[str]:
    """The policy specs of ``grid``, in order (the last parameter varies fastest).

    >>> expand_grid("egreedy:epsilon=0.05|0.1")
    ['egreedy:epsilon=0.05', 'egreedy:epsilon=0.1']
    """
    name, raw = parse_spec(grid)
    if not name:
        raise ValidationError(f"a tuning grid needs a policy name before ':', got {grid!r}", "tune")
    axes = []
    for key, value in raw.items():
        options = [v.strip() for v in value.split("|")]
        if any(not v for v in options):
            raise ValidationError(f"tuning grid {grid!r}: {key} has an empty alternative in {value!r}", "tune")
        if len(set(options)) != len(options):
            raise ValidationError(f"tuning grid {grid!r}: {key} lists a value twice in {value!r}", "tune")
        axes.append([f"{key}={v}" for v in options])
    specs = [name + (":" + ",".join(combo) if combo else "") for combo in itertools.product(*axes)]
    if len(specs) > MAX_SETTINGS:
        raise ValidationError(
            f"tuning grid {grid!r} has {len(specs)} settings; at most {MAX_SETTINGS} are "
            "evaluated (each is trained and re-scores the log)",
            "tune",
        )
    return specs


def expand_grids(grids: Iterable[str]) -> list[str]:
    """The settings of every grid, in order; a setting listed twice is an error."""
    specs = [s for g in grids for s in expand_grid(g)]
    seen = set()
    for s in specs:
        if s in seen:
            raise ValidationError(f"setting {s!r} appears in more than one tuning grid", "tune")
        seen.add(s)
    if len(specs) > MAX_SETTINGS:
        raise ValidationError(f"the tuning grids have {len(specs)} settings together; at most {MAX_SETTINGS}", "tune")
    return specs


def simultaneous_level(level: float, k: int) -> float:
    """Each of ``k`` intervals at this level: all ``k`` cover at once with probability >= ``level``."""
    return 1.0 - (1.0 - level) / max(k, 1)


def at_level(e: Estimate, level: float) -> Estimate:
    """``e`` with its normal interval recomputed at ``level`` (the point estimate unchanged)."""
    if e.interval != "normal":
        raise ValidationError("tuning re-derives intervals from standard errors; it needs normal intervals", "interval")
    z = float(norm.ppf(0.5 + level / 2))
    return replace(e, lower=e.value - z * e.se, upper=e.value + z * e.se, level=level)


@dataclass
class Tuning:
    """What ``--tune`` chose, by which rule, and the chosen setting's gate."""

    grids: list[str]
    settings: list[str]
    level: float  # the simultaneous level of every setting's interval
    rule: str
    chosen: str | None
    estimate: Estimate | None  # the chosen setting's primary estimate at ``level``
    safe: bool
    reason: str

    def lines(self) -> list[str]:
        head = (
            f"tuning: {len(self.settings)} settings of {', '.join(self.grids)}; rule: {self.rule} "
            f"(each interval at {self.level:.2%})"
        )
        if self.chosen is None:
            return [head, f"tuning chose nothing: {self.reason}"]
        e = self.estimate
        assert e is not None  # a chosen setting has its estimate
        return [
            head,
            f"tuning chose {self.chosen}: {e.estimator} {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}] -- "
            f"{'SAFE to deploy' if self.safe else 'not shown safe'}: {self.reason}",
        ]

    def as_json(self, estimate_json: Callable[[Estimate], Any]) -> dict[str, Any]:
        return {
            "grids": self.grids,
            "settings": self.settings,
            "rule": self.rule,
            "level": self.level,
            "chosen": self.chosen,
            "estimate": None if self.estimate is None else estimate_json(self.estimate),
            "safe_to_deploy": self.safe,
            "reason": self.reason,
        }


class Candidate(Protocol):
    """What :func:`choose` reads and sets of an evaluated setting (``PolicyEvaluation``)."""

    spec: str
    estimates: dict[str, Estimate]
    safe: bool
    reason: str


def choose(
    candidates: Sequence[Candidate],
    settings: list[str],
    grids: list[str],
    primary: str,
    logging: Estimate,
    level: float,
    verdict: Callable[[Estimate, str, Estimate], tuple[bool, str]],
) -> Tuning:
    """Apply the rule to the evaluated ``candidates`` (``PolicyEvaluation`` records; those in
    ``settings`` are re-derived at the simultaneous level, their verdicts replaced) and put the
    chosen setting through ``verdict(estimate, primary, logging) -> (safe, reason)``."""
    k = len(settings)
    sim = simultaneous_level(level, k)
    rule = RULE.format(primary=primary, k=k)
    by_spec = {c.spec: c for c in candidates}
    for spec in settings:
        c = by_spec[spec]
        c.estimates = {name: at_level(e, sim) for name, e in c.estimates.items()}
    eligible = [s for s in settings if not by_spec[s].estimates[primary].warnings]
    if not eligible:
        for spec in settings:
            by_spec[spec].safe, by_spec[spec].reason = False, f"not chosen: {primary} diagnostics warn"
        return Tuning(grids, settings, sim, rule, None, None, False, f"every setting's {primary} diagnostics warn")
    best_lb = max(by_spec[s].estimates[primary].lower for s in eligible)
    tol = 1e-12 * max(1.0, abs(best_lb))  # a near-tie goes to the first in grid order, on any CPU
    chosen = next(s for s in eligible if by_spec[s].estimates[primary].lower >= best_lb - tol)
    main = by_spec[chosen].estimates[primary]
    safe, reason = verdict(main, primary, logging)
    for spec in settings:
        c = by_spec[spec]
        if spec == chosen:
            c.safe, c.reason = safe, f"chosen by --tune; {reason}"
        elif spec in eligible:
            c.safe, c.reason = (
                False,
                (
                    f"not chosen by --tune: {primary} lower bound {c.estimates[primary].lower:.4f} "
                    f"below the chosen {best_lb:.4f}"
                ),
            )
        else:
            c.safe, c.reason = False, f"not chosen by --tune: {primary} diagnostics warn"
    return Tuning(grids, settings, sim, rule, chosen, main, safe, reason)
