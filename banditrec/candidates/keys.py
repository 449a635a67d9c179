"""Set operations on integer keys by sorting.

numpy 2's ``np.unique`` without ``return_inverse`` takes a hash-table path that is much slower
than a sort on large integer arrays (and on small ones); these helpers sort instead.
"""

from __future__ import annotations

import numpy as np


def distinct(a: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``a``."""
    s = np.sort(a)
    first = np.ones(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=first[1:])
    return s[first]


def distinct_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, inverse)``: the sorted distinct values and, for each entry of ``a``, the
    position of its value (``values[inverse] == a``)."""
    order = np.argsort(a)
    s = a[order]
    first = np.ones(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=first[1:])
    inverse = np.empty(len(a), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse


def distinct_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, inverse)`` of a 2-D integer array: its distinct rows (sorted) and the position
    of each row's among them; a lexsort over the columns (no structured-dtype sort)."""
    if a.shape[0] == 0:
        return a, np.empty(0, dtype=np.int64)
    order = np.lexsort(a.T[::-1])
    s = a[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = (s[1:] != s[:-1]).any(axis=1)
    inverse = np.empty(len(a), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse
