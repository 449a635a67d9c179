"""banditrec rollout: apprentice days, the gate, a forced switch, live days, on a tiny shop."""

from __future__ import annotations

import numpy as np

from banditrec.experiment import hash_unit
from banditrec.store import DecisionLog
from simulator import SimConfig
from studies.rollout import run_rollout


def test_the_rollout_serves_the_baseline_then_goes_live_when_forced(tmp_path):
    config = SimConfig(n_items=120, n_types=10, n_customers=500, history_days=10)
    result = run_rollout(
        apprentice_days=2,
        live_days=1,
        holdout=0.2,
        control=0.2,
        seed=3,
        force=True,
        out=tmp_path,
        config=config,
        echo=None,
    )
    assert result.went_live and [mode for _, mode, _ in result.daily] == ["apprentice", "apprentice", "live"]
    assert np.isfinite(result.true_lift) and np.isfinite(result.estimated_lift)
    log = DecisionLog(result.db)
    try:
        rows = log.db.execute("SELECT seq, user_id, arm, served FROM decisions ORDER BY seq").fetchall()
        switch = log.mode_history()
        assert [s["mode"] for s in switch] == ["live"] and switch[0]["gate"]["forced"] is True
        verdict = log.latest_verdict("linucb")
        assert verdict is not None and switch[0]["gate"]["verdict"]["seq"] == verdict["seq"]
        users = [r[1] for r in rows]
        u = hash_unit(users, "rollout-3")
        want = np.where(u < 0.2, "holdout", np.where(u < 0.4, "control", "main"))
        assert [r[2] for r in rows] == want.tolist()
        switched_at = switch[0]["ts"]
        ts = dict(log.db.execute("SELECT seq, ts FROM decisions").fetchall())
        for seq, _, arm, served in rows:
            if arm == "control" or ts[seq] < switched_at:
                assert served == "baseline"
            else:
                assert served == "policy"
        trained = log.decisions(training=True)
        holdout = {r[0] for r in rows if r[2] == "holdout"}
        assert holdout and not holdout & set(trained.seq.tolist())
    finally:
        log.close()
