"""What a policy says about its own scores: an exact split of each candidate's score into
named feature terms plus an exploration bonus (:class:`ScoreTerms`), or why it cannot
(:class:`Unexplained`). :mod:`banditrec.explain` turns them into per-slot explanations.

Details: docs/explanations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureNames:
    """Names of the context vector's and the item vector's columns (a shop's featurizers'),
    either may be empty: then ``ctx[k]`` and ``item[j]``."""

    context: tuple[str, ...] = ()
    item: tuple[str, ...] = ()

    def ctx(self, k: int) -> str:
        return f"ctx:{self.context[k]}" if k < len(self.context) else f"ctx[{k}]"

    def itm(self, j: int) -> str:
        return f"item:{self.item[j]}" if j < len(self.item) else f"item[{j}]"

    def joint(self, context_dim: int, item_dim: int) -> tuple[str, ...]:
        """Names of the joint features ``[u, vec(u c^T)]``, ``u = [1, v, cold]``
        (:func:`banditrec.features.joint_features`): ``intercept``, ``item:price``,
        ``item:cold``, then ``ctx:device=mobile`` (times the constant) and
        ``ctx:device=mobile × item:price``, in the joint features' order."""
        u = ["intercept", *(self.itm(j) for j in range(item_dim)), "item:cold"]
        cross = []
        for i, ui in enumerate(u):
            for k in range(context_dim):
                cross.append(self.ctx(k) if i == 0 else f"{self.ctx(k)} × {ui}")
        return (*u, *cross)

    def own(self, context_dim: int) -> tuple[str, ...]:
        """Names of a per-item model's features ``[1, c]``: ``own`` (the item's own effect) and
        ``own × ctx:device=mobile``."""
        return ("own", *(f"own × {self.ctx(k)}" for k in range(context_dim)))


@dataclass(frozen=True)
class ScoreTerms:
    """An exact split of a policy's raw scores (before the business blend) for ``n`` candidates:
    ``scores == values.sum(axis=1) + bonus`` up to rounding.

    names : (p,) the terms' names.
    values : (n, p) each candidate's terms (a feature times its coefficient).
    bonus : (n,) the exploration part (0 for a policy that explores only through its slate).
    kind : what ``bonus`` is: ``ucb`` (the confidence width), ``none``, or ``posterior-draw``
        (a Thompson policy: the draw minus the mean, known only once the slate is drawn), or
        ``vw-audit``.
    blended : whether the sampler ranks by ``policy.blend`` of these scores (the business
        objective and value column); ``False`` when it ranks by something else (VW's PMF).
    note : what the numbers mean, where that needs saying.
    """

    names: tuple[str, ...]
    values: np.ndarray
    bonus: np.ndarray
    kind: str
    blended: bool = True
    note: str = ""

    @property
    def base(self) -> np.ndarray:
        """(n,) the exploitation part: the sum of the terms."""
        return self.values.sum(axis=1)


@dataclass(frozen=True)
class Unexplained:
    """A policy whose scores have no additive split into features, and why."""

    why: str
