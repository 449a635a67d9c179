"""Scale-out on Dask: estimators as reductions over partitions, the day-partitioned export,
``evaluate --parquet`` and simulation sweeps, on a 2-worker LocalCluster started here.

Every distributed figure is checked against an in-process one computed another way: the
plain estimator on the whole log, a closed form, ``evaluate --db`` on the same log, or a
simulator run called directly.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from banditrec.cli import main as cli
from banditrec.errors import BanditRecError, ValidationError
from banditrec.evaluation import estimate_files, evaluate_log, evaluate_parquet
from banditrec.ope.estimators import DR, ESTIMATORS, IPS, SNIPS, Moments, OPEWarning, Replay
from banditrec.store import DecisionLog
from banditrec.store.partitioned import (
    PartitionError,
    export_partitioned,
    open_dataset,
    partition_decisions,
    read_partition,
)
from banditrec.types import LoggedBandit, LoggedDecisions, Reward
from simulator import SimConfig
from studies.simulate import simulate
from studies.sweep import parse_config, run_one, run_sweep

TOL = 1e-9
MERGEABLE = [name for name, cls in ESTIMATORS.items() if cls.mergeable]
SMALL = SimConfig().replace(n_customers=300, n_items=150, n_types=15, history_days=3)
SPECS = ["popularity:epsilon=0.1", "linucb:alpha=1.0,epsilon=0.1"]


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 4-day simulated log (3 slots) and its day-partitioned export."""
    root = tmp_path_factory.mktemp("dasklog")
    simulate(SMALL, "uniform", 4, db=root / "log.db", seed=3, n_slots=3, n_candidates=10)
    log = DecisionLog(str(root / "log.db"))
    try:
        export_partitioned(log, root / "pq")
    finally:
        log.close()
    return root


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def same_estimate(a, b, tol: float = TOL) -> None:
    for f in ("value", "lower", "upper", "se", "ess", "max_weight"):
        assert close(getattr(a, f), getattr(b, f), tol), (a.estimator, f, getattr(a, f), getattr(b, f))
    assert (a.n, a.n_rows) == (b.n, b.n_rows)


def synthetic(rng, n_decisions: int, n_slots: int = 3, zero_reward: bool = False) -> dict:
    """Compact logged rows: decisions of 1..n_slots rows, rewards, propensities, target, q-hats."""
    sizes = rng.integers(1, n_slots + 1, size=n_decisions)
    decision = np.repeat(np.arange(n_decisions), sizes)
    slot = np.concatenate([np.arange(s) for s in sizes])
    n = len(decision)
    pscore = rng.uniform(0.05, 0.6, size=n)
    target = rng.uniform(0.0, 0.8, size=n)
    reward = np.zeros(n) if zero_reward else rng.binomial(1, 0.3, size=n).astype(float)
    q_logged = rng.uniform(0, 0.5, size=n)
    return {
        "decision": decision,
        "slot": slot,
        "reward": reward,
        "pscore": pscore,
        "target_pscore": target,
        "q_hat_logged": q_logged,
        "q_hat_target": q_logged + rng.normal(0, 0.05, size=n),
    }


def bandit(cols: dict) -> LoggedBandit:
    return LoggedBandit(
        reward=cols["reward"],
        action=np.zeros(len(cols["reward"]), dtype=np.int64),
        slot=cols["slot"],
        pscore=cols["pscore"],
        decision=cols["decision"],
        n_actions=1,
        n_slots=int(cols["slot"].max()) + 1,
    )


def whole(est, cols: dict, **kw):
    q = {"q_hat_logged": cols["q_hat_logged"], "q_hat_target": cols["q_hat_target"]} if est.needs_q else {}
    return est.estimate(bandit(cols), target_pscore=cols["target_pscore"], **q, **kw)


# ---- reductions: combined partial sums == the in-process estimate ----------------------------
@pytest.mark.parametrize("name", MERGEABLE)
def test_partials_combined_equal_the_whole_log_estimate(name):
    """3,000 decisions cut into 6 parts (one of them without rows): value, se, interval, ESS and
    max weight from combined moments equal the in-process estimate to 1e-9, overall and per slot."""
    rng = np.random.default_rng(11)
    cols = synthetic(rng, 3000)
    est = ESTIMATORS[name]()
    cuts = np.searchsorted(cols["decision"], [0, 400, 1100, 1100, 1900, 2600, 3000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        for slot in (None, 0, 2):
            parts = []
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                if lo == hi:
                    parts.append(est.partial(None, n_decisions=0))
                    continue
                sub = {k: v[lo:hi] for k, v in cols.items()}
                q = {"q_hat_logged": sub["q_hat_logged"], "q_hat_target": sub["q_hat_target"]} if est.needs_q else {}
                parts.append(est.partial(bandit(sub), target_pscore=sub["target_pscore"], slot=slot, **q))
            same_estimate(est.finish(Moments.total(parts[::-1])), whole(est, cols, slot=slot))


def test_moments_match_closed_forms():
    """IPS: mean of per-decision sums of w r and their standard deviation / sqrt(D); SNIPS: the
    ratio of means with the delta-method influence, written out by hand."""
    rng = np.random.default_rng(5)
    cols = synthetic(rng, 2000)
    w = cols["target_pscore"] / cols["pscore"]
    per = np.bincount(cols["decision"], weights=w * cols["reward"])
    D = len(per)
    ips = IPS().finish(Moments.total([IPS().partial(bandit(cols), target_pscore=cols["target_pscore"])]))
    assert close(ips.value, per.mean()) and close(ips.se, per.std(ddof=1) / np.sqrt(D))
    wd = np.bincount(cols["decision"], weights=w) * D / len(w)
    r = per.mean() / wd.mean()
    infl = (per - r * wd) / wd.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        sn = SNIPS().finish(SNIPS().partial(bandit(cols), target_pscore=cols["target_pscore"]))
    assert close(sn.value, r) and close(sn.se, infl.std(ddof=1) / np.sqrt(D))


def test_partial_refuses_what_cannot_be_reduced():
    rng = np.random.default_rng(0)
    data = bandit(synthetic(rng, 50))
    pi = np.full(data.n_rows, 0.3)
    with pytest.raises(ValidationError, match="needs the whole log"):
        Replay().partial(data, target_pscore=pi)
    with pytest.raises(ValidationError, match="reward model fitted on one partition"):
        DR().partial(data, target_pscore=pi)
    with pytest.raises(ValidationError, match="normal"):
        IPS(interval="bootstrap").partial(data, target_pscore=pi)
    with pytest.raises(ValidationError, match="every partition was empty"):
        Moments.total([None, None])


# ---- compact Parquet files on the cluster -------------------------------------------------------
def write_compact(tmp_path, rng) -> tuple[list, dict]:
    """Five files: ordinary ones, one with zero rows and one whose rewards are all 0."""
    parts = [synthetic(rng, 700), synthetic(rng, 500, zero_reward=True), synthetic(rng, 900)]
    offset, paths, allcols = 0, [], []
    for i, cols in enumerate(parts):
        cols = dict(cols, decision=cols["decision"] + offset)
        offset = int(cols["decision"].max()) + 1
        paths.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(pa.table(cols), paths[-1])
        allcols.append(cols)
    empty = {k: v[:0] for k, v in allcols[0].items()}
    paths.insert(1, tmp_path / "part-empty.parquet")
    pq.write_table(pa.table(empty), paths[1])
    return paths, {k: np.concatenate([c[k] for c in allcols]) for k in allcols[0]}


def test_files_on_the_cluster_equal_the_in_process_estimate(client, tmp_path):
    paths, cols = write_compact(tmp_path, np.random.default_rng(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        dist = estimate_files(paths, MERGEABLE, client=client)
        local = estimate_files(paths, MERGEABLE)
        for name in MERGEABLE:
            ref = whole(ESTIMATORS[name](), cols)
            same_estimate(dist[name], ref)
            same_estimate(local[name], ref)
        per_slot = estimate_files(paths, ["SNIPS"], client=client, slot=1)["SNIPS"]
        same_estimate(per_slot, whole(SNIPS(), cols, slot=1))


def test_all_zero_reward_partitions_give_zero(client, tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for i in range(3):
        cols = synthetic(rng, 200, zero_reward=True)
        cols["decision"] = cols["decision"] + 1000 * i
        paths.append(tmp_path / f"z{i}.parquet")
        pq.write_table(pa.table(cols), paths[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        out = estimate_files(paths, ["IPS", "SNIPS"], client=client)
    for e in out.values():
        assert e.value == 0.0 and e.se == 0.0 and e.lower == e.upper == 0.0 and e.n == 600


def test_missing_or_corrupt_file_names_it(client, tmp_path):
    paths, _ = write_compact(tmp_path, np.random.default_rng(4))
    gone = tmp_path / "gone.parquet"
    with pytest.raises(PartitionError, match="gone.parquet is missing"):
        estimate_files(paths + [gone], ["IPS"], client=client)
    paths[2].write_bytes(paths[2].read_bytes()[:200])  # truncated
    with pytest.raises(PartitionError, match=r"part-1\.parquet is not a readable Parquet file"):
        estimate_files(paths, ["IPS"], client=client)


# ---- the day-partitioned export -------------------------------------------------------------------
def test_partitions_hold_exactly_what_the_log_reads(make_log, sim):
    ds = open_dataset(sim / "pq")
    assert len(ds.partitions) == 4 and all(p.path.name == "part-0.parquet" for p in ds.partitions)
    log = make_log(str(sim / "log.db"))
    try:
        ref = log.decisions(kind="purchase")
    finally:
        log.close()
    got = LoggedDecisions.concat([partition_decisions(read_partition(p), kind="purchase") for p in ds.partitions])
    assert got.event_id == ref.event_id
    for f in (
        "seq",
        "context",
        "row_decision",
        "row_slot",
        "row_action",
        "row_pscore",
        "row_reward",
        "decision_reward",
        "row_propensity",
    ):
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    assert all(np.array_equal(a, b) for a, b in zip(got.candidates, ref.candidates))
    meta = pq.read_schema(ds.partitions[0].path).metadata
    assert meta[b"banditrec.schema_version"] == b"1" and meta[b"banditrec.day"] == ds.partitions[0].day.encode()


def _drop_last_day(src, dst) -> int:
    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    last = con.execute("SELECT max(CAST(ts / 86400.0 AS INTEGER)) FROM decisions").fetchone()[0]
    ids = "SELECT event_id FROM decisions WHERE CAST(ts / 86400.0 AS INTEGER) = ?"
    for table in ("rewards", "slots"):
        con.execute(f"DELETE FROM {table} WHERE event_id IN ({ids})", (last,))
    con.execute("DELETE FROM decisions WHERE CAST(ts / 86400.0 AS INTEGER) = ?", (last,))
    con.commit()
    con.close()
    return last


def test_appending_a_day_leaves_old_partitions_alone(make_log, sim, tmp_path):
    """Export a log without its last day, then the full log into the same directory: only the
    new day is written; old files keep inode, mtime and bytes. A late reward on day 1 then
    rewrites day 1 alone."""
    _drop_last_day(sim / "log.db", tmp_path / "short.db")
    out = tmp_path / "pq"
    short = make_log(str(tmp_path / "short.db"))
    first = export_partitioned(short, out)
    short.close()
    assert len(first.partitions) == 3
    before = {
        p.day: (os.stat(p.path).st_ino, os.stat(p.path).st_mtime_ns, p.path.read_bytes()) for p in first.partitions
    }
    shutil.copy(sim / "log.db", tmp_path / "full.db")
    full = make_log(str(tmp_path / "full.db"))
    try:
        second = export_partitioned(full, out)
        assert second.kept == sorted(before) and len(second.written) == 1 and len(second.partitions) == 4
        for p in second.partitions[:3]:
            st = os.stat(p.path)
            assert (st.st_ino, st.st_mtime_ns, p.path.read_bytes()) == before[p.day]
        day1 = second.partitions[0]
        event = read_partition(day1, ["event_id"]).column("event_id")[0].as_py()
        full.record_reward(Reward(event_id=event, value=1.0, position=0, kind="late-kind", ts=1e9))
        third = export_partitioned(full, out)
    finally:
        full.close()
    assert third.written == [day1.day] and len(third.kept) == 3
    assert os.stat(third.partitions[1].path).st_mtime_ns == before[third.partitions[1].day][1]


# ---- evaluate --parquet ---------------------------------------------------------------------------
def test_evaluate_parquet_on_the_cluster_equals_in_process_and_the_log(sim, client):
    dist = evaluate_parquet(sim / "pq", SPECS, client=client)
    local = evaluate_parquet(sim / "pq", SPECS)
    ref = evaluate_log(str(sim / "log.db"), SPECS)
    same_estimate(dist.logging, ref.logging)
    assert (dist.n_train, dist.n_eval, dist.n_rows) == (ref.n_train, ref.n_eval, ref.n_rows)
    assert dist.logging_policies == ref.logging_policies
    for d, loc, r in zip(dist.candidates, local.candidates, ref.candidates):
        assert (d.safe, d.reason) == (loc.safe, loc.reason) == (r.safe, r.reason)
        for name in d.estimates:
            same_estimate(d.estimates[name], loc.estimates[name])
            assert close(d.estimates[name].unsupported, r.estimates[name].unsupported)
            # the same folds (hashed sequence numbers) and the same fit: the numbers of evaluate --db
            same_estimate(d.estimates[name], r.estimates[name])


@pytest.mark.parametrize("model", ["logistic", "gbt"])
def test_both_backends_agree_on_dr_with_a_fitted_reward_model(sim, client, model):
    """A reward model whose fit is not a sum over rows is fitted on the driver from the gathered
    rows, by the code evaluate --db runs: DR and SNDR agree with evaluate --db, on the cluster."""
    spec = SPECS[1]
    ref = evaluate_log(str(sim / "log.db"), [spec], estimators=("DR", "SNDR"), reward_model=model)
    dist = evaluate_parquet(sim / "pq", [spec], estimators=("DR", "SNDR"), reward_model=model, client=client)
    ridge = evaluate_log(str(sim / "log.db"), [spec], estimators=("DR",), reward_model="ridge")
    assert dist.reward_model == ref.reward_model == model
    for name in ("DR", "SNDR"):
        same_estimate(dist.candidates[0].estimates[name], ref.candidates[0].estimates[name])
    # and the model mattered: not the ridge model's number
    assert abs(ref.candidates[0].estimates["DR"].value - ridge.candidates[0].estimates["DR"].value) > 1e-6


def test_evaluate_parquet_reward_model_equals_ridge_fit_on_the_rows(sim):
    """DR's reward model from per-partition Gram sums equals RidgeRewardModel.fit on the rows
    of the other folds (the folds by the documented rule: a hash of the decision's seq)."""
    from banditrec.evaluation.pipeline import sparse_target
    from banditrec.offline import target_pscore, train_from_log
    from banditrec.ope.reward_model import Folds, RidgeRewardModel, decision_folds
    from banditrec.policies import make
    from banditrec.store.partitioned import read_items

    spec = SPECS[1]
    got = evaluate_parquet(sim / "pq", [spec], estimators=("DR", "SNDR"), reward_model="ridge")
    ds = open_dataset(sim / "pq")
    parts = [partition_decisions(read_partition(p)) for p in ds.partitions]
    full = LoggedDecisions.concat(parts)
    n_train = int(round(0.5 * full.n_decisions))
    features = read_items(sim / "pq")
    train, test = full.take(0, n_train), full.take(n_train, full.n_decisions)
    fold = decision_folds(test.seq, 2, 0)[test.row_decision]
    data = test.logged_bandit(len(features), ds.n_slots, with_context=True)
    popularity = 1 + np.bincount(
        train.row_action, weights=(train.row_reward > 0).astype(float), minlength=len(features)
    )
    policy = make(
        spec,
        context_dim=test.context.shape[1],
        item_dim=features.shape[1],
        popularity=popularity,
        n_items=len(features),
    )
    train_from_log(policy, train, features)
    kept = []
    pi = target_pscore(policy, test, features, on_decision=lambda d, i, m: kept.append((i, m)))
    model = RidgeRewardModel()
    coefs = tuple(model.fit(data, np.flatnonzero(fold != f)) for f in range(2))
    assert 0.4 < fold.mean() < 0.6  # about balanced
    q_logged, q_target = model.predict_folds(Folds(fold, coefs), data, sparse_target(test, kept, len(features)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        for name in ("DR", "SNDR"):
            ref = ESTIMATORS[name](seed=0).estimate(
                data, target_pscore=pi, q_hat_logged=q_logged, q_hat_target=q_target
            )
            same_estimate(got.candidates[0].estimates[name], ref)


def test_cli_evaluate_parquet_and_clean_errors(sim, client, tmp_path):
    runner = CliRunner()
    pq_dir = tmp_path / "pq"
    shutil.copytree(sim / "pq", pq_dir)
    ok = runner.invoke(
        cli,
        [
            "evaluate",
            "--parquet",
            str(pq_dir),
            "--policy",
            SPECS[0],
            "--scheduler",
            client.scheduler.address,
            "--json",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    ref = evaluate_log(str(sim / "log.db"), [SPECS[0]])
    assert f"{ref.candidates[0].estimates['IPS'].value:.6f}"[:6] in ok.output
    victim = open_dataset(pq_dir).partitions[2].path
    victim.write_bytes(b"not parquet at all")
    bad = runner.invoke(
        cli, ["evaluate", "--parquet", str(pq_dir), "--policy", SPECS[0], "--scheduler", client.scheduler.address]
    )
    assert bad.exit_code == 2 and str(victim) in bad.output and "not a readable Parquet file" in bad.output
    assert "Traceback" not in bad.output
    victim.unlink()
    gone = runner.invoke(
        cli, ["evaluate", "--parquet", str(pq_dir), "--policy", SPECS[0], "--scheduler", client.scheduler.address]
    )
    assert gone.exit_code == 2 and f"{victim} (day" in gone.output and "missing" in gone.output
    both = runner.invoke(
        cli, ["evaluate", "--parquet", str(pq_dir), "--db", str(sim / "log.db"), "--policy", "uniform"]
    )
    assert both.exit_code == 2 and "exactly one of --db and --parquet" in both.output
    assert issubclass(PartitionError, BanditRecError)


# ---- sweeps -----------------------------------------------------------------------------------------
SWEEP = {
    "seed": 7,
    "replicates": 2,
    "days": 2,
    "slots": 3,
    "candidates": 10,
    "simulator": {"n_customers": 200, "n_items": 100, "n_types": 10, "history_days": 2},
    "policy": [{"name": "uniform"}, {"name": "popularity", "grid": {"epsilon": [0.05, 0.3]}}],
}


def test_sweep_identical_in_process_and_on_the_cluster(client):
    config = parse_config(SWEEP)
    assert [r.spec for r in config.runs[:3]] == ["uniform", "popularity:epsilon=0.05", "popularity:epsilon=0.3"]
    local = run_sweep(config)
    dist = run_sweep(config, client=client)
    assert [r.row() for r in local] == [r.row() for r in dist]
    # each run is the simulator called directly with its replicate's spawned stream
    stream = np.random.SeedSequence(7).spawn(2)[1]
    direct = simulate(config.simulator, "popularity:epsilon=0.3", 2, seed=stream, n_slots=3, n_candidates=10)
    last = local[-1]
    assert (last.spec, last.replicate) == ("popularity:epsilon=0.3", 1)
    assert last.ltv == direct.ltv and last.n_decisions == direct.n_decisions
    assert local[0].ltv != local[3].ltv  # replicates differ


def test_sweep_seed_streams_and_config_errors():
    crn = parse_config(SWEEP)
    own = parse_config(dict(SWEEP, common_random_numbers=False))
    assert crn.runs[0].seed.spawn_key == crn.runs[1].seed.spawn_key == (0,)
    assert len({r.seed.spawn_key for r in own.runs}) == len(own.runs) == 6
    a = run_one(own.runs[0], {"simulator": own.simulator, "days": 2, "slots": 3, "candidates": 10})
    b = run_one(crn.runs[0], {"simulator": crn.simulator, "days": 2, "slots": 3, "candidates": 10})
    assert a.row() == b.row()  # run 0 of both: stream (0,)
    with pytest.raises(ValidationError, match="unknown key 'replicate'"):
        parse_config(dict(SWEEP, replicate=3))
    with pytest.raises(ValidationError, match="grid.epsilon must be a non-empty list"):
        parse_config(dict(SWEEP, policy=[{"name": "popularity", "grid": {"epsilon": []}}]))
    with pytest.raises(ValidationError, match="unknown policy 'nope'"):
        parse_config(dict(SWEEP, policy=[{"name": "nope"}]))


def test_cli_sweep_on_the_cluster(client, tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        "seed = 1\nreplicates = 1\ndays = 1\nslots = 2\ncandidates = 8\n"
        "[simulator]\nn_customers = 150\nn_items = 80\nn_types = 10\nhistory_days = 1\n"
        '[[policy]]\nname = "uniform"\n[[policy]]\nname = "popularity"\ngrid = { epsilon = [0.1] }\n'
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["sweep", "--config", str(cfg), "--scheduler", client.scheduler.address, "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "popularity:epsilon=0.1" in res.output and (out / "sweep.png").exists()
    rows = (out / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("spec,replicate")
    bad = CliRunner().invoke(cli, ["sweep", "--config", str(tmp_path / "none.toml"), "--in-process"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_a_large_log_fits_its_reward_model_on_the_same_bounded_sample_everywhere(sim, client, monkeypatch):
    """Beyond MAX_MODEL_ROWS a logistic reward model is fitted on a hashed share of whole
    decisions: both backends, in process and on the cluster, fit the same sample (the same
    DR), and the sample mattered (not the full fit's DR)."""
    from banditrec.evaluation import pipeline

    spec = SPECS[1]
    full = evaluate_log(str(sim / "log.db"), [spec], estimators=("DR",), reward_model="logistic")
    monkeypatch.setattr(pipeline, "MAX_MODEL_ROWS", full.n_rows // 3)
    ref = evaluate_log(str(sim / "log.db"), [spec], estimators=("DR",), reward_model="logistic")
    dist = evaluate_parquet(sim / "pq", [spec], estimators=("DR",), reward_model="logistic", client=client)
    same_estimate(dist.candidates[0].estimates["DR"], ref.candidates[0].estimates["DR"])
    assert abs(ref.candidates[0].estimates["DR"].value - full.candidates[0].estimates["DR"].value) > 1e-9


def test_the_model_sample_is_a_share_of_decisions_that_grows_with_the_share():
    from banditrec.evaluation.pipeline import model_sample

    seq = np.arange(1, 200_001)
    small, large = model_sample(seq, 0.1, 0), model_sample(seq, 0.3, 0)
    assert abs(small.mean() - 0.1) < 0.005 and abs(large.mean() - 0.3) < 0.005  # 7 and 10 standard errors
    assert not (small & ~large).any()  # a larger share keeps every decision of a smaller one
    assert model_sample(seq, 1.0, 0).all()
    np.testing.assert_array_equal(model_sample(seq[::-1], 0.1, 0), small[::-1])  # by number, not position
