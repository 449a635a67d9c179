"""Pending decisions: Monte-Carlo propensities computed after the decision was logged.

A serving engine logs a slate with what is exact and cheap, lists the decision in ``pending``
and completes it off the request path. Completion is exact: the same distribution, the same
seeded Monte-Carlo stream. A decision whose recipe is self-contained (sequential filling:
softmax, Plackett-Luce, vw-cb) can be completed by any process from the log alone; the others
(Thompson sampling, vw-ccb) need their model and are completed by the engine that logged them.
Readers leave pending decisions out. Details: docs/policies.md, "Deferred marginals".
"""

from __future__ import annotations

import json

import numpy as np

from ..policies.sampling import from_recipe, with_marginals
from .writer import Completion

SETTLE_BATCH = 1024  # recipes completed per write transaction

READ_RECIPES = (
    "SELECT p.event_id, p.recipe, d.candidate_index FROM pending p JOIN decisions d ON d.event_id = p.event_id "
    "WHERE p.recipe IS NOT NULL ORDER BY d.seq LIMIT ?"
)
READ_SLOTS = "SELECT position, item_index, propensity, source FROM slots WHERE event_id = ? ORDER BY position"


def read_recipes(conn, limit: int) -> list[tuple[str, bytes, list[tuple]]]:
    """Up to ``limit`` pending decisions with a recipe, oldest first: ``(event_id, recipe,
    [(candidate position, propensity, is pinned) per logged slot])`` (the log's lock held)."""
    out = []
    for event_id, recipe, candidate_index in conn.execute(READ_RECIPES, (limit,)).fetchall():
        where = {int(item): j for j, item in enumerate(json.loads(candidate_index))}
        slots = conn.execute(READ_SLOTS, (event_id,)).fetchall()
        out.append((event_id, recipe, [(where[int(item)], p, source == "pinned") for _, item, p, source in slots]))
    return out


def completion(event_id: str, recipe: bytes, slots: list[tuple]) -> Completion:
    """The completion of one pending decision from its recipe and its logged slots (no I/O)."""
    policy = [(j, p) for j, p, pinned in slots if not pinned]
    index = np.array([j for j, _ in policy], dtype=np.int64)
    cond = np.array([p for _, p in policy], dtype=float)
    return Completion.of(event_id, len(slots) - len(policy), with_marginals(from_recipe(recipe), index, cond))
