"""Compaction of log shards (``banditrec compact``) beside its peer, the day-partitioned export
of one log holding the same decisions (``banditrec export --partition-by day``).

``decisions`` synthetic decisions (3 slots, 20 candidates, context of 8) over 3 days, round
robin over ``shards`` shard logs; a click on 30% of the slots, each posted to a random node (so
most are routed). The same decisions and clicks go to one unsharded log. Timed: compacting every
shard (first run), the rerun with nothing new, ``--max-decisions`` runs of a tenth, and
exporting the single log. The two datasets are checked to hold the same slot rows and rewards.

    python bench/compaction_bench.py [--decisions 150000] [--shards 3] [--keep DIR]

``--keep DIR`` writes the logs there and keeps them (to time ``banditrec compact`` on them).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditrec.store import DecisionLog, DecisionRecord  # noqa: E402
from banditrec.store.compaction import compact  # noqa: E402
from banditrec.store.partitioned import export_partitioned, open_dataset, read_partition  # noqa: E402
from banditrec.types import Decision, Reward, Slot  # noqa: E402

DAY = 86_400.0
SLOTS, CANDIDATES, WIDTH, BATCH = 3, 20, 8, 5_000


def write(root: Path, n: int, n_shards: int, seed: int = 0) -> tuple[list[Path], Path]:
    rng = np.random.default_rng(seed)
    shards = [DecisionLog(root / f"shard{k}.db", shard=k) for k in range(n_shards)]
    single = DecisionLog(root / "single.db")
    ids = [f"i{j}" for j in range(200)]
    for a in range(0, n, BATCH):
        batch = [[] for _ in shards]
        every, rewards, routed = [], [], [[] for _ in shards]
        for i in range(a, min(n, a + BATCH)):
            k = i % n_shards
            ts = 40 * DAY + i * 3 * DAY / n
            event = f"{int(ts * 1000):012x}{k:04x}{i:016x}"
            cands = rng.choice(200, CANDIDATES, replace=False)
            shown = cands[:SLOTS]
            p = 1.0 / CANDIDATES
            slots = tuple(Slot(s, ids[j], p, p * SLOTS) for s, j in enumerate(shown.tolist()))
            d = Decision(
                event,
                f"u{i % 997}",
                slots,
                p**SLOTS,
                SLOTS * math.log(p),
                "uniform",
                "v0",
                tuple(ids[j] for j in cands),
                ts,
            )
            rec = DecisionRecord(d, {}, cands, shown, rng.normal(size=WIDTH).tolist())
            batch[k].append(rec)
            every.append(rec)
            for s in range(SLOTS):
                if rng.random() < 0.3:
                    r = Reward(event, 1.0, position=s, ts=ts + 5.0)
                    rewards.append(r)
                    routed[int(rng.integers(n_shards))].append(r)
        for log, recs in zip(shards, batch):
            log.write_decisions(recs)
        single.write_decisions(every, rewards=rewards)
        for log, rs in zip(shards, routed):
            log.record_rewards(rs)
    for log in (*shards, single):
        log.close()
    return [root / f"shard{k}.db" for k in range(n_shards)], root / "single.db"


def slot_rewards(root: Path) -> dict:
    out = {}
    for p in open_dataset(root).partitions:
        t = read_partition(p, ["event_id", "position", "reward:click"])
        out.update(
            zip(
                zip(t.column("event_id").to_pylist(), t.column("position").to_pylist()),
                t.column("reward:click").to_pylist(),
            )
        )
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=150_000)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--keep", default=None, help="write the logs and datasets here, and keep them")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        (shards, single), t_write = timed(lambda: write(root, args.decisions, args.shards))
        end = 50 * DAY
        first, t_first = timed(lambda: compact(shards, root / "ds", reward_window_s=600, now=end))
        again, t_again = timed(lambda: compact(shards, root / "ds", reward_window_s=600, now=end))
        steps, t_steps = 0, 0.0
        while True:
            r, t = timed(
                lambda: compact(
                    shards,
                    root / "ds10",
                    reward_window_s=600,
                    now=end,
                    max_decisions=args.decisions // 10 // args.shards + 1,
                )
            )
            t_steps += t
            if not r.decisions:
                break
            steps += 1
        log = DecisionLog(single)
        try:
            ds, t_export = timed(lambda: export_partitioned(log, root / "export"))
        finally:
            log.close()
        assert slot_rewards(root / "ds") == slot_rewards(root / "export") == slot_rewards(root / "ds10")
        rows = first.rows
        print(
            f"{args.decisions:,} decisions ({rows:,} slot rows) over {args.shards} shards, {first.rewards:,} clicks "
            f"({first.routed:,} routed); written in {t_write:.1f} s"
        )
        print(f"{'step':<44}{'wall s':>8}{'rows/s':>12}{'vs export':>11}")
        for name, t in (
            (f"compact, first run ({len(first.parts)} parts)", t_first),
            ("compact, rerun with nothing new", t_again),
            (f"compact, {steps} runs of --max-decisions ~1/10", t_steps),
            ("export --partition-by day of one log (peer)", t_export),
        ):
            print(f"{name:<44}{t:>8.2f}{rows / t if t > 0.5 else float('nan'):>12,.0f}{t / t_export:>10.2f}x")
        assert again.decisions == 0 and ds.n_rows == rows


if __name__ == "__main__":
    main()
