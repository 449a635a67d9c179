"""Bernoulli Thompson sampling over items (context-free), as ZOZOTOWN's carousel ran it: a Beta
posterior per item, priors from item columns.

Details: docs/policies.md, "Bernoulli Thompson sampling (`policies/bernoulli.py`)".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from .base import Policy, PolicyConfig, Request, Rows, _item_column
from .checks import check_context, check_rows, check_weight
from .sampling import SampledRankingSlate, seed_grid


@dataclass(frozen=True)
class BernoulliTSConfig(PolicyConfig):
    """``prior_alpha``, ``prior_beta``: item columns holding each item's Beta prior
    pseudo-counts (both or neither)."""

    epsilon: float = 0.0
    prior_alpha: str = ""
    prior_beta: str = ""

    def __post_init__(self):
        super().__post_init__()
        if bool(self.prior_alpha) != bool(self.prior_beta):
            raise ValidationError("give both prior_alpha and prior_beta (item columns), or neither", "prior_alpha")
        if self.max_per_type:
            raise ValidationError(
                "bernoulli-ts ranks by a posterior draw and has no diversity cap; max_per_type "
                f"must be 0, got {self.max_per_type!r}",
                "max_per_type",
            )
        if self.objective or self.value:
            raise ValidationError(
                "bernoulli-ts ranks by click rates alone; it takes no objective or value column", "objective"
            )


class BernoulliTS(Policy):
    """Per-item Beta-Bernoulli Thompson sampling; items past the prior's columns (added since)
    start at Beta(1, 1)."""

    name = "bernoulli-ts"
    Config = BernoulliTSConfig
    needs = frozenset({"items"})

    def __init__(self, config: BernoulliTSConfig, *, item_columns: dict | None = None, n_items=None, **env):
        super().__init__(config, item_columns=item_columns, **env)
        if config.prior_alpha:
            a0 = _item_column(item_columns, config.prior_alpha, "prior_alpha")
            b0 = _item_column(item_columns, config.prior_beta, "prior_beta")
            if not (np.isfinite(a0).all() and np.isfinite(b0).all() and (a0 > 0).all() and (b0 > 0).all()):
                raise ValidationError(
                    f"Beta prior pseudo-counts ({config.prior_alpha}, {config.prior_beta}) must "
                    "be finite and > 0 for every item",
                    "prior_alpha",
                )
        else:
            n = 0 if n_items is None else int(n_items)
            a0, b0 = np.ones(n), np.ones(n)
        self.a0, self.b0 = np.asarray(a0, dtype=float), np.asarray(b0, dtype=float)
        self.hits = np.zeros(len(self.a0))
        self.misses = np.zeros(len(self.a0))

    def _grow(self, n: int) -> None:
        if n > len(self.hits):
            extra = n - len(self.hits)
            self.hits = np.r_[self.hits, np.zeros(extra)]
            self.misses = np.r_[self.misses, np.zeros(extra)]
        if n > len(self.a0):
            self.a0 = np.r_[self.a0, np.ones(n - len(self.a0))]
            self.b0 = np.r_[self.b0, np.ones(n - len(self.b0))]

    def posterior(self, items) -> tuple[np.ndarray, np.ndarray]:
        """The Beta posterior parameters ``(a, b)`` of catalog items ``items``."""
        items = np.asarray(items, dtype=np.int64)
        if len(items) and items.min() < 0:
            raise ValidationError("items must be catalog indices >= 0", "items")
        self._grow(int(items.max()) + 1 if len(items) else 0)
        return self.a0[items] + self.hits[items], self.b0[items] + self.misses[items]

    def scores(self, request: Request) -> np.ndarray:
        """The posterior mean click rate of each candidate."""
        a, b = self.posterior(request.items)
        return a / (a + b)

    def distribution(self, request: Request, n_slots: int, min_epsilon: float = 0.0) -> SampledRankingSlate:
        check_context(request.context, self.expected_context_dim)  # unread, but refused when broken
        a, b = self.posterior(request.items)
        eps = np.maximum(self.epsilon_per_slot(n_slots), min_epsilon)

        def draw(rng: np.random.Generator, size: int) -> np.ndarray:
            return rng.beta(a, b, size=(size, len(a)))

        h = hashlib.blake2b(digest_size=16)
        for arr in (seed_grid(a), seed_grid(b), np.asarray(request.items, dtype=np.int64)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return SampledRankingSlate(
            draw, eps, n_candidates=len(a), draws=self.mc_draws, seed=int.from_bytes(h.digest(), "little")
        )

    def learn(self, rows: Rows) -> None:
        reward = check_rows(rows.context, rows.item_features, rows.reward, context_dim=self.expected_context_dim)[2]
        m = len(reward)
        weight = check_weight(rows.weight, m)
        if rows.items is None:
            raise ValidationError("bernoulli-ts learns per item: update(..., items=catalog indices)", "items")
        items = np.asarray(rows.items, dtype=np.int64).ravel()
        if len(items) != m or (m and items.min() < 0):
            raise ValidationError(f"items must be {m} catalog indices >= 0, got shape {items.shape}", "items")
        w = np.ones(m) if weight is None else weight
        r = np.clip(reward, 0.0, 1.0)
        self._grow(int(items.max()) + 1 if m else 0)
        n = len(self.hits)
        self.hits = self.hits + np.bincount(items, weights=w * r, minlength=n)
        self.misses = self.misses + np.bincount(items, weights=w * (1.0 - r), minlength=n)
        self.n_updates += 1

    def state(self):
        return {"hits": self.hits, "misses": self.misses}, {}

    def set_state(self, arrays, meta):
        if set(arrays) != {"hits", "misses"}:
            raise ValidationError(f"a bernoulli-ts snapshot holds hits and misses, got {sorted(arrays)}", "snapshot")
        hits, misses = (np.asarray(arrays[k], dtype=float) for k in ("hits", "misses"))
        if (
            hits.ndim != 1
            or hits.shape != misses.shape
            or not (np.isfinite(hits).all() and np.isfinite(misses).all())
            or (hits < 0).any()
            or (misses < 0).any()
        ):
            raise ValidationError(
                "a bernoulli-ts snapshot's hits and misses must be equal-length arrays of finite counts >= 0",
                "snapshot",
            )
        self._grow(len(hits))
        self.hits, self.misses = hits.copy(), misses.copy()
        if len(self.hits) < len(self.a0):  # items added since the snapshot start at no data
            pad = len(self.a0) - len(self.hits)
            self.hits, self.misses = np.r_[self.hits, np.zeros(pad)], np.r_[self.misses, np.zeros(pad)]
