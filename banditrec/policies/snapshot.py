"""Policy snapshots: arrays in ``.npz`` plus a JSON manifest, written atomically, never pickle.

A snapshot is two files, ``<stem>.npz`` (the arrays; ``allow_pickle=False`` on both sides)
and ``<stem>.json``: the policy's name, params, model version, the array names, shapes and
dtypes, any extra metadata, and the SHA-256 of the ``.npz`` (or of another payload file, such
as a Vowpal Wabbit model). Each file is written to a temporary name, fsynced and renamed, the
manifest last, so a reader sees either the old snapshot or the new one. Loading re-hashes the
payload and checks every array against the manifest: a truncated or corrupt snapshot raises
:class:`~banditrec.errors.ValidationError` instead of serving a wrong model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ValidationError

FORMAT = "banditrec.snapshot/1"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _stem(path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".npz", ".json") else p


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(path, *, name: str, params: dict, model_version: str, arrays: dict[str, np.ndarray],
         meta: dict | None = None, payload: bytes | None = None, payload_suffix: str = ".npz") -> Path:
    """Write a snapshot; returns the manifest's path.

    ``arrays`` go to ``<stem>.npz``; or give ``payload`` bytes (e.g. a VW model) with its
    ``payload_suffix``. ``meta`` is any JSON-able extra state (e.g. dimensions, counters).
    """
    stem = _stem(path)
    if payload is None:
        buf = io.BytesIO()
        clean = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        for k, v in clean.items():
            if v.dtype == object:
                raise ValidationError(f"snapshot array {k!r} has dtype object; only numeric arrays are saved", k)
        np.savez(buf, **clean)
        payload, payload_suffix = buf.getvalue(), ".npz"
        shapes = {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in clean.items()}
    else:
        shapes = {}
    payload_path = stem.with_suffix(payload_suffix)
    manifest = {
        "format": FORMAT,
        "policy": name,
        "params": params,
        "model_version": model_version,
        "payload": payload_path.name,
        "sha256": sha256(payload),
        "size": len(payload),
        "arrays": shapes,
        "meta": meta or {},
    }
    atomic_write(payload_path, payload)
    manifest_path = stem.with_suffix(".json")
    atomic_write(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest_path


def load(path) -> tuple[dict, dict[str, np.ndarray] | bytes]:
    """Read and verify a snapshot: ``(manifest, arrays)`` (or the raw payload bytes when the
    snapshot holds a non-npz payload). Anything missing, truncated or altered raises."""
    stem = _stem(path)
    manifest_path = stem.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ValidationError(f"no snapshot manifest at {manifest_path}", "snapshot") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"snapshot manifest {manifest_path} is not valid JSON ({exc})", "snapshot") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValidationError(f"{manifest_path} is not a banditrec snapshot (format {FORMAT})", "snapshot")
    for key in ("policy", "params", "model_version", "payload", "sha256", "size", "arrays", "meta"):
        if key not in manifest:
            raise ValidationError(f"snapshot manifest {manifest_path} lacks {key!r}", "snapshot")
    payload_path = manifest_path.parent / manifest["payload"]
    try:
        payload = payload_path.read_bytes()
    except FileNotFoundError:
        raise ValidationError(f"snapshot payload {payload_path} is missing", "snapshot") from None
    if len(payload) != manifest["size"] or sha256(payload) != manifest["sha256"]:
        raise ValidationError(
            f"snapshot payload {payload_path} does not match its manifest (size {len(payload)} vs "
            f"{manifest['size']}, or checksum): truncated or corrupt", "snapshot")
    if not payload_path.name.endswith(".npz"):
        return manifest, payload
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"snapshot {payload_path} cannot be read: {exc}", "snapshot") from None
    expected = manifest["arrays"]
    if set(arrays) != set(expected):
        raise ValidationError(f"snapshot {payload_path} holds arrays {sorted(arrays)}, manifest says "
                              f"{sorted(expected)}", "snapshot")
    for k, v in arrays.items():
        if list(v.shape) != expected[k]["shape"] or v.dtype.str != expected[k]["dtype"]:
            raise ValidationError(f"snapshot array {k!r} is {v.dtype.str}{list(v.shape)}, manifest says "
                                  f"{expected[k]['dtype']}{expected[k]['shape']}", "snapshot")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValidationError(f"snapshot array {k!r} holds non-finite values", "snapshot")
    return manifest, arrays
