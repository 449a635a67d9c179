"""``banditrec evaluate``: estimates from the log against independent computations and the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.evaluation import evaluate_log
from banditrec.policies import Request, make
from banditrec.store import DecisionLog
from studies.coverage import _run
from tests.conftest import SMALL

N_DEC, N_SLOTS, N_CAND = 1600, 3, 20


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    db = tmp_path_factory.mktemp("eval") / "log.db"
    log = DecisionLog(db)
    shop, engine, served = _run(
        11,
        SMALL,
        "linucb:alpha=1.0,epsilon=0.3",
        log,
        n_decisions=N_DEC,
        n_slots=N_SLOTS,
        n_candidates=N_CAND,
        batch=200,
        via="engine",
    )
    log.close()
    return db, shop, engine, served


def test_logging_value_and_uniform_ips_match_an_independent_computation(make_log, logged_run, tmp_path):
    db, *_ = logged_run
    res = evaluate_log(str(db), ["uniform"], estimators=("IPS", "SNIPS", "DR"), train_frac=0.5, out=tmp_path)
    log = make_log(db)
    logged = log.decisions()
    log.close()
    half = N_DEC // 2
    rows = logged.row_decision >= half
    per_decision = np.bincount(logged.row_decision[rows] - half, weights=logged.row_reward[rows])
    assert res.n_train == half and res.n_eval == N_DEC - half and res.n_rows == rows.sum()
    assert res.logging.value == pytest.approx(per_decision.mean(), rel=1e-12)
    # uniform over m candidates without replacement: every (item, slot) marginal is 1/m
    m = np.array([len(c) for c in logged.candidates])[logged.row_decision[rows]]
    w = (1.0 / m) / logged.row_pscore[rows]
    ips = np.bincount(logged.row_decision[rows] - half, weights=w * logged.row_reward[rows]).mean()
    assert res.candidates[0].estimates["IPS"].value == pytest.approx(ips, rel=1e-10)


def test_estimates_cover_the_simulators_exact_value(make_log, logged_run):
    """The uniform policy's exact value on the evaluated customers, from the click model; each
    estimator within 3 standard errors of it (fixed seed)."""
    db, shop, engine, served = logged_run
    res = evaluate_log(str(db), ["uniform", "linucb:alpha=1.0,epsilon=0.3"], train_frac=0.5)
    log = make_log(db)
    logged = log.decisions()
    log.close()
    uniform = make("uniform", context_dim=SMALL.dim, item_dim=SMALL.dim, popularity=np.ones(SMALL.n_items))
    truth = []
    for d in range(N_DEC // 2, N_DEC):
        items = logged.candidates[d]
        req = Request(context=logged.context[d], items=items, item_features=engine.items.features[items])
        marg = uniform.distribution(req, N_SLOTS).marginals()
        truth.append(shop.model.expected_reward_of_distribution(served.customer[d], items, marg))
    truth = float(np.mean(truth))
    for name, e in res.candidates[0].estimates.items():
        assert abs(e.value - truth) < 3 * e.se, (name, e.value, truth, e.se)
    # the logging policy on-policy: its exact value on those decisions
    assert abs(res.logging.value - served.truth[N_DEC // 2 :].mean()) < 3 * res.logging.se


def test_verdict_follows_the_primary_lower_bound(logged_run):
    db, *_ = logged_run
    res = evaluate_log(str(db), ["uniform", "linucb:alpha=1.0,epsilon=0.05"], train_frac=0.5)
    for cand in res.candidates:
        main_est = cand.estimates["DR"]
        expected = not main_est.warnings and main_est.lower > res.logging.value
        assert cand.safe == expected
        assert ("SAFE" in res.table()) == any(c.safe for c in res.candidates)
    # uniform is far worse than a learned LinUCB here: never safe
    assert not res.candidates[0].safe


def test_cli_json_and_report(logged_run, tmp_path):
    db, *_ = logged_run
    runner = CliRunner()
    out = runner.invoke(main, ["evaluate", "--db", str(db), "--policy", "uniform", "--json", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["candidates"][0]["policy"] == "uniform"
    assert set(doc["candidates"][0]["estimates"]) == {"IPS", "SNIPS", "DR", "SNDR"}
    assert (tmp_path / "evaluate.md").exists() and (tmp_path / "evaluate.png").stat().st_size > 1000
    table = runner.invoke(main, ["evaluate", "--db", str(db), "--policy", "uniform", "--out", str(tmp_path)])
    assert table.exit_code == 0 and "logging (on-policy)" in table.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["--policy", "nosuch"], "unknown policy 'nosuch'"),
        (["--policy", "uniform", "--estimator", "XYZ"], "unknown estimator 'XYZ'"),
        (["--policy", "uniform", "--estimator", "Replay"], "Replay needs a uniformly random log"),
        (["--policy", "popularity:max_per_type=1"], "evaluate cannot apply it"),
    ],
)
def test_cli_bad_input_is_a_usage_error(logged_run, tmp_path, args, match):
    db, *_ = logged_run
    out = CliRunner().invoke(main, ["evaluate", "--db", str(db), "--out", str(tmp_path), *args])
    assert out.exit_code == 2 and match in out.output and "Traceback" not in out.output


def test_missing_log_is_named(tmp_path):
    with pytest.raises(ValidationError, match="no decision log at"):
        evaluate_log(str(tmp_path / "none.db"), ["uniform"])


def test_unsupported_mass_is_reported(make_log, logged_run):
    """The candidate's target mass on items the evaluated half never showed in that slot,
    against a brute-force sum over its marginals (uniform over 20 candidates: 1/m each). It is
    reported, not warned on: every logged candidate had a positive logging probability."""
    db, _, engine, _ = logged_run
    res = evaluate_log(str(db), ["uniform"], estimators=("IPS", "DR"), train_frac=0.5)
    log = make_log(db)
    logged = log.decisions()
    log.close()
    half = N_DEC // 2
    rows = np.flatnonzero(logged.row_decision >= half)
    seen = {(int(logged.row_action[i]), int(logged.row_slot[i])) for i in rows}
    total = 0.0
    for i in rows:
        d = int(logged.row_decision[i])
        items = logged.candidates[d]
        # uniform without replacement: every candidate has marginal 1/m in every slot
        total += sum(1.0 / len(items) for a in items.tolist() if (a, int(logged.row_slot[i])) not in seen)
    expected = total / len(rows)
    est = res.candidates[0].estimates["DR"]
    assert expected > 0 and est.unsupported == pytest.approx(expected, rel=1e-9)
    assert not any("never logged" in w for w in est.warnings)


def test_a_candidate_can_be_shown_safe(make_log, tmp_path):
    """A log from a uniformly random logger; a learned LinUCB candidate is far better, and the
    verdict says so (a run with a fixed seed)."""
    db = tmp_path / "uniform.db"
    log = make_log(db)
    _run(5, SMALL, "uniform", log, n_decisions=3000, n_slots=3, n_candidates=10, batch=300, via="engine")
    log.close()
    res = evaluate_log(str(db), ["linucb:alpha=0.5,epsilon=0.1"], train_frac=0.5)
    cand = res.candidates[0]
    assert cand.estimates["DR"].lower > res.logging.value and not cand.estimates["DR"].warnings
    assert cand.safe and "SAFE to deploy" in res.table()
