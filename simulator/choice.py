"""Position-based click model (Craswell et al. 2008; Chuklin et al. 2015): probabilities,
kept separate from sampling, which takes an explicit Generator.

Details: docs/simulator.md, "The position-based click model (`simulator/choice.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import Catalog
from .customers import Customers


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class PositionBasedModel:
    catalog: Catalog
    customers: Customers
    base_logit: float = -3.0
    eta: float = 1.0

    def examination(self, n_slots: int) -> np.ndarray:
        """(K,) probability that each slot is looked at."""
        return (np.arange(n_slots) + 1.0) ** -self.eta

    def attraction(self, customers, items, shift=None) -> np.ndarray:
        """P(click | examined), broadcasting ``customers (m,)`` against ``items (m, ...)``;
        ``shift`` (the shape of ``items``) is added to the logit (a scenario's drift or season)."""
        customers = np.asarray(customers)
        items = np.asarray(items)
        pref = self.customers.preference[customers]
        latent = self.catalog.latent[items]
        if items.ndim == customers.ndim:  # one item per customer
            logit = np.einsum("md,md->m", pref, latent)
        else:
            logit = np.einsum("md,mkd->mk", pref, latent)
        if shift is not None:
            logit = logit + shift
        return _sigmoid(self.base_logit + self.catalog.bias[items] + logit)

    def click_probabilities(self, customers, slates) -> np.ndarray:
        """(m, K) P(click in each slot) for ``slates (m, K)`` of item indices."""
        slates = np.asarray(slates)
        return self.attraction(customers, slates) * self.examination(slates.shape[1])

    def expected_reward(self, customers, slates) -> np.ndarray:
        """(m,) exact expected clicks of each slate."""
        return self.click_probabilities(customers, slates).sum(axis=1)

    def expected_reward_of_distribution(self, customer: int, items, marginals) -> float:
        """Exact expected clicks of a *stochastic* slate policy for one customer.

        ``items (n,)`` are the candidates, ``marginals (n, K)`` the policy's probabilities of
        showing candidate j in slot k. By linearity: sum_jk marginals_jk theta_k attraction_j.
        """
        marginals = np.asarray(marginals, dtype=float)
        attr = self.attraction(np.full(len(items), customer), np.asarray(items))
        return float(attr @ marginals @ self.examination(marginals.shape[1]))

    def sample_clicks(self, customers, slates, rng: np.random.Generator) -> np.ndarray:
        """(m, K) 0/1 clicks drawn from the model."""
        p = self.click_probabilities(customers, slates)
        return (rng.random(p.shape) < p).astype(np.int8)
