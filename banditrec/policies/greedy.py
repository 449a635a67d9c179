"""Baselines on a ridge model's mean: epsilon-greedy and softmax (Plackett-Luce).

Both keep the shared joint-feature ridge model of :class:`~.ridge.JointRidgePolicy` (LinUCB's
model with ``alpha = 0``: no optimism) and explore only through the slate:

* ``egreedy`` ranks candidates by the mean ``x^T theta`` and fills each slot greedily with
  probability ``1 - eps_k``, uniformly otherwise -- the classic baseline, with exact marginals
  (:class:`~.slate.EpsilonGreedySlate`).
* ``softmax`` fills slot k by Plackett-Luce over ``w_a = exp(mean_a / T)``, mixed with
  uniform exploration, at the temperature ``T = tau * sigma``: ``tau`` in units of the
  estimated noise standard deviation ``sigma`` (:class:`~.ridge.RewardStats`), so the default
  means the same on clicks and on margins:

      P(a | earlier slots) = (1 - eps_k) w_a / sum_{remaining} w + eps_k / n_remaining

  (:class:`~.sampling.PlackettLuceSlate`; its marginals are Rao-Blackwellised Monte Carlo over
  ``mc_draws`` prefixes (an environment key, as for every Monte-Carlo slate), seeded from the
  weights, so re-scoring reproduces them; the diversity cap applies as for other policies). The weights are
  computed as ``exp((mean - max mean) / T)``: the largest is 1 and none overflows; a
  candidate far below the best (``(max - mean) / T > ~745``) gets weight 0 and is shown only
  through ``eps_k`` or the serving floor.
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
    """``tau``: the temperature in noise standard deviations (see the module doc); the default
    was chosen on the held-out scenario (``docs/policies.md``)."""

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
