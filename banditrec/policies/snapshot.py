"""Policy snapshots: arrays in ``.npz`` plus a JSON manifest, written atomically, never pickle;
every byte checksummed and checked against a schema on load.

Details: docs/policies.md, "Snapshots (`policies/snapshot.py`)".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ValidationError

FORMAT = "banditrec.snapshot/3"
# format 2 named the per-item LinUCB "linucb" and the shared model "shared-linucb"; it still loads
FORMAT_2 = "banditrec.snapshot/2"
RENAMED_SINCE_2 = {"linucb": "disjoint-linucb", "shared-linucb": "linucb"}
MAX_MANIFEST_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 40
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = (
    "format",
    "policy",
    "params",
    "model_version",
    "payload",
    "sha256",
    "size",
    "arrays",
    "meta",
    "provenance",
    "checksum",
)


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


def canonical(obj: dict) -> bytes:
    """The canonical JSON of ``obj`` that a ``checksum`` field is taken over (sorted keys,
    no whitespace, ASCII, the ``checksum`` key itself left out)."""
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def version(manifest: dict) -> str:
    """The published version name of a verified manifest: ``<model_version>.<payload sha[:8]>``."""
    return f"{manifest['model_version']}.{manifest['sha256'][:8]}"


def save(
    path,
    *,
    name: str,
    params: dict,
    model_version: str,
    arrays: dict[str, np.ndarray],
    meta: dict | None = None,
    payload: bytes | None = None,
    payload_suffix: str = ".npz",
    provenance: dict | None = None,
) -> Path:
    """Write a snapshot; returns the manifest's path.

    ``arrays`` go to ``<stem>.npz``; or give ``payload`` bytes (e.g. a VW model) with its
    ``payload_suffix``. ``meta`` is any JSON-able extra state (e.g. dimensions, counters);
    ``provenance`` says where the snapshot came from (integers, e.g. ``trained_until_seq``).
    """
    stem = _stem(path)
    if payload is None:
        buf = io.BytesIO()
        clean = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        for k, v in clean.items():
            if v.dtype == object:
                raise ValidationError(f"snapshot array {k!r} has dtype object; only numeric arrays are saved", k)
        np.savez(buf, **clean)  # type: ignore[arg-type]  # numpy's stub matches **kwds against allow_pickle
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
        "provenance": provenance or {},
    }
    manifest["checksum"] = sha256(canonical(manifest))
    _check_manifest(manifest, stem.with_suffix(".json"))  # what a reader refuses is never written
    atomic_write(payload_path, payload)
    manifest_path = stem.with_suffix(".json")
    atomic_write(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest_path


# ---- the manifest's schema -----------------------------------------------------------------
def _fail(where: Path, field: str, expected: str, found) -> ValidationError:
    shown = repr(found)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ValidationError(f"snapshot manifest {where}: {field} must be {expected}, found {shown}", "snapshot")


def _is_int(value, low: int = 0, high: int = 2**63 - 1) -> bool:
    return type(value) is int and low <= value <= high


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, bool, int)) or (type(value) is float and math.isfinite(value))


def _check_manifest(m, where: Path) -> dict:
    """``m`` if it has the manifest's structure and types; else a ValidationError naming the field."""
    if not isinstance(m, dict):
        raise _fail(where, "the manifest", "a JSON object", type(m).__name__)
    if m.get("format") not in (FORMAT, FORMAT_2):
        found = m.get("format")
        hint = " (written by an older banditrec: publish again)" if found == "banditrec.snapshot/1" else ""
        raise ValidationError(
            f"{where} is not a banditrec snapshot of format {FORMAT}, found format {found!r}{hint}", "snapshot"
        )
    missing = [k for k in _KEYS if k not in m]
    if missing:
        raise ValidationError(f"snapshot manifest {where} lacks {', '.join(map(repr, missing))}", "snapshot")
    unknown = sorted(set(m) - set(_KEYS))
    if unknown:
        raise ValidationError(f"snapshot manifest {where} has unknown fields {unknown}", "snapshot")
    for key in ("policy", "model_version"):
        if not isinstance(m[key], str) or not m[key] or len(m[key]) > 256:
            raise _fail(where, key, "a non-empty string", m[key])
    payload = m["payload"]
    if (
        not isinstance(payload, str)
        or not payload
        or payload.startswith(".")
        or "/" in payload
        or "\\" in payload
        or "\x00" in payload
        or len(payload) > 255
    ):
        raise _fail(where, "payload", "a file name in the snapshot's directory", payload)
    for key in ("sha256", "checksum"):
        if not isinstance(m[key], str) or not _HEX64.fullmatch(m[key]):
            raise _fail(where, key, "64 lowercase hex digits", m[key])
    if not _is_int(m["size"], 0, MAX_PAYLOAD_BYTES):
        raise _fail(where, "size", "an integer >= 0", m["size"])
    params = m["params"]
    if not isinstance(params, dict) or not all(_is_scalar(v) for v in params.values()):
        raise _fail(where, "params", "an object of strings, numbers, booleans or nulls", params)
    arrays = m["arrays"]
    if not isinstance(arrays, dict):
        raise _fail(where, "arrays", "an object", arrays)
    for name, spec in arrays.items():
        if (
            not isinstance(spec, dict)
            or set(spec) != {"shape", "dtype"}
            or not isinstance(spec["shape"], list)
            or len(spec["shape"]) > 32
            or not all(_is_int(n) for n in spec["shape"])
            or not isinstance(spec["dtype"], str)
            or not 0 < len(spec["dtype"]) <= 16
        ):
            raise _fail(where, f"arrays.{name}", "{shape: [integers >= 0], dtype: string}", spec)
    meta = m["meta"]
    if not isinstance(meta, dict):
        raise _fail(where, "meta", "an object", meta)
    if "n_updates" in meta and not _is_int(meta["n_updates"]):
        raise _fail(where, "meta.n_updates", "an integer >= 0", meta["n_updates"])
    provenance = m["provenance"]
    if not isinstance(provenance, dict) or not all(_is_int(v) for v in provenance.values()):
        raise _fail(where, "provenance", "an object of integers >= 0", provenance)
    return m


def read_json(path: Path, what: str, max_bytes: int, *, expected_sha256: str | None = None):
    """``(raw bytes, parsed JSON)`` of the small file ``path`` (``what`` names it in errors):
    at most ``max_bytes``, hashing to ``expected_sha256`` when given; else ``ValidationError``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ValidationError(f"no {what} at {path}", "snapshot") from None
    except OSError as exc:
        raise ValidationError(f"{what} {path} cannot be read: {exc}", "snapshot") from None
    if len(raw) > max_bytes:
        raise ValidationError(f"{what} {path} is larger than {max_bytes} bytes", "snapshot")
    if expected_sha256 is not None and sha256(raw) != expected_sha256:
        raise ValidationError(
            f"{what} {path} does not match the checksum its pointer gives: altered or corrupt", "snapshot"
        )
    try:
        return raw, json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationError(f"{what} {path} is not valid JSON ({exc})", "snapshot") from None


def read_manifest(path, *, expected_sha256: str | None = None) -> dict:
    """The verified manifest of the snapshot at ``path``: its bytes hash to
    ``expected_sha256`` when given (the publishing pointer's), its own ``checksum`` holds, and
    its structure and types are a manifest's. Anything else raises ``ValidationError``."""
    where = _stem(path).with_suffix(".json")
    _, manifest = read_json(where, "snapshot manifest", MAX_MANIFEST_BYTES, expected_sha256=expected_sha256)
    _check_manifest(manifest, where)
    try:
        intact = sha256(canonical(manifest)) == manifest["checksum"]
    except ValueError:  # a non-finite number somewhere in meta
        intact = False
    if not intact:
        raise ValidationError(
            f"snapshot manifest {where} does not match its own checksum: altered or corrupt", "snapshot"
        )
    return manifest


def load(path, *, manifest_sha256: str | None = None) -> tuple[dict, dict[str, np.ndarray] | bytes]:
    """Read and verify a snapshot: ``(manifest, arrays)`` (or the raw payload bytes when the
    snapshot holds a non-npz payload). ``manifest_sha256``: the hash of the manifest's bytes
    that a publishing pointer gives. Anything missing, truncated or altered raises."""
    manifest_path = _stem(path).with_suffix(".json")
    manifest = read_manifest(manifest_path, expected_sha256=manifest_sha256)
    payload_path = manifest_path.parent / manifest["payload"]
    try:
        with open(payload_path, "rb") as fh:
            payload = fh.read(manifest["size"] + 1)
    except FileNotFoundError:
        raise ValidationError(f"snapshot payload {payload_path} is missing", "snapshot") from None
    except OSError as exc:
        raise ValidationError(f"snapshot payload {payload_path} cannot be read: {exc}", "snapshot") from None
    if len(payload) != manifest["size"] or sha256(payload) != manifest["sha256"]:
        raise ValidationError(
            f"snapshot payload {payload_path} does not match its manifest (size {len(payload)} vs "
            f"{manifest['size']}, or checksum): truncated or corrupt",
            "snapshot",
        )
    if not payload_path.name.endswith(".npz"):
        return manifest, payload
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"snapshot {payload_path} cannot be read: {exc}", "snapshot") from None
    expected = manifest["arrays"]
    if set(arrays) != set(expected):
        raise ValidationError(
            f"snapshot {payload_path} holds arrays {sorted(arrays)}, manifest says {sorted(expected)}", "snapshot"
        )
    for k, v in arrays.items():
        if list(v.shape) != expected[k]["shape"] or v.dtype.str != expected[k]["dtype"]:
            raise ValidationError(
                f"snapshot array {k!r} is {v.dtype.str}{list(v.shape)}, manifest says "
                f"{expected[k]['dtype']}{expected[k]['shape']}",
                "snapshot",
            )
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValidationError(f"snapshot array {k!r} holds non-finite values", "snapshot")
    return manifest, arrays
