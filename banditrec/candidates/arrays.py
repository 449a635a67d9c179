"""Saving fitted candidate models as plain arrays plus JSON-able metadata (no pickle), checked
array by array on load.

Details: docs/candidates.md, "Saved arrays (`candidates/arrays.py`)".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from ..errors import ValidationError


class Prefixed(Mapping):
    """The arrays of ``arrays`` whose names start with ``prefix``, without it (lazily read)."""

    def __init__(self, arrays: Mapping, prefix: str):
        self.arrays, self.prefix = arrays, prefix

    def __getitem__(self, key):
        return self.arrays[self.prefix + key]

    def __contains__(self, key) -> bool:
        return (self.prefix + key) in self.arrays

    def __iter__(self):
        n = len(self.prefix)
        return (k[n:] for k in self.arrays if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def name(self, key: str) -> str:
        return self.prefix + key


def full_name(arrays: Mapping, key: str) -> str:
    return arrays.name(key) if isinstance(arrays, Prefixed) else key


def put_csr(out: dict, name: str, M: sp.csr_matrix) -> None:
    M = sp.csr_matrix(M)
    out[f"{name}.indptr"] = M.indptr
    out[f"{name}.indices"] = M.indices
    out[f"{name}.data"] = M.data


def check_meta(meta, fmt: str, version: int) -> dict:
    if not isinstance(meta, Mapping):
        raise ValidationError(f"{fmt} metadata must be a mapping, got {type(meta).__name__}", "meta")
    if meta.get("format") != fmt:
        raise ValidationError(f"metadata is for {meta.get('format')!r}, expected {fmt!r}", "meta.format")
    if meta.get("version") != version:
        raise ValidationError(
            f"{fmt} format version {meta.get('version')!r} is not supported (this banditrec reads version {version})",
            "meta.version",
        )
    return dict(meta)


def from_meta(cls, meta, fmt: str, version: int = 1, **extra):
    """``(cls(**meta["params"], **extra), meta)`` after :func:`check_meta`; unknown or missing
    parameters raise :class:`ValidationError`."""
    meta = check_meta(meta, fmt, version)
    try:
        return cls(**meta.get("params", {}), **extra), meta
    except TypeError as exc:
        raise ValidationError(f"{fmt} params: {exc}", "meta.params") from None


def meta_int(meta: Mapping, key: str, low: int = 0) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValidationError(f"metadata {key!r} must be an integer >= {low}, got {v!r}", f"meta.{key}")
    return int(v)


def take(arrays: Mapping, key: str, kind: str, shape: tuple) -> np.ndarray:
    """The array ``key``: dtype kind in ``kind`` ("f", "i", "b"; "i" accepts unsigned), and
    ``shape`` (None entries match any size)."""
    name = full_name(arrays, key)
    if key not in arrays:
        raise ValidationError(f"array {name!r} is missing", name)
    a = np.asarray(arrays[key])
    kinds = {"i": "iu"}.get(kind, kind)
    if a.dtype.kind not in kinds:
        raise ValidationError(f"array {name!r} must have dtype kind {kind!r}, found {a.dtype}", name)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValidationError(f"array {name!r} must have shape {want}, found {a.shape}", name)
    if kind == "f" and a.size and not np.isfinite(a).all():
        i = int(np.argmax(~np.isfinite(a.ravel())))
        raise ValidationError(f"array {name!r} must be finite, found {a.ravel()[i]} at flat index {i}", name)
    return a


def take_csr(arrays: Mapping, name: str, shape: tuple[int, int]) -> sp.csr_matrix:
    rows, cols = shape
    indptr = take(arrays, f"{name}.indptr", "i", (rows + 1,))
    indices = take(arrays, f"{name}.indices", "i", (None,))
    data = take(arrays, f"{name}.data", "f", (len(indices),))
    full = full_name(arrays, name)
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ValidationError(
            f"{full}.indptr must rise from 0 to {len(indices)} (the number of entries), found "
            f"{indptr[0]} ... {indptr[-1]}",
            f"{full}.indptr",
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
        raise ValidationError(f"{full}.indices must be in [0, {cols}), found {bad}", f"{full}.indices")
    return sp.csr_matrix((data, indices, indptr), shape=shape)
