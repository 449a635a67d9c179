"""LinUCB with disjoint linear models (Li et al. 2010, Algorithm 1).

Every catalog item ``a`` has its own ridge regression over the context with a constant,
``x = [1, context]`` (d = context_dim + 1):

    A_a = reg * I + sum_{rows showing a} w x x^T,    b_a = sum_{rows showing a} w r x
    theta_a = A_a^{-1} b_a
    score(a | x) = theta_a . x + alpha * sqrt(x^T A_a^{-1} x)

A request's candidates are scored with one batched product over their stacked ``A_a^{-1}``
and ``theta_a``. One logged row updates its item's ``A_a^{-1}`` by Sherman-Morrison; a batch
groups its rows by item, sums each touched item's ``X^T W X`` and ``X^T W r`` with one sparse
product, and re-inverts only the touched items' matrices in one batched solve.

Memory is allocated up front: ``A``, ``A^{-1}`` (n_items, d, d) and ``b``, ``theta``
(n_items, d), i.e. ``8 * n_items * (2 d^2 + 2 d)`` bytes -- 0.9 MB for 1,000 items and a
6-dimensional context, 18 GB for a million items and a 32-dimensional one (see :attr:`nbytes`).

An update is checked in full (finite, positive definite) before its touched rows are written
into the stacks, so a failed update changes nothing; the writes themselves are in place (a
copy of every stack per update would cost O(n_items d^2)), so a reader in another thread must
hold the same lock as the learner, as :class:`banditrec.engine.Engine` does.
"""

from __future__ import annotations

import numpy as np

from ..errors import ValidationError
from .base import Policy, Request
from .linucb import LinUCBConfig  # alpha, epsilon, reg: the same knobs as every LinUCB
from .checks import check_context, check_rows, check_weight
from .ridge import (all_finite, check_candidates, check_items, check_state, env_int, group_index, grouped_outer,
                    grouped_sum, overflow_error, sherman_morrison, stacked_inverse, with_intercept)


class DisjointLinUCB(Policy):
    """One LinUCB model per catalog item; needs ``n_items`` and ``context_dim`` from the environment.

    Attributes: ``A``, ``A_inv`` (n_items, d, d), ``b``, ``theta`` (n_items, d), d = context_dim + 1.
    """

    name = "linucb"
    Config = LinUCBConfig

    def __init__(self, config: LinUCBConfig, *, n_items=None, context_dim=None, **env):
        super().__init__(config, **env)
        self.n_items = env_int(n_items, "n_items", self.name)
        self.context_dim = env_int(context_dim, "context_dim", self.name)
        self.dim = d = self.context_dim + 1
        eye = np.eye(d)
        self.A = np.repeat((eye * config.reg)[None], self.n_items, axis=0)
        self.A_inv = np.repeat((eye / config.reg)[None], self.n_items, axis=0)
        self.b = np.zeros((self.n_items, d))
        self.theta = np.zeros((self.n_items, d))

    @property
    def nbytes(self) -> int:
        """Bytes held by the model's arrays."""
        return self.A.nbytes + self.A_inv.nbytes + self.b.nbytes + self.theta.nbytes

    def scores(self, request: Request) -> np.ndarray:
        x = with_intercept(check_context(request.context, self.context_dim))
        idx = check_candidates(request, self.n_items)
        Px = self.A_inv[idx] @ x  # (n, d): A_a^{-1} x for every candidate in one batched product
        mean = self.theta[idx] @ x
        return mean + self.config.alpha * np.sqrt(np.maximum(Px @ x, 0.0))

    def update(self, context: np.ndarray, item_features: np.ndarray, reward: np.ndarray, *,
               items: np.ndarray | None = None, weight: np.ndarray | None = None) -> None:
        """Learn from rows ``context (m, d_c)``, ``reward (m,)`` of items ``items (m,)``
        (catalog indices, required); ``item_features`` are not read (one row per context row
        is still checked); ``weight (m,)`` importance weights (each row counts w times)."""
        C, _, r = check_rows(context, item_features, reward, context_dim=self.context_dim)
        m = len(C)
        a = check_items(items, m, self.n_items, self.name)
        w = check_weight(weight, m)
        if m == 0:
            return
        X = with_intercept(C)
        with np.errstate(over="ignore", invalid="ignore"):
            if m == 1:
                touched = a
                A_t = self.A[a] + w[0] * np.outer(X[0], X[0])[None]
                b_t = self.b[a] + (w[0] * r[0]) * X[0][None]
                P_t = sherman_morrison(self.A_inv[a], X[0][None], w[0])
            else:
                touched, groups = group_index(a)
                A_t = self.A[touched] + grouped_outer(groups, len(touched), w, X, X)
                b_t = self.b[touched] + grouped_sum(groups, len(touched), w * r, X)
                if not all_finite(A_t, b_t):
                    raise overflow_error()
                P_t = stacked_inverse(A_t)
            theta_t = np.einsum("kij,kj->ki", P_t, b_t)
        if not all_finite(A_t, b_t, P_t, theta_t):
            raise overflow_error()
        # every new value is checked: commit the touched items' rows
        self.A[touched], self.b[touched], self.A_inv[touched], self.theta[touched] = A_t, b_t, P_t, theta_t
        self.n_updates += 1

    def state(self):
        return ({"A": self.A, "A_inv": self.A_inv, "b": self.b, "theta": self.theta},
                {"n_items": self.n_items, "dim": self.dim})

    def set_state(self, arrays, meta):
        n, d = self.n_items, self.dim
        if meta.get("n_items") != n or meta.get("dim") != d:
            raise ValidationError(f"snapshot is of a {self.name} with {meta.get('n_items')} items and "
                                  f"{meta.get('dim')} dimensions, this one has {n} and {d}", "snapshot")
        check_state(arrays, {"A": (n, d, d), "A_inv": (n, d, d), "b": (n, d), "theta": (n, d)}, self.name)
        # own copies: updates write into these stacks in place
        self.A, self.A_inv = np.array(arrays["A"], dtype=float), np.array(arrays["A_inv"], dtype=float)
        self.b, self.theta = np.array(arrays["b"], dtype=float), np.array(arrays["theta"], dtype=float)
