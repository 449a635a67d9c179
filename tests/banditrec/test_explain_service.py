"""Explanations through the decide endpoint and ``banditrec recommend --explain``, on a shop
directory (docs/explanations.md)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.service.schemas import DecideResponse
from banditrec.service.shopapp import create_shop_app
from banditrec.shop import Shop

SLOT_KEYS = ["position", "item_id", "propensity", "marginal", "source"]


@pytest.fixture
def client(sim_shop_dir, tmp_path):
    return create_shop_app(sim_shop_dir, "linucb", str(tmp_path / "log.db"), seed=1).test_client()


def test_decide_explains_each_slot_only_when_asked(client, sim_shop_dir):
    plain = client.post("/v1/decide", json={"user_id": "u3", "slots": 3, "context": {}})
    assert plain.status_code == 200, plain.get_json()
    assert b"explanation" not in plain.data
    assert all(list(s) == SLOT_KEYS for s in plain.get_json()["slots"])

    resp = client.post("/v1/decide", json={"user_id": "u3", "slots": 3, "explain": True})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert DecideResponse.model_validate(body).model_dump() == body  # the documented shape
    names = Shop(sim_shop_dir).feature_names
    known = {"intercept", "item:cold", "other"}
    known |= {f"item:{n}" for n in names.item} | {f"ctx:{n}" for n in names.context}
    for slot in body["slots"]:
        e = slot["explanation"]
        assert list(slot) == [*SLOT_KEYS, "explanation"]
        assert e["available"] and e["kind"] == "ucb" and e["why"] is None
        assert sum(c["value"] for c in e["contributions"]) == pytest.approx(e["base"], abs=1e-9)
        assert e["score"] == pytest.approx(e["base"] + e["bonus"] + e["objective"], abs=1e-9)
        assert len(e["contributions"]) == 6 and e["contributions"][-1]["feature"] == "other"
        for c in e["contributions"]:  # the shop's names: ctx:FIELD, item:COLUMN, or their product
            assert set(c["feature"].split(" × ")) <= known, c["feature"]


def test_explain_refused_where_it_cannot_be_served(client):
    bad = client.post("/v1/decide", json={"user_id": "u3", "slots": 2, "explain": "yes"})
    assert bad.status_code == 400 and bad.get_json()["error"]["fields"][0]["field"] == "explain"
    batch = client.post(
        "/v1/decide/batch",
        json={"requests": [{"user_id": "u1", "slots": 2}, {"user_id": "u2", "slots": 2, "explain": True}]},
    )
    assert batch.status_code == 400
    assert batch.get_json()["error"]["fields"][0]["field"] == "requests.1.explain"
    # without explain the batch answers as before
    ok = client.post("/v1/decide/batch", json={"requests": [{"user_id": "u1", "slots": 2, "explain": False}]})
    assert ok.status_code == 200 and b"explanation" not in ok.data


def test_policies_without_explanations_answer_with_a_marker(sim_shop_dir, tmp_path):
    client = create_shop_app(sim_shop_dir, "bernoulli-ts", str(tmp_path / "log.db"), seed=1).test_client()
    body = client.post("/v1/decide", json={"user_id": "u3", "slots": 2, "explain": True}).get_json()
    assert DecideResponse.model_validate(body).model_dump() == body
    for slot in body["slots"]:
        e = slot["explanation"]
        assert e["available"] is False and "bernoulli-ts" in e["why"]
        assert e["score"] is None and e["contributions"] == []


ROW = re.compile(r"^  (.+?)\s+([+-]\d+\.\d{6})$")


def test_recommend_explain_prints_contributions_that_sum(sim_shop_dir):
    res = CliRunner().invoke(
        main, ["recommend", "--shop", str(sim_shop_dir), "--user", "u3", "--slots", "3", "--explain"]
    )
    assert res.exit_code == 0, res.output
    blocks = res.output.split("\n\n")[1:]
    assert len(blocks) == 3
    for block in blocks:
        lines = block.strip().splitlines()
        assert re.match(r"slot \d \S+: why this score", lines[0])
        rows = [ROW.match(line).groups() for line in lines[1:] if ROW.match(line)]
        named = dict((k, float(v)) for k, v in rows)
        parts = [float(v) for k, v in rows if not k.startswith(("=", "+"))]
        assert len(parts) == 6 and rows[5][0] == "other"
        # printed to 6 decimals: each sum within the rounding of its terms
        assert sum(parts) == pytest.approx(named["= base (sum of the above)"], abs=4e-6)
        extra = sum(v for k, v in named.items() if k.startswith("+"))
        assert named["= base (sum of the above)"] + extra == pytest.approx(named["= score"], abs=3e-6)
    plain = CliRunner().invoke(main, ["recommend", "--shop", str(sim_shop_dir), "--user", "u3", "--slots", "3"])
    assert plain.exit_code == 0 and "why this score" not in plain.output
