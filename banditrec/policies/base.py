"""The policy protocol: a policy scores candidates; the slot filler turns scores into a slate.

A policy never samples by itself: :meth:`Policy.distribution` returns the slate distribution
(whose ``sample`` takes the caller's Generator and returns the propensities), so the same
object also answers "how likely would this policy have been to show item a in slot k?" for
off-policy evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ValidationError
from .slate import EpsilonGreedySlate


@dataclass(frozen=True)
class Request:
    """What a policy may look at for one decision.

    context : (d_c,) float          the user's/session's feature vector
    items : (n,) int                catalog indices of the candidates
    item_features : (n, d_i) float  the candidates' attribute vectors
    """

    context: np.ndarray
    items: np.ndarray
    item_features: np.ndarray


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every policy's immutable configuration; fields are the policy's params."""

    epsilon: float = 0.1

    def __post_init__(self):
        e = self.epsilon
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
            raise ValidationError(f"epsilon must be a number in [0, 1], got {e!r}", "epsilon")


class Policy(ABC):
    """Base class: subclasses set ``name`` and ``Config`` and implement :meth:`scores`."""

    name: str = ""
    Config: type[PolicyConfig] = PolicyConfig

    def __init__(self, config: PolicyConfig, **env):
        # env carries what the deployment knows (dimensions, item counts); unused keys are fine
        self.config = config
        self.n_updates = 0

    @property
    def params(self) -> dict:
        """The policy's hyperparameters, as written to the decision log."""
        return asdict(self.config)

    @property
    def spec(self) -> str:
        """A spec string that :func:`banditrec.policies.make` turns back into this config."""
        body = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}:{body}" if body else self.name

    @property
    def model_version(self) -> str:
        return f"{self.name}-{self.n_updates}"

    @abstractmethod
    def scores(self, request: Request) -> np.ndarray:
        """One score per candidate of ``request``, shape (n,); higher is better."""

    def epsilon_per_slot(self, n_slots: int) -> np.ndarray:
        return np.full(n_slots, float(self.config.epsilon))

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> EpsilonGreedySlate:
        """The slate distribution over ``request``'s candidates for ``n_slots`` slots.

        ``min_epsilon`` is the serving floor: each slot explores at least that much, so that
        every candidate keeps a probability of at least ``min_epsilon / n_candidates``.
        """
        eps = np.maximum(self.epsilon_per_slot(n_slots), min_epsilon)
        return EpsilonGreedySlate(self.scores(request), eps)

    def update(self, context: np.ndarray, item_features: np.ndarray, reward: np.ndarray) -> None:
        """Learn from logged rows: ``context (m, d_c)``, the shown items' ``item_features
        (m, d_i)`` and their ``reward (m,)``. Fixed policies ignore it."""
        return None
