"""Turning a request's context and its candidates' attributes into feature vectors (stateless):
an item's ``[1, v, cold]`` and the joint (context, item) features of the linear models.

Details: docs/policies.md, "Joint features (`banditrec/features.py`)".
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

ITEM_EXTRA = 2
"""Columns the item vector ``u`` adds to the item's attributes: the constant and the cold flag."""


def item_dim_of(item_dim: int) -> int:
    """Length of the item vector ``u = [1, v, cold]`` for ``item_dim`` attributes."""
    return item_dim + ITEM_EXTRA


def joint_dim(context_dim: int, item_dim: int) -> int:
    """Length of a joint feature vector: ``(item_dim + 2) * (context_dim + 1)``."""
    return item_dim_of(item_dim) * (context_dim + 1)


def item_vectors(item_features: np.ndarray, cold: ArrayLike | None = None) -> np.ndarray:
    """``u = [1, v, cold]`` per row of ``item_features (m, d_i)``; ``cold (m,)`` 0/1 or ``None``."""
    V = np.asarray(item_features, dtype=float)
    m = len(V)
    U = np.empty((m, V.shape[1] + ITEM_EXTRA))
    U[:, 0] = 1.0
    U[:, 1:-1] = V
    U[:, -1] = 0.0 if cold is None else np.asarray(cold, dtype=float)
    return U


def joint_features(context: np.ndarray, item_features: np.ndarray, cold: ArrayLike | None = None) -> np.ndarray:
    """Joint features for one context and many items, or row-by-row pairs.

    Parameters
    ----------
    context : (d_c,) or (m, d_c)
        One context for all items, or one context per row.
    item_features : (m, d_i)
    cold : (m,) 0/1 flags, optional (all 0 when ``None``)

    Returns
    -------
    (m, joint_dim(d_c, d_i)) float array ``[u, vec(u c^T)]`` with ``u = [1, v, cold]``: entry
    ``d_u + i * d_c + k`` is ``u_i c_k``.
    """
    U = item_vectors(item_features, cold)
    context = np.asarray(context, dtype=float)
    m, d_u = U.shape
    if context.ndim == 1:
        cross = np.multiply.outer(U, context)  # (m, d_u, d_c)
    else:
        cross = U[:, :, None] * context[:, None, :]
    out = np.empty((m, d_u + cross.shape[1] * cross.shape[2]))
    out[:, :d_u] = U
    out[:, d_u:] = cross.reshape(m, -1)
    return out
