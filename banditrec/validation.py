"""Input checks shared by every module; messages show what was found, never just "invalid".

None of these functions mutates its input; each returns a (possibly converted) copy-free view
where it can.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

# re-exported: banditrec.types and others import ValidationError from here
from .errors import ValidationError as ValidationError


def as_1d(x: ArrayLike, name: str, dtype: DTypeLike | None = None) -> np.ndarray:
    """Return ``x`` as a 1-D array, or raise naming ``name`` and the shape found."""
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} must be a 1-D array of numbers: {exc}", name) from None
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be 1-dimensional, got shape {arr.shape}", name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or an infinity, naming the first bad position."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = int(idx[0]) if arr.ndim == 1 else tuple(int(i) for i in idx)
        raise ValidationError(f"{name} must be finite, found {arr[tuple(idx)].item()} at index {where}", name)


def check_same_length(**arrays: Sized) -> int:
    """All arrays given by keyword must have the same first dimension; return it."""
    names = list(arrays)
    lengths = [len(a) for a in arrays.values()]
    for n, length in zip(names[1:], lengths[1:]):
        if length != lengths[0]:
            raise ValidationError(f"{names[0]} and {n} must have the same length, got {lengths[0]} and {length}", n)
    return lengths[0] if lengths else 0


def check_probabilities(p: np.ndarray, name: str, *, allow_zero: bool = False) -> None:
    """Every entry must be in (0, 1] (or [0, 1] with ``allow_zero``); name the first offender."""
    check_finite(p, name)
    low_ok = p >= 0 if allow_zero else p > 0
    bad = ~(low_ok & (p <= 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValidationError(f"{name} must be in {interval}, found {float(p[i])} at row {i}", name)


def check_int_range(arr: np.ndarray, name: str, low: int, high: int) -> None:
    """Integer entries must lie in [low, high); name the first offender."""
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(f"{name} must hold integers, got dtype {arr.dtype}", name)
    bad = (arr < low) | (arr >= high)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"{name} must be in [{low}, {high}), found {arr[i].item()} at row {i}", name)


def check_positive_int(value: object, name: str) -> int:
    """A plain positive integer (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__} {value!r}", name)
    if value < 1:
        raise ValidationError(f"{name} must be >= 1, got {value}", name)
    return int(value)


def as_seed_sequence(seed: int | Sequence[int] | np.random.SeedSequence | None) -> np.random.SeedSequence:
    """A ``SeedSequence`` from an int, ``None`` (fresh entropy) or a ``SeedSequence``.

    A ``SeedSequence`` is copied (spawn counter included), so spawning from the result never
    changes the caller's object: passing the same object twice gives the same streams.
    """
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(
            seed.entropy, spawn_key=seed.spawn_key, pool_size=seed.pool_size, n_children_spawned=seed.n_children_spawned
        )
    if isinstance(seed, np.random.Generator):
        raise ValidationError("pass a seed or a SeedSequence here, not a Generator", "seed")
    return np.random.SeedSequence(seed)
