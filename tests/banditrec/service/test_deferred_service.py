"""The service defers Monte-Carlo propensities: the answer carries null for them, the log
completes them off the request path (a background thread, or the next read of the log)."""

from __future__ import annotations

import time

from banditrec.service.config import ServiceConfig
from banditrec.service.shopapp import create_shop_app
from banditrec.store import DecisionLog

BODY = {"user_id": "u1", "slots": 3}


def _app(shop, db, **settings):
    return create_shop_app(shop, "softmax", str(db), seed=1, settings=ServiceConfig(**settings))


def test_the_answer_leaves_monte_carlo_marginals_null_and_the_log_completes_them(sim_shop_dir, tmp_path):
    app = _app(sim_shop_dir, tmp_path / "log.db")
    engine = app.extensions["banditrec.engine"]
    answer = app.test_client().post("/v1/decide", json=BODY)
    assert answer.status_code == 200, answer.get_json()
    slots = answer.get_json()["slots"]
    assert [s["marginal"] for s in slots] == [None, None, None]
    assert all(0 < s["propensity"] <= 1 for s in slots)  # sequential filling's conditionals are exact
    assert engine.log.count("pending") == 1
    assert engine.log.decisions().n_decisions == 1  # a read settles the engine's queue first
    assert engine.log.count("pending") == 0


def test_the_background_thread_completes_pending_decisions(sim_shop_dir, tmp_path):
    app = _app(sim_shop_dir, tmp_path / "log.db")
    completer = app.extensions["banditrec.completer"]
    completer.interval_s = 0.01
    completer.start()
    try:
        client = app.test_client()
        for _ in range(5):
            assert client.post("/v1/decide", json=BODY).status_code == 200
        other = DecisionLog(tmp_path / "log.db")  # another process's view: no access to the queue
        deadline = time.monotonic() + 10
        while other.db.execute("SELECT count(*) FROM pending").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert other.db.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
        assert other.db.execute("SELECT count(*) FROM slots WHERE marginal IS NULL").fetchone()[0] == 0
    finally:
        completer.stop()


def test_eager_marginals_are_a_setting(sim_shop_dir, tmp_path):
    app = _app(sim_shop_dir, tmp_path / "log.db", defer_marginals=False)
    answer = app.test_client().post("/v1/decide", json=BODY)
    assert all(s["marginal"] is not None for s in answer.get_json()["slots"])
    assert "banditrec.completer" not in app.extensions
    assert ServiceConfig.from_env({"BANDITREC_EAGER_MARGINALS": "1"}).defer_marginals is False
    assert ServiceConfig.from_env({}).defer_marginals is True
