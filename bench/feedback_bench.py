"""The per-decision cost of the block list and hides (docs/feedback.md), on a WAL log file that a
second connection writes to, beside the bare SQLite statements they run.

Run: ``PYTHONPATH=. python bench/feedback_bench.py``. Rows:

- ``PRAGMA data_version`` alone (bare sqlite3): the floor of the block list's check;
- ``blocked_ids()`` while the list is unchanged: that pragma plus the lock and the cache;
- ``blocked_ids()`` after another connection committed a decision (data_version moved, the
  generation did not): one more indexed read of ``log_meta``;
- reading the whole block list per request (what the cache avoids), for 1,000 blocked items;
- ``hide_expiry`` for a user who never hid anything (the common case), and ``Suppressor`` for
  a user with 5 unexpired hides (one of them of scope type) over a 10,000-item catalog;
- ``Engine.decide`` of 10 slots over 200 request candidates, logged: what the checks add to.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, rng, table, us  # noqa: E402

from banditrec.candidates import ItemItemCF  # noqa: E402
from banditrec.engine import Engine, ItemTable  # noqa: E402
from banditrec.policies import make  # noqa: E402
from banditrec.store import DecisionLog  # noqa: E402
from banditrec.suppression import Suppressor  # noqa: E402

N_ITEMS, N_BLOCKED, N_CAND, N_SLOTS = 10_000, 1_000, 200, 10


def main() -> None:
    gen = rng(90)
    with tempfile.TemporaryDirectory(prefix="banditrec-bench-feedback-") as tmp:
        path = str(Path(tmp) / "log.db")
        log, other = DecisionLog(path), DecisionLog(path)
        ids = tuple(f"i{j}" for j in range(N_ITEMS))
        items = ItemTable(ids=ids, features=gen.normal(size=(N_ITEMS, 8)), types=gen.integers(0, 200, N_ITEMS))
        other.block([f"i{j}" for j in gen.choice(N_ITEMS, N_BLOCKED, replace=False)], reason="bench", actor="bench")
        now = time.time()
        for k, j in enumerate(gen.choice(N_ITEMS, 5, replace=False)):
            log.write_hide("hider", f"i{j}", scope="type" if k == 0 else "item", ts=now, ttl_s=3600)
        log.write_events([f"u{k}" for k in range(1000)], ["i1"] * 1000, ["view"] * 1000, [now] * 1000)
        bare = sqlite3.connect(path)
        suppress = Suppressor()
        clock = time.time

        def moved():  # another process committed something: data_version moves
            other.write_event("x", "i1", "view", ts=now)
            return log.blocked_ids()

        cases = {
            "bare PRAGMA data_version": lambda: bare.execute("PRAGMA data_version").fetchone(),
            "blocked_ids(), unchanged": log.blocked_ids,
            "bare SELECT item_id FROM blocklist (1,000 rows)": lambda: bare.execute(
                "SELECT item_id FROM blocklist"
            ).fetchall(),
            "hide_expiry(), a user without hides": lambda: log.hide_expiry("u7"),
            "Suppressor, a user without hides": lambda: suppress(log, items, "u7", clock),
            "Suppressor, a user with 5 hides": lambda: suppress(log, items, "hider", clock),
        }
        timings = compare(cases, repeats=2000, number=20)
        after = compare({"a commit elsewhere, then blocked_ids()": moved}, repeats=300)
        write = compare(
            {"the commit elsewhere alone": lambda: other.write_event("x", "i1", "view", ts=now)}, repeats=300
        )

        cf = ItemItemCF(n_neighbors=20).fit(sp.random(500, N_ITEMS, density=0.002, format="csr", random_state=1))
        engine = Engine(
            items=items,
            policy=make("linucb:alpha=1.0,epsilon=0.1", context_dim=8, item_dim=8),
            log=log,
            candidate_generator=cf,
            user_items=sp.csr_matrix((1, N_ITEMS)),
            user_index={"u0": 0},
            context_dim=8,
            seed=1,
        )
        cands = [f"i{j}" for j in gen.choice(N_ITEMS, N_CAND, replace=False)]
        ctx = gen.normal(size=8)
        decide = compare(
            {"Engine.decide, 10 of 200, logged": lambda: engine.decide("u7", N_SLOTS, context=ctx, candidates=cands)},
            repeats=300,
        )
        rows = [[name, us(t.p50), us(t.p99)] for name, t in timings.items()]
        rows.append(
            [
                "a commit elsewhere, then blocked_ids() (minus the commit)",
                us(after["a commit elsewhere, then blocked_ids()"].p50 - write["the commit elsewhere alone"].p50),
                "",
            ]
        )
        rows += [[name, us(t.p50), us(t.p99)] for name, t in decide.items()]
        table(
            "block list and hides per decision",
            f"{N_ITEMS:,} items, {N_BLOCKED:,} blocked, WAL log file, python {sys.version.split()[0]}, "
            f"sqlite {sqlite3.sqlite_version}",
            ["case", "p50 us", "p99 us"],
            rows,
        )
        bare.close()
        log.close()
        other.close()


if __name__ == "__main__":
    main()
