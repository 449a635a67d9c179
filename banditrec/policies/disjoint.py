"""LinUCB with disjoint linear models (Li et al. 2010, Algorithm 1): one ridge regression over
``[1, context]`` per catalog item, scored and updated in batches over the items' stacks.

Details: docs/policies.md, "Disjoint LinUCB (`policies/disjoint.py`)".
"""

from __future__ import annotations

import numpy as np

from .base import Request, Rows
from .checks import check_context, check_rows, check_weight
from .linucb import LinUCBConfig  # alpha, epsilon, reg, gamma: the same knobs as every LinUCB
from .peritem import PerItemPolicy
from .ridge import (
    RewardStats,
    all_finite,
    check_candidates,
    check_items,
    env_int,
    group_index,
    grouped_outer,
    grouped_sum,
    overflow_error,
    row_discounts,
    sherman_morrison,
    stacked_inverse,
    with_intercept,
)
from .terms import FeatureNames, ScoreTerms


class DisjointLinUCB(PerItemPolicy):
    """One LinUCB model per catalog item; needs ``context_dim`` from the environment (and takes
    ``n_items``, the catalog size known so far).

    Attributes: ``A``, ``A_inv`` (n_items, d, d), ``b``, ``theta`` (n_items, d), d = context_dim + 1.
    """

    name = "disjoint-linucb"
    Config = LinUCBConfig
    config: LinUCBConfig
    needs = frozenset({"items"})

    def __init__(self, config: LinUCBConfig, *, context_dim=None, **env):
        super().__init__(config, **env)
        self.context_dim = env_int(context_dim, "context_dim", self.name)
        self.dim = d = self.context_dim + 1
        eye = np.eye(d)
        self._stack("A", eye * config.reg)
        self._stack("A_inv", eye / config.reg)
        self._stack("b", np.zeros(d))
        self._stack("theta", np.zeros(d))

    def _meta(self) -> dict:
        return {"dim": self.dim}

    def scores(self, request: Request) -> np.ndarray:
        x = with_intercept(check_context(request.context, self.context_dim))
        idx = check_candidates(request)
        Px = self._gather("A_inv", idx) @ x  # (n, d): A_a^{-1} x for every candidate in one batched product
        mean = self._gather("theta", idx) @ x
        return mean + self.config.alpha * self.noise_sd * np.sqrt(np.maximum(Px @ x, 0.0))

    def score_terms(self, request: Request, names: FeatureNames) -> ScoreTerms:
        """``x_k theta_{a,k}`` of each candidate's own model (``x = [1, c]``, named ``own`` and
        ``own × ctx:...``) and the UCB width ``alpha sigma sqrt(x^T A_a^{-1} x)``."""
        x = with_intercept(check_context(request.context, self.context_dim))
        idx = check_candidates(request)
        var = (self._gather("A_inv", idx) @ x) @ x
        bonus = self.config.alpha * self.noise_sd * np.sqrt(np.maximum(var, 0.0))
        return ScoreTerms(names.own(self.context_dim), self._gather("theta", idx) * x, bonus, "ucb")

    def learn(self, rows: Rows) -> None:
        """Learn from rows ``context (m, d_c)``, ``reward (m,)`` of items ``items (m,)``
        (catalog indices, required); ``item_features`` are not read (one row per context row
        is still checked); ``weight (m,)`` importance weights (each row counts w times)."""
        C, _, r = check_rows(rows.context, rows.item_features, rows.reward, context_dim=self.context_dim)
        m = len(C)
        a = check_items(rows.items, m, self.name)
        w = check_weight(rows.weight, m)
        if m == 0:
            return
        X = with_intercept(C)
        gamma = self.config.gamma
        stats = RewardStats.step(self.stats, r, w, gamma)
        self._ensure(int(a.max()) + 1)  # new rows at the prior: harmless if the update fails
        with np.errstate(over="ignore", invalid="ignore"):
            if gamma < 1.0:
                touched, A_t, b_t, P_t, theta_t = self._discounted(a, X, r, w, gamma)
            elif m == 1:
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
            if gamma == 1.0:
                theta_t = np.einsum("kij,kj->ki", P_t, b_t)
        if not all_finite(A_t, b_t, P_t, theta_t, stats):
            raise overflow_error()
        # every new value is checked: commit the touched items' rows
        self.A[touched], self.b[touched], self.A_inv[touched], self.theta[touched] = A_t, b_t, P_t, theta_t
        self.stats, self._sigma = stats, None
        self.n_updates += 1

    def _fit_terms(self) -> tuple[float, float]:
        return self._per_item_fit()

    def _discounted(self, a, X, r, w, gamma):
        """Every learned item's data decays by ``gamma^m``; the m rows count ``gamma^(m-1-i) w_i``."""
        age, decay = row_discounts(len(X), gamma)
        we = w * age
        prior = np.eye(self.dim) * self.config.reg
        touched = np.arange(self.n_items)
        A_t = prior + decay * (self.A - prior)
        b_t = decay * self.b
        items, groups = group_index(a)
        A_t[items] += grouped_outer(groups, len(items), we, X, X)
        b_t[items] += grouped_sum(groups, len(items), we * r, X)
        if not all_finite(A_t, b_t):
            raise overflow_error()
        P_t = stacked_inverse(A_t)
        return touched, A_t, b_t, P_t, np.einsum("kij,kj->ki", P_t, b_t)
