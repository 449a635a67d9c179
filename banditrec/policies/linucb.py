"""LinUCB with parameters shared across items (Li et al. 2010, the shared part of Alg. 2).

One ridge regression over joint (context, item) features:

    A = reg * I + sum x x^T,    b = sum r x,    theta = A^{-1} b
    score(x) = x^T theta + alpha * sqrt(x^T A^{-1} x)

A single new row updates ``A^{-1}`` by Sherman-Morrison; a batch re-inverts through a
Cholesky factor, which is cheaper and more accurate than m rank-one updates. The greedy
ranking is epsilon-mixed per slot before serving (see :mod:`banditrec.policies.slate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ..errors import ValidationError
from ..features import joint_dim, joint_features
from .base import Policy, PolicyConfig, Request


@dataclass(frozen=True)
class LinUCBConfig(PolicyConfig):
    alpha: float = 1.0
    epsilon: float = 0.1
    reg: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0 and np.isfinite(self.alpha)):
            raise ValidationError(f"alpha must be a finite number >= 0, got {self.alpha!r}", "alpha")
        if not (isinstance(self.reg, (int, float)) and self.reg > 0 and np.isfinite(self.reg)):
            raise ValidationError(f"reg must be a finite number > 0, got {self.reg!r}", "reg")


class LinUCB(Policy):
    """Shared-parameter LinUCB; needs ``context_dim`` and ``item_dim`` from the environment."""

    name = "linucb"
    Config = LinUCBConfig

    def __init__(self, config: LinUCBConfig, *, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        if context_dim is None or item_dim is None:
            raise ValidationError(
                "linucb needs feature sizes: make(..., context_dim=d_c, item_dim=d_i)", "context_dim"
            )
        self.dim = joint_dim(int(context_dim), int(item_dim))
        self.A = np.eye(self.dim) * config.reg
        self.A_inv = np.eye(self.dim) / config.reg
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)

    def features(self, request: Request) -> np.ndarray:
        return joint_features(request.context, request.item_features)

    def scores(self, request: Request) -> np.ndarray:
        X = self.features(request)
        mean = X @ self.theta
        # row-wise quadratic form x_i^T A^{-1} x_i, as one matmul plus a row sum
        var = np.einsum("ij,ij->i", X @ self.A_inv, X)
        return mean + self.config.alpha * np.sqrt(np.maximum(var, 0.0))

    def update(self, context: np.ndarray, item_features: np.ndarray, reward: np.ndarray, *,
               items: np.ndarray | None = None, weight: np.ndarray | None = None) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by update_features
            X = joint_features(np.atleast_2d(context), np.atleast_2d(item_features))
        self.update_features(X, reward, weight)

    def update_features(self, features: np.ndarray, reward: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Ridge update from rows of joint features ``(m, dim)``, rewards ``(m,)`` and optional
        importance weights ``(m,)`` (``A += X^T W X``, ``b += X^T W r``)."""
        X = np.atleast_2d(np.asarray(features, dtype=float))
        r = np.atleast_1d(np.asarray(reward, dtype=float))
        if X.shape[1] != self.dim or len(X) != len(r):
            raise ValidationError(
                f"update needs features (m, {self.dim}) and reward (m,), got {X.shape} and {r.shape}",
                "features",
            )
        if not (np.isfinite(X).all() and np.isfinite(r).all()):
            raise ValidationError("update features and rewards must be finite", "reward")
        w = np.ones(len(r)) if weight is None else np.atleast_1d(np.asarray(weight, dtype=float))
        if w.shape != r.shape or not np.isfinite(w).all() or (w < 0).any():
            raise ValidationError(f"weight must be finite and >= 0 with one entry per row ({len(r)}), "
                                  f"got shape {w.shape}", "weight")
        if len(X) == 0:
            return
        overflow = ValidationError("update would make the model non-finite (rewards or features too large); "
                                   "the update was not applied", "reward")
        # computed on copies: a failed update keeps serving the old state, never a NaN model
        with np.errstate(over="ignore", invalid="ignore"):
            Xw = X * w[:, None]
            A = self.A + Xw.T @ X
            b = self.b + Xw.T @ r
            if not (np.isfinite(A).all() and np.isfinite(b).all()):
                raise overflow
            if len(X) == 1:
                x = X[0]
                Ax = self.A_inv @ x
                A_inv = self.A_inv - w[0] * np.outer(Ax, Ax) / (1.0 + w[0] * (x @ Ax))
            else:
                A_inv = cho_solve(cho_factor(A), np.eye(self.dim))
            theta = A_inv @ b
        if not (np.isfinite(A_inv).all() and np.isfinite(theta).all()):
            raise overflow
        self.A, self.b, self.A_inv, self.theta = A, b, A_inv, theta
        self.n_updates += 1

    def state(self):
        return {"A": self.A, "A_inv": self.A_inv, "b": self.b, "theta": self.theta}, {"dim": self.dim}

    def set_state(self, arrays, meta):
        if meta.get("dim") != self.dim or set(arrays) != {"A", "A_inv", "b", "theta"}:
            raise ValidationError(f"snapshot is of a {meta.get('dim')}-dimensional {self.name}, this one has "
                                  f"{self.dim} dimensions", "snapshot")
        self.A, self.A_inv, self.b = arrays["A"], arrays["A_inv"], arrays["b"]
        self.theta = arrays["theta"]
