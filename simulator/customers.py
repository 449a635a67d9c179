"""Customers as a struct of arrays: hidden preferences and the features the shop observes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Customers:
    """``preference (n, dim)`` is hidden; ``observed (n, dim)`` = preference + noise is the
    context the shop sends with a request (a profile built from past behaviour)."""

    preference: np.ndarray
    observed: np.ndarray

    @property
    def n_customers(self) -> int:
        return len(self.preference)

    @property
    def user_ids(self) -> list[str]:
        return [f"u{i}" for i in range(self.n_customers)]


def make_customers(n: int, dim: int, context_noise: float, rng: np.random.Generator) -> Customers:
    # scaled so that preference . item latent has a standard deviation of about 1.5
    pref = rng.normal(0.0, 1.34 / np.sqrt(dim), size=(n, dim))
    observed = pref + rng.normal(0.0, context_noise / np.sqrt(dim), size=(n, dim))
    return Customers(preference=pref, observed=observed)
