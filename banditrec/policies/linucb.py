"""LinUCB with parameters shared across items (Li et al. 2010, the shared part of Alg. 2).

One ridge regression over joint (context, item) features:

    A = reg * I + sum x x^T,    b = sum r x,    theta = A^{-1} b
    score(x) = x^T theta + alpha * sqrt(x^T A^{-1} x)

A single new row updates ``A^{-1}`` by Sherman-Morrison; a batch re-inverts through a
Cholesky factor, which is cheaper and more accurate than m rank-one updates (the ridge math
lives in :mod:`banditrec.policies.ridge`). The greedy ranking is epsilon-mixed per slot
before serving (see :mod:`banditrec.policies.slate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..features import joint_features
from .base import Policy, PolicyConfig, Request, slot_counts
from .checks import check_context
from .ridge import JointRidgePolicy, check_number

# Stacked products sum in another order than one request's, so scores may differ in the last
# bits; a request whose scores hold two within this many rounding errors of each other (where
# that could reorder them) is re-scored alone, so that rankings and ties are exactly its own.
_TIE_ULPS = 1024


@dataclass(frozen=True)
class LinUCBConfig(PolicyConfig):
    alpha: float = 1.0
    epsilon: float = 0.1
    reg: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_number(self.alpha, "alpha", minimum=0.0)
        check_number(self.reg, "reg", minimum=0.0, strict=True)


def _near_tie(scores: np.ndarray, bound: np.ndarray) -> bool:
    """Whether two scores are within the sum of their rounding bounds of each other."""
    order = np.argsort(scores, kind="stable")
    b = bound[order]
    return bool((np.diff(scores[order]) <= b[1:] + b[:-1]).any())


class LinUCB(JointRidgePolicy):
    """Shared-parameter LinUCB; needs ``context_dim`` and ``item_dim`` from the environment."""

    name = "shared-linucb"
    Config = LinUCBConfig

    def scores(self, request: Request) -> np.ndarray:
        X = self.features(request)
        mean = X @ self.theta
        # row-wise quadratic form x_i^T A^{-1} x_i, as one matmul plus a row sum
        var = np.einsum("ij,ij->i", X @ self.A_inv, X)
        return mean + self.config.alpha * np.sqrt(np.maximum(var, 0.0))

    def distributions(self, requests, n_slots, min_epsilon: float = 0.0) -> list:
        """Vectorised :meth:`~banditrec.policies.base.Policy.distributions`: the candidates of
        every request are scored by one product over their stacked joint features.

        Exactly the distributions of :meth:`distribution` request by request: a slate depends
        on the scores only through their ranking and ties, and a request whose stacked scores
        come within a bound on the rounding difference of each other (``_TIE_ULPS`` rounding
        errors of the products summed, or of the square root near zero) is re-scored alone.
        A blended objective (min-max scaling amplifies rounding) or a type cap takes the loop.
        """
        counts = slot_counts(n_slots, len(requests))
        if (len(requests) < 2 or type(self).scores is not LinUCB.scores
                or type(self).distribution is not Policy.distribution
                or self.config.sensitivity != "off" or self.config.max_per_type):
            return super().distributions(requests, counts, min_epsilon)
        contexts = [check_context(check_context(r.context, self.expected_context_dim), self.context_dim)
                    for r in requests]
        feats = [np.asarray(r.item_features, dtype=float) for r in requests]
        sizes = [len(f) for f in feats]
        X = joint_features(np.repeat(np.stack(contexts), sizes, axis=0), np.concatenate(feats))
        XA = X @ self.A_inv
        var = np.einsum("ij,ij->i", XA, X)
        scores = X @ self.theta + self.config.alpha * np.sqrt(np.maximum(var, 0.0))
        # bound on |stacked - alone| per candidate (for the products, and for sqrt near zero)
        ulp = _TIE_ULPS * np.finfo(float).eps
        absX = np.abs(X)
        bound = ulp * (absX @ np.abs(self.theta)) + self.config.alpha * np.sqrt(
            ulp * np.einsum("ij,ij->i", np.abs(XA), absX))
        out, start = [], 0
        for request, k, n in zip(requests, counts, sizes):
            s, b = scores[start:start + n], bound[start:start + n]
            start += n
            ranked, rb = s, b
            if self.value_weight is not None:  # the ranking is of max(s, 0) x value (max is 1-Lipschitz)
                v = self.value_weight[request.items]
                ranked, rb = np.maximum(s, 0.0) * v, b * v
            if not np.isfinite(s).all() or _near_tie(ranked, rb):
                s = self.scores(request)  # a near-tie (or overflow): this request's own scores
            out.append(self.slate_from_scores(request, s, k, min_epsilon))
        return out
