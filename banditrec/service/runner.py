"""Start and stop a real gunicorn server from Python (tests, the benchmark).

The server runs in its own process group on 127.0.0.1 and a free port; ``stop()`` (and
leaving the ``with`` block, whatever happened inside it) terminates the group and kills it
if it has not exited within a few seconds, so no server outlives its caller.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path(__file__).with_name("gunicorn_conf.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


class GunicornServer:
    """``GunicornServer(env, app="banditrec.service.wsgi:app", workers=2)`` as a context manager.

    ``env`` is added to this process's environment (``BANDITREC_DB``, ``BANDITREC_API_TOKEN``,
    ...); ``log`` is the file gunicorn's stderr goes to.
    """

    def __init__(
        self,
        env: dict,
        *,
        app: str = "banditrec.service.wsgi:app",
        workers: int = 2,
        threads: int = 2,
        log: str | os.PathLike,
        start_timeout: float = 60.0,
        extra_args: tuple[str, ...] = (),
    ):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.env = {**os.environ, **{k: str(v) for k, v in env.items()}}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_conf.py makes one per server
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(CONF),
            "--bind",
            f"{self.host}:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            *extra_args,
            app,
        ]
        self.log_path = Path(log)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> GunicornServer:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status, _ = self.request("GET", "/healthz", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"gunicorn did not answer /healthz within {self.start_timeout} s:\n{self.log_text()[-3000:]}"
        )

    def workers(self) -> list[int]:
        return _children(self.proc.pid) if self.proc else []

    def request(self, method: str, path: str, body=None, *, token: str | None = None, timeout: float = 10):
        """One request on a fresh connection: ``(status, parsed JSON or text)``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.getheader("Content-Type", "").startswith("application/json"):
                return resp.status, json.loads(raw)
            return resp.status, raw.decode()
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=timeout)
        # workers are in the same group; make sure none is left behind
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
