"""Pending decisions: Monte-Carlo propensities computed after the decision was logged.

A serving engine logs a slate with what is exact and cheap, lists the decision in ``pending``
and completes it off the request path. Completion is exact: the same distribution, the same
seeded Monte-Carlo stream. A decision whose recipe is self-contained (sequential filling:
softmax, Plackett-Luce, vw-cb) can be completed by any process from the log alone; the others
(Thompson sampling, vw-ccb) need their model and are completed by the engine that logged them.
Readers leave pending decisions out. Details: docs/policies.md, "Deferred marginals".
"""

from __future__ import annotations

import numpy as np

from ..policies.sampling import from_recipe, slate_sample
from .writer import Completion

SETTLE_BATCH = 1024  # recipes completed per write transaction

READ_RECIPES = (
    "SELECT p.event_id, p.recipe, d.candidate_index FROM pending p JOIN decisions d ON d.event_id = p.event_id "
    "WHERE p.recipe IS NOT NULL ORDER BY d.seq LIMIT ?"
)
READ_SLOTS = "SELECT position, item_index, propensity, source FROM slots WHERE event_id = ? ORDER BY position"


def from_log(conn, event_id: str, recipe: bytes, candidate_index: str) -> Completion:
    """The completion of one pending decision from its recipe and its logged slots."""
    import json

    dist = from_recipe(recipe)
    slots = conn.execute(READ_SLOTS, (event_id,)).fetchall()
    policy = [s for s in slots if s[3] != "pinned"]
    where = {int(item): j for j, item in enumerate(json.loads(candidate_index))}
    index = np.array([where[int(s[1])] for s in policy], dtype=np.int64)
    cond = np.array([s[2] for s in policy], dtype=float)
    marg = dist.marginals()[index, np.arange(dist.n_slots)]
    done = slate_sample(index, cond, marg, draws=dist.draws, marginal_draws=dist.marginal_draws)
    return Completion(
        event_id=event_id,
        first=len(slots) - len(policy),
        propensity=done.propensity,
        marginal=done.marginal,
        marginal_draws=done.marginal_draws,
        joint=done.joint,
        log_joint=done.log_joint,
    )
