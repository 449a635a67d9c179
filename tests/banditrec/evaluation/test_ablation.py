"""The candidate-source ablation: the log's account sums to the log, and the off-policy part
equals a closed form for the uniform policy and the library's IPS estimator."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.evaluation.ablation import ablation_log
from banditrec.ope.estimators import IPS
from banditrec.shop import Shop, engine_for_shop
from banditrec.store import DecisionLog


@pytest.fixture(scope="module")
def served(sim_shop_dir, tmp_path_factory):
    """A log of 400 decisions served from the simulated shop by an exploring policy, each slot
    rewarded at random (more often at the first slot), a few decisions with request candidates."""
    shop = Shop(sim_shop_dir)
    path = tmp_path_factory.mktemp("ablation") / "log.db"
    log = DecisionLog(path)
    engine = engine_for_shop(shop, "egreedy:epsilon=0.3", log, seed=5, n_candidates=20)
    rng = np.random.default_rng(7)
    users = list(shop.parts().user_index)[:80]
    for k in range(400):
        if k % 50 == 49:  # the request brings its candidates: no sources logged
            d = engine.decide(users[k % len(users)], 3, candidates=list(shop.items.ids[:5]))
        else:
            d = engine.decide(users[k % len(users)], 3)
        for s in d.slots:
            if rng.random() < (0.3 if s.position == 0 else 0.1):
                engine.reward(d.event_id, 1.0, position=s.position)
    log.close()
    return shop, path


def test_the_account_sums_to_the_log(served):
    shop, path = served
    result = ablation_log(path, shop=shop, policy="uniform", estimator="IPS")
    with sqlite3.connect(path) as db:
        shown = db.execute("SELECT count(*) FROM slots WHERE source != 'pinned'").fetchone()[0]
        reward = db.execute("SELECT coalesce(sum(reward), 0) FROM rewards WHERE kind = 'click'").fetchone()[0]
        per_source = dict(
            db.execute("SELECT s.source, count(*) FROM slots s WHERE s.source != 'pinned' GROUP BY s.source").fetchall()
        )
        proposed: dict[str, int] = {}
        for cands, sources in db.execute("SELECT candidates, candidate_sources FROM decisions"):
            for name in json.loads(sources) if sources else ["request"] * len(json.loads(cands)):
                proposed[name] = proposed.get(name, 0) + 1
    assert result.totals == {"candidates": sum(proposed.values()), "shown": shown, "reward": pytest.approx(reward)}
    assert sum(a.shown for a in result.account) == shown
    assert sum(a.reward for a in result.account) == pytest.approx(reward)
    assert {a.source: a.shown for a in result.account if a.shown} == per_source
    assert {a.source: a.candidates for a in result.account} == proposed
    assert len(per_source) >= 2  # the generator's sources, and the request's


def _uniform_terms(path):
    """Uniform over the candidates left: every item's marginal at every slot is 1 / (how many
    are left). Returns the log and ``terms(without)``: each evaluated decision's IPS term
    (summed weighted rewards), computed row by row from SQL."""
    log = DecisionLog(path)
    logged = log.decisions()
    with sqlite3.connect(path) as db:
        srcs = dict(db.execute("SELECT seq, candidate_sources FROM decisions").fetchall())
    log.close()
    D = logged.n_decisions
    test = [d for d in range(D // 2, D) if srcs[int(logged.seq[d])] is not None]

    def terms(without):
        out = []
        for d in test:
            sources = np.asarray(json.loads(srcs[int(logged.seq[d])]), dtype=object)
            left = logged.candidates[d][sources != without]
            k = min(3, len(left))
            total = 0.0
            for r in np.flatnonzero(logged.row_decision == d).tolist():
                if logged.row_action[r] in left and logged.row_slot[r] < k:
                    total += logged.row_reward[r] / len(left) / logged.row_pscore[r]
            out.append(total)
        return np.array(out)

    return logged, test, terms


def test_the_uniform_policy_without_a_source_has_a_closed_form(served):
    """IPS without source s is the mean of the hand-computed terms."""
    shop, path = served
    result = ablation_log(path, shop=shop, policy="uniform", estimator="IPS", train_frac=0.5)
    logged, test, terms = _uniform_terms(path)
    D = logged.n_decisions
    for row in result.ablation:
        assert row.value_without == pytest.approx(terms(row.source).mean(), rel=1e-9)
    # with every source, the library's IPS on the same rows and target
    rows = np.isin(logged.row_decision, test)
    data = logged.take(0, D).logged_bandit(shop.n_items, 3)
    n_cands = np.array([len(c) for c in logged.candidates])
    target = np.where(rows, 1.0 / n_cands[logged.row_decision], 0.0)
    sub = type(data)(
        reward=data.reward[rows],
        action=data.action[rows],
        slot=data.slot[rows],
        pscore=data.pscore[rows],
        n_actions=data.n_actions,
        n_slots=3,
        decision=np.unique(data.decision[rows], return_inverse=True)[1],
    )
    assert result.value_all == pytest.approx(IPS().estimate(sub, target_pscore=target[rows]).value, rel=1e-9)


def test_the_change_and_its_interval_are_paired_by_decision(served):
    """The change is the difference of the two estimates, and its interval the normal one of
    the per-decision differences (narrower than the two intervals apart when they move together)."""
    shop, path = served
    result = ablation_log(path, shop=shop, policy="uniform", estimator="IPS", train_frac=0.5)
    _, _, terms = _uniform_terms(path)
    every = terms(None)
    for row in result.ablation:
        diff = terms(row.source) - every
        half = 1.959963984540054 * diff.std(ddof=1) / np.sqrt(len(diff))
        assert row.delta == pytest.approx(diff.mean(), abs=1e-12)
        assert row.delta_ci == pytest.approx((diff.mean() - half, diff.mean() + half), abs=1e-12)


def test_the_command_prints_both_tables_and_refuses_a_missing_log(served, tmp_path):
    shop, path = served
    out = CliRunner().invoke(
        main, ["ablation", "--db", str(path), "--shop", str(shop.directory), "--policy", "uniform"]
    )
    assert out.exit_code == 0, out.output
    assert "The log's account" in out.output and "Off-policy ablation" in out.output and "| **total** |" in out.output
    bad = CliRunner().invoke(main, ["ablation", "--db", str(tmp_path / "none.db")])
    assert bad.exit_code != 0 and "no such decision log" in bad.output and "Traceback" not in bad.output
