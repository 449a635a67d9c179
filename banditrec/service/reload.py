"""Serving workers pick up the learner's snapshots without restarting: on start, before
requests (one ``stat`` of the pointer at most every ``REQUEST_LOOK_S``), from a watcher thread
and on ``POST /v1/models/reload``, all by the rule of :func:`banditrec.publish.resolve`.

Details: docs/service.md, "Reloading snapshots (`service/reload.py`)".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..errors import ValidationError
from ..policies import load
from ..publish import POINTER, Resolved, resolve

# Requests look at the pointer at most this often per worker: a stat on every request is a
# measurable share of a decision's CPU in the served request path (far more than the same
# stat costs in a tight loop), and 10 ms is well below the time between a publish and the
# next request anyone could act on.
REQUEST_LOOK_S = 0.01
log = logging.getLogger("banditrec.service")
_UNSEEN = object()  # the pointer's signature before the first look


class SnapshotWatcher:
    """Reload ``engine``'s policy from ``directory`` when the learner publishes.

    ``policy_env``: what :func:`banditrec.policies.load` needs to rebuild the policy (the same
    environment the serving policy was built with), or a function returning it (a shop whose
    catalog can be rebuilt while serving).
    """

    def __init__(self, directory, engine, policy_env: dict, *, check_interval_s: float = 1.0, on_result=None):
        self.directory = Path(directory)
        self._pointer = os.fspath(self.directory / POINTER)  # joined once: it is stat'ed often
        self.engine = engine
        self.policy_env = policy_env if callable(policy_env) else dict(policy_env)
        self.check_interval_s = float(check_interval_s)
        self.on_result = on_result  # called with "loaded", "fallback" or "refused"
        self.request_look_s = REQUEST_LOOK_S
        self._next_look = 0.0
        self._signature = _UNSEEN
        self._lock = threading.Lock()  # held while checking and loading
        self._loading = False  # set under the lock for the length of a load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot: str | None = None  # the served snapshot's manifest name; None: the built policy
        self.source = "built"  # "built", "pointer" or "fallback" (the pointer was unusable)
        self.loaded_ts: float | None = None
        self.last_error: str | None = None

    def _stat(self):
        try:
            st = os.stat(self._pointer)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self) -> None:
        """Per-request hook: waits while another thread of this worker loads a snapshot, and
        otherwise :meth:`check` at most every ``request_look_s``. Nothing when
        ``check_interval_s`` is 0 (then only ``POST /v1/models/reload`` reloads)."""
        if self.check_interval_s <= 0:
            return
        if self._loading:  # a load is under way: answer with its result, not the model it replaces
            with self._lock:
                return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + self.request_look_s
        self.check()

    def check(self) -> None:
        """One ``stat`` of the pointer, and :meth:`refresh` only when it changed since the last
        look (appeared, replaced or removed). Never raises."""
        signature = self._stat()
        if signature == self._signature:
            return
        with self._lock:
            signature = self._stat()
            if signature != self._signature:
                self._load(signature)

    def refresh(self) -> str:
        """Apply the rule now, whatever the pointer's signature: ``"loaded"``, ``"unchanged"``,
        ``"refused"`` (the pointer was refused; the newest valid snapshot, or the model served
        before, keeps serving) or ``"none"`` (nothing published). Never raises."""
        with self._lock:
            return self._load(self._stat())

    def start(self) -> SnapshotWatcher:
        """Check every ``check_interval_s`` on a daemon thread of this process (idempotent;
        nothing to do when the interval is 0)."""
        if self.check_interval_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="banditrec-snapshot-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - an unexpected error must not end the watcher
                log.exception("snapshot check failed; the watcher keeps checking")

    def reload(self) -> tuple[str, str, str]:
        """Check now: ``(status, version, previous)`` with status ``"loaded"`` or
        ``"unchanged"``. Nothing published, or a refused pointer, raises
        :class:`ValidationError` (field ``snapshot``); what is served then is the newest valid
        snapshot or the model served before."""
        previous = self.engine.model_version
        status = self.refresh()
        if status == "none":
            raise ValidationError(f"no snapshot has been published in {self.directory}", "snapshot")
        if status == "refused":
            raise ValidationError(f"{self.last_error}; serving {self.engine.model_version} ({self.source})", "snapshot")
        return status, self.engine.model_version, previous

    def status(self) -> dict:
        """What this worker serves and why: ``snapshot``, ``source``, ``loaded_ts``, ``last_reload_error``."""
        return {
            "snapshot": self.snapshot,
            "source": self.source,
            "loaded_ts": self.loaded_ts,
            "last_reload_error": self.last_error,
        }

    def _load(self, signature) -> str:
        # (under the lock) while it loads, request threads wait for it (maybe_reload); the
        # signature is recorded once the load is over, whatever its outcome
        self._loading = True
        try:
            return self._apply()
        except Exception as exc:  # noqa: BLE001 - resolve() refuses what it opens; this is the last guard
            log.exception("process %d: snapshot check failed; the served model is kept", os.getpid())
            return self._refused(f"snapshot check failed ({type(exc).__name__}: {exc})")
        finally:
            self._signature, self._loading = signature, False

    def _open(self, path, manifest_sha256):
        env = self.policy_env() if callable(self.policy_env) else self.policy_env
        return load(path, manifest_sha256=manifest_sha256, **env)

    def _refused(self, error: str) -> str:
        self.last_error = error
        if self.on_result:
            self.on_result("refused")
        return "refused"

    def _apply(self) -> str:
        found: Resolved = resolve(self.directory, self._open, current=self.engine.model_version)
        published = found.source != "none" or found.refused or os.path.exists(self._pointer)
        if not published:
            return "none"
        status = "unchanged"
        if found.value is not None:
            self.engine.install(found.value, found.version)
            self.loaded_ts = time.time()
            status = "loaded"
        if found.source != "none":
            self.snapshot, self.source = found.manifest, found.source
        error = found.pointer_error
        if found.source == "none":
            reasons = "; ".join(f"{name}: {reason}" for name, reason in found.refused)
            error = f"{error or 'no snapshot pointer'}; no snapshot on disk verifies" + (
                f" ({reasons})" if reasons else ""
            )
        if status == "loaded" and self.on_result:
            self.on_result("loaded" if found.source == "pointer" else "fallback")
        if error is None:
            self.last_error = None
            if status == "loaded":
                log.info("process %d: serving model %s from %s", os.getpid(), found.version, found.manifest)
            return status
        served = f"{self.engine.model_version} ({self.source}" + (f" {self.snapshot})" if self.snapshot else ")")
        if found.source == "fallback":
            log.error(
                "process %d: snapshot refused: %s; serving the newest valid snapshot %s, trained until seq %s",
                os.getpid(),
                error,
                served,
                found.trained_until_seq,
            )
        else:
            log.error("process %d: snapshot refused: %s; serving %s", os.getpid(), error, served)
        self._refused(error)
        return "refused"
