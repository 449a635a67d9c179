"""The service fuzzed from its own served OpenAPI document with schemathesis: a bounded,
deterministic run (hypothesis ``derandomize``, ``EXAMPLES`` cases per operation and generation
mode) of schema-valid and schema-invalid requests, checked with schemathesis' conformance
checks -- no 5xx, every status documented for its route, content types and response bodies
as documented, schema-invalid data refused, no route documented as authenticated that answers
without the token -- plus ours: every error is the service's JSON error naming a field.

Three configurations: auth on with decide open (``banditrec serve``'s default) and auth off
(an in-process app), through the WSGI app; auth on everywhere (``--decide-auth``) against a
real gunicorn server on 127.0.0.1. Positive cases get real event ids and catalog item ids
half the time, so that the success paths are fuzzed too, not only the 404s.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from banditrec.service import ServiceConfig, create_app
from tests.helpers import make_engine

TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES = 20  # per operation and generation mode
RUNS: dict[str, Counter] = {}  # configuration -> (operation, mode, status) counts, printed at the end


def errors_name_a_field(ctx, response, case):
    """Every 4xx is the service's JSON error whose ``fields`` name what is wrong."""
    if response.status_code < 400:
        return None
    body = response.json()
    err = body["error"]
    assert err["status"] == response.status_code and err["message"], body
    assert err["fields"] and all(isinstance(f["field"], str) and f["field"] for f in err["fields"]), body
    return None


def negative_data_refused(ctx, response, case):
    """schemathesis's ``negative_data_rejection``, with 413 counted as a refusal: a schema-invalid
    body the generator made larger than the route's limit is refused for its size first."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_refused,
    ignored_auth,
    errors_name_a_field,
]


def realistic(case, pick: int, event_ids: list[str], item_ids: list[str]) -> None:
    """Half of the positive cases: real event ids for rewards and events, catalog ids for
    candidates (same count, distinct) and at most 3 slots, so that the 200 paths are reached.
    (Hypothesis draws strings and numbers partly from the literals of the modules loaded, so
    what the unmodified cases hold changes with the code and the other tests in the process.)"""
    body = case.body
    if not isinstance(body, dict) or pick % 2:
        return

    def decide(b):
        if isinstance(b.get("slots"), int) and not isinstance(b["slots"], bool) and b["slots"] > 0:
            b["slots"] = 1 + (b["slots"] - 1) % 3  # fewer than the 20 candidates an engine draws
        if isinstance(b.get("candidates"), list):
            n = min(len(b["candidates"]), len(item_ids))
            b["candidates"] = [item_ids[(pick + 7 * k) % len(item_ids)] for k in range(n)]

    path = case.operation.path
    if path in ("/v1/reward", "/v1/events") and "event_id" in body:
        body["event_id"] = event_ids[pick % len(event_ids)]
    if path == "/v1/decide":
        decide(body)
    if path == "/v1/decide/batch" and isinstance(body.get("requests"), list):
        for r in body["requests"]:
            if isinstance(r, dict):
                decide(r)


def fuzz(schema, name: str, *, headers: dict, event_ids, item_ids, call_kw=None) -> Counter:
    """Every operation of ``schema``, EXAMPLES positive and EXAMPLES negative cases each."""
    seen: Counter = Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode), pick=st.integers(0, 2**16))
            def run(case, pick):
                if mode is GenerationMode.POSITIVE:
                    realistic(case, pick, event_ids, item_ids)
                response = case.call_and_validate(headers=headers, checks=CHECKS, **(call_kw or {}))
                seen[(op.label, mode.value, response.status_code)] += 1

            try:
                run()
            except Unsatisfiable:  # no schema-invalid request exists: no body, no parameters, no auth
                assert mode is GenerationMode.NEGATIVE and "requestBody" not in op.definition.raw, op.label
    RUNS[name] = seen
    return seen


def statuses(seen: Counter, label: str) -> set[int]:
    return {s for (lab, _, s) in seen if lab == label}


def assert_reached(seen: Counter) -> None:
    """The run reached both outcomes where both exist, and stayed bounded."""
    for label in ("POST /v1/decide", "POST /v1/reward", "POST /v1/events", "POST /v1/decide/batch"):
        assert {200, 400} <= statuses(seen, label), (label, statuses(seen, label))
    assert 400 in statuses(seen, "POST /v1/models/reload")  # nothing published yet
    assert sum(seen.values()) <= 14 * 2 * EXAMPLES


@pytest.fixture
def app_and_ids(small_shop):
    def build(settings: ServiceConfig):
        engine = make_engine(small_shop)
        app = create_app(engine, settings=settings)
        client = app.test_client()
        event_ids = [
            client.post("/v1/decide", json={"user_id": f"f{i}", "slots": 2}).get_json()["event_id"] for i in range(4)
        ]
        return app, event_ids, list(engine.items.ids)

    return build


@pytest.mark.parametrize("auth", ["on", "off"])
def test_fuzz_the_wsgi_app_from_its_openapi_document(app_and_ids, auth):
    app, event_ids, item_ids = app_and_ids(ServiceConfig(token=TOKEN if auth == "on" else None))
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth == "on" else {}
    seen = fuzz(schema, f"wsgi, auth {auth}", headers=headers, event_ids=event_ids, item_ids=item_ids)
    assert_reached(seen)
    protected = {
        "POST /v1/reward",
        "POST /v1/events",
        "GET /v1/models",
        "POST /v1/models/reload",
        "POST /v1/blocklist",
        "GET /v1/blocklist",
        "DELETE /v1/blocklist/{item_id}",
    }
    for label in protected:  # schema-invalid auth (negative mode) is refused where auth is on, only there
        assert (401 in statuses(seen, label)) == (auth == "on"), (label, statuses(seen, label))
    assert 401 not in statuses(seen, "POST /v1/decide")


@pytest.mark.slow
def test_fuzz_a_real_server_with_auth_on_every_route(tmp_path, sim_shop_dir):
    """``--decide-auth``: every route but the ops ones needs the token; through HTTP on 127.0.0.1,
    serving a shop directory (named context fields)."""
    from banditrec.service.runner import GunicornServer
    from banditrec.shop import Shop
    from tests.banditrec.service.test_service_server import TOKEN as SERVER_TOKEN
    from tests.banditrec.service.test_service_server import Client, server_env

    env = server_env(tmp_path, sim_shop_dir, BANDITREC_DECIDE_AUTH=1, BANDITREC_BATCH_MAX=8)
    with GunicornServer(env, workers=1, log=tmp_path / "gunicorn.log") as srv:
        client = Client(srv)
        event_ids = [
            client.call("POST", "/v1/decide", {"user_id": f"f{i}", "slots": 2})[2]["event_id"] for i in range(4)
        ]
        item_ids = list(Shop(sim_shop_dir).items.ids)  # the served shop's catalog
        schema = schemathesis.openapi.from_url(f"{srv.base}/openapi.json")
        seen = fuzz(
            schema,
            "gunicorn, auth on every route",
            headers={"Authorization": f"Bearer {SERVER_TOKEN}"},
            event_ids=event_ids,
            item_ids=item_ids,
            call_kw={"base_url": srv.base, "timeout": 10},
        )
        client.close()
        log = srv.log_text()
    assert_reached(seen)
    assert 401 in statuses(seen, "POST /v1/decide") and 401 in statuses(seen, "POST /v1/decide/batch")
    assert "Traceback" not in log, log[-3000:]


def teardown_module(module):
    for name, seen in RUNS.items():
        codes = Counter()
        for (_, _, status), n in seen.items():
            codes[status] += n
        print(
            f"\nschemathesis fuzz ({name}): {sum(seen.values())} requests, statuses {dict(sorted(codes.items()))}",
            file=sys.stderr,
        )
