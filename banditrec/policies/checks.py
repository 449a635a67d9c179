"""Input checks every policy shares: a served context, logged rows, importance weights.

Each raises :class:`~banditrec.errors.ValidationError` naming the input and what was found.
"""

from __future__ import annotations

import numpy as np

from ..errors import ValidationError
from ..validation import check_finite


def check_context(context, context_dim: int | None = None) -> np.ndarray:
    """One request's context ``(d_c,)``, finite; its width checked when ``context_dim`` is known."""
    c = np.asarray(context, dtype=float)
    if c.ndim != 1 or (context_dim is not None and c.shape != (context_dim,)):
        raise ValidationError(f"context must have shape ({context_dim or 'd_c'},), got {c.shape}", "context")
    check_finite(c, "context")
    return c


def check_weight(weight, m: int) -> np.ndarray:
    """Importance weights ``(m,)``, finite and ``>= 0``; ``None`` means 1 for every row."""
    if weight is None:
        return np.ones(m)
    w = np.atleast_1d(np.asarray(weight, dtype=float))
    if w.shape != (m,):
        raise ValidationError(f"weight must have one entry per row ({m}), got shape {w.shape}", "weight")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"weight must be finite and >= 0, found {float(w[i])} at row {i}", "weight")
    return w


def check_rows(context, item_features, reward, *, context_dim: int | None = None, item_dim: int | None = None):
    """Logged rows as ``(context (m, d_c), item_features (m, d_i), reward (m,))`` float arrays.

    ``item_dim=None`` checks only that there is one item row per context row (for models that
    do not read item features); ``context_dim=None`` leaves the context's width unchecked (a
    policy that does not know it). Raises naming the array and what was found.
    """
    C = np.atleast_2d(np.asarray(context, dtype=float))
    V = np.asarray(item_features, dtype=float)
    V = V.reshape(1, -1) if V.ndim == 1 else V
    r = np.atleast_1d(np.asarray(reward, dtype=float))
    m = len(C)
    if C.ndim != 2 or (context_dim is not None and C.shape[1] != context_dim):
        raise ValidationError(f"context must have shape (m, {context_dim or 'd_c'}), got {C.shape}", "context")
    if V.ndim != 2 or len(V) != m or (item_dim is not None and V.shape[1] != item_dim):
        want = f"({m}, {item_dim})" if item_dim is not None else f"({m}, d_i)"
        raise ValidationError(f"item_features must have shape {want}, got {V.shape}", "item_features")
    if r.shape != (m,):
        raise ValidationError(f"reward must have one entry per row ({m}), got shape {r.shape}", "reward")
    check_finite(C, "context")
    if item_dim is not None:
        check_finite(V, "item_features")
    check_finite(r, "reward")
    return C, V, r
