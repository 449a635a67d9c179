"""Re-scoring logged decisions with another policy (the log is re-playable).

Given the decisions the store hands back (contexts and candidate lists as arrays), compute
what a target policy would have done on each: its marginal probability of every logged
(item, slot) row -- the ``target_pscore`` the estimators take -- and, for whoever knows the
truth, its full (candidates x slots) marginal matrix per decision. No SQL here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .errors import ValidationError
from .policies import Policy, Request
from .store import LoggedDecisions


def replay_marginals(
    policy: Policy, logged: LoggedDecisions, item_features: np.ndarray, *, min_epsilon: float = 0.0
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(d, candidate items (n_d,), marginals (n_d, K_d))`` for each logged decision."""
    n_slots = np.bincount(logged.row_decision, minlength=logged.n_decisions)
    for d in range(logged.n_decisions):
        items = logged.candidates[d]
        req = Request(context=logged.context[d], items=items, item_features=item_features[items])
        yield d, items, policy.distribution(req, int(n_slots[d]), min_epsilon).marginals()


def target_pscore(
    policy: Policy,
    logged: LoggedDecisions,
    item_features: np.ndarray,
    *,
    min_epsilon: float = 0.0,
    on_decision: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray:
    """(n_rows,) the target policy's marginal probability of each logged (item, slot) row.

    ``on_decision(d, items, marginals)`` is called for every decision, e.g. to compute the
    exact value of the target policy in a simulator.
    """
    out = np.empty(len(logged.row_action))
    starts = np.searchsorted(logged.row_decision, np.arange(logged.n_decisions + 1))
    for d, items, marg in replay_marginals(policy, logged, item_features, min_epsilon=min_epsilon):
        rows = slice(starts[d], starts[d + 1])
        acts = logged.row_action[rows]
        hit = items[None, :] == acts[:, None]
        if not hit.any(axis=1).all():
            raise ValidationError(
                f"decision {logged.event_id[d]!r} shows an item that is not among its candidates", "candidates"
            )
        out[rows] = marg[hit.argmax(axis=1), logged.row_slot[rows]]
        if on_decision is not None:
            on_decision(d, items, marg)
    return out
