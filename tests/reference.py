"""Slow, obvious reference implementations the fast paths are checked against."""

from __future__ import annotations

import numpy as np


def reference_slot_pmf(scores, eps_k, shown):
    """The slot rule stated plainly: epsilon spread uniformly over the remaining candidates,
    the rest shared evenly by the best remaining ones."""
    remaining = [j for j in range(len(scores)) if j not in shown]
    best = max(scores[j] for j in remaining)
    top = [j for j in remaining if scores[j] == best]
    pmf = np.zeros(len(scores))
    for j in remaining:
        pmf[j] += eps_k / len(remaining)
    for j in top:
        pmf[j] += (1 - eps_k) / len(top)
    return pmf


def reference_linucb_scores(A, b, alpha, X, sigma=1.0):
    """x^T A^{-1} b + alpha sigma sqrt(x^T A^{-1} x), with an explicit inverse."""
    A_inv = np.linalg.inv(A)
    theta = A_inv @ b
    return np.array([x @ theta + alpha * sigma * np.sqrt(x @ A_inv @ x) for x in X])


def reference_noise_sd(X, r, reg=1.0):
    """The ridge model's noise scale from its rows ``X (m, d)``, ``r (m,)``, written out: the
    residual sum of squares sum r^2 - theta . X^T r plus one prior row of variance
    (range / 2)^2 (range 1 until two different rewards), over m - (d - reg trace(A^-1)) + 1
    (at least 1); 0.5 with no rows."""
    d = X.shape[1]
    A = reg * np.eye(d) + X.T @ X
    c = X.T @ r
    spread = float(r.max() - r.min()) if len(r) and r.max() > r.min() else 1.0
    df = d - reg * np.trace(np.linalg.inv(A))
    return float(np.sqrt((r @ r - np.linalg.solve(A, c) @ c + spread ** 2 / 4) / (max(len(r) - df, 0.0) + 1.0)))
