"""bench section ``dask``: off-policy evaluation over a partitioned Parquet log and a simulation
sweep, in-process beside a 2-worker Dask ``LocalCluster`` (127.0.0.1, one thread per worker).

OPE: ``rows`` synthetic logged slots (5 per decision) in ``partitions`` compact Parquet files
(:data:`banditrec.evaluation.COMPACT_COLUMNS`), written directly with pyarrow, vectorised.
IPS, SNIPS and DR are estimated three ways, each in its own process so that its peak resident
memory (``VmHWM``) is its own:

  whole log      the embedded default: every file read into one LoggedBandit, estimate()
  partitions     estimate_files(client=None): one file at a time in this process, moments combined
  2 workers      estimate_files on the cluster; peak memory per worker (VmHWM of each worker
                 process, read with client.run), and the same before the job (idle worker)

Sweep: ``sweep_specs x sweep_replicates`` small simulator runs (studies.sweep), in-process vs
on the cluster; the two tables are checked identical. Cluster start-up is shown apart.

Sizes: ``FULL``/``QUICK`` in bench/run.py, or environment variables BANDITREC_BENCH_DASK_ROWS,
BANDITREC_BENCH_DASK_PARTITIONS, BANDITREC_BENCH_DASK_REPLICATES.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 5
ESTIMATORS = ("IPS", "SNIPS", "DR")
SWEEP_SPECS = [
    "uniform",
    "popularity:epsilon=0.05",
    "popularity:epsilon=0.2",
    "linucb:alpha=0.5,epsilon=0.1",
    "linucb:alpha=2.0,epsilon=0.1",
]


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_log(out: Path, rows: int, partitions: int, seed: int = 0) -> list[Path]:
    """``rows`` compact rows in ``partitions`` files; each file from its own spawned stream."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    per = max(SLOTS, rows // partitions // SLOTS * SLOTS)
    paths = []
    for p, ss in enumerate(np.random.SeedSequence(seed).spawn(partitions)):
        g = np.random.default_rng(ss)
        d = per // SLOTS
        decision = np.repeat(np.arange(p * d, (p + 1) * d, dtype=np.int64), SLOTS)
        slot = np.tile(np.arange(SLOTS, dtype=np.int64), d)
        pscore = g.uniform(0.02, 0.5, size=per)
        target = np.clip(pscore * g.lognormal(0.0, 0.5, size=per), 0.0, 1.0)
        q = g.uniform(0.0, 0.3, size=per) / (1 + slot)
        reward = (g.random(per) < q + 0.05 * (target > pscore)).astype(float)
        table = pa.table(
            {
                "decision": decision,
                "slot": slot,
                "reward": reward,
                "pscore": pscore,
                "target_pscore": target,
                "q_hat_logged": q,
                "q_hat_target": q * 1.1,
            }
        )
        paths.append(out / f"part-{p:04d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def case(kind: str, folder: str) -> dict:
    """One measurement, in this (child) process."""
    import warnings

    sys.path.insert(0, str(ROOT))
    from banditrec.ope.estimators import ESTIMATORS as REG
    from banditrec.ope.estimators import OPEWarning

    warnings.simplefilter("ignore", OPEWarning)
    paths = sorted(Path(folder).glob("part-*.parquet"))
    out: dict = {"kind": kind}
    if kind == "whole":
        import pyarrow.parquet as pq

        from banditrec.types import LoggedBandit

        t0 = time.perf_counter()
        tables = [pq.read_table(p) for p in paths]
        cols = {c: np.concatenate([t.column(c).to_numpy() for t in tables]) for c in tables[0].column_names}
        del tables
        data = LoggedBandit(
            reward=cols["reward"],
            action=np.zeros(len(cols["reward"]), dtype=np.int64),
            slot=cols["slot"],
            pscore=cols["pscore"],
            decision=cols["decision"],
            n_actions=1,
            n_slots=SLOTS,
        )
        values = {}
        for name in ESTIMATORS:
            est = REG[name]()
            kw = {"q_hat_logged": cols["q_hat_logged"], "q_hat_target": cols["q_hat_target"]} if est.needs_q else {}
            values[name] = est.estimate(data, target_pscore=cols["target_pscore"], **kw).value
        out.update(seconds=time.perf_counter() - t0, values=values, peak_mb=peak_mb())
    elif kind == "parts":
        from banditrec.evaluation import estimate_files

        t0 = time.perf_counter()
        est = estimate_files(paths, ESTIMATORS)
        out.update(seconds=time.perf_counter() - t0, values={k: e.value for k, e in est.items()}, peak_mb=peak_mb())
    elif kind == "cluster":
        from distributed import Client, LocalCluster

        from banditrec.evaluation import estimate_files

        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        )
        client = Client(cluster)
        out["startup_seconds"] = time.perf_counter() - t0
        client.run(lambda: __import__("banditrec.evaluation"))  # imports, as a warm worker would have
        out["idle_worker_mb"] = list(client.run(peak_mb).values())
        t0 = time.perf_counter()
        est = estimate_files(paths, ESTIMATORS, client=client)
        out.update(
            seconds=time.perf_counter() - t0,
            values={k: e.value for k, e in est.items()},
            worker_mb=list(client.run(peak_mb).values()),
            peak_mb=peak_mb(),
        )
        client.close()
        cluster.close()
    return out


def run_case(kind: str, folder: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, __file__, "--case", kind, str(folder)], capture_output=True, text=True, env=env, cwd=str(ROOT)
    )
    if res.returncode != 0:
        raise RuntimeError(f"dask bench case {kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def sweep_case(replicates: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from distributed import Client, LocalCluster

    from studies.sweep import parse_config, run_sweep

    config = parse_config(
        {
            "seed": 0,
            "replicates": replicates,
            "days": 5,
            "slots": 3,
            "candidates": 15,
            "simulator": {"n_customers": 1000, "n_items": 300, "n_types": 20, "history_days": 5},
            "policy": [
                {"name": s.split(":")[0], "params": dict(kv.split("=") for kv in s.split(":")[1].split(","))}
                if ":" in s
                else {"name": s}
                for s in SWEEP_SPECS
            ],
        }
    )
    t0 = time.perf_counter()
    local = run_sweep(config)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )
    client = Client(cluster)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = run_sweep(config, client=client)
    t_dist = time.perf_counter() - t0
    client.close()
    cluster.close()
    return {
        "runs": len(local),
        "local": t_local,
        "dist": t_dist,
        "startup": startup,
        "identical": [r.row() for r in local] == [r.row() for r in dist],
        "run_mean": float(np.mean([r.seconds for r in local])),
    }


def bench_dask(cfg: dict, tmp) -> None:
    from common import ratio, table

    c = dict(cfg["dask"])
    c["rows"] = int(os.environ.get("BANDITREC_BENCH_DASK_ROWS", c["rows"]))
    c["partitions"] = int(os.environ.get("BANDITREC_BENCH_DASK_PARTITIONS", c["partitions"]))
    c["replicates"] = int(os.environ.get("BANDITREC_BENCH_DASK_REPLICATES", c["replicates"]))
    folder = Path(tmp) / "log"
    t0 = time.perf_counter()
    paths = write_log(folder, c["rows"], c["partitions"])
    written = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in paths) / 2**20
    n_rows = c["rows"] // c["partitions"] // SLOTS * SLOTS * c["partitions"]
    part_mb = n_rows / c["partitions"] * 7 * 8 / 2**20  # seven 8-byte columns in memory
    whole, parts, clus = (run_case(k, folder) for k in ("whole", "parts", "cluster"))
    diff = max(abs(r["values"][e] - whole["values"][e]) for r in (parts, clus) for e in ESTIMATORS)
    wm = max(clus["worker_mb"])
    rows = [
        ["in-process, whole log", f"{whole['seconds']:.2f}", "1.00x", f"{whole['peak_mb']:,.0f}", "1.00x", "-"],
        [
            "in-process, partition at a time",
            f"{parts['seconds']:.2f}",
            ratio(parts["seconds"], whole["seconds"]),
            f"{parts['peak_mb']:,.0f}",
            ratio(parts["peak_mb"], whole["peak_mb"]),
            "-",
        ],
        [
            "2-worker LocalCluster (per worker)",
            f"{clus['seconds']:.2f}",
            ratio(clus["seconds"], whole["seconds"]),
            f"{wm:,.0f}",
            ratio(wm, whole["peak_mb"]),
            f"{max(clus['idle_worker_mb']):,.0f}",
        ],
    ]
    table(
        "dask: OPE over partitioned Parquet",
        f"IPS+SNIPS+DR over {n_rows:,} logged rows ({n_rows // SLOTS:,} decisions x {SLOTS} slots) in "
        f"{c['partitions']} Parquet files ({size_mb:,.0f} MB on disk, ~{part_mb:,.0f} MB per partition in memory; "
        f"written in {written:.1f} s).\nPeak = VmHWM of the process (cluster: of each worker; idle = a worker's "
        f"VmHWM after start-up and imports). Ratios vs the whole-log row. Cluster start-up "
        f"{clus['startup_seconds']:.1f} s, not included. Largest |value difference| vs the whole log: {diff:.1e}.",
        ["case", "wall s", "ratio", "peak MB", "ratio", "idle worker MB"],
        rows,
    )
    s = sweep_case(c["replicates"])
    table(
        "dask: simulation sweep",
        f"{s['runs']} simulator runs ({len(SWEEP_SPECS)} specs x {c['replicates']} replicates; 1,000 customers, "
        f"300 items, 5 days; {s['run_mean']:.2f} s per run alone). Tables identical: {s['identical']}. "
        f"Cluster start-up {s['startup']:.1f} s, not included.",
        ["case", "wall s", "ratio"],
        [
            ["in-process", f"{s['local']:.2f}", "1.00x"],
            ["2-worker LocalCluster", f"{s['dist']:.2f}", ratio(s["dist"], s["local"])],
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(case(sys.argv[2], sys.argv[3])))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bench_dask({"dask": {"rows": 10_000_000, "partitions": 20, "replicates": 8}}, tmp)
