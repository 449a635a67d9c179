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


def reference_cf_candidates(similarity, popularity, history, N, exclude=()):
    """ItemItemCF's list for one user, densely: summed similarity rows of the history, the
    history and ``exclude`` left out, positive scores by (score, lower index), then the most
    popular remaining items (ties by lower index)."""
    S = similarity.toarray() if hasattr(similarity, "toarray") else np.asarray(similarity)
    n = S.shape[0]
    score = np.zeros(n)
    for h in np.asarray(history, dtype=np.int64).tolist():
        score = score + S[h]
    banned = np.zeros(n, bool)
    banned[np.asarray(history, dtype=np.int64)] = True
    banned[np.asarray(exclude, dtype=np.int64)] = True
    cf = np.flatnonzero((score > 0) & ~banned)
    cf = cf[np.lexsort((cf, -score[cf]))][:N]
    taken = banned.copy()
    taken[cf] = True
    rest = [j for j in np.argsort(-np.asarray(popularity), kind="stable").tolist() if not taken[j]]
    fill = np.asarray(rest[: N - len(cf)], dtype=np.int64)
    return np.r_[cf, fill].astype(np.int64), np.r_[score[cf], np.zeros(len(fill))], len(cf)
