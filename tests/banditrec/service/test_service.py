"""The Flask decision endpoint: decide, reward, errors as JSON, and the log it writes."""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

from banditrec.service import create_app
from banditrec.store import DecisionLog
from tests.helpers import make_engine

CONTEXT = [0.1, -0.2, 0.3, 0.4]
REQUEST_CANDIDATES = ["i3", "i10", "i20", "i30", "i40", "i50"]


# ---- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def client(engine):
    return create_app(engine).test_client()


def post_raw(client, path: str, raw: bytes):
    return client.post(path, data=raw, content_type="application/json")


def decide(client, **body):
    body = {"user_id": "u3", "slots": 4, "context": CONTEXT, **body}
    resp = client.post("/v1/decide", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def assert_json_error(resp, status: int, field: str | None = None) -> dict:
    """``resp`` is a JSON error of ``status``; when ``field`` is given, the error names it."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.content_type.split(";")[0].strip() == "application/json", resp.content_type
    body = resp.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["fields"], list)
    for f in err["fields"]:
        assert isinstance(f, dict) and isinstance(f.get("field"), str) and isinstance(f.get("message"), str), f
    if field is not None:
        named = [f["field"] for f in err["fields"]]
        assert any(n == field or n.startswith(field + ".") for n in named), (
            field,
            err,
        )
    return err


def slot_rows(log: DecisionLog, event_id: str):
    return log.db.execute(
        "SELECT position, item_id, propensity, marginal, source FROM slots WHERE event_id = ? ORDER BY position",
        (event_id,),
    ).fetchall()


def reward_rows(log: DecisionLog):
    return log.db.execute(
        "SELECT event_id, position, kind, reward FROM rewards ORDER BY event_id, position, kind"
    ).fetchall()


# ---- 1. happy path ----------------------------------------------------------------------------
def test_decide_happy_path_returns_slate_and_logs_it(engine, client):
    body = decide(client)

    assert isinstance(body["event_id"], str) and len(body["event_id"]) == 32
    assert body["policy"] == engine.policy.name == "linucb"
    assert body["model_version"] == engine.policy.model_version
    slots = body["slots"]
    assert [s["position"] for s in slots] == [0, 1, 2, 3]
    items = [s["item_id"] for s in slots]
    assert len(set(items)) == 4
    for s in slots:
        assert 0.0 < s["propensity"] <= 1.0
        assert 0.0 < s["marginal"] <= 1.0

    # Exactly one decision and its four slots were logged, with what was returned.
    assert engine.log.count("decisions") == 1
    assert engine.log.count("slots") == 4
    row = engine.log.db.execute(
        "SELECT user_id, policy, model_version, n_slots, candidates, context, joint_propensity, surface "
        "FROM decisions WHERE event_id = ?",
        (body["event_id"],),
    ).fetchone()
    assert row is not None
    user_id, policy, model_version, n_slots, candidates, context, joint, surface = row
    assert (user_id, policy, model_version, n_slots, surface) == (
        "u3",
        body["policy"],
        body["model_version"],
        4,
        "home",
    )
    logged_candidates = json.loads(candidates)
    assert set(items) <= set(logged_candidates)
    assert json.loads(context) == CONTEXT
    assert joint == pytest.approx(math.prod(s["propensity"] for s in slots), rel=1e-12)

    logged = slot_rows(engine.log, body["event_id"])
    assert logged == [(s["position"], s["item_id"], s["propensity"], s["marginal"], s["source"]) for s in slots]


def test_decisions_get_distinct_event_ids(engine, client):
    ids = {decide(client)["event_id"] for _ in range(5)}
    assert len(ids) == 5
    assert engine.log.count("decisions") == 5
    assert engine.log.count("slots") == 20


# ---- 2. explicit candidates and exclude -------------------------------------------------------
def test_decide_with_request_candidates_uses_only_them(engine, client):
    body = decide(client, candidates=REQUEST_CANDIDATES)
    assert {s["item_id"] for s in body["slots"]} <= set(REQUEST_CANDIDATES)
    assert [s["source"] for s in body["slots"]] == ["request"] * 4
    (logged,) = engine.log.db.execute(
        "SELECT candidates FROM decisions WHERE event_id = ?", (body["event_id"],)
    ).fetchone()
    assert set(json.loads(logged)) == set(REQUEST_CANDIDATES)
    assert {r[4] for r in slot_rows(engine.log, body["event_id"])} == {"request"}


def test_decide_with_candidates_and_exclude_never_serves_excluded(client):
    exclude = ["i3", "i50", "not-an-item"]  # unknown ids in exclude are ignored
    for _ in range(5):
        body = decide(client, candidates=REQUEST_CANDIDATES, exclude=exclude)
        # 6 candidates - 2 excluded = exactly the 4 slots
        assert {s["item_id"] for s in body["slots"]} == {"i10", "i20", "i30", "i40"}


def test_decide_exclude_without_candidates(client):
    first = decide(client)
    banned = [s["item_id"] for s in first["slots"]]
    for _ in range(5):
        body = decide(client, exclude=banned)
        assert not {s["item_id"] for s in body["slots"]} & set(banned)


# ---- 3. malformed /v1/decide bodies -----------------------------------------------------------
def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


FIVE = ["i0", "i1", "i2", "i3", "i4"]

MALFORMED_DECIDE = [
    ("missing user_id", _raw({"slots": 2}), "user_id"),
    ("user_id not a string", _raw({"user_id": 123, "slots": 2}), "user_id"),
    ("user_id empty", _raw({"user_id": "", "slots": 2}), "user_id"),
    ("missing slots", _raw({"user_id": "u1"}), "slots"),
    ("slots 0", _raw({"user_id": "u1", "slots": 0}), "slots"),
    ("slots -1", _raw({"user_id": "u1", "slots": -1}), "slots"),
    ("slots string", _raw({"user_id": "u1", "slots": "3"}), "slots"),
    ("slots float", _raw({"user_id": "u1", "slots": 2.5}), "slots"),
    ("slots bool", _raw({"user_id": "u1", "slots": True}), "slots"),
    ("slots NaN", b'{"user_id":"u1","slots":NaN}', "slots"),
    ("more slots than candidates", _raw({"user_id": "u1", "slots": 50, "candidates": FIVE}), "slots"),
    ("more slots than CF candidates", _raw({"user_id": "u1", "slots": 50}), "slots"),
    ("context too short", _raw({"user_id": "u1", "slots": 2, "context": [0.1, 0.2, 0.3]}), "context"),
    ("context too long", _raw({"user_id": "u1", "slots": 2, "context": [0.0] * 5}), "context"),
    ("context empty", _raw({"user_id": "u1", "slots": 2, "context": []}), "context"),
    ("context not a list", _raw({"user_id": "u1", "slots": 2, "context": "0,0,0,0"}), "context"),
    ("context holds a word", _raw({"user_id": "u1", "slots": 2, "context": ["a", 0, 0, 0]}), "context"),
    ("context holds a numeric string", _raw({"user_id": "u1", "slots": 2, "context": ["0.5", 0, 0, 0]}), "context"),
    ("context holds a boolean", _raw({"user_id": "u1", "slots": 2, "context": [True, 0, 0, 0]}), "context"),
    ("context NaN", b'{"user_id":"u1","slots":2,"context":[NaN,0,0,0]}', "context"),
    ("context Infinity", b'{"user_id":"u1","slots":2,"context":[0,Infinity,0,0]}', "context"),
    ("context -Infinity", b'{"user_id":"u1","slots":2,"context":[0,0,-Infinity,0]}', "context"),
    ("context overflow to inf", b'{"user_id":"u1","slots":2,"context":[0,0,0,1e400]}', "context"),
    ("unknown candidate", _raw({"user_id": "u1", "slots": 2, "candidates": ["i0", "no-such-item"]}), "candidates"),
    ("duplicate candidates", _raw({"user_id": "u1", "slots": 2, "candidates": ["i0", "i0", "i1"]}), "candidates"),
    ("empty candidates", _raw({"user_id": "u1", "slots": 2, "candidates": []}), "candidates"),
    ("candidate not a string", _raw({"user_id": "u1", "slots": 2, "candidates": [1, 2, 3]}), "candidates"),
    ("exclude not strings", _raw({"user_id": "u1", "slots": 2, "exclude": [7]}), "exclude"),
    ("exclude leaves too few", _raw({"user_id": "u1", "slots": 4, "candidates": FIVE, "exclude": FIVE[:2]}), "slots"),
    ("unknown extra field", _raw({"user_id": "u1", "slots": 2, "foo": 1}), "foo"),
    ("not JSON", b"not json", "body"),
    ("truncated JSON", b'{"user_id": "u1", "slots": ', "body"),
    ("invalid UTF-8", b"\xff\xfe\xfa", "body"),
    ("empty body", b"", "body"),
    ("JSON list", _raw([{"user_id": "u1", "slots": 2}]), "body"),
    ("JSON string", _raw("u1"), "body"),
    ("JSON null", b"null", "body"),
    ("deeply nested JSON", b'{"user_id":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
]


@pytest.mark.parametrize("raw, field", [pytest.param(raw, field, id=name) for name, raw, field in MALFORMED_DECIDE])
def test_malformed_decide_is_a_json_400_and_logs_nothing(engine, client, raw, field):
    decide(client)  # the log is live: one decision before the bad request
    before = (engine.log.count("decisions"), engine.log.count("slots"))

    resp = post_raw(client, "/v1/decide", raw)

    assert resp.status_code < 500, resp.get_data(as_text=True)[:500]
    assert_json_error(resp, 400, field)
    assert (engine.log.count("decisions"), engine.log.count("slots")) == before


def test_decide_body_over_limit_is_a_json_413_and_logs_nothing(engine, client):
    body = {"user_id": "u1", "slots": 2, "surface": "x" * 10, "pad": "x" * (1 << 20)}
    resp = post_raw(client, "/v1/decide", _raw(body))
    assert_json_error(resp, 413)
    assert b"<html" not in resp.get_data().lower()
    assert engine.log.count("decisions") == 0
    assert engine.log.count("slots") == 0


# ---- 4. /v1/reward ----------------------------------------------------------------------------
def post_reward(client, event_id, reward, **kw):
    return client.post("/v1/reward", json={"event_id": event_id, "reward": reward, **kw})


def test_reward_unknown_event_is_404(engine, client):
    decide(client)
    resp = post_reward(client, "0" * 32, 1.0, position=0)
    assert_json_error(resp, 404, "event_id")
    assert engine.log.count("rewards") == 0


def test_reward_position_out_of_range_is_400(engine, client):
    event_id = decide(client)["event_id"]
    for position in (4, 9):
        assert_json_error(post_reward(client, event_id, 1.0, position=position), 400, "position")
    assert_json_error(post_reward(client, event_id, 1.0, position=-1), 400, "position")
    assert engine.log.count("rewards") == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_reward_non_finite_is_400(engine, client, literal):
    event_id = decide(client)["event_id"]
    raw = b'{"event_id":"%s","position":0,"reward":%s}' % (event_id.encode(), literal.encode())
    assert_json_error(post_raw(client, "/v1/reward", raw), 400, "reward")
    assert engine.log.count("rewards") == 0


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"position": 0}, "reward", id="missing reward"),
        pytest.param({"reward": "1.0", "position": 0}, "reward", id="reward as string"),
        pytest.param({"reward": True, "position": 0}, "reward", id="reward as bool"),
        pytest.param({"reward": 1.0, "position": 0.0}, "position", id="position float"),
        pytest.param({"reward": 1.0, "position": True}, "position", id="position bool"),
        pytest.param({"reward": 1.0, "position": 0, "kind": "Click!"}, "kind", id="bad kind"),
        pytest.param({"reward": 1.0, "position": 0, "extra": 1}, "extra", id="unknown field"),
    ],
)
def test_malformed_reward_is_400(engine, client, body, field):
    event_id = decide(client)["event_id"]
    resp = client.post("/v1/reward", json={"event_id": event_id, **body})
    assert_json_error(resp, 400, field)
    assert engine.log.count("rewards") == 0


def test_reward_missing_event_id_is_400(engine, client):
    assert_json_error(client.post("/v1/reward", json={"reward": 1.0}), 400, "event_id")
    assert_json_error(post_raw(client, "/v1/reward", b"[]"), 400, "body")


def test_reward_recorded_duplicate_conflict(engine, client):
    event_id = decide(client)["event_id"]

    resp = post_reward(client, event_id, 1.0, position=1)
    assert resp.status_code == 200
    assert resp.get_json() == {"event_id": event_id, "position": 1, "kind": "click", "status": "recorded"}

    resp = post_reward(client, event_id, 1.0, position=1)
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "duplicate"
    assert reward_rows(engine.log) == [(event_id, 1, "click", 1.0)]

    resp = post_reward(client, event_id, 0.0, position=1)
    assert_json_error(resp, 409)
    assert reward_rows(engine.log) == [(event_id, 1, "click", 1.0)]


def test_reward_without_position_is_whole_decision(engine, client):
    event_id = decide(client)["event_id"]
    resp = post_reward(client, event_id, 2.5)
    assert resp.status_code == 200
    assert resp.get_json() == {"event_id": event_id, "position": None, "kind": "click", "status": "recorded"}
    assert reward_rows(engine.log) == [(event_id, -1, "click", 2.5)]
    # ...and it is not a reward of any slot
    assert engine.log.decisions().row_reward.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_reward_of_another_kind_is_a_separate_row(engine, client):
    event_id = decide(client)["event_id"]
    assert post_reward(client, event_id, 1.0, position=0).get_json()["status"] == "recorded"
    resp = post_reward(client, event_id, 19.5, position=0, kind="purchase")
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "recorded"
    assert reward_rows(engine.log) == [(event_id, 0, "click", 1.0), (event_id, 0, "purchase", 19.5)]
    assert engine.log.decisions(kind="click").row_reward.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert engine.log.decisions(kind="purchase").row_reward.tolist() == [19.5, 0.0, 0.0, 0.0]


def test_logged_decisions_join_rewards_to_slots(engine, client):
    first = decide(client)["event_id"]
    second = decide(client)["event_id"]
    assert post_reward(client, second, 1.0, position=2).status_code == 200

    logged = engine.log.decisions()
    assert logged.event_id == [first, second]
    assert logged.row_decision.tolist() == [0] * 4 + [1] * 4
    assert logged.row_slot.tolist() == [0, 1, 2, 3] * 2
    expected = [0.0] * 4 + [0.0, 0.0, 1.0, 0.0]
    assert logged.row_reward.tolist() == expected

    assert post_reward(client, second, 1.0, position=2).get_json()["status"] == "duplicate"
    assert engine.log.decisions().row_reward.tolist() == expected
    assert engine.log.count("rewards") == 1


# ---- 5. property: first value per key wins ---------------------------------------------------
POSTS = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.sampled_from([0.0, 1.0])), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(posts=POSTS)
def test_rewards_keep_the_first_value_per_key(small_shop, posts):
    eng = make_engine(small_shop)
    try:
        client = create_app(eng).test_client()
        events = [decide(client)["event_id"] for _ in range(2)]
        first: dict[tuple[str, int], float] = {}
        for e, position, value in posts:
            key = (events[e], position)
            resp = post_reward(client, key[0], value, position=position)
            if key not in first:
                assert resp.status_code == 200 and resp.get_json()["status"] == "recorded"
                first[key] = value
            elif first[key] == value:
                assert resp.status_code == 200 and resp.get_json()["status"] == "duplicate"
            else:
                assert_json_error(resp, 409)
        stored = {(ev, pos): val for ev, pos, kind, val in reward_rows(eng.log)}
        assert stored == first
        assert eng.log.count("rewards") == len(first)
        logged = eng.log.decisions()
        expected = [first.get((events[d], s), 0.0) for d, s in zip(logged.row_decision, logged.row_slot)]
        assert logged.row_reward.tolist() == expected
    finally:
        eng.log.close()


# ---- 6. a real server -------------------------------------------------------------------------
def _http(url: str, body: bytes):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get_content_type(), json.loads(resp.read())


def test_real_server_decide_reward_and_error(make_log, small_shop, tmp_path):
    path = tmp_path / "log.db"
    eng = make_engine(small_shop, db=str(path))
    server = make_server("127.0.0.1", 0, create_app(eng), threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, ctype, body = _http(f"{base}/v1/decide", _raw({"user_id": "u3", "slots": 4, "context": CONTEXT}))
        assert (status, ctype) == (200, "application/json")
        event_id = body["event_id"]
        assert [s["position"] for s in body["slots"]] == [0, 1, 2, 3]
        returned = [(s["position"], s["item_id"], s["propensity"], s["marginal"], s["source"]) for s in body["slots"]]

        status, ctype, rbody = _http(f"{base}/v1/reward", _raw({"event_id": event_id, "position": 2, "reward": 1.0}))
        assert (status, ctype) == (200, "application/json")
        assert rbody["status"] == "recorded"

        with pytest.raises(urllib.error.HTTPError) as info:
            _http(f"{base}/v1/decide", b'{"user_id":"u3","slots":0}')
        err = info.value
        assert err.code == 400
        assert err.headers.get_content_type() == "application/json"
        payload = json.loads(err.read())
        err.close()
        assert payload["error"]["status"] == 400
        assert "slots" in [f["field"] for f in payload["error"]["fields"]]
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        eng.log.close()
    assert not thread.is_alive()

    log = make_log(path)
    try:
        assert log.integrity_ok()
        assert log.count("decisions") == 1
        assert log.count("slots") == 4
        assert slot_rows(log, event_id) == returned
        assert reward_rows(log) == [(event_id, 2, "click", 1.0)]
    finally:
        log.close()


# ---- 7. health and routing errors -------------------------------------------------------------
def test_healthz(engine, client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.content_type == "application/json"
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["policy"] == engine.policy.name == "linucb"
    assert body["model_version"] == engine.policy.model_version


def test_unknown_route_is_json_404(client):
    resp = client.get("/v1/nope")
    assert_json_error(resp, 404)
    assert b"<html" not in resp.get_data().lower()
    assert_json_error(client.post("/v2/decide", json={"user_id": "u1", "slots": 1}), 404)


def test_get_on_decide_is_json_405(engine, client):
    resp = client.get("/v1/decide")
    assert_json_error(resp, 405)
    assert b"<html" not in resp.get_data().lower()
    assert_json_error(client.put("/v1/reward", json={}), 405)
    assert engine.log.count("decisions") == 0


def test_405_names_the_allowed_methods(client):
    # RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header.
    resp = client.get("/v1/decide")
    assert resp.status_code == 405
    assert "POST" in {m.strip() for m in resp.headers.get("Allow", "").split(",")}
