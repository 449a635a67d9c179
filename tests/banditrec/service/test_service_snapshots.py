"""Snapshots that must not be served, through the test client: every manifest mutation of issue
18, the same mutations with their checksums forged to match (the manifest's schema refuses
them), random byte flips of every snapshot file (pointer, manifest, payload), a loader that
raises what no one expected, and a worker (or learner) started while the pointer is unusable,
which serves (or resumes from) the newest valid snapshot. Each refusal is logged, counted,
reported in /v1/models and /healthz, and never a 5xx on any route."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from banditrec.errors import ValidationError
from banditrec.learner import Learner
from banditrec.policies import load, make, snapshot
from banditrec.service import ServiceConfig, create_app
from banditrec.service.reload import REQUEST_LOOK_S
from studies.coverage import policy_env
from tests.banditrec.service.test_service_app import SPEC, metric, served

DECIDE = {"user_id": "u1", "slots": 2}
POINTER = "CURRENT.json"


def two_snapshots(small_shop, tmp_path, serve_new: bool = True, **kw):
    """An app and two published snapshots, ``(engine, client, learner, old, new)``; the app
    serves ``new`` (``serve_new``) or ``old`` (``new`` is published, not yet looked at)."""
    engine, client, learner, clock = served(small_shop, tmp_path, **kw)
    clock.t = 1.0
    client.post("/v1/decide", json=DECIDE)
    clock.t = 100.0
    old = learner.step()
    clock.t = 101.0
    time.sleep(2 * REQUEST_LOOK_S)  # this request's look at the pointer is due: it serves ``old``
    client.post("/v1/decide", json={"user_id": "u2", "slots": 3})
    clock.t = 200.0
    new = learner.step()
    if serve_new:
        assert client.post("/v1/models/reload").get_json()["model_version"] == new.version
    else:
        assert engine.model_version == old.version
    return engine, client, learner, old, new


def every_route_answers(client) -> dict:
    """Hit every route; none may answer 5xx. Returns ``/v1/models``' serving part."""
    statuses = {
        "decide": client.post("/v1/decide", json=DECIDE).status_code,
        "batch": client.post("/v1/decide/batch", json={"requests": [DECIDE]}).status_code,
        "metrics": client.get("/metrics").status_code,
        "healthz": client.get("/healthz").status_code,
        "models": client.get("/v1/models").status_code,
        "openapi": client.get("/openapi.json").status_code,
        "reload": client.post("/v1/models/reload").status_code,
    }
    assert all(s < 500 for s in statuses.values()), statuses
    assert statuses["reload"] in (200, 400), statuses
    return client.get("/v1/models").get_json()["serving"]


def state(policy) -> dict:
    return {k: np.asarray(v) for k, v in policy.state()[0].items()}


def same_state(a, b) -> bool:
    sa, sb = state(a), state(b)
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# the mutations of issue 18: valid JSON, wrong types (each gave 500s before)
MUTATIONS = {
    "n_updates null": lambda m: m["meta"].update(n_updates=None),
    "n_updates string": lambda m: m["meta"].update(n_updates="x"),
    "n_updates 1e400": lambda m: m["meta"].update(n_updates=float("inf")),
    "meta a string": lambda m: m.update(meta="meta"),
    "payload 123": lambda m: m.update(payload=123),
    "payload null": lambda m: m.update(payload=None),
    "array entry 5": lambda m: m["arrays"].update({next(iter(m["arrays"])): 5}),
    "manifest []": None,
}


def mutate(manifest_path, name: str, *, forge: bool) -> None:
    """Rewrite the manifest with mutation ``name``; ``forge``: recompute its own checksum, as
    an attacker or a bug that writes it would."""
    m = json.loads(manifest_path.read_text())
    if MUTATIONS[name] is None:
        m = []
    else:
        MUTATIONS[name](m)
        if forge and name != "n_updates 1e400":  # (no canonical JSON holds an infinity)
            m["checksum"] = snapshot.sha256(snapshot.canonical(m))
    manifest_path.write_text(json.dumps(m).replace("Infinity", "1e400"))


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_manifest_mutation_is_refused_on_every_route(small_shop, tmp_path, name):
    """Issue 18, defect 2: the learner publishes a snapshot whose manifest is valid JSON of the
    wrong types; the request that ran the worker's check got a 500, and reload 500s every time.
    Now the pointer's manifest_sha256 catches the mutated bytes: refused, counted, reported; the
    newest snapshot that verifies (the one served before) serves, and no route answers 5xx."""
    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path, serve_new=False, reload_check_ms=1)
    mutate(new.manifest, name, forge=False)
    time.sleep(0.02)  # the request's look at the pointer is due
    serving = every_route_answers(client)
    assert serving["model_version"] == old.version and serving["source"] == "fallback"
    assert "checksum" in serving["last_reload_error"]
    health = client.get("/healthz").get_json()
    assert (health["status"], health["source"], health["model_version"]) == ("degraded", "fallback", old.version)
    assert same_state(engine.policy, make_reference(small_shop, engine, old))
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="refused") >= 1


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_forged_manifest_is_refused_by_its_schema(small_shop, tmp_path, name):
    """The same mutations with the manifest's checksum and the pointer's hash recomputed: the
    manifest's schema refuses each, naming the field, and nothing answers 5xx."""
    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    mutate(new.manifest, name, forge=True)
    forge_pointer(tmp_path / "snap", new)
    with pytest.raises(ValidationError) as info:
        snapshot.read_manifest(new.manifest)
    expected = {
        "n_updates null": "meta.n_updates",
        "n_updates string": "meta.n_updates",
        "n_updates 1e400": "meta.n_updates",
        "meta a string": "meta",
        "payload 123": "payload",
        "payload null": "payload",
        "array entry 5": "arrays.",
        "manifest []": "JSON object",
    }[name]
    assert expected in info.value.message and info.value.field == "snapshot"
    resp = client.post("/v1/models/reload")
    assert resp.status_code == 400 and resp.get_json()["error"]["fields"][0]["field"] == "snapshot"
    serving = every_route_answers(client)
    assert serving["model_version"] == old.version and expected in serving["last_reload_error"]


def forge_pointer(directory, published) -> None:
    """A pointer whose hashes match the manifest's bytes on disk, whatever they hold."""
    raw = published.manifest.read_bytes()
    p = {
        "format": "banditrec.pointer/1",
        "version": published.version,
        "manifest": published.manifest.name,
        "manifest_sha256": snapshot.sha256(raw),
        "trained_until_seq": published.trained_until_seq,
        "published_ts": 1.0,
    }
    p["checksum"] = snapshot.sha256(snapshot.canonical(p))
    (directory / POINTER).write_text(json.dumps(p))


def make_reference(small_shop, engine, published):
    """The policy a snapshot holds, loaded on its own (the oracle for what must be served)."""
    return load(published.manifest, **policy_env(small_shop, engine.cf))


@pytest.mark.slow
def test_random_byte_flips_of_every_snapshot_file(small_shop, tmp_path):
    """40 seeded single-byte flips of each of the pointer, the newest manifest and its payload.
    The running worker: no route answers 5xx and it serves exactly the newest or the previous
    snapshot, array for array -- never a third, silently altered model. A starting worker
    (the same rule, resolve(), without a current model): a flipped pointer falls back to the
    newest valid snapshot, which is still the newest; a flipped manifest or payload to the one
    before it. Each flip is undone before the next."""
    from banditrec.publish import resolve

    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    env = policy_env(small_shop, engine.cf)
    references = {
        old.version: make_reference(small_shop, engine, old),
        new.version: make_reference(small_shop, engine, new),
    }
    files = {
        "pointer": tmp_path / "snap" / POINTER,
        "manifest": new.manifest,
        "payload": new.manifest.with_suffix(".npz"),
    }
    expected_at_start = {"pointer": new.version, "manifest": old.version, "payload": old.version}
    pristine = {k: p.read_bytes() for k, p in files.items()}
    rng = np.random.default_rng(18)

    def opener(path, sha):
        return load(path, manifest_sha256=sha, **env)

    for kind, path in files.items():
        for _ in range(40):
            raw = bytearray(pristine[kind])
            raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(raw))
            resp = client.post("/v1/models/reload")
            assert resp.status_code in (200, 400), resp.get_json()
            serving = every_route_answers(client)
            assert serving["model_version"] in references, serving
            assert same_state(engine.policy, references[serving["model_version"]])
            start = resolve(tmp_path / "snap", opener)
            assert start.version == expected_at_start[kind], (kind, start)
            assert same_state(start.value, references[start.version])
            path.write_bytes(pristine[kind])
            assert client.post("/v1/models/reload").status_code == 200
            assert engine.model_version == new.version


def test_a_loader_that_raises_anything_is_a_refusal(small_shop, tmp_path, monkeypatch):
    """Whatever a policy's loading raises (here a KeyError from set_state, for the newest
    snapshot only) refuses that snapshot: logged, counted, reported, a 400 on reload, and the
    newest snapshot that does load serves, as a fallback."""
    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    cls = type(engine.policy)
    real = cls.set_state

    def set_state(self, arrays, meta):
        if self.n_updates == 3:  # (load sets n_updates first) the newest snapshot's
            raise KeyError("theta")
        return real(self, arrays, meta)

    learner.clock = lambda: 300.0
    client.post("/v1/decide", json=DECIDE)
    newest = learner.step()
    monkeypatch.setattr(cls, "set_state", set_state)
    resp = client.post("/v1/models/reload")
    assert resp.status_code == 400 and "KeyError" in resp.get_json()["error"]["message"]
    serving = every_route_answers(client)
    assert (serving["model_version"], serving["source"]) == (new.version, "fallback")
    assert newest.manifest.name in serving["last_reload_error"] and "KeyError" in serving["last_reload_error"]
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="refused") >= 1
    monkeypatch.setattr(cls, "set_state", real)
    assert client.post("/v1/models/reload").get_json()["model_version"] == newest.version
    assert client.get("/healthz").get_json()["status"] == "ok"


def restarted(small_shop, tmp_path, engine):
    """A new app on the same directory, as a (re)started worker builds it."""
    from tests.helpers import make_engine

    fresh = make_engine(small_shop)
    app = create_app(
        fresh,
        settings=ServiceConfig(snapshots=str(tmp_path / "snap"), reload_check_ms=0),
        policy_env=policy_env(small_shop, fresh.cf),
    )
    return fresh, app.test_client()


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "wrong hash", "unknown manifest"])
def test_a_worker_started_with_an_unusable_pointer_serves_the_newest_valid_snapshot(
    small_shop, tmp_path, damage, caplog
):
    """Issue 18, defect 3: a worker (re)started while CURRENT.json is unusable served the
    untrained built model. Now it serves what the running worker serves -- the newest snapshot
    that verifies -- and says so in a log line, /v1/models and /healthz."""
    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    pointer = tmp_path / "snap" / POINTER
    data = json.loads(pointer.read_text())
    if damage == "garbage":
        pointer.write_bytes(b"\x00{not json")
    elif damage == "empty":
        pointer.write_bytes(b"")
    elif damage == "missing":
        pointer.unlink()
    elif damage == "wrong hash":
        pointer.write_text(json.dumps({**data, "manifest_sha256": "0" * 64}))
    else:
        pointer.write_text(json.dumps({**data, "manifest": "nothing.json"}))
    caplog.set_level("INFO", logger="banditrec.service")
    fresh, fresh_client = restarted(small_shop, tmp_path, engine)
    assert fresh.model_version == new.version != make(SPEC, **policy_env(small_shop, fresh.cf)).model_version
    assert same_state(fresh.policy, engine.policy)
    health = fresh_client.get("/healthz").get_json()
    assert (health["status"], health["source"], health["model_version"]) == ("degraded", "fallback", new.version)
    assert health["last_reload_error"]
    serving = fresh_client.get("/v1/models").get_json()["serving"]
    assert (serving["source"], serving["snapshot"]) == ("fallback", new.manifest.name)
    assert "serving the newest valid snapshot" in caplog.text
    # the running worker, told to look again, agrees
    client.post("/v1/models/reload")
    assert engine.model_version == fresh.model_version
    every_route_answers(fresh_client)


def test_the_newest_valid_snapshot_is_chosen_by_trained_until_seq_not_by_file_time(small_shop, tmp_path):
    """The fallback reads ``provenance.trained_until_seq`` from verified manifests: touching an
    old snapshot's files (newer mtime) does not make it the newest."""
    import os

    from banditrec.publish import resolve

    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    for path in (old.manifest, old.manifest.with_suffix(".npz")):
        os.utime(path, (2e9, 2e9))
    (tmp_path / "snap" / POINTER).write_text("{}")
    found = resolve(tmp_path / "snap", lambda path, sha: path.name)
    assert (found.source, found.value, found.trained_until_seq) == (
        "fallback",
        new.manifest.name,
        new.trained_until_seq,
    )
    # the newest one damaged: the one before it
    raw = bytearray(new.manifest.with_suffix(".npz").read_bytes())
    raw[40] ^= 1
    new.manifest.with_suffix(".npz").write_bytes(bytes(raw))
    fresh, _ = restarted(small_shop, tmp_path, engine)
    assert fresh.model_version == old.version


def test_nothing_published_is_a_400_on_reload_and_ok_on_healthz(small_shop, tmp_path):
    engine, client, learner, clock = served(small_shop, tmp_path)
    resp = client.post("/v1/models/reload")
    assert resp.status_code == 400 and "no snapshot has been published" in resp.get_json()["error"]["message"]
    health = client.get("/healthz").get_json()
    assert (health["status"], health["source"], health["last_reload_error"]) == ("ok", "built", None)


def test_the_learner_resumes_from_the_newest_valid_snapshot_when_the_pointer_is_corrupt(make_log, small_shop, tmp_path):
    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    (tmp_path / "snap" / POINTER).write_bytes(b"\xff" * 10)
    env = policy_env(small_shop, engine.cf)
    again = Learner.resume(
        make_log(tmp_path / "log.db", reward_window_s=5.0),
        lambda: make(SPEC, **env),
        small_shop.catalog.features,
        tmp_path / "snap",
        env,
    )
    assert (again.version, again.learned_seq) == (new.version, new.trained_until_seq)
    assert same_state(again.policy, engine.policy)
    # nothing on disk verifies: refuse rather than relearn from scratch over the damage
    for p in (tmp_path / "snap").glob("*.npz"):
        p.write_bytes(b"broken")
    with pytest.raises(ValidationError, match="no snapshot in .* verifies"):
        Learner.resume(
            make_log(tmp_path / "log.db", reward_window_s=5.0),
            lambda: make(SPEC, **env),
            small_shop.catalog.features,
            tmp_path / "snap",
            env,
        )


def test_the_pointer_covers_itself_and_the_manifest_bytes(tmp_path):
    """Every byte of the pointer counts: its own checksum catches a changed version or seq."""
    from banditrec.publish import read_pointer, write_pointer

    policy = make("uniform")
    manifest = policy.save(tmp_path / "a", provenance={"trained_until_seq": 3})
    write_pointer(tmp_path, manifest, trained_until_seq=3)
    good = read_pointer(tmp_path)
    assert good.manifest_sha256 == snapshot.sha256(manifest.read_bytes()) and good.trained_until_seq == 3
    data = json.loads((tmp_path / POINTER).read_text())
    for key, value in (
        ("version", "uniform-0.deadbeef"),
        ("trained_until_seq", 4),
        ("manifest", "../a.json"),
        ("manifest_sha256", "0" * 64),
    ):
        (tmp_path / POINTER).write_text(json.dumps({**data, key: value}))
        with pytest.raises(ValidationError, match="checksum"):
            read_pointer(tmp_path)


def test_a_check_that_fails_unexpectedly_is_a_refusal_not_a_500(small_shop, tmp_path, monkeypatch):
    """The watcher's last guard: an error outside any snapshot (here the directory listing
    raising OSError) refuses the check -- counted, reported, 400 on reload -- and the served
    model stays; no route answers 5xx."""
    import banditrec.service.reload as reload_mod

    engine, client, learner, old, new = two_snapshots(small_shop, tmp_path)
    monkeypatch.setattr(reload_mod, "resolve", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    resp = client.post("/v1/models/reload")
    assert resp.status_code == 400 and "OSError: disk gone" in resp.get_json()["error"]["message"]
    serving = every_route_answers(client)
    assert serving["model_version"] == new.version and "disk gone" in serving["last_reload_error"]
    assert client.get("/healthz").get_json()["status"] == "degraded"
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="refused") >= 2
