"""The service's JSON through orjson (banditrec.service.jsonio) against the standard library:
same parsed values, same refusals, and responses that decode to what Flask's default
provider writes."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import math

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.service import create_app, jsonio
from tests.banditrec.service.test_service import assert_json_error

# JSON values with the corners: non-ASCII and escaped text, big and negative integers,
# every finite float including subnormals and -0.0
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def same(a, b) -> bool:
    """Equal, with floats compared bit for bit (so -0.0 != 0.0) and types kept apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_loads_parses_what_json_loads_parses(value, spaced):
    text = json.dumps(value, ensure_ascii=spaced, separators=(", ", ": ") if spaced else (",", ":"))
    assert same(jsonio.loads(text.encode()), json.loads(text))


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b"[Infinity, -Infinity]", b'{"n": 1e400}', b'"\\ud800"'])
def test_what_orjson_refuses_is_parsed_as_json_loads_would(raw):
    assert same(jsonio.loads(raw), json.loads(raw))


def test_an_integer_beyond_64_bits_reads_as_the_nearest_float():
    assert jsonio.loads(b"[18446744073709551615]") == [2**64 - 1]
    got = jsonio.loads(b"[123456789012345678901234567890]")
    assert got == [float(123456789012345678901234567890)] and type(got[0]) is float


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/decide", b'{"user_id": "u1", "slots": 123456789012345678901234567890}', "slots"),
        ("/v1/reward", b'{"event_id": "EID", "reward": 1, "position": 123456789012345678901234567890}', "position"),
    ],
)
def test_a_huge_integer_field_is_refused_by_name(engine, path, body, field):
    client = create_app(engine).test_client()
    event_id = client.post("/v1/decide", json={"user_id": "u1", "slots": 2}).get_json()["event_id"]
    resp = client.post(path, data=body.replace(b"EID", event_id.encode()), content_type="application/json")
    assert_json_error(resp, 400, field)
    assert engine.log.count("decisions") == 1 and engine.log.count("rewards") == 0


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1,}', b"[1 2]", b"\xff", b"nul"])
def test_what_both_refuse_is_refused(raw):
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        jsonio.loads(raw)


def apps():
    fast, slow = Flask("fast"), Flask("slow")
    fast.json = jsonio.OrjsonProvider(fast)
    slow.json = DefaultJSONProvider(slow)
    for app in (fast, slow):
        app.json.sort_keys = False
    return fast, slow


@settings(max_examples=300, deadline=None)
@given(
    values | st.dictionaries(st.integers(-5, 5), st.integers(), max_size=3) | st.lists(st.floats(), max_size=4)
)  # NaN and infinities: written as the default does
def test_responses_decode_to_what_the_default_provider_writes(value):
    fast, slow = apps()
    with fast.app_context():
        got = fast.json.response(value)
    with slow.app_context():
        want = slow.json.response(value)
    assert got.mimetype == want.mimetype == "application/json"
    assert same(json.loads(got.get_data()), json.loads(want.get_data()))


@dataclasses.dataclass
class Point:
    x: float
    when: datetime.date


@pytest.mark.parametrize(
    "value",
    [
        {"when": datetime.date(2026, 11, 23)},  # an HTTP date in Flask
        {"when": datetime.datetime(2026, 11, 23, 18, 0, 5)},
        [Point(0.5, datetime.date(2026, 1, 2))],
        {"amount": decimal.Decimal("1.10")},
    ],
)
def test_types_orjson_writes_differently_go_through_the_default(value):
    fast, slow = apps()
    with fast.app_context():
        got = fast.json.response(value).get_data()
    with slow.app_context():
        assert got == slow.json.response(value).get_data()


def test_debug_mode_keeps_the_default_indented_output():
    fast, _ = apps()
    fast.debug = True
    with fast.app_context():
        text = fast.json.response({"a": [1, 2]}).get_data(as_text=True)
    assert text == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_a_decision_answer_decodes_to_what_the_default_provider_writes(engine):
    """The decide routes skip the search for NaN when their floats sum to a finite number;
    the body is the same as jsonify's either way, a marginal left for later (NaN, answered as
    null) included."""
    from banditrec.service.decisions import answer, shaped

    fast, slow = apps()
    decision = engine.decide("u1", 3)
    odd = dataclasses.replace(
        decision, slots=(dataclasses.replace(decision.slots[0], marginal=math.nan), *decision.slots[1:])
    )
    for d in (decision, odd):
        body = {"decisions": [shaped(d)]}
        with fast.app_context():
            got = answer(body, [d]).get_data()
        with slow.app_context():
            want = slow.json.response(body).get_data()
        assert got.count(b"NaN") == want.count(b"NaN") == 0  # a NaN (a value left for later) is null
        assert same(json.loads(got), json.loads(want))
        assert (json.loads(got)["decisions"][0]["slots"][0]["marginal"] is None) == (d is odd)
