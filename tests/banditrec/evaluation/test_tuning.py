"""``banditrec evaluate --tune``: grids, the choice rule, and the choice against the simulator's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import norm

from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.evaluation import PolicyEvaluation, evaluate_log, verdict
from banditrec.evaluation.pipeline import candidate_env, candidate_policy
from banditrec.evaluation.sqlite import SQLiteBackend
from banditrec.offline import target_pscore
from banditrec.store import DecisionLog
from banditrec.tuning import at_level, choose, expand_grid, expand_grids, simultaneous_level
from banditrec.types import Estimate
from studies.coverage import _run
from tests.conftest import SMALL

N_DEC, N_SLOTS, N_CAND = 2400, 3, 10
# the better setting second, so that "the first setting" or "the lowest" would pick wrongly
GRID = "linucb:alpha=0.5,epsilon=1.0|0.1"


def test_grid_expands_in_order_and_bad_grids_are_named():
    assert expand_grid("linucb:alpha=0.25|0.5|1,epsilon=0.02|0.05") == [
        f"linucb:alpha={a},epsilon={e}" for a in ("0.25", "0.5", "1") for e in ("0.02", "0.05")
    ]
    assert expand_grid("uniform") == ["uniform"]
    assert expand_grids(["egreedy:epsilon=0.1|0.2", "uniform"]) == [
        "egreedy:epsilon=0.1",
        "egreedy:epsilon=0.2",
        "uniform",
    ]
    with pytest.raises(ValidationError, match=r"epsilon has an empty alternative in '0.1\|'"):
        expand_grid("egreedy:epsilon=0.1|")
    with pytest.raises(ValidationError, match=r"epsilon lists a value twice in '0.1\|0.1'"):
        expand_grid("egreedy:epsilon=0.1|0.1")
    with pytest.raises(ValidationError, match="policy parameter must look like key=value, got 'alpha'"):
        expand_grid("linucb:alpha")
    with pytest.raises(ValidationError, match="has 120 settings; at most 100"):
        expand_grid("egreedy:epsilon=" + "|".join(str(i) for i in range(120)))
    with pytest.raises(ValidationError, match="'uniform' appears in more than one tuning grid"):
        expand_grids(["uniform", "uniform"])


def _estimate(value, se, warnings=()):
    z = norm.ppf(0.975)
    return Estimate(
        estimator="DR",
        value=value,
        lower=value - z * se,
        upper=value + z * se,
        se=se,
        n=1000,
        n_rows=3000,
        ess=2000.0,
        max_weight=3.0,
        warnings=tuple(warnings),
    )


def test_the_rule_is_the_best_simultaneous_lower_bound_not_the_best_point():
    """A has the best point estimate but a wide interval; B's lower bound is best; C's would be
    better still but its diagnostics warn. Intervals are re-derived at 1 - 0.05 / 3 from the
    standard errors (closed form), and only the chosen setting passes the gate."""
    logging = _estimate(0.30, 0.001)
    cands = [
        PolicyEvaluation("p:x=a", {"DR": _estimate(0.50, 0.10)}, True, ""),
        PolicyEvaluation("p:x=b", {"DR": _estimate(0.40, 0.01)}, True, ""),
        PolicyEvaluation("p:x=c", {"DR": _estimate(0.45, 0.001, ["DR: effective sample size 3"])}, True, ""),
    ]
    t = choose(cands, ["p:x=a", "p:x=b", "p:x=c"], ["p:x=a|b|c"], "DR", logging, 0.95, verdict)
    assert t.chosen == "p:x=b" and t.level == pytest.approx(1 - 0.05 / 3)
    z = norm.ppf(1 - 0.05 / 6)
    assert t.estimate.lower == pytest.approx(0.40 - z * 0.01, rel=1e-12)
    assert t.safe and cands[1].safe and not cands[0].safe and not cands[2].safe
    assert "below the chosen" in cands[0].reason and "diagnostics warn" in cands[2].reason
    # nothing eligible: no choice, nothing safe
    warned = [PolicyEvaluation("q", {"DR": _estimate(0.5, 0.01, ["warn"])}, True, "")]
    none = choose(warned, ["q"], ["q"], "DR", logging, 0.95, verdict)
    assert none.chosen is None and not none.safe and not warned[0].safe


def test_near_ties_go_to_the_first_setting_in_grid_order():
    logging = _estimate(0.1, 0.001)
    a, b = _estimate(0.4, 0.01), _estimate(0.4 + 1e-15, 0.01)
    cands = [PolicyEvaluation("p:x=1", {"DR": a}, False, ""), PolicyEvaluation("p:x=2", {"DR": b}, False, "")]
    assert choose(cands, ["p:x=1", "p:x=2"], ["p:x=1|2"], "DR", logging, 0.95, verdict).chosen == "p:x=1"


def test_at_level_keeps_the_point_and_widens_by_the_normal_quantile():
    e = _estimate(0.3, 0.02)
    w = at_level(e, simultaneous_level(0.95, 4))
    assert w.value == e.value and w.se == e.se and w.level == pytest.approx(0.9875)
    assert (w.upper - w.lower) / (e.upper - e.lower) == pytest.approx(norm.ppf(1 - 0.0125 / 2) / norm.ppf(0.975))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    db = tmp_path_factory.mktemp("tune") / "log.db"
    log = DecisionLog(db)
    shop, engine, served = _run(
        7, SMALL, "uniform", log, n_decisions=N_DEC, n_slots=N_SLOTS, n_candidates=N_CAND, batch=300, via="engine"
    )
    log.close()
    return db, shop, served


def true_values(db, shop, served, specs) -> dict[str, float]:
    """Each setting trained as evaluate trains it, then its exact expected clicks per decision
    on the evaluated decisions, from the shop's click model and the setting's marginals."""
    log = DecisionLog(db)
    try:
        full = log.decisions()
    finally:
        log.close()
    backend = SQLiteBackend(db)
    features = backend.features
    backend.close()
    half = full.n_decisions // 2
    train, test = full.take(0, half), full.take(half, full.n_decisions)
    env = candidate_env(test.context.shape[1], features, train, len(features))
    out = {}
    for spec in specs:
        policy = candidate_policy(spec, env, train, features)
        values = []
        target_pscore(
            policy,
            test,
            features,
            on_decision=lambda d, items, marg: values.append(
                shop.model.expected_reward_of_distribution(served.customer[half + d], items, marg)
            ),
        )
        out[spec] = float(np.mean(values))
    return out


def test_tune_chooses_the_setting_the_truth_prefers(logged, tmp_path):
    """Two settings of LinUCB learned from the first half of a uniformly logged run (exploration
    1.0, i.e. uniform, and 0.1); the simulator's exact values differ by more than 3 standard errors,
    --tune picks the better one, its simultaneous interval covers its true value, and its DR
    lower bound beats the logging policy: it passes the gate."""
    db, shop, served = logged
    res = evaluate_log(str(db), [], tune=(GRID,), out=tmp_path)
    settings = expand_grid(GRID)
    truth = true_values(db, shop, served, settings)
    best = max(settings, key=truth.get)
    by = {c.spec: c for c in res.candidates}
    se = max(by[s].estimates["DR"].se for s in settings)
    assert abs(truth[settings[0]] - truth[settings[1]]) > 3 * se, (truth, se)
    t = res.tuning
    assert t.chosen == best == settings[1]
    assert t.level == pytest.approx(1 - 0.05 / 2) and t.estimate.level == pytest.approx(t.level)
    assert t.estimate.lower <= truth[best] <= t.estimate.upper, (t.estimate, truth[best])
    assert t.safe and by[best].safe and not by[settings[0]].safe
    assert t.safe == (t.estimate.lower > res.logging.value)
    # the table, the JSON and the report say so
    assert f"tuning chose {best}" in res.table()
    doc = json.loads((tmp_path / "evaluate.json").read_text())
    assert doc["tuning"]["chosen"] == best and doc["tuning"]["safe_to_deploy"] is True
    assert doc["tuning"]["estimate"]["level"] == pytest.approx(0.975)
    assert "## Tuning" in (tmp_path / "evaluate.md").read_text()


def test_cli_tune_and_its_errors(logged, tmp_path):
    db, *_ = logged
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "evaluate",
            "--db",
            str(db),
            "--tune",
            "popularity:epsilon=0.1|0.5",
            "--json",
            "--estimator",
            "IPS",
            "--out",
            str(tmp_path),
        ],
    )
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["tuning"]["settings"] == ["popularity:epsilon=0.1", "popularity:epsilon=0.5"]
    assert doc["tuning"]["chosen"] in doc["tuning"]["settings"]
    # --reward-model reaches the DM family: another model, another DR, the same IPS
    by_model = {}
    for model in ("ridge", "logistic"):
        res = runner.invoke(
            main,
            [
                "evaluate",
                "--db",
                str(db),
                "--policy",
                "uniform",
                "--reward-model",
                model,
                "--json",
                "--out",
                str(tmp_path),
            ],
        )
        assert res.exit_code == 0, res.output
        by_model[model] = json.loads(res.output)
        assert by_model[model]["reward_model"] == model
    ests = [by_model[m]["candidates"][0]["estimates"] for m in ("ridge", "logistic")]
    assert ests[0]["IPS"] == ests[1]["IPS"] and ests[0]["DR"]["value"] != ests[1]["DR"]["value"]
    for args, match in [
        (["--policy", "uniform", "--reward-model", "forest"], "Invalid value for '--reward-model'"),
        ([], "give at least one --policy or --tune grid"),
        (["--tune", "popularity:epsilon=0.1|"], "empty alternative"),
        (["--tune", "popularity:nosuch=1|2"], "policy popularity has no parameter nosuch"),
        (["--tune", "uniform", "--policy", "uniform"], "'uniform' is both a --policy and a --tune setting"),
    ]:
        out = runner.invoke(main, ["evaluate", "--db", str(db), "--out", str(tmp_path), *args])
        assert out.exit_code == 2 and match in out.output and "Traceback" not in out.output, out.output
