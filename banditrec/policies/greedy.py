"""Baselines on a ridge model's mean: epsilon-greedy and softmax (Plackett-Luce), exploring only
through the slate.

Details: docs/policies.md, "Epsilon-greedy and softmax (`policies/greedy.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import PolicyConfig, Request
from .ridge import JointRidgePolicy, check_number, check_ridge
from .sampling import PlackettLuceSlate


@dataclass(frozen=True)
class EpsilonGreedyConfig(PolicyConfig):
    """``epsilon`` is this policy's own exploration (the classic baseline's 0.1); ``reg``,
    ``gamma``: :func:`~.ridge.check_ridge`."""

    epsilon: float = 0.1
    reg: float = 1.0
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_ridge(self)


class EpsilonGreedy(JointRidgePolicy):
    """Greedy on the ridge mean, epsilon-mixed per slot; needs ``context_dim`` and ``item_dim``."""

    name = "egreedy"
    Config = EpsilonGreedyConfig

    def scores(self, request: Request) -> np.ndarray:
        return self.mean(request)


@dataclass(frozen=True)
class SoftmaxConfig(PolicyConfig):
    """``tau``: the temperature in noise standard deviations (docs/policies.md, "Epsilon-greedy
    and softmax"); the default was chosen on the held-out scenario (``docs/policies.md``)."""

    tau: float = 0.02
    epsilon: float = 0.0
    reg: float = 1.0
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_number(self.tau, "tau", minimum=0.0, strict=True)
        check_ridge(self)


class Softmax(JointRidgePolicy):
    """Plackett-Luce over ``exp(mean / tau)``, epsilon-mixed per slot; needs ``context_dim`` and
    ``item_dim``. ``scores`` are the means; the slate is :meth:`distribution`'s."""

    name = "softmax"
    Config = SoftmaxConfig
    config: SoftmaxConfig

    def scores(self, request: Request) -> np.ndarray:
        return self.mean(request)

    @property
    def temperature(self) -> float:
        """``tau`` times the noise standard deviation."""
        return self.config.tau * self.noise_sd

    def weights(self, request: Request) -> np.ndarray:
        """Plackett-Luce weights ``exp((s - max s) / T)`` of the (objective-blended) means, (n,)."""
        s = self.blend(request, self.scores(request))
        with np.errstate(under="ignore"):
            return np.exp((s - s.max()) / self.temperature)

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> PlackettLuceSlate:
        eps = np.maximum(self.epsilon_per_slot(n_slots), min_epsilon)
        return PlackettLuceSlate(self.weights(request), eps, draws=self.mc_draws, **self.type_cap(request))
