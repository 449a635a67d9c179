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

from .base import PolicyConfig, Request
from .ridge import JointRidgePolicy, check_number


@dataclass(frozen=True)
class LinUCBConfig(PolicyConfig):
    alpha: float = 1.0
    epsilon: float = 0.1
    reg: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_number(self.alpha, "alpha", minimum=0.0)
        check_number(self.reg, "reg", minimum=0.0, strict=True)


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
