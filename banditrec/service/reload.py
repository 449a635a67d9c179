"""Serving workers pick up the learner's snapshots without restarting.

The learner (:mod:`banditrec.learner`) publishes a snapshot, then atomically replaces the
pointer ``<snapshots>/CURRENT.json`` (``version``, ``manifest``, ``sha256``). A worker checks
the pointer's ``stat`` at most every ``reload_check_ms`` (one ``stat`` call; reading and
verifying only when it changed), or at once on ``POST /v1/models/reload``. A snapshot that
fails verification (:func:`banditrec.policies.load` re-hashes it) is refused: the old model
keeps serving and the error is kept for ``GET /v1/models`` and the metrics.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import ValidationError
from ..policies import load

POINTER = "CURRENT.json"
log = logging.getLogger("banditrec.service")


def read_pointer(directory) -> dict:
    path = Path(directory) / POINTER
    try:
        pointer = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValidationError(f"no snapshot pointer at {path}", "snapshot") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"snapshot pointer {path} is not valid JSON ({exc})", "snapshot") from None
    if not isinstance(pointer, dict) or not all(isinstance(pointer.get(k), str) for k in
                                                ("version", "manifest", "sha256")):
        raise ValidationError(f"snapshot pointer {path} lacks version, manifest or sha256", "snapshot")
    return pointer


class SnapshotWatcher:
    """Reload ``engine``'s policy from ``directory`` when the learner publishes.

    ``policy_env``: what :func:`banditrec.policies.load` needs to rebuild the policy (the same
    environment the serving policy was built with).
    """

    def __init__(self, directory, engine, policy_env: dict, *, check_interval_s: float = 1.0,
                 on_result=None, clock=time.monotonic):
        self.directory = Path(directory)
        self.engine = engine
        self.policy_env = dict(policy_env)
        self.check_interval_s = float(check_interval_s)
        self.on_result = on_result  # called with "loaded" / "refused"
        self.clock = clock
        self._next_check = 0.0
        self._signature = None
        self._lock = threading.Lock()
        self.snapshot: str | None = None
        self.loaded_ts: float | None = None
        self.last_error: str | None = None

    def _stat(self):
        try:
            st = os.stat(self.directory / POINTER)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self) -> None:
        """Cheap per-request hook: a ``stat`` at most every ``check_interval_s``; a failed
        reload is logged and kept, never raised into the request."""
        if self.check_interval_s <= 0:
            return
        now = self.clock()
        if now < self._next_check:
            return
        if not self._lock.acquire(blocking=False):  # another thread of this worker is on it
            return
        try:
            self._next_check = now + self.check_interval_s
            signature = self._stat()
            if signature is None or signature == self._signature:
                return
            try:
                self._load(signature)
            except ValidationError:
                pass  # recorded in last_error
        finally:
            self._lock.release()

    def reload(self) -> tuple[str, str, str]:
        """Check now: ``(status, version, previous)`` with status ``"loaded"`` or
        ``"unchanged"``; a refused snapshot raises :class:`ValidationError` (field
        ``snapshot``) and the old model keeps serving."""
        with self._lock:
            previous = self.engine.model_version
            signature = self._stat()
            if signature is None:
                raise ValidationError(f"no snapshot has been published in {self.directory}", "snapshot")
            status = self._load(signature)
            return status, self.engine.model_version, previous

    def _load(self, signature) -> str:
        self._signature = signature
        try:
            pointer = read_pointer(self.directory)
            if pointer["version"] == self.engine.model_version:
                return "unchanged"
            manifest = self.directory / Path(pointer["manifest"]).name
            try:
                declared = json.loads(manifest.read_text()).get("sha256")
            except (OSError, ValueError):
                declared = None
            if declared != pointer["sha256"]:
                raise ValidationError(f"snapshot {manifest.name} does not match the pointer's checksum", "snapshot")
            policy = load(manifest, **self.policy_env)
        except ValidationError as exc:
            self.last_error = f"{exc.message}"
            log.error("snapshot refused, the old model keeps serving: %s", exc.message)
            if self.on_result:
                self.on_result("refused")
            raise
        self.engine.install(policy, pointer["version"])
        self.snapshot, self.loaded_ts, self.last_error = manifest.name, time.time(), None
        log.info("serving model %s from %s", pointer["version"], manifest.name)
        if self.on_result:
            self.on_result("loaded")
        return "loaded"
