"""Serving workers pick up the learner's snapshots without restarting.

The learner (:mod:`banditrec.learner`) publishes a snapshot, then atomically replaces the
pointer ``<snapshots>/CURRENT.json`` (``version``, ``manifest``, ``sha256``). A worker looks at
the pointer in three places:

- before requests, one ``stat`` of the pointer at most every ``REQUEST_LOOK_S`` (10 ms) per
  worker; only when it changed does the worker read, verify and load the snapshot, and while
  it loads the worker's other request threads wait for it. So from 10 ms after the pointer
  was replaced, no request is answered by the model from before it (unless the new snapshot
  is refused);
- every ``reload_check_ms`` on a daemon thread (:meth:`SnapshotWatcher.start`, run by the
  served workers), so that a worker that gets no requests is current too. With a shared
  listening socket one worker can go without requests for a while (whichever worker wakes
  first accepts); checking only on requests, it would skip a good snapshot published meanwhile
  and, if the next pointer were refused, keep serving the model from before both (CI saw that);
- at once on ``POST /v1/models/reload``.

A snapshot that fails verification (:func:`banditrec.policies.load` re-hashes it) is refused:
the old model keeps serving and the error is kept for ``GET /v1/models`` and the metrics. It
is tried once per change of the pointer, not on every request.
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
# Requests look at the pointer at most this often per worker: a stat on every request was a
# measurable share of a decision's CPU in the served request path (far more than the same
# stat costs in a tight loop), and 10 ms is well below the time between a publish and the
# next request anyone could act on.
REQUEST_LOOK_S = 0.01
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
    environment the serving policy was built with), or a function returning it (a shop whose
    catalog can be rebuilt while serving).
    """

    def __init__(self, directory, engine, policy_env: dict, *, check_interval_s: float = 1.0,
                 on_result=None):
        self.directory = Path(directory)
        self._pointer = os.fspath(self.directory / POINTER)  # joined once: it is stat'ed often
        self.engine = engine
        self.policy_env = policy_env if callable(policy_env) else dict(policy_env)
        self.check_interval_s = float(check_interval_s)
        self.on_result = on_result  # called with "loaded" / "refused"
        self.request_look_s = REQUEST_LOOK_S
        self._next_look = 0.0
        self._signature = None
        self._lock = threading.Lock()  # held while checking and loading
        self._loading = False  # set under the lock for the length of a load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot: str | None = None
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
        """One ``stat`` of the pointer, and a load only when it changed since the last look. A
        failed reload is logged and kept (``last_error``), never raised."""
        signature = self._stat()
        if signature is None or signature == self._signature:
            return
        with self._lock:
            signature = self._stat()
            if signature is None or signature == self._signature:
                return
            try:
                self._load(signature)
            except ValidationError:
                pass  # recorded in last_error

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
        # (under the lock) while it loads, request threads wait for it (maybe_reload); the
        # signature is recorded once the load is over (loaded, unchanged or refused)
        self._loading = True
        try:
            return self._load_pointer()
        finally:
            self._signature, self._loading = signature, False

    def _load_pointer(self) -> str:
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
            env = self.policy_env() if callable(self.policy_env) else self.policy_env
            policy = load(manifest, **env)
        except ValidationError as exc:
            self.last_error = f"{exc.message}"
            log.error("process %d: snapshot refused, the old model keeps serving: %s", os.getpid(), exc.message)
            if self.on_result:
                self.on_result("refused")
            raise
        self.engine.install(policy, pointer["version"])
        self.snapshot, self.loaded_ts, self.last_error = manifest.name, time.time(), None
        log.info("serving model %s from %s", pointer["version"], manifest.name)
        if self.on_result:
            self.on_result("loaded")
        return "loaded"
