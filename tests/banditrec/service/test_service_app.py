"""The decision service through Flask's test client: batch decide, events and session state,
auth, metrics, the OpenAPI document, the learner and snapshot reloads. (The real gunicorn
server is exercised in test_service_server.py.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from banditrec.learner import Learner, Refresh
from banditrec.policies import make
from banditrec.service import ServiceConfig, create_app
from banditrec.service.schemas import (
    BatchDecideResponse,
    DecideResponse,
    EventResponse,
    HealthResponse,
    ModelsResponse,
    ReloadResponse,
)
from banditrec.store import DecisionLog
from studies.coverage import policy_env
from tests.banditrec.service.test_service import assert_json_error
from tests.helpers import make_engine

TOKEN = "t" * 20 + "-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = "linucb:alpha=1.0,epsilon=0.1"


@pytest.fixture
def client(engine):
    return create_app(engine).test_client()


def logged_candidates(log: DecisionLog, event_id: str) -> list[str]:
    (text,) = log.db.execute("SELECT candidates FROM decisions WHERE event_id = ?", (event_id,)).fetchone()
    return json.loads(text)


# ---- batch decide -----------------------------------------------------------------------------
def test_batch_decide_logs_every_decision_and_matches_the_model(engine, client):
    reqs = [{"user_id": f"u{i}", "slots": 3, "context": [0.1 * i, 0, 0, 0]} for i in range(5)]
    resp = client.post("/v1/decide/batch", json={"requests": reqs})
    assert resp.status_code == 200, resp.get_json()
    body = BatchDecideResponse.model_validate(resp.get_json())
    assert len(body.decisions) == 5 and len({d.event_id for d in body.decisions}) == 5
    assert engine.log.count("decisions") == 5 and engine.log.count("slots") == 15
    users = dict(engine.log.db.execute("SELECT event_id, user_id FROM decisions").fetchall())
    assert [users[d.event_id] for d in body.decisions] == [r["user_id"] for r in reqs]


def test_batch_with_one_bad_request_logs_nothing_and_names_it(engine, client):
    reqs = [{"user_id": "u1", "slots": 2}, {"user_id": "u2", "slots": 2, "candidates": ["i1", "nope"]}]
    err = assert_json_error(client.post("/v1/decide/batch", json={"requests": reqs}), 400, "requests.1.candidates")
    assert "nope" in err["message"]
    assert engine.log.count("decisions") == 0
    # a schema error inside the list is named by its index too
    assert_json_error(
        client.post("/v1/decide/batch", json={"requests": [{"user_id": "u", "slots": 0}]}), 400, "requests.0.slots"
    )


def test_a_request_names_its_candidates_sources_and_they_are_logged(engine, client):
    body = {"user_id": "u1", "slots": 2, "candidates": ["i1", "i2", "i3"], "candidate_sources": ["a", "b", "a"]}
    resp = client.post("/v1/decide", json=body)
    assert resp.status_code == 200, resp.get_json()
    d = DecideResponse.model_validate(resp.get_json())
    (text,) = engine.log.db.execute(
        "SELECT candidate_sources FROM decisions WHERE event_id = ?", (d.event_id,)
    ).fetchone()
    assert json.loads(text) == ["a", "b", "a"]
    by_item = dict(zip(body["candidates"], body["candidate_sources"]))
    assert all(s.source == by_item[s.item_id] for s in d.slots)
    # one per candidate, and never "pinned": refused with the field named, nothing logged
    n = engine.log.count("decisions")
    assert_json_error(client.post("/v1/decide", json={**body, "candidate_sources": ["a"]}), 400, "candidate_sources")
    assert_json_error(
        client.post("/v1/decide", json={**body, "candidate_sources": ["a", "pinned", "b"]}), 400, "candidate_sources"
    )
    assert engine.log.count("decisions") == n


def test_batch_size_is_capped_by_the_config(engine):
    client = create_app(engine, settings=ServiceConfig(batch_max=3)).test_client()
    reqs = [{"user_id": "u1", "slots": 1}] * 4
    err = assert_json_error(client.post("/v1/decide/batch", json={"requests": reqs}), 400, "requests")
    assert "at most 3" in err["message"]
    assert client.post("/v1/decide/batch", json={"requests": reqs[:3]}).status_code == 200
    assert_json_error(client.post("/v1/decide/batch", json={"requests": []}), 400, "requests")


def test_body_limits_single_and_batch(engine):
    client = create_app(engine, settings=ServiceConfig(max_body_bytes=2000, max_batch_bytes=20_000)).test_client()
    big = {"user_id": "u1", "slots": 1, "exclude": ["x" * 50] * 60}  # ~3.5 kB
    assert_json_error(client.post("/v1/decide", json=big), 413, "body")
    assert client.post("/v1/decide/batch", json={"requests": [big]}).status_code == 200
    assert_json_error(client.post("/v1/decide/batch", json={"requests": [big] * 8}), 413, "body")
    assert engine.log.count("decisions") == 1


def chunked(client, path: str, body: bytes):
    """POST ``body`` as a server does a chunked upload: no Content-Length, and a stream that the
    server terminates (``wsgi.input_terminated``, as gunicorn sets)."""
    import io

    return client.post(
        path,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def issue_body(limit: int) -> bytes:
    """Issue 18's reproducer: a valid decide request padded to exactly ``limit`` bytes, then junk."""
    head = b'{"user_id":"u","slots":1}'
    return head + b" " * (limit - len(head)) + b"JUNK" * (limit // 4)


def test_a_chunked_body_over_the_limit_is_a_413_not_cut_and_parsed(engine):
    """Issue 18, defect 1: a chunked body was cut at the limit and, its first MiB being valid
    JSON, answered 200 and logged. Whatever the transfer encoding, over the limit is a 413."""
    client = create_app(engine).test_client()
    limit = 1 << 20
    assert_json_error(chunked(client, "/v1/decide", issue_body(limit)), 413, "body")
    assert_json_error(client.post("/v1/decide", data=issue_body(limit), content_type="application/json"), 413, "body")
    assert engine.log.count("decisions") == 0
    # at the limit exactly, and below it, chunked bodies are read whole
    assert chunked(client, "/v1/decide", issue_body(limit)[:limit]).status_code == 200
    assert chunked(client, "/v1/decide", b'{"user_id":"u","slots":2}').status_code == 200
    assert_json_error(chunked(client, "/v1/decide", issue_body(limit)[: limit + 1]), 413, "body")
    assert engine.log.count("decisions") == 2


def test_a_chunked_batch_over_its_own_limit_is_a_413(engine):
    client = create_app(engine, settings=ServiceConfig(max_body_bytes=100, max_batch_bytes=1000)).test_client()
    one = b'{"requests":[{"user_id":"u","slots":1}]}'
    assert chunked(client, "/v1/decide/batch", one + b" " * (1000 - len(one))).status_code == 200
    assert_json_error(chunked(client, "/v1/decide/batch", one + b" " * (1001 - len(one))), 413, "body")
    assert_json_error(chunked(client, "/v1/decide", b'{"user_id":"u","slots":1}' + b" " * 100), 413, "body")
    assert_json_error(chunked(client, "/v1/reward", b'{"event_id":"e","reward":1}' + b" " * 100), 413, "body")
    assert engine.log.count("decisions") == 1


# ---- events and session state -----------------------------------------------------------------
def test_cart_add_changes_the_next_decisions_candidates_to_its_complements(engine, client):
    user = "no-history-user"  # no purchase history: candidates are the popular items
    first = client.post("/v1/decide", json={"user_id": user, "slots": 3}).get_json()
    before = logged_candidates(engine.log, first["event_id"])
    assert {s["source"] for s in first["slots"]} == {"popular"}

    cart_item = "i17"
    resp = client.post("/v1/events", json={"user_id": user, "item_id": cart_item, "kind": "cart"})
    assert resp.status_code == 200
    EventResponse.model_validate(resp.get_json())

    second = client.post("/v1/decide", json={"user_id": user, "slots": 3}).get_json()
    after = logged_candidates(engine.log, second["event_id"])
    neighbours, scores = engine.cf.similar_items([engine.items.ids.index(cart_item)], N=len(after))
    complements = [engine.items.ids[i] for i, s in zip(neighbours[0], scores[0]) if s > 0]
    assert complements, "the test item needs CF neighbours"
    assert after != before
    assert cart_item not in after  # what is in the cart is not recommended again
    # every CF candidate now is a neighbour of the cart, ranked first
    n_cf = min(len(complements), len(after))
    assert set(after[:n_cf]) == set(complements[:n_cf])


def test_events_are_validated_and_logged(engine, client):
    assert_json_error(client.post("/v1/events", json={"user_id": "u", "item_id": "i1", "kind": "like"}), 400, "kind")
    assert_json_error(
        client.post("/v1/events", json={"user_id": "u", "item_id": "i1", "kind": "view", "ts": -5}), 400, "ts"
    )
    assert_json_error(
        client.post("/v1/events", json={"user_id": "u", "item_id": "i1", "kind": "view", "event_id": "0" * 32}),
        404,
        "event_id",
    )
    assert_json_error(client.post("/v1/events", json={"item_id": "i1", "kind": "view"}), 400, "user_id")
    assert engine.log.count("events") == 0
    ok = client.post("/v1/events", json={"user_id": "u", "item_id": "i1", "kind": "purchase", "ts": 1.5})
    assert ok.get_json()["ts"] == 1.5 and ok.get_json()["seq"] == 1
    ev = engine.log.events()
    assert (ev.user_id.tolist(), ev.item_id.tolist(), ev.kind.tolist()) == (["u"], ["i1"], ["purchase"])


# ---- auth -------------------------------------------------------------------------------------
def test_write_and_admin_routes_need_the_token(engine):
    client = create_app(engine, settings=ServiceConfig(token=TOKEN)).test_client()
    event_id = client.post("/v1/decide", json={"user_id": "u3", "slots": 2}).get_json()["event_id"]  # open
    reward = {"event_id": event_id, "position": 0, "reward": 1}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic " + TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        resp = client.post("/v1/reward", json=reward, headers=headers)
        assert_json_error(resp, 401, "Authorization")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert engine.log.count("rewards") == 0
    assert client.post("/v1/reward", json=reward, headers=AUTH).get_json()["status"] == "recorded"
    assert_json_error(
        client.post("/v1/events", json={"user_id": "u", "item_id": "i1", "kind": "view"}), 401, "Authorization"
    )
    assert_json_error(client.get("/v1/models"), 401, "Authorization")
    assert_json_error(client.post("/v1/models/reload"), 401, "Authorization")
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    # ops routes stay open
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_decide_auth_is_configurable(engine):
    client = create_app(engine, settings=ServiceConfig(token=TOKEN, decide_requires_auth=True)).test_client()
    assert_json_error(client.post("/v1/decide", json={"user_id": "u3", "slots": 2}), 401, "Authorization")
    assert_json_error(
        client.post("/v1/decide/batch", json={"requests": [{"user_id": "u3", "slots": 2}]}), 401, "Authorization"
    )
    assert engine.log.count("decisions") == 0
    assert client.post("/v1/decide", json={"user_id": "u3", "slots": 2}, headers=AUTH).status_code == 200


def test_config_from_env_reads_token_file_and_limits(tmp_path):
    (tmp_path / "tok").write_text(TOKEN + "\n")
    cfg = ServiceConfig.from_env(
        {"BANDITREC_API_TOKEN_FILE": str(tmp_path / "tok"), "BANDITREC_BATCH_MAX": "7", "BANDITREC_DECIDE_AUTH": "1"}
    )
    assert (cfg.token, cfg.batch_max, cfg.decide_requires_auth) == (TOKEN, 7, True)
    assert ServiceConfig.from_env({"BANDITREC_API_TOKEN": "x" * 16}).token == "x" * 16
    with pytest.raises(ValueError, match="BANDITREC_BATCH_MAX"):
        ServiceConfig.from_env({"BANDITREC_BATCH_MAX": "0"})
    with pytest.raises(ValueError, match="16 characters"):
        ServiceConfig(token="short")


@pytest.mark.parametrize("content", ["", "\n", "   \t\n", "abc\n", "x" * 15 + "\n", "two words here ok!"])
def test_an_empty_blank_or_short_token_file_is_refused(tmp_path, content):
    """Issue 18, defect 4: an empty or whitespace-only token file turned authentication off
    (every route open). It is an error naming the file, as a short token is."""
    (tmp_path / "tok").write_text(content)
    with pytest.raises(ValueError, match="token file") as info:
        ServiceConfig.from_env({"BANDITREC_API_TOKEN_FILE": str(tmp_path / "tok")})
    assert str(tmp_path / "tok") in str(info.value)
    with pytest.raises(ValueError, match="BANDITREC_API_TOKEN"):
        ServiceConfig.from_env({"BANDITREC_API_TOKEN": content})


@pytest.mark.parametrize("content", ["", "  \n", "abc"])
def test_banditrec_serve_refuses_an_empty_or_short_token_file_before_starting(
    tmp_path, monkeypatch, content, sim_shop_dir
):
    """`banditrec serve --token-file F` with F empty, blank or short: a usage error and a
    non-zero exit, and no server is started (gunicorn is never exec'ed)."""
    from click.testing import CliRunner

    from banditrec import cli

    started = []
    monkeypatch.setattr(cli.os, "execvpe", lambda *a: started.append(a))
    monkeypatch.delenv("BANDITREC_API_TOKEN", raising=False)
    (tmp_path / "tok").write_text(content)
    result = CliRunner().invoke(
        cli.main,
        ["serve", "--shop", str(sim_shop_dir), "--token-file", str(tmp_path / "tok"), "--db", str(tmp_path / "log.db")],
    )
    assert result.exit_code != 0 and not started, (result.exit_code, result.output, started)
    assert "token" in result.output and str(tmp_path / "tok") in result.output
    (tmp_path / "tok").write_text(TOKEN + "\n")
    result = CliRunner().invoke(
        cli.main,
        [
            "serve",
            "--shop",
            str(sim_shop_dir),
            "--token-file",
            str(tmp_path / "tok"),
            "--db",
            str(tmp_path / "log.db"),
            "--durable",
        ],
    )
    assert result.exit_code == 0 and started[0][2]["BANDITREC_API_TOKEN"] == TOKEN, result.output
    assert started[0][2]["BANDITREC_DURABLE"] == "1"


def test_durable_means_synchronous_full(make_log, tmp_path):
    """``--durable`` (BANDITREC_DURABLE=1) opens the log with synchronous=FULL; the default is NORMAL."""
    assert ServiceConfig.from_env({}).synchronous == "NORMAL"
    settings = ServiceConfig.from_env({"BANDITREC_DURABLE": "1"})
    assert settings.durable and settings.synchronous == "FULL"
    log = make_log(tmp_path / "log.db", synchronous=settings.synchronous)
    assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.close()


# ---- metrics ----------------------------------------------------------------------------------
def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(m.group(2).split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    raise AssertionError(f"no sample {name}{{{want}}} in metrics")


def test_metrics_count_requests_decisions_rewards_and_exploration(engine, client):
    ids = [client.post("/v1/decide", json={"user_id": f"u{i}", "slots": 4}).get_json()["event_id"] for i in range(30)]
    client.post("/v1/decide", json={"user_id": "u1", "slots": 0})  # a 400
    client.post("/v1/reward", json={"event_id": ids[0], "position": 1, "reward": 1})
    client.post("/v1/reward", json={"event_id": ids[0], "position": 1, "reward": 1})
    client.post("/v1/decide/batch", json={"requests": [{"user_id": "u1", "slots": 2}] * 3})
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    text = resp.get_data(as_text=True)
    assert metric(text, "banditrec_http_requests_total", route="/v1/decide", method="POST", status="200") == 30
    assert metric(text, "banditrec_http_requests_total", route="/v1/decide", method="POST", status="400") == 1
    assert metric(text, "banditrec_http_request_duration_seconds_count", route="/v1/decide") == 31
    assert metric(text, "banditrec_http_request_duration_seconds_bucket", route="/v1/decide", le="+Inf") == 31
    assert metric(text, "banditrec_decisions_total", route="/v1/decide") == 30
    assert metric(text, "banditrec_decisions_total", route="/v1/decide/batch") == 3
    assert metric(text, "banditrec_rewards_total", status="recorded") == 1
    assert metric(text, "banditrec_rewards_total", status="duplicate") == 1
    assert metric(text, "banditrec_model_info", policy="linucb", version=engine.model_version) == 1
    # the exploration share is the logged slots' share with conditional propensity < 0.5
    (explored, total) = engine.log.db.execute("SELECT sum(propensity < 0.5), count(*) FROM slots").fetchone()
    assert total == 126
    assert metric(text, "banditrec_exploration_share") == pytest.approx(explored / total)
    assert 0 < explored < total


# ---- the OpenAPI document ---------------------------------------------------------------------
def test_openapi_documents_every_route_with_the_models_that_validate_it(engine, client):
    doc = client.get("/openapi.json").get_json()
    app = create_app(engine)
    served = {
        (r.rule, m.lower())
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
        for m in r.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    schemas = doc["components"]["schemas"]
    decide = doc["paths"]["/v1/decide"]["post"]
    assert decide["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DecideRequest"
    }
    assert set(schemas["DecideRequest"]["required"]) == {"user_id", "slots"}
    assert schemas["DecideRequest"]["additionalProperties"] is False
    assert schemas["EventRequest"]["properties"]["kind"]["enum"] == ["view", "cart", "purchase"]
    # this app has no token: nothing is documented as authenticated (test_openapi_says_what_...)
    assert "401" not in doc["paths"]["/v1/reward"]["post"]["responses"]
    assert doc["paths"]["/v1/reward"]["post"]["security"] == []
    # the hand-built hot-path answers are what the documented models say
    body = client.post("/v1/decide", json={"user_id": "u3", "slots": 2}).get_json()
    assert DecideResponse.model_validate(body).model_dump() == body
    assert HealthResponse.model_validate(client.get("/healthz").get_json())
    assert ModelsResponse.model_validate(client.get("/v1/models").get_json())


VALID = {
    "/v1/decide": {"user_id": "u3", "slots": 2},
    "/v1/decide/batch": {"requests": [{"user_id": "u3", "slots": 2}]},
    "/v1/events": {"user_id": "u3", "item_id": "i1", "kind": "view"},
    "/v1/mode": {"mode": "apprentice", "reason": "the document's check"},
}


@pytest.mark.parametrize("token, decide_auth", [(None, False), (TOKEN, False), (TOKEN, True)])
def test_openapi_says_what_the_app_enforces(engine, token, decide_auth):
    """Issue 18: the document declared bearer auth and a 401 on decide though decide was open,
    and left out the reward bound and reload's 400. Checked against the app's behaviour, per
    configuration: each route without the token answers 401 exactly when the document says it
    needs one; every status seen is documented; the documented numeric bounds, batch size and
    context length are the enforced ones; reload before anything is published is a 400."""
    settings = ServiceConfig(token=token, decide_requires_auth=decide_auth, batch_max=3)
    client = create_app(engine, settings=settings).test_client()
    doc = client.get("/openapi.json").get_json()
    event_id = client.post("/v1/decide", json=VALID["/v1/decide"], headers=AUTH).get_json()["event_id"]
    bodies = {**VALID, "/v1/reward": {"event_id": event_id, "reward": 1.0}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            open_ = client.open(path, method=method.upper(), json=bodies.get(path))
            secured = op["security"] == [{"bearer": []}]
            assert (open_.status_code == 401) == secured, (path, method, open_.status_code)
            assert ("401" in op["responses"]) == secured
            authed = client.open(path, method=method.upper(), json=bodies.get(path), headers=AUTH)
            for resp in (open_, authed):
                assert str(resp.status_code) in op["responses"], (path, method, resp.status_code, op["responses"])
    expected = {"/v1/reward", "/v1/events", "/v1/models", "/v1/models/reload", "/v1/mode"} if token else set()
    if token and decide_auth:
        expected |= {"/v1/decide", "/v1/decide/batch"}
    assert {p for p, ops in doc["paths"].items() if any(op["security"] for op in ops.values())} == expected
    # numeric bounds: the reward's is the log's, and the app enforces exactly it
    schemas = doc["components"]["schemas"]
    bound = schemas["RewardRequest"]["properties"]["reward"]
    assert (bound["minimum"], bound["maximum"]) == (-1e12, 1e12)
    for kind, value, status in (("a", 1e12, 200), ("b", -1e12, 200), ("c", 1.000001e12, 400), ("d", -1.000001e12, 400)):
        resp = client.post(
            "/v1/reward", json={"event_id": event_id, "position": 1, "kind": kind, "reward": value}, headers=AUTH
        )
        assert resp.status_code == status, (value, resp.get_json())
        if status == 400:
            assert_json_error(resp, 400, "reward")
    # the configured batch size and the engine's context length
    assert schemas["BatchDecideRequest"]["properties"]["requests"]["maxItems"] == 3
    assert_json_error(
        client.post("/v1/decide/batch", json={"requests": [VALID["/v1/decide"]] * 4}, headers=AUTH), 400, "requests"
    )
    context = schemas["DecideRequest"]["properties"]["context"]["anyOf"][0]
    assert context["minItems"] == context["maxItems"] == engine.context_dim
    for n in (engine.context_dim - 1, engine.context_dim + 1):
        assert_json_error(
            client.post("/v1/decide", json={**VALID["/v1/decide"], "context": [0.0] * n}, headers=AUTH), 400, "context"
        )
    # reload with no snapshot directory, or nothing published: a documented 400
    assert "400" in doc["paths"]["/v1/models/reload"]["post"]["responses"]
    assert_json_error(client.post("/v1/models/reload", headers=AUTH), 400, "snapshot")


# ---- learner and reload -----------------------------------------------------------------------
class Clock:
    """A clock the test sets."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def served(small_shop, tmp_path, window=5.0, reload_check_ms=0):
    """An app on a log with a settable clock, its test client and a learner publishing to the
    app's snapshot directory; ``reload_check_ms`` > 0: the watcher checks before each request
    (and, once started, on its thread)."""
    clock = Clock()
    log = DecisionLog(tmp_path / "log.db", reward_window_s=window)
    engine = make_engine(small_shop, db=str(tmp_path / "log.db"))
    engine.log.close()
    engine.log, engine.clock = log, clock
    env = policy_env(small_shop, engine.cf)
    app = create_app(
        engine,
        settings=ServiceConfig(snapshots=str(tmp_path / "snap"), reload_check_ms=reload_check_ms),
        policy_env=env,
    )
    learner = Learner(
        DecisionLog(tmp_path / "log.db", reward_window_s=window),
        make(SPEC, **env),
        small_shop.catalog.features,
        tmp_path / "snap",
        clock=clock,
    )
    return engine, app.test_client(), learner, clock


def test_a_refresh_hook_swaps_the_policy_features_and_cold_flags_the_learner_learns_with(small_shop, tmp_path):
    """``Learner.refresh`` returns a :class:`Refresh` (named fields, not a tuple of two or
    three): from that step on the learner learns its policy with its features and cold flags."""
    engine, client, learner, clock = served(small_shop, tmp_path)
    clock.t = 1.0
    client.post("/v1/decide", json={"user_id": "u0", "slots": 2})
    fresh = make(SPEC, **policy_env(small_shop, engine.cf))
    features = small_shop.catalog.features * 2.0
    cold = np.zeros(small_shop.catalog.n_items, dtype=int)
    cold[:3] = 1
    seen = []

    def hook(policy):
        seen.append(policy)
        return Refresh(policy=fresh, item_features=features, item_cold=cold) if len(seen) == 1 else None

    learner.refresh = hook
    clock.t = 100.0
    assert learner.step() is not None
    assert learner.policy is fresh and fresh.n_updates == 1
    np.testing.assert_array_equal(learner.item_features, features)
    assert learner.item_cold.dtype == bool and learner.item_cold.sum() == 3
    assert learner.step() is None and learner.policy is fresh and len(seen) == 2


def damage(snapshot) -> None:
    """Flip a byte in the middle of a published snapshot's payload (after its checksum was taken)."""
    npz = snapshot.manifest.with_suffix(".npz")
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))


def test_learner_learns_closed_decisions_only_and_reload_swaps_the_version(small_shop, tmp_path):
    engine, client, learner, clock = served(small_shop, tmp_path)
    ids = []
    for i in range(4):  # decided at t = 1, 2, 3, 4
        clock.t = i + 1.0
        ids.append(client.post("/v1/decide", json={"user_id": f"u{i}", "slots": 2}).get_json()["event_id"])
    client.post("/v1/reward", json={"event_id": ids[0], "position": 0, "reward": 1})
    clock.t = 6.0  # window 5: decision 1 (t = 1) has closed, decision 2 (t = 2) has not
    out = learner.step()
    assert out is not None and (out.trained_until_seq, out.n_rows) == (1, 2)
    assert learner.policy.n_updates == 1
    assert learner.step() is None  # nothing newly closed, nothing published
    clock.t = 100.0
    out2 = learner.step()
    assert (out2.trained_until_seq, out2.n_rows) == (4, 6)
    assert learner.policy.n_updates == 2
    v0 = engine.model_version
    resp = client.post("/v1/models/reload")
    assert resp.status_code == 200, resp.get_json()
    body = ReloadResponse.model_validate(resp.get_json())
    assert (body.status, body.previous, body.model_version) == ("loaded", v0, out2.version)
    assert client.post("/v1/models/reload").get_json()["status"] == "unchanged"
    decision = client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()
    assert decision["model_version"] == out2.version
    models = client.get("/v1/models").get_json()
    assert [v["version"] for v in models["versions"]][-1] == out2.version
    assert models["versions"][-1]["trained_until_seq"] == 4
    assert models["serving"]["model_version"] == out2.version
    # the served policy is the learner's, array for array
    served_arrays, learned_arrays = engine.policy.state()[0], learner.policy.state()[0]
    assert served_arrays and set(served_arrays) == set(learned_arrays)
    for name in served_arrays:
        np.testing.assert_array_equal(served_arrays[name], learned_arrays[name])


def test_a_corrupt_snapshot_is_refused_and_the_old_model_keeps_serving(small_shop, tmp_path):
    engine, client, learner, clock = served(small_shop, tmp_path)
    clock.t = 1.0
    client.post("/v1/decide", json={"user_id": "u1", "slots": 2})
    clock.t = 100.0
    good = learner.step()
    assert client.post("/v1/models/reload").get_json()["model_version"] == good.version
    client.post("/v1/decide", json={"user_id": "u1", "slots": 2})
    clock.t = 200.0
    damage(learner.step())
    err = assert_json_error(client.post("/v1/models/reload"), 400, "snapshot")
    assert "corrupt" in err["message"] or "checksum" in err["message"]
    assert engine.model_version == good.version
    assert client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"] == good.version
    models = client.get("/v1/models").get_json()["serving"]
    assert models["model_version"] == good.version and models["last_reload_error"]
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="refused") == 1
    assert metric(text, "banditrec_model_reloads_total", result="loaded") == 1


def test_the_first_request_after_a_publish_is_served_by_the_new_snapshot(small_shop, tmp_path, monkeypatch):
    """Requests look at the pointer at most every REQUEST_LOOK_S: with the watcher thread an
    hour away, the first request that long after the learner publishes is answered by the new
    model, a refused pointer is tried once, not on every request, and a burst of requests
    stats the pointer about once per REQUEST_LOOK_S, not once per request."""
    import time

    from banditrec.service.reload import REQUEST_LOOK_S

    engine, client, learner, clock = served(small_shop, tmp_path, reload_check_ms=3_600_000)
    watcher = client.application.extensions["banditrec.watcher"]
    clock.t = 1.0
    v0 = client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"]
    clock.t = 100.0
    out = learner.step()
    assert out.version != v0
    time.sleep(2 * REQUEST_LOOK_S)
    assert client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"] == out.version
    clock.t = 200.0
    damage(learner.step())
    time.sleep(2 * REQUEST_LOOK_S)
    for _ in range(3):
        assert client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"] == out.version
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="loaded") == 1
    assert metric(text, "banditrec_model_reloads_total", result="refused") == 1
    stats, real_stat = [], watcher._stat
    monkeypatch.setattr(watcher, "_stat", lambda: stats.append(1) or real_stat())
    t0 = time.monotonic()
    for _ in range(40):
        client.get("/healthz")
    assert len(stats) <= 1 + (time.monotonic() - t0) / REQUEST_LOOK_S + 1 < 40


def test_a_request_during_the_watchers_load_waits_for_the_new_model(small_shop, tmp_path, monkeypatch):
    """The watcher thread has begun loading a published snapshot (slowed here to 0.3 s): a
    request arriving meanwhile waits for it instead of being answered by the old model."""
    import threading
    import time

    import banditrec.service.reload as reload_mod

    engine, client, learner, clock = served(small_shop, tmp_path, reload_check_ms=3_600_000)
    app = client.application
    clock.t = 1.0
    v0 = client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"]
    started, real_load = threading.Event(), reload_mod.load

    def slow_load(*args, **kwargs):
        started.set()
        time.sleep(0.3)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(reload_mod, "load", slow_load)
    clock.t = 100.0
    out = learner.step()
    poller = threading.Thread(target=app.extensions["banditrec.watcher"].check)  # as the thread does
    poller.start()
    assert started.wait(10)
    # the request's own look at the pointer is not due (as within REQUEST_LOOK_S of the last)
    app.extensions["banditrec.watcher"]._next_look = time.monotonic() + 60
    got = client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["model_version"]
    poller.join(10)
    assert v0 != out.version and got == out.version


def test_the_watcher_thread_reloads_without_requests_and_moves_the_model_gauge(small_shop, tmp_path):
    """A worker that gets no requests still picks up a published snapshot (the served workers
    run SnapshotWatcher.start): the engine and the per-process model gauge move to the new
    version with no request in between."""
    import time

    engine, client, learner, clock = served(small_shop, tmp_path, reload_check_ms=20)
    app = client.application
    clock.t = 1.0
    client.post("/v1/decide", json={"user_id": "u1", "slots": 2})
    v0 = engine.model_version
    watcher = app.extensions["banditrec.watcher"].start()
    try:
        clock.t = 100.0
        out = learner.step()
        assert out is not None and out.version != v0
        deadline = time.monotonic() + 10
        while engine.model_version != out.version:
            assert time.monotonic() < deadline, "the watcher thread did not reload in 10 s"
            time.sleep(0.01)
        registry = app.extensions["banditrec.metrics"].registry
        gauge = [
            registry.get_sample_value("banditrec_model_info", {"policy": engine.policy.name, "version": v})
            for v in (v0, out.version)
        ]
        assert gauge == [0.0, 1.0]
    finally:
        watcher.stop(timeout=5)
    assert watcher._thread is None
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "banditrec_model_reloads_total", result="loaded") == 1


def test_learner_resumes_from_its_pointer(make_log, small_shop, tmp_path):
    engine, client, learner, clock = served(small_shop, tmp_path)
    clock.t = 1.0
    for i in range(3):
        client.post("/v1/decide", json={"user_id": f"u{i}", "slots": 2})
    clock.t = 100.0
    out = learner.step()
    env = policy_env(small_shop, engine.cf)
    again = Learner.resume(
        make_log(tmp_path / "log.db", reward_window_s=5.0),
        lambda: make(SPEC, **env),
        small_shop.catalog.features,
        tmp_path / "snap",
        env,
        clock=clock,
    )
    assert (again.learned_seq, again.version, again.policy.n_updates) == (3, out.version, 1)
    assert again.step() is None  # nothing new: nothing learned twice


def test_closed_until_seq_never_skips_an_open_decision(make_log, tmp_path):
    """Decision times need not grow with seq: seq 2 stamped before seq 1."""
    from tests.banditrec.store.test_store_window import decision

    log = make_log(tmp_path / "log.db", reward_window_s=10.0)
    for event_id, ts in (("a", 5.0), ("b", 1.0), ("c", 2.0)):
        log.write_decision(
            decision(event_id, ts), policy_params={}, candidate_index=[0, 1, 2], slot_index=[0, 1], context=[0.0]
        )
    assert log.closed_until_seq(after_seq=0, closed_before=12.0) == 0  # a (seq 1) is open at 12
    assert log.closed_until_seq(after_seq=0, closed_before=15.0) == 3
    assert log.closed_until_seq(after_seq=3, closed_before=15.0) == 3
