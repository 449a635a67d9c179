"""Publishing snapshots: the pointer a publisher switches atomically, and :func:`resolve`, the
one rule every reader applies to choose what it serves.

Details: docs/service.md, "Publishing (`banditrec/publish.py`)".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .policies import snapshot

POINTER = "CURRENT.json"
POINTER_FORMAT = "banditrec.pointer/1"
MAX_POINTER_BYTES = 1 << 16
# opener(manifest_path, manifest_sha256 or None) -> what is served from that snapshot
Opener = Callable[[Path, str | None], object]
_POINTER_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": str,
    "manifest": str,
    "manifest_sha256": str,
    "trained_until_seq": int,
    "published_ts": (int, float),
    "checksum": str,
}
log = logging.getLogger("banditrec.publish")


@dataclass(frozen=True)
class Pointer:
    """A verified pointer."""

    version: str
    manifest: str
    manifest_sha256: str
    trained_until_seq: int
    published_ts: float


def write_pointer(
    directory: str | Path, manifest_path: str | Path, *, trained_until_seq: int, name: str = POINTER
) -> Pointer:
    """Point ``directory``'s pointer at the snapshot whose manifest is ``manifest_path`` (in
    ``directory``); atomic (temporary file, fsync, rename)."""
    directory, manifest_path = Path(directory), Path(manifest_path)
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    pointer: dict[str, Any] = {
        "format": POINTER_FORMAT,
        "version": snapshot.version(manifest),
        "manifest": manifest_path.name,
        "manifest_sha256": snapshot.sha256(raw),
        "trained_until_seq": int(trained_until_seq),
        "published_ts": time.time(),
    }
    pointer["checksum"] = snapshot.sha256(snapshot.canonical(pointer))
    snapshot.atomic_write(directory / name, json.dumps(pointer, indent=1).encode())
    return Pointer(
        pointer["version"],
        pointer["manifest"],
        pointer["manifest_sha256"],
        pointer["trained_until_seq"],
        pointer["published_ts"],
    )


def read_pointer(directory: str | Path, name: str = POINTER) -> Pointer:
    """The verified pointer of ``directory``; ``ValidationError`` (field ``snapshot``) naming
    the file and what is wrong, for a missing, altered or ill-typed one."""
    path = Path(directory) / name
    _, pointer = snapshot.read_json(path, "snapshot pointer", MAX_POINTER_BYTES)
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
        found = pointer.get("format") if isinstance(pointer, dict) else type(pointer).__name__
        raise ValidationError(
            f"{path} is not a snapshot pointer of format {POINTER_FORMAT}, found {found!r}"
            + (" (written by an older banditrec: publish again)" if found is None else ""),
            "snapshot",
        )
    if set(pointer) != set(_POINTER_KEYS):
        raise ValidationError(
            f"snapshot pointer {path} must hold exactly {sorted(_POINTER_KEYS)}, found {sorted(pointer)}", "snapshot"
        )
    for key, kind in _POINTER_KEYS.items():
        value = pointer[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValidationError(
                f"snapshot pointer {path}: {key} must be of type "
                f"{getattr(kind, '__name__', 'number')}, found {value!r}"[:300],
                "snapshot",
            )
    try:
        intact = snapshot.sha256(snapshot.canonical(pointer)) == pointer["checksum"]
    except ValueError:  # a non-finite published_ts
        intact = False
    if not intact:
        raise ValidationError(
            f"snapshot pointer {path} does not match its own checksum: altered or corrupt", "snapshot"
        )
    manifest = pointer["manifest"]
    if Path(manifest).name != manifest or manifest in ("", ".", "..") or manifest == name:
        raise ValidationError(
            f"snapshot pointer {path}: manifest must be a file name in {path.parent}, found {manifest!r}", "snapshot"
        )
    return Pointer(
        pointer["version"],
        manifest,
        pointer["manifest_sha256"],
        pointer["trained_until_seq"],
        float(pointer["published_ts"]),
    )


@dataclass(frozen=True)
class Resolved:
    """What :func:`resolve` chose. ``value`` is the opener's result, ``None`` when the chosen
    snapshot is ``current`` (nothing was opened); ``source`` is ``"pointer"``, ``"fallback"``
    or ``"none"`` (nothing valid: keep what you serve); ``pointer_error`` says why the pointer
    was not used; ``refused`` lists ``(manifest name, reason)`` of snapshots that failed on the way."""

    source: str
    version: str | None = None
    manifest: str | None = None
    trained_until_seq: int | None = None
    value: object = None
    pointer_error: str | None = None
    refused: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def unchanged(self) -> bool:
        return self.source != "none" and self.value is None


def _open(opener: Opener, path: Path, manifest_sha256: str | None) -> tuple[object, str | None]:
    """``(value, None)`` or ``(None, reason)``: any exception of the opener is a refusal."""
    try:
        return opener(path, manifest_sha256), None
    except ValidationError as exc:
        return None, exc.message
    except Exception as exc:  # noqa: BLE001 - a loader bug must refuse the snapshot, not fail the reader
        log.exception("opening snapshot %s failed unexpectedly", path)
        return None, f"{path.name} could not be loaded ({type(exc).__name__}: {exc})"


def order_key(manifest: dict[str, Any], name: str) -> tuple[int, int, str]:
    """Newest first when sorted in reverse: trained_until_seq, n_updates, then file name."""
    return (manifest["provenance"].get("trained_until_seq", -1), manifest["meta"].get("n_updates", -1), name)


def newest_valid(
    directory: str | Path,
    opener: Opener,
    *,
    current: str | None = None,
    name: str = POINTER,
    exclude: tuple[str, ...] = (),
) -> Resolved:
    """The newest snapshot in ``directory`` whose manifest verifies and that ``opener`` opens
    (``source="fallback"``); ``source="none"`` when there is none."""
    directory = Path(directory)
    refused: list[tuple[str, str]] = []
    verified = []
    for path in sorted(directory.glob("*.json")):
        if path.name == name or path.name in exclude or path.name.startswith("."):
            continue
        try:
            manifest = snapshot.read_manifest(path)
        except ValidationError as exc:
            refused.append((path.name, exc.message))
            continue
        verified.append((order_key(manifest, path.name), path, manifest))
    for key, path, manifest in sorted(verified, key=lambda t: t[0], reverse=True):
        version = snapshot.version(manifest)
        seq = key[0] if key[0] >= 0 else None
        if version == current:
            return Resolved("fallback", version, path.name, seq, None, refused=tuple(refused))
        value, reason = _open(opener, path, None)
        if reason is None:
            return Resolved("fallback", version, path.name, seq, value, refused=tuple(refused))
        refused.append((path.name, reason))
    return Resolved("none", refused=tuple(refused))


def resolve(directory: str | Path, opener: Opener, *, current: str | None = None, name: str = POINTER) -> Resolved:
    """Apply the rule of docs/service.md, "Snapshots and what a worker serves", to ``directory``.

    ``opener(manifest_path, manifest_sha256)`` builds what is served from a snapshot (and
    verifies it); ``current`` is the version the caller serves now: when the rule chooses it,
    nothing is opened (``Resolved.unchanged``).
    """
    directory = Path(directory)
    try:
        pointer = read_pointer(directory, name)
    except ValidationError as exc:
        pointer_error = exc.message
        exclude: tuple[str, ...] = ()
    else:
        path = directory / pointer.manifest
        reason: str | None  # why the pointer's snapshot is refused, None when it opened
        try:
            manifest = snapshot.read_manifest(path, expected_sha256=pointer.manifest_sha256)
            if snapshot.version(manifest) != pointer.version:
                raise ValidationError(
                    f"snapshot pointer {directory / name} names version {pointer.version!r}, its "
                    f"manifest is of {snapshot.version(manifest)!r}",
                    "snapshot",
                )
        except ValidationError as exc:
            value, reason = None, exc.message
        else:
            if pointer.version == current:
                return Resolved("pointer", pointer.version, pointer.manifest, pointer.trained_until_seq)
            value, reason = _open(opener, path, pointer.manifest_sha256)
        if reason is None:
            return Resolved("pointer", pointer.version, pointer.manifest, pointer.trained_until_seq, value)
        pointer_error = f"the pointer's snapshot {pointer.manifest} is refused: {reason}"
        exclude = (pointer.manifest,)
    found = newest_valid(directory, opener, current=current, name=name, exclude=exclude)
    return Resolved(
        found.source,
        found.version,
        found.manifest,
        found.trained_until_seq,
        found.value,
        pointer_error=pointer_error,
        refused=found.refused,
    )
