"""The service manual's walk-through (docs/service.md, "Running it") runs as written: `banditrec
serve` as documented (on a free port, in a scratch directory), then every documented shell
command in order, with bash; the outputs the page quotes have the shape the real ones have."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from banditrec.service.runner import free_port
from tests.helpers import ROOT_DIR

ROOT = ROOT_DIR
PAGE = (ROOT / "docs" / "service.md").read_text()
SECTION = PAGE.split("## Running it", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.S)


def test_the_walkthrough_documents_every_route():
    script = "".join(BLOCKS)
    for route in (
        "/healthz",
        "/v1/decide ",
        "/v1/decide/batch",
        "/v1/reward",
        "/v1/events",
        "/v1/models ",
        "/v1/models/reload",
        "/metrics",
        "/openapi.json",
    ):
        assert f"localhost:8000{route.strip()}" in script, route
    assert "banditrec learn" in script and "banditrec serve" in script


@pytest.mark.slow
def test_the_walkthrough_runs_against_a_real_server(tmp_path):
    *setup, serve = BLOCKS[1].strip().splitlines()
    assert serve == ".venv/bin/banditrec serve --shop out/shop --reward-window 5", serve
    port = free_port()
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if k not in ("BANDITREC_API_TOKEN", "PROMETHEUS_MULTIPROC_DIR")}
    built = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(setup)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr + built.stdout
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [*serve.split(), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["curl", "-sf", f"127.0.0.1:{port}/healthz"], capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        script = "set -euo pipefail\n" + "\n".join(BLOCKS[2:]).replace("localhost:8000", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        log.close()
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout
    objects = [json.loads(m) for m in re.findall(r"^\{.*\}$", text, flags=re.M)]
    decision = objects[1]
    assert decision["model_version"] == "linucb-0" and len(decision["slots"]) == 3
    reward = objects[2]
    assert reward == {"event_id": decision["event_id"], "position": 0, "kind": "click", "status": "recorded"}
    assert objects[3]["error"]["fields"][0]["field"] == "slots"
    assert objects[4]["kind"] == "cart" and objects[4]["status"] == "recorded"
    assert len(objects[5]["decisions"]) == 2
    published = re.search(r"^published (linucb-1\.[0-9a-f]{8}): \d+ slot rows, decisions up to seq 3$", text, re.M)
    assert published, text
    version = published.group(1)
    reload = objects[6]
    assert reload["model_version"] == version and reload["status"] == "unchanged"  # the request picked it up first
    models = objects[7]
    assert models["serving"]["model_version"] == version
    assert (models["serving"]["source"], models["serving"]["last_reload_error"]) == ("pointer", None)
    assert [v["version"] for v in models["versions"]] == [version]
    assert re.search(r'^banditrec_decisions_total\{route="/v1/decide"\} 1\.0$', text, re.M)
    assert re.search(r'^banditrec_decisions_total\{route="/v1/decide/batch"\} 2\.0$', text, re.M)
    assert re.search(r'^banditrec_rewards_total\{status="recorded"\} 1\.0$', text, re.M)
    assert re.search(r"^banditrec_exploration_share 0\.\d+", text, re.M)
    assert "'/v1/events'" in text and "'/v1/models/reload'" in text
    # the page quotes the same kinds of lines
    assert "published linucb-1." in SECTION and "banditrec_exploration_share" in SECTION
