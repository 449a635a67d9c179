"""Negative feedback and the block list over HTTP and the CLI (docs/feedback.md): hide events on
/v1/events, the negative reward when configured, the admin block-list routes seen by a second
app on the same log without restart, and bad input refused with the field named while nothing
already logged is lost."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.service import ServiceConfig, create_app
from banditrec.service.schemas import BlocklistResponse, BlockResponse, EventResponse
from banditrec.store import DecisionLog
from tests.banditrec.service.test_service import assert_json_error
from tests.banditrec.test_feedback import CTX, Clock, typed_engine

TOKEN = "f" * 20 + "-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CANDS = [f"i{j}" for j in range(20, 32)]


def decide(client, user="u1", **body):
    resp = client.post("/v1/decide", json={"user_id": user, "slots": 4, "context": CTX, "candidates": CANDS, **body})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


@pytest.fixture
def app_engine(small_shop):
    engine = typed_engine(small_shop, Clock())
    yield engine
    engine.log.close()


def test_a_hide_over_http_suppresses_the_item_for_that_user_until_it_expires(app_engine):
    clock = app_engine.clock
    client = create_app(app_engine, settings=ServiceConfig(hide_window_s=100.0)).test_client()
    d = decide(client)
    item = d["slots"][0]["item_id"]
    resp = client.post("/v1/events", json={"user_id": "u1", "item_id": item, "kind": "hide"})
    assert resp.status_code == 200, resp.get_json()
    body = EventResponse.model_validate(resp.get_json())
    assert (body.scope, body.expires_ts, body.reward_status) == ("item", clock.t + 100.0, None)
    for _ in range(10):
        assert item not in [s["item_id"] for s in decide(client)["slots"]]
    assert any(item in [s["item_id"] for s in decide(client, user="u2")["slots"]] for _ in range(20))
    clock.t += 100.0
    assert (
        item
        in app_engine.log.db.execute(
            "SELECT candidates FROM decisions WHERE event_id = ?", (decide(client)["event_id"],)
        ).fetchone()[0]
    )


def test_a_type_hide_over_http_with_its_own_ttl(app_engine):
    client = create_app(app_engine).test_client()
    types = app_engine.items.types
    target = CANDS[0]
    same = {c for c in CANDS if types[app_engine.items.lookup([c])[0]] == types[app_engine.items.lookup([target])[0]]}
    assert len(same) > 1  # the check below covers more than the item itself
    resp = client.post(
        "/v1/events", json={"user_id": "u1", "item_id": target, "kind": "not_interested", "scope": "type", "ttl_s": 5}
    )
    assert resp.status_code == 200 and resp.get_json()["expires_ts"] == app_engine.clock.t + 5
    event_id = decide(client)["event_id"]
    logged = app_engine.log.db.execute("SELECT candidates FROM decisions WHERE event_id = ?", (event_id,)).fetchone()
    assert not same & set(json.loads(logged[0]))


def test_the_negative_reward_is_recorded_when_configured_and_not_otherwise(app_engine):
    for reward, expected in ((None, []), (-1.0, [(2, "click", -1.0)])):
        settings = ServiceConfig(hide_reward=reward)
        client = create_app(app_engine, settings=settings).test_client()
        d = decide(client)
        item = d["slots"][2]["item_id"]
        resp = client.post(
            "/v1/events", json={"user_id": "u1", "item_id": item, "kind": "hide", "event_id": d["event_id"]}
        )
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["reward_status"] == (None if reward is None else "recorded")
        rows = app_engine.log.db.execute(
            "SELECT position, kind, reward FROM rewards WHERE event_id = ?", (d["event_id"],)
        ).fetchall()
        assert rows == expected
    # its kind is configurable, and a slot's earlier reward of that kind stands
    client = create_app(app_engine, settings=ServiceConfig(hide_reward=-2.0, hide_reward_kind="hide")).test_client()
    d = decide(client)
    client.post("/v1/reward", json={"event_id": d["event_id"], "position": 1, "reward": 1.0, "kind": "hide"})
    resp = client.post(
        "/v1/events",
        json={
            "user_id": "u1",
            "item_id": d["slots"][1]["item_id"],
            "kind": "hide",
            "event_id": d["event_id"],
            "position": 1,
        },
    )
    assert resp.get_json()["reward_status"] == "kept_existing"
    assert app_engine.log.db.execute(
        "SELECT reward FROM rewards WHERE event_id = ? AND kind = 'hide'", (d["event_id"],)
    ).fetchall() == [(1.0,)]


def test_bad_feedback_input_names_the_field_and_loses_nothing(engine, small_shop):
    client = create_app(engine).test_client()
    d = decide(client)
    client.post("/v1/events", json={"user_id": "u1", "item_id": "i1", "kind": "view"})
    before = {t: engine.log.count(t) for t in ("decisions", "slots", "events", "rewards", "blocklist", "audit")}
    shown = d["slots"][0]["item_id"]
    other = d["slots"][1]["item_id"]
    for body, field in (
        ({"kind": "hide", "scope": "brand"}, "scope"),
        ({"kind": "hide", "ttl_s": -5}, "ttl_s"),
        ({"kind": "hide", "ttl_s": 0}, "ttl_s"),
        ({"kind": "hide", "ttl_s": "10"}, "ttl_s"),
        ({"kind": "view", "scope": "item"}, "scope"),
        ({"kind": "view", "ttl_s": 10}, "ttl_s"),
        ({"kind": "hide", "position": 0}, "position"),
        ({"kind": "hide", "position": 0, "event_id": d["event_id"], "item_id": other}, "position"),
        ({"kind": "hide", "position": 9, "event_id": d["event_id"]}, "position"),
        ({"kind": "hide", "scope": "type"}, "scope"),  # this engine's catalog has no item types
        ({"kind": "dislike"}, "kind"),
    ):
        resp = client.post("/v1/events", json={"user_id": "u1", "item_id": shown, **body})
        assert_json_error(resp, 400, field)
    assert_json_error(
        client.post("/v1/events", json={"user_id": "u1", "item_id": shown, "kind": "hide", "event_id": "nope"}),
        404,
        "event_id",
    )
    for body, field in (
        ({"item_ids": ["i1", "nope"], "reason": "r"}, "item_ids.1"),
        ({"item_id": "nope", "reason": "r"}, "item_id"),
        ({"item_ids": ["i1"]}, "reason"),
        ({"item_ids": ["i1"], "reason": ""}, "reason"),
        ({"item_ids": [], "reason": "r"}, "item_ids"),
        ({"reason": "r"}, "item_id"),
        ({"item_id": "i1", "item_ids": ["i2"], "reason": "r"}, "item_ids"),
    ):
        assert_json_error(client.post("/v1/blocklist", json=body), 400, field)
    assert_json_error(client.delete("/v1/blocklist/i1"), 404, "item_id")
    assert {t: engine.log.count(t) for t in before} == before
    # a type hide on a shop whose items have types is refused only for an unknown item
    typed = create_app(typed_engine(small_shop, Clock())).test_client()
    assert_json_error(
        typed.post("/v1/events", json={"user_id": "u1", "item_id": "nope", "kind": "hide", "scope": "type"}),
        400,
        "item_id",
    )


def test_the_block_list_over_http_reaches_a_second_app_and_is_audited(small_shop, tmp_path):
    path = str(tmp_path / "log.db")
    engines = [typed_engine(small_shop, Clock(), log=DecisionLog(path), seed=s) for s in (1, 2)]
    first, second = (create_app(e, settings=ServiceConfig(token=TOKEN)).test_client() for e in engines)
    blocked = CANDS[:2]
    decide(second)  # the second worker has served (and cached the empty block list)
    assert first.post("/v1/blocklist", json={"item_ids": blocked, "reason": "recall"}).status_code == 401
    resp = first.post("/v1/blocklist", json={"item_ids": blocked, "reason": "recall 7", "actor": "legal"}, headers=AUTH)
    assert BlockResponse.model_validate(resp.get_json()).model_dump()["items"] == [
        {"item_id": i, "status": "blocked"} for i in blocked
    ]
    again = first.post("/v1/blocklist", json={"item_id": blocked[0], "reason": "x"}, headers=AUTH).get_json()
    assert again["items"] == [{"item_id": blocked[0], "status": "already_blocked"}]
    for client in (first, second):
        for u in range(15):
            d = decide(client, user=f"u{u}")
            assert not set(blocked) & {s["item_id"] for s in d["slots"]}
    listed = BlocklistResponse.model_validate(second.get("/v1/blocklist", headers=AUTH).get_json())
    assert [(b.item_id, b.reason, b.actor) for b in listed.items] == [(i, "recall 7", "legal") for i in sorted(blocked)]
    resp = second.delete(f"/v1/blocklist/{blocked[0]}?reason=cleared&actor=legal", headers=AUTH)
    assert resp.get_json()["items"] == [{"item_id": blocked[0], "status": "unblocked"}]
    assert any(blocked[0] in [s["item_id"] for s in decide(first, user=f"u{u}")["slots"]] for u in range(30))
    audit = engines[0].log.audit_rows()
    assert [(a.action, a.subject, a.actor, a.detail["reason"]) for a in audit] == [
        ("block", blocked[0], "legal", "recall 7"),
        ("block", blocked[1], "legal", "recall 7"),
        ("unblock", blocked[0], "legal", "cleared"),
    ]
    for e in engines:
        e.log.close()


def test_the_cli_blocks_lists_and_unblocks_and_a_serving_engine_follows(small_shop, tmp_path):
    path = str(tmp_path / "log.db")
    engine = typed_engine(small_shop, Clock(), log=DecisionLog(path))
    engine.decide("u1", 3, context=CTX, candidates=CANDS)
    runner = CliRunner()
    out = runner.invoke(main, ["block", "--db", path, CANDS[0], CANDS[1], "--reason", "recall", "--actor", "ops"])
    assert out.exit_code == 0, out.output
    assert f"{CANDS[0]}: blocked" in out.output
    for _ in range(10):
        assert not {CANDS[0], CANDS[1]} & set(engine.decide("u1", 3, context=CTX, candidates=CANDS).candidates)
    listed = runner.invoke(main, ["block", "--db", path, "--list"])
    assert "2 blocked item(s)" in listed.output and "by ops: recall" in listed.output
    out = runner.invoke(main, ["unblock", "--db", path, CANDS[0], "--reason", "ok", "--actor", "ops"])
    assert out.exit_code == 0, out.output
    assert CANDS[0] in engine.decide("u1", 3, context=CTX, candidates=CANDS).candidates
    audit = runner.invoke(main, ["block", "--db", path, "--audit"])
    assert audit.output.count(" block ") == 2 and audit.output.count(" unblock ") == 1
    bad = runner.invoke(main, ["block", "--db", path, "i1"])
    assert bad.exit_code == 2 and "--reason" in bad.output
    bad = runner.invoke(main, ["block", "--db", path, "nope", "--reason", "r"])
    assert bad.exit_code == 2 and "not in the log's items table" in bad.output
    bad = runner.invoke(main, ["unblock", "--db", path, "i199"])
    assert bad.exit_code == 2 and "not on the block list" in bad.output
    engine.log.close()


def test_the_hide_settings_are_checked_and_read_from_the_environment():
    for kw, field in (
        ({"hide_window_s": 0}, "hide_window_s"),
        ({"hide_window_s": -1.0}, "hide_window_s"),
        ({"hide_reward": float("nan")}, "hide_reward"),
        ({"hide_reward": 1e13}, "hide_reward"),
        ({"hide_reward_kind": "Bad Kind"}, "hide_reward_kind"),
    ):
        with pytest.raises(ValidationError) as err:
            ServiceConfig(**kw)
        assert err.value.field == field
    got = ServiceConfig.from_env(
        {"BANDITREC_HIDE_WINDOW_S": "60", "BANDITREC_HIDE_REWARD": "-0.5", "BANDITREC_HIDE_REWARD_KIND": "hide"}
    )
    assert (got.hide_window_s, got.hide_reward, got.hide_reward_kind) == (60.0, -0.5, "hide")
    default = ServiceConfig.from_env({"BANDITREC_HIDE_REWARD": ""})
    assert (default.hide_window_s, default.hide_reward, default.hide_reward_kind) == (30 * 86400.0, None, "click")
    with pytest.raises(ValidationError) as err:
        ServiceConfig.from_env({"BANDITREC_HIDE_REWARD": "minus one"})
    assert err.value.field == "BANDITREC_HIDE_REWARD"
