"""A reward model for the direct method and doubly robust estimators, fitted on the log.

``q(x, a, k) = b_slot[k] + b_item[a] + x . theta``: ridge regression on one-hot slot, one-hot
item and the context. It is deliberately simple and usually misspecified; the doubly robust
estimators stay unbiased when it is wrong (their importance-weighted correction removes the
model's bias), the direct method does not. Bring a better ``q_hat`` when you have one.

Cross-fitting (Chernozhukov et al. 2018; Open Bandit Pipeline's ``fit_predict`` with
``n_folds``): decisions are split into folds, and each row's prediction comes from a model that
never saw that row's decision, so the model's overfitting does not leak into the estimate.

The model never builds the dense ``(n, n_actions, n_slots)`` prediction: the target policy's
expected model reward per row is ``sum_a pi(a | x, k) q(x, a, k)``, which for this additive
model is ``s * (b_slot[k] + x . theta) + pi_row . b_item`` with ``s = sum_a pi(a | x, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError
from ..types import LoggedBandit


@dataclass(frozen=True)
class RidgeRewardModel:
    """Ridge regression ``q(x, a, k) = b_slot[k] + b_item[a] + x . theta`` (penalty ``alpha``)."""

    alpha: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and np.isfinite(self.alpha) and self.alpha > 0):
            raise ValidationError(f"alpha must be a positive number, got {self.alpha!r}", "alpha")

    @staticmethod
    def _design(data: LoggedBandit, rows: np.ndarray):
        n = len(rows)
        k, a = data.n_slots, data.n_actions
        ones = np.ones(n)
        blocks = [
            sp.csr_matrix((ones, (np.arange(n), data.slot[rows])), shape=(n, k)),
            sp.csr_matrix((ones, (np.arange(n), data.action[rows])), shape=(n, a)),
        ]
        if data.context is not None:
            blocks.append(sp.csr_matrix(data.context[rows]))
        return sp.hstack(blocks, format="csr")

    def fit(self, data: LoggedBandit, rows: np.ndarray | None = None) -> np.ndarray:
        """Coefficients ``[b_slot (K), b_item (A), theta (d)]`` fitted on ``rows`` (default all)."""
        rows = np.arange(data.n_rows) if rows is None else rows
        x = self._design(data, rows)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.alpha
        return np.linalg.solve(gram, x.T @ data.reward[rows])

    def predict(self, coef: np.ndarray, data: LoggedBandit, rows: np.ndarray,
                target_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``q(x_i, a_i, k_i)`` for ``rows`` and, given the target's ``(len(rows), A)``
        distribution over items in each row's slot, ``sum_a pi(a | x_i, k_i) q(x_i, a, k_i)``.

        ``target_rows`` may be a dense array or a scipy sparse matrix (a large catalog where
        each decision's target puts mass only on its own candidates).
        """
        k, a = data.n_slots, data.n_actions
        b_slot, b_item, theta = coef[:k], coef[k:k + a], coef[k + a:]
        base = b_slot[data.slot[rows]]
        if data.context is not None:
            base = base + data.context[rows] @ theta
        logged = base + b_item[data.action[rows]]
        if target_rows is None:
            return logged, None
        mass = np.asarray(target_rows.sum(axis=1)).ravel()
        return logged, mass * base + np.asarray(target_rows @ b_item).ravel()

    def fit_folds(self, data: LoggedBandit, *, n_folds: int, rng: np.random.Generator):
        """Fold of each row (folds are sets of decisions) and the coefficients fitted without
        each fold: what :meth:`predict_folds` needs, fitted once for any number of targets."""
        if n_folds < 2:
            raise ValidationError(f"n_folds must be at least 2, got {n_folds}", "n_folds")
        if data.n_decisions < n_folds:
            raise ValidationError(
                f"cross-fitting with {n_folds} folds needs at least {n_folds} decisions, got {data.n_decisions}",
                "n_folds")
        fold = (rng.permutation(data.n_decisions) % n_folds)[data.decision]
        return fold, [self.fit(data, np.flatnonzero(fold != f)) for f in range(n_folds)]

    def predict_folds(self, folds, data: LoggedBandit,
                      target_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Each row's prediction from the model that did not see its fold."""
        fold, coefs = folds
        q_logged = np.empty(data.n_rows)
        q_target = None if target_rows is None else np.empty(data.n_rows)
        for f, coef in enumerate(coefs):
            held = np.flatnonzero(fold == f)
            lg, tg = self.predict(coef, data, held, None if target_rows is None else target_rows[held])
            q_logged[held] = lg
            if q_target is not None:
                q_target[held] = tg
        return q_logged, q_target

    def cross_fit(self, data: LoggedBandit, target_rows: np.ndarray | None, *, n_folds: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Cross-fitted ``(q_logged (n,), q_target (n,) or None)``; folds are sets of decisions."""
        return self.predict_folds(self.fit_folds(data, n_folds=n_folds, rng=rng), data, target_rows)
