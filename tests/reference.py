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


def reference_linucb_scores(A, b, alpha, X):
    """x^T A^{-1} b + alpha sqrt(x^T A^{-1} x), with an explicit inverse."""
    A_inv = np.linalg.inv(A)
    theta = A_inv @ b
    return np.array([x @ theta + alpha * np.sqrt(x @ A_inv @ x) for x in X])
