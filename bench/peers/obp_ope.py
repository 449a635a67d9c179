"""Time Open Bandit Pipeline's IPW, SNIPW and DR on arrays from an .npz (a peer for bench/run.py).

Runs INSIDE the peer virtualenv (``make bench-peers`` creates bench/.peers-venv with obp 0.5.7);
obp is never a dependency of banditrec. The .npz holds, in obp's own vocabulary:

    reward (n,), action (n,), position (n,), pscore (n,),
    action_dist (n, n_actions, len_list), estimated_rewards_by_reg_model (n, n_actions, len_list)

Each estimator's ``estimate_policy_value`` (which includes obp's input checks) is warmed up, then
timed ``--repeats`` times with bench/common.py's ``compare`` (interleaved rounds, gc off), the
same helper bench/run.py times banditrec with. Prints one JSON object on stdout:

    {"obp_version": ..., "numpy_version": ..., "python_version": ..., "n_rows": n,
     "estimators": {"IPW": {"value": v, "seconds_median": s, "seconds_all": [...]}, "SNIPW": ..., "DR": ...}}

Usage: bench/.peers-venv/bin/python bench/peers/obp_ope.py DATA.npz [--repeats 7] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for common.py
from common import compare  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    logging.disable(logging.INFO)  # matplotlib's font-cache notice on a first import
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # obp's imports of old APIs; not what is measured
        import obp
        from obp.ope import DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting

    with np.load(args.npz) as f:
        d = {k: f[k] for k in f.files}
    common = dict(
        reward=d["reward"], action=d["action"], position=d["position"], pscore=d["pscore"], action_dist=d["action_dist"]
    )
    q_hat = d["estimated_rewards_by_reg_model"]
    ipw, snipw, dr = InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(), DoublyRobust()
    cases = {
        "IPW": lambda: ipw.estimate_policy_value(**common),
        "SNIPW": lambda: snipw.estimate_policy_value(**common),
        "DR": lambda: dr.estimate_policy_value(**common, estimated_rewards_by_reg_model=q_hat),
    }
    values = {name: float(fn()) for name, fn in cases.items()}
    timings = compare(cases, repeats=args.repeats, warmup=args.warmup)
    out = {
        "obp_version": obp.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "n_rows": int(len(d["reward"])),
        "estimators": {
            name: {
                "value": values[name],
                "seconds_median": timings[name].p50 / 1e9,
                "seconds_all": [float(x) / 1e9 for x in timings[name].ns],
            }
            for name in cases
        },
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
