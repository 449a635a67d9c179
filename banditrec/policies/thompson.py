"""Linear Thompson sampling (Agrawal & Goyal 2013) on the shared joint-feature ridge model:
a slate ranks the candidates by one posterior draw, its marginals are Monte Carlo over draws.

Details: docs/policies.md, "Linear Thompson sampling (`policies/thompson.py`)".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from ..errors import ValidationError
from .base import PolicyConfig, Request
from .ridge import JointRidgePolicy, check_number, check_ridge
from .sampling import SampledRankingSlate


@dataclass(frozen=True)
class LinTSConfig(PolicyConfig):
    """``v`` scales the posterior's standard deviation (1: the Bayesian posterior); ``reg``,
    ``gamma``: :func:`~.ridge.check_ridge`."""

    v: float = 1.0
    epsilon: float = 0.0
    reg: float = 1.0
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_number(self.v, "v", minimum=0.0, strict=True)
        check_ridge(self)
        if self.max_per_type:
            raise ValidationError(
                f"lints ranks by a posterior draw and has no diversity cap yet; max_per_type "
                f"must be 0, got {self.max_per_type!r}",
                "max_per_type",
            )


class LinTS(JointRidgePolicy):
    """Linear Thompson sampling; needs ``context_dim`` and ``item_dim`` from the environment.

    ``v`` scales the posterior (Agrawal & Goyal's v) in units of the residual standard
    deviation, ``epsilon`` mixes uniform exploration into each slot as for the other policies;
    ``mc_draws`` posterior draws (environment) estimate the marginals.
    """

    name = "lints"
    Config = LinTSConfig
    config: LinTSConfig

    def __init__(self, config: LinTSConfig, **env):
        self._L: np.ndarray | None = None
        super().__init__(config, **env)

    def _changed(self) -> None:
        super()._changed()
        self._L = None

    def posterior_factor(self) -> np.ndarray:
        """``L`` (dim, dim) with ``L L^T = A^{-1}``; cached until the model changes."""
        if self._L is None:
            R = np.linalg.cholesky(self.A)
            self._L = solve_triangular(R, np.eye(self.dim), lower=True).T
        return self._L

    @property
    def posterior_scale(self) -> float:
        """``v * sigma``: what multiplies ``L g`` in a posterior draw."""
        return self.config.v * self.noise_sd

    def posterior_samples(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` draws of the weights from ``N(theta_hat, v^2 sigma^2 A^{-1})``, shape (size, dim)."""
        g = rng.standard_normal((size, self.dim))
        return self.theta + self.posterior_scale * (g @ self.posterior_factor().T)

    bonus_kind = "posterior-draw"  # the served draw minus the mean: banditrec.explain reads the draw

    def scores(self, request: Request) -> np.ndarray:
        return self.mean(request)

    def draw_scores(self, request: Request) -> Callable[[np.random.Generator, int], np.ndarray]:
        """``draw(rng, size) -> (size, n)`` posterior samples of the candidates' (blended) scores.

        Bound to the model as it is now: a later update does not change what it draws.
        """
        X = self.features(request)
        theta, L, v = self.theta, self.posterior_factor(), self.posterior_scale

        def draw(rng: np.random.Generator, size: int) -> np.ndarray:
            S = (theta + v * (rng.standard_normal((size, len(theta))) @ L.T)) @ X.T
            return self.blend(request, S)  # each draw min-max scaled over the candidates

        return draw

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> SampledRankingSlate:
        eps = np.maximum(self.epsilon_per_slot(n_slots), min_epsilon)
        return SampledRankingSlate(
            self.draw_scores(request),
            eps,
            n_candidates=len(request.items),
            draws=self.mc_draws,
            seed=self.replay_seed(request),
        )
