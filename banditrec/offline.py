"""Re-scoring logged decisions with another policy (the log is re-playable).

Given the decisions the store hands back (contexts and candidate lists as arrays), compute
what a target policy would have done on each: its marginal probability of every logged
(item, slot) row -- the ``target_pscore`` the estimators take -- and, for whoever knows the
truth, its full (candidates x slots) marginal matrix per decision. No SQL here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .errors import ValidationError
from .policies import Policy, Request
from .types import LoggedDecisions


def replay_marginals(
    policy: Policy,
    logged: LoggedDecisions,
    item_features: np.ndarray,
    *,
    min_epsilon: float = 0.0,
    cold: np.ndarray | None = None,
    offered: Callable[[int], np.ndarray | None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(d, candidate items (n_d,), marginals (n_d, K_d))`` for each logged decision;
    ``cold (n_items,)``: the catalog's cold flags, as the engine puts them in a request.
    ``offered(d)``: a bool mask of decision ``d``'s candidates the target may choose from (None:
    all of them); with fewer left than slots it fills as many slots as it has candidates."""
    n_slots = logged.slots_per_decision()
    cold = None if cold is None else np.asarray(cold, dtype=bool)
    for d in range(logged.n_decisions):
        items = logged.candidates[d]
        keep = None if offered is None else offered(d)
        if keep is not None:
            items = items[keep]
        k = min(int(n_slots[d]), len(items))
        if k == 0:
            yield d, items, np.zeros((len(items), 0))
            continue
        req = Request(
            context=logged.context[d],
            items=items,
            item_features=item_features[items],
            cold=None if cold is None else cold[items],
        )
        yield d, items, policy.distribution(req, k, min_epsilon).marginals()


def target_pscore(
    policy: Policy,
    logged: LoggedDecisions,
    item_features: np.ndarray,
    *,
    min_epsilon: float = 0.0,
    on_decision: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    cold: np.ndarray | None = None,
    offered: Callable[[int], np.ndarray | None] | None = None,
) -> np.ndarray:
    """(n_rows,) the target policy's marginal probability of each logged (item, slot) row.

    ``on_decision(d, items, marginals)`` is called for every decision, e.g. to compute the
    exact value of the target policy in a simulator; ``cold (n_items,)``: the catalog's cold
    flags (what the engine served with, :attr:`~banditrec.engine.ItemTable.cold`).
    ``offered``: as in :func:`replay_marginals`; a row whose item the target was not offered,
    or whose slot it did not fill, gets 0.
    """
    out = np.empty(len(logged.row_action))
    starts = np.searchsorted(logged.row_decision, np.arange(logged.n_decisions + 1))
    for d, items, marg in replay_marginals(
        policy, logged, item_features, min_epsilon=min_epsilon, cold=cold, offered=offered
    ):
        rows = slice(starts[d], starts[d + 1])
        acts, slots = logged.row_action[rows], logged.row_slot[rows]
        hit = items[None, :] == acts[:, None]
        found = hit.any(axis=1) & (slots < marg.shape[1])
        if offered is None and not found.all():
            raise ValidationError(
                f"decision {logged.event_id[d]!r} shows an item that is not among its candidates", "candidates"
            )
        vals = np.zeros(len(acts))
        if found.any():
            vals[found] = marg[hit[found].argmax(axis=1), slots[found]]
        out[rows] = vals
        if on_decision is not None:
            on_decision(d, items, marg)
    return out


def uses_marginals(policy: Policy) -> bool:
    """Whether ``policy`` learns from logged marginal propensities (``pscore`` in its ``needs``)."""
    return "pscore" in policy.needs


def learning_inputs(
    policy: Policy, logged: LoggedDecisions, item_features: np.ndarray, *, cold: np.ndarray | None = None
) -> dict:
    """The keyword arguments of ``policy.update`` for logged rows (beside the positional
    ``context``, ``item_features`` and ``reward``).

    Always ``items``, ``pscore`` (the logged marginal), ``slot``, and ``propensity`` (the
    conditional given earlier slots) when the rows have it; ``cold`` per row from the catalog's
    ``cold (n_items,)`` flags when given. ``candidates`` (each row's decision's candidate
    features) and ``chosen`` (the shown item's position among them) -- what Vowpal Wabbit's
    action-dependent-features learners need, and costly to build -- only when the policy
    declares them in its ``needs``.
    """
    out: dict[str, Any] = {"items": logged.row_action, "pscore": logged.row_pscore, "slot": logged.row_slot}
    if logged.row_propensity is not None:
        out["propensity"] = logged.row_propensity
    elif "propensity" in policy.needs:
        raise ValidationError("this policy learns from conditional propensities, which the rows lack", "propensity")
    if cold is not None:
        out["cold"] = np.asarray(cold, dtype=bool)[logged.row_action]
    if "candidates" in policy.needs or "chosen" in policy.needs:
        per_decision = [item_features[c] for c in logged.candidates]
        out["candidates"] = [per_decision[d] for d in logged.row_decision.tolist()]
        chosen = np.empty(len(logged.row_action), dtype=np.int64)
        for i, (d, a) in enumerate(zip(logged.row_decision.tolist(), logged.row_action.tolist())):
            where = np.flatnonzero(logged.candidates[d] == a)
            if not where.size:
                raise ValidationError(
                    f"decision {logged.event_id[d]!r} shows an item that is not among its candidates", "candidates"
                )
            chosen[i] = where[0]
        out["chosen"] = chosen
    return out


def learn_from_log(
    policy: Policy,
    logged: LoggedDecisions,
    item_features: np.ndarray,
    *,
    cold: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    row_cold: np.ndarray | None = None,
) -> int:
    """Update ``policy`` once on every slot row of ``logged``; returns the rows learned from.

    The one way logged rows reach :meth:`~banditrec.policies.Policy.update`: each row's
    decision context, the shown item's features and the row's reward, with the inputs of
    :func:`learning_inputs`.

    Parameters
    ----------
    policy : Policy
    logged : LoggedDecisions
        The rows (pinned slots already left out by the reader).
    item_features : (n_items, d_i) float
        The catalog's features, by logged item index.
    cold : (n_items,) bool, optional
        The catalog's cold flags; each row gets its shown item's.
    weight : (m,) float, optional
        Importance weights of the rows (:func:`importance_weights`).
    row_cold : (m,) bool, optional
        Each row's cold flag when it was shown, instead of the catalog's ``cold`` (a catalog
        whose items warm up while it serves).
    """
    inputs = learning_inputs(policy, logged, item_features, cold=cold)
    if row_cold is not None:
        inputs["cold"] = row_cold
    policy.update(
        logged.context[logged.row_decision],
        item_features[logged.row_action],
        logged.row_reward,
        weight=weight,
        **inputs,
    )
    return len(logged.row_reward)


def importance_weights(pscore: np.ndarray, *, max_weight: float = 10.0) -> np.ndarray:
    """Row weights that undo the logging policy's exposure bias when training on its log.

    ``w_i = min(1 / pscore_i, c) / mean(min(1 / pscore, c))`` with ``c = max_weight`` times the
    median inverse propensity: rows the logger rarely showed count more, as if items had been
    shown equally often; the clip bounds the variance; the mean-1 normalisation keeps the
    ridge penalty's meaning.
    """
    p = np.asarray(pscore, dtype=float)
    if p.ndim != 1 or len(p) == 0 or not ((p > 0) & (p <= 1)).all():
        raise ValidationError("pscore must be a non-empty 1-D array in (0, 1]", "pscore")
    if not max_weight > 0:
        raise ValidationError(f"max_weight must be > 0, got {max_weight!r}", "max_weight")
    scale = ImportanceScale.of(p, max_weight=max_weight)
    return scale(p)


class ImportanceScale(NamedTuple):
    """The clip ``cap`` and the normalising ``mean`` of :func:`importance_weights`, fitted on
    every row of a training set, so that rows weighted a chunk at a time get the weights the
    whole set would give them."""

    cap: float
    mean: float

    @classmethod
    def of(cls, pscore: np.ndarray, *, max_weight: float = 10.0) -> ImportanceScale:
        inv = 1.0 / pscore
        cap = max_weight * float(np.median(inv))
        return cls(cap, float(np.minimum(inv, cap).mean()))

    def __call__(self, pscore: np.ndarray) -> np.ndarray:
        return np.minimum(1.0 / np.asarray(pscore, dtype=float), self.cap) / self.mean


def train_from_log(
    policy: Policy,
    logged: LoggedDecisions,
    item_features: np.ndarray,
    *,
    importance: bool = True,
    max_weight: float = 10.0,
    cold: np.ndarray | None = None,
) -> int:
    """Batch (re)training of ``policy`` on logged rows; returns the rows used.

    With ``importance`` (the default) rows are weighted by :func:`importance_weights` of the
    logged marginal propensities, for a log written by a different policy: a plain fit would
    learn most about what the logger liked to show. Policies that learn from propensities
    themselves (``uses_marginals``) get them as well. ``cold (n_items,)``: the catalog's cold
    flags, an input of the policies (:func:`learning_inputs`).
    """
    if logged.n_decisions == 0:
        return 0
    weight = importance_weights(logged.row_pscore, max_weight=max_weight) if importance else None
    return learn_from_log(policy, logged, item_features, cold=cold, weight=weight)
