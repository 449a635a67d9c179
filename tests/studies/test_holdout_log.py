"""studies/holdout_log.py: the live log with arms that docs/abtest.md analyses."""

from __future__ import annotations

import math

from banditrec.apprentice import Arms
from banditrec.evaluation.abtest_log import Shares, analyse_log
from banditrec.store import DecisionLog
from studies.holdout_log import run_holdout_log
from tests.helpers import SMALL


def test_a_small_holdout_log_has_its_arms_from_the_arms_day_and_is_analysed(tmp_path):
    arms = Arms(holdout=0.3, control=0.3, salt="t")
    truth = run_holdout_log(tmp_path, days=3, arms_day=1, requests_per_day=200, arms=arms, config=SMALL, seed=1)
    assert set(truth) == {"main", "holdout", "control"} and all(math.isfinite(v) for v in truth.values())
    log = DecisionLog(tmp_path / "log.db")
    try:
        first = log.db.execute("SELECT min(ts) FROM decisions WHERE arm != 'main'").fetchone()[0]
        assert first >= 86_400.0  # none before the arms day
        result = analyse_log(log, pre_days=1, shares=Shares(0.3, 0.3, "t"), n_boot=0)
    finally:
        log.close()
    assert result.mismatched == 0 and result.srm is not None
    assert result.users["holdout"] > 0 and result.users["control"] > 0
