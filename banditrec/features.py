"""Turning a request's context and its candidates' attributes into feature vectors.

Stateless: the same inputs always give the same vectors.

The joint feature of (context x, item v) is ``[v, vec(x v^T)]``: the item's own attributes
(a learned item-side bias) followed by every context-item product, so a linear model over it
can represent any bilinear affinity x^T W v.
"""

from __future__ import annotations

import numpy as np


def joint_dim(context_dim: int, item_dim: int) -> int:
    """Length of a joint feature vector."""
    return item_dim + context_dim * item_dim


def joint_features(context: np.ndarray, item_features: np.ndarray) -> np.ndarray:
    """Joint features for one context and many items, or row-by-row pairs.

    Parameters
    ----------
    context : (d_c,) or (m, d_c)
        One context for all items, or one context per row.
    item_features : (m, d_i)

    Returns
    -------
    (m, d_i + d_c * d_i) float array.
    """
    item_features = np.asarray(item_features, dtype=float)
    context = np.asarray(context, dtype=float)
    m, d_i = item_features.shape
    if context.ndim == 1:
        cross = np.multiply.outer(item_features, context)  # (m, d_i, d_c)
    else:
        cross = item_features[:, :, None] * context[:, None, :]
    out = np.empty((m, d_i + cross.shape[1] * cross.shape[2]))
    out[:, :d_i] = item_features
    out[:, d_i:] = cross.reshape(m, -1)
    return out
