"""`make bench`'s sections still run against the code they measure: each checks, before timing,
that its bare-numpy reference computes what the policy or the log does (issue 20's joint
features broke those references once without any test noticing). Quick sizes; nothing timed is
asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT_DIR

BENCH = ROOT_DIR / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("section", ["decide", "logread", "marginals", "choices"])
def test_a_bench_section_runs_at_quick_sizes(section):
    res = subprocess.run(
        [sys.executable, "run.py", "--quick", "--only", section], cwd=BENCH, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"== {section}" in res.stdout
