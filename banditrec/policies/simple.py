"""Fixed baselines: uniform random and popularity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from .base import Policy, PolicyConfig, Request


@dataclass(frozen=True)
class UniformConfig(PolicyConfig):
    epsilon: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.objective or self.sensitivity != "off":
            raise ValidationError(
                "uniform serves uniformly random slates, which a business objective cannot "
                f"change; got objective={self.objective!r}",
                "objective",
            )
        if self.epsilon != 1.0:
            raise ValidationError(
                f"uniform explores every slot fully; epsilon must be 1, got {self.epsilon!r}",
                "epsilon",
            )


class Uniform(Policy):
    """Every slot drawn uniformly from the candidates not yet shown."""

    name = "uniform"
    Config = UniformConfig

    def scores(self, request: Request) -> np.ndarray:
        return np.zeros(len(request.items))


class Popularity(Policy):
    """Ranks candidates by a fixed popularity count per catalog item, epsilon-mixed.

    ``popularity`` (n_items,) comes from the environment (e.g. past purchase counts); an item
    past its end (added to the catalog since) counts 0.
    """

    name = "popularity"

    def __init__(self, config: PolicyConfig, *, popularity=None, **env):
        super().__init__(config, **env)
        if popularity is None:
            raise ValidationError("popularity needs item counts: make(..., popularity=array)", "popularity")
        self.popularity = np.asarray(popularity, dtype=float)

    def scores(self, request: Request) -> np.ndarray:
        items = np.asarray(request.items)
        inside = items < len(self.popularity)
        if inside.all():
            return self.popularity[items]
        return (
            np.where(inside, self.popularity[np.where(inside, items, 0)], 0.0)
            if len(self.popularity)
            else np.zeros(len(items))
        )
