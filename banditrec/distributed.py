"""Off-policy evaluation over partitioned Parquet logs, on Dask or in-process.

Every estimator that is a sum of per-decision terms (IPS, ClippedIPS, SNIPS, DM, DR, SNDR,
SwitchDR; any slot alone) reduces a partition to :class:`~banditrec.ope.estimators.Moments`
(:meth:`IPS.partial`); the driver combines the partitions' moments and :meth:`IPS.finish`
turns them into the estimate and its delta-method interval -- the code :meth:`IPS.estimate`
runs in-process on a whole log. A task returns a few numbers, never rows, so a worker's memory
is bounded by one partition, not by the log.

Two entry points:

- :func:`estimate_files`: Parquet files in the *compact* layout (:data:`COMPACT_COLUMNS`, one
  row per logged slot, the target's probability and the reward model's predictions already
  there): what a pipeline that scores the target elsewhere hands over; O(n) memory whatever the
  action set.
- :func:`evaluate_parquet`: ``banditrec evaluate --parquet DIR``: the day-partitioned export
  (:mod:`banditrec.store.partitioned`). As :func:`banditrec.evaluate.evaluate_log`: the
  candidates learn on the driver from the first ``train_frac`` of the decisions; the rest is
  evaluated in two passes over its partitions -- the reward model's fit (ridge: per-fold Gram
  matrices, a sum over rows; logistic and gbt: the evaluated rows gathered on the driver, the
  reward-model inputs only, and fitted there by the code ``evaluate --db`` runs), then each
  partition re-scores its decisions with every candidate (shipped as its ``.npz``/JSON snapshot
  bytes, not pickled) and returns moments.

``client=None`` runs the same task functions in this process, one partition after another;
with a ``distributed.Client`` they run as Dask tasks. The two give the same numbers up to the
order of floating-point sums (tests check 1e-9).

Cross-fitting folds hash each decision's log sequence number
(:func:`~banditrec.ope.reward_model.decision_folds`): stable when days are appended, and the
folds of ``evaluate --db``, so both backends give the same DM/DR numbers (up to the order of
floating-point sums).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import tuning
from .errors import ValidationError
from .evaluate import DEFAULT_ESTIMATORS, CandidateQ, Evaluation, PolicyEvaluation, _decisions, _sparse_target, \
    candidate_env, candidate_policy, check_request, item_features_or_one_hot, reward_model_for, row_folds, verdict, \
    write_report
from .ope.estimators import ESTIMATORS, IPS, Moments, OPEWarning
from .ope.reward_model import DEFAULT_REWARD_MODEL, Folds, make_reward_model
from .store.partitioned import Dataset, Partition, PartitionError, concat_decisions, open_dataset, \
    partition_decisions, read_items, read_partition
from .types import Estimate, LoggedBandit

COMPACT_COLUMNS = ("decision", "slot", "reward", "pscore", "target_pscore", "q_hat_logged", "q_hat_target")
"""Columns of a compact OPE file: ``decision`` (int, unique across files; a decision's rows in
one file), ``slot`` (int), ``reward``, ``pscore`` (logged marginal), ``target_pscore`` (the
target's probability of the logged item in its slot) and, for DM/DR, ``q_hat_logged`` and
``q_hat_target`` (``sum_a pi(a|x,k) q(x,a,k)``)."""


class MissingDaskError(ValidationError, ImportError):
    """Dask is an optional extra that is not installed."""


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDaskError("this needs Dask, which is not installed: pip install 'banditrec[dask]'",
                               "scheduler") from None
    return distributed


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                processes: bool = True):
    """A ``distributed.Client``: of the cluster at ``scheduler`` (``tcp://host:8786``), or of a
    ``LocalCluster`` on 127.0.0.1 sized to the machine (one single-threaded worker process per
    core) that is closed on exit."""
    distributed = _require_distributed()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ValidationError(f"cannot reach the Dask scheduler at {scheduler}: {exc}", "scheduler") from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = distributed.LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=threads_per_worker,
                                       processes=processes, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def run_tasks(fn, items: list, *, client=None, shared=None, progress: bool = False, desc: str = "tasks") -> list:
    """``[fn(item, shared) for item in items]``, in order: in-process without ``client``, else as
    Dask tasks (``shared`` sent to the workers once). ``progress`` shows a bar on stderr."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="part", leave=False)
    try:
        if client is None:
            out = []
            for item in items:
                out.append(fn(item, shared))
                if bar is not None:
                    bar.update(1)
            return out
        from distributed import as_completed

        # one object under a fresh key: a scattered dict would be stored under its own keys
        # ("estimators", ...), which another call's scatter overwrites
        shared_f = client.scatter([shared], broadcast=True, hash=False)[0] if shared is not None else None
        futures = client.map(fn, items, shared=shared_f, pure=False)
        for fut in as_completed(futures):
            if fut.status == "error":
                try:
                    fut.result()  # re-raises the task's exception here
                finally:
                    client.cancel([f for f in futures if f is not fut])
            if bar is not None:
                bar.update(1)
        return client.gather(futures)
    finally:
        if bar is not None:
            bar.close()


# ---- compact files ---------------------------------------------------------------------------
def _read_compact(path: str, columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(path)
    if not os.path.exists(path):
        raise PartitionError(f"partition file {path} is missing", "parquet")
    try:
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise PartitionError(f"partition file {path} lacks column(s) {', '.join(missing)}", "parquet")
        return pf.read(columns=columns)
    except PartitionError:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise PartitionError(f"partition file {path} is not a readable Parquet file: {exc}", "parquet") from None


def _compact_moments(path: str, shared: dict) -> dict[str, Moments | None]:
    """One compact file reduced to each estimator's moments (``None`` for a file without rows)."""
    estimators, slot = shared["estimators"], shared["slot"]
    cols = ["decision", "slot", "reward", "pscore", "target_pscore"]
    if any(e.needs_q for e in estimators):
        cols += ["q_hat_logged", "q_hat_target"]
    table = _read_compact(path, cols)
    if table.num_rows == 0:
        return {e.name: None for e in estimators}
    arr = {c: table.column(c).to_numpy() for c in cols}
    del table
    try:
        data = LoggedBandit(reward=arr["reward"], action=np.zeros(len(arr["reward"]), dtype=np.int64),
                            slot=arr["slot"], pscore=arr["pscore"], decision=arr["decision"], n_actions=1,
                            n_slots=int(arr["slot"].max()) + 1)
    except ValidationError as exc:
        raise type(exc)(f"partition file {path}: {exc}", exc.field) from None
    out = {}
    for est in estimators:
        kw = {"q_hat_logged": arr["q_hat_logged"], "q_hat_target": arr["q_hat_target"]} if est.needs_q else {}
        try:
            out[est.name] = est.partial(data, target_pscore=arr["target_pscore"], slot=slot, **kw)
        except ValidationError as exc:
            raise type(exc)(f"partition file {path}: {exc}", exc.field) from None
    return out


def estimate_files(paths, estimators=("IPS", "SNIPS", "DR"), *, client=None, slot: int | None = None,
                   level: float = 0.95, progress: bool = False) -> dict[str, Estimate]:
    """Estimates over compact Parquet files (:data:`COMPACT_COLUMNS`), one task per file.

    ``estimators``: names in :data:`~banditrec.ope.estimators.ESTIMATORS` or estimator objects.
    Warnings (:class:`OPEWarning`) are raised as for an in-process estimate.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValidationError("give at least one Parquet file", "parquet")
    objs = []
    for e in estimators:
        if isinstance(e, str):
            if e not in ESTIMATORS:
                raise ValidationError(f"unknown estimator {e!r}; known: {', '.join(sorted(ESTIMATORS))}", "estimator")
            e = ESTIMATORS[e](level=level)
        if not e.mergeable:
            raise ValidationError(f"{e.name} is not a sum of per-decision terms and cannot run on partitions",
                                  "estimator")
        objs.append(e)
    parts = run_tasks(_compact_moments, paths, client=client, shared={"estimators": objs, "slot": slot},
                      progress=progress, desc="estimating")
    return {e.name: e.finish(Moments.total(p[e.name] for p in parts)) for e in objs}


# ---- the day-partitioned export: banditrec evaluate --parquet ---------------------------------
def _snapshot_bytes(policy) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        policy.save(Path(tmp) / "policy")
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def _load_policy(files: dict[str, bytes], env: dict):
    from .policies import load

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load(Path(tmp) / "policy", **env)


@dataclass(frozen=True)
class _Part:
    partition: Partition
    first: int  # first decision of the partition that is evaluated (the rest trained the candidates)


def _test_data(part: _Part, shared: dict):
    table = read_partition(part.partition)
    logged = partition_decisions(table, kind=shared["kind"], default_reward=shared["default_reward"],
                                 first_decision=part.first)
    if len(logged.row_action) == 0:
        return logged, None, None, table
    if len(logged.row_action) and int(logged.row_action.max()) >= shared["n_items"]:
        raise PartitionError(f"partition file {part.partition.path} shows item index {int(logged.row_action.max())}, "
                             f"beyond the item table's {shared['n_items']} items", "parquet")
    data = logged.logged_bandit(shared["n_items"], shared["n_slots"], with_context=True)
    return logged, data, row_folds(logged, shared["n_folds"], shared["seed"]), table


def _fold_stats(part: _Part, shared: dict) -> dict:
    """Pass 1: what the reward model's fit needs -- per fold, ``X^T X`` and ``X^T y`` of a
    reducible model, else the rows' model inputs --; the (item, slot) pairs logged; the logging
    policies."""
    logged, data, fold, table = _test_data(part, shared)
    policies = set(table.column("policy").unique().to_pylist())
    if data is None:
        return {"grams": None, "rows": None, "seen": np.zeros((0, 2), dtype=np.int64), "policies": policies}
    model = shared["model"]
    grams = rows = None
    if model.reducible:
        grams = [model.gram(data, np.flatnonzero(fold == f)) for f in range(shared["n_folds"])]
    else:
        rows = {"reward": data.reward, "action": data.action, "slot": data.slot, "pscore": data.pscore,
                "decision": data.decision, "context": data.context, "fold": fold}
    seen = np.unique(np.column_stack([data.action, data.slot]), axis=0)
    return {"grams": grams, "rows": rows, "seen": seen, "policies": policies}


def _fit_on_driver(model, stats: list[dict], n_folds: int, n_items: int, n_slots: int) -> tuple:
    """The per-fold fitted models from pass 1: summed Gram matrices solved (reducible), or the
    gathered rows fitted by :meth:`RewardModel.fit_folds` as ``evaluate --db`` does."""
    if model.reducible:
        grams = [s["grams"] for s in stats if s["grams"] is not None]
        return tuple(model.solve(sum(part[h][0] for part in grams for h in range(n_folds) if h != f),
                                 sum(part[h][1] for part in grams for h in range(n_folds) if h != f))
                     for f in range(n_folds))
    parts = [s["rows"] for s in stats if s["rows"] is not None]
    offsets = np.cumsum([0] + [int(p["decision"].max()) + 1 for p in parts[:-1]])
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("reward", "action", "slot", "pscore", "fold")}
    data = LoggedBandit(reward=cat["reward"], action=cat["action"], slot=cat["slot"], pscore=cat["pscore"],
                        decision=np.concatenate([p["decision"] + o for p, o in zip(parts, offsets)]),
                        context=np.concatenate([p["context"] for p in parts]), n_actions=n_items, n_slots=n_slots)
    return model.fit_folds(data, n_folds=n_folds, fold=cat["fold"]).fitted


def _eval_moments(part: _Part, shared: dict) -> dict:
    """Pass 2: the logging policy's and every candidate's moments for each estimator."""
    from .offline import target_pscore

    logged, data, fold, _ = _test_data(part, shared)
    names, level, seed = shared["estimators"], shared["level"], shared["seed"]
    if data is None:
        zero = {n: Moments.zeros(1 + 2 * ESTIMATORS[n].n_ratios, logged.n_decisions,
                                 per_row=ESTIMATORS[n].row_normalised) for n in names}
        return {"logging": Moments.zeros(1, logged.n_decisions), "unsupported": 0.0,
                "candidates": [dict(zero) for _ in shared["policies"]]}
    seen = shared["seen"]
    out = {"logging": IPS(level=level).partial(data, target_pscore=data.pscore), "unsupported": [], "candidates": []}
    candidate_q = None
    if shared["fitted"] is not None:
        candidate_q = CandidateQ.of(shared["model"], Folds(fold, shared["fitted"]), data, logged)
    for files in shared["policies"]:
        policy = _load_policy(files, shared["env"])
        kept: list = []
        pi = target_pscore(policy, logged, shared["features"], on_decision=lambda d, i, m: kept.append((i, m)))
        target_rows = _sparse_target(logged, kept, shared["n_items"])
        q = {} if candidate_q is None else {"q_hat_logged": candidate_q.q_logged,
                                            "q_hat_target": candidate_q.target(target_rows)}
        slot_of_entry = np.repeat(logged.row_slot, np.diff(target_rows.indptr))
        out["unsupported"].append(float((target_rows.data * ~seen[target_rows.indices, slot_of_entry]).sum()))
        moments = {}
        for name in names:
            est = ESTIMATORS[name](level=level, seed=seed)
            moments[name] = est.partial(data, target_pscore=pi, **(q if est.needs_q else {}))
        out["candidates"].append(moments)
    return out




def evaluate_parquet(root, specs: list[str], *, estimators: tuple[str, ...] = DEFAULT_ESTIMATORS,
                     primary: str = "DR", kind: str = "click", default_reward: float = 0.0, train_frac: float = 0.5,
                     level: float = 0.95, seed: int | None = 0, client=None, out=None, progress: bool = False,
                     n_folds: int = 2, tune: tuple[str, ...] = (), reward_model: str | None = None) -> Evaluation:
    """``evaluate_log`` over the day-partitioned export at ``root`` (see the module docstring)."""
    estimators, all_specs, settings = check_request(
        estimators, primary, specs, tune, train_frac,
        refused_names=[name for name, cls in ESTIMATORS.items() if not cls.mergeable])
    model_name = DEFAULT_REWARD_MODEL if reward_model is None else reward_model
    make_reward_model(model_name)
    seed = 0 if seed is None else int(seed)
    root = Path(root)
    ds = open_dataset(root)
    total = ds.n_decisions
    if total < 4:
        raise ValidationError(f"the log at {root} has {total} decisions; evaluation needs at least 4", "parquet")
    table_features = read_items(root)
    features = item_features_or_one_hot(table_features, ds.max_item + 1)
    n_items, n_slots = len(features), ds.n_slots
    n_train = int(round(train_frac * total))
    train_parts, tasks, offset = [], [], 0
    for p in ds.partitions:
        if offset < n_train:
            logged = partition_decisions(read_partition(p), kind=kind, default_reward=default_reward)
            train_parts.append(_decisions(logged, 0, min(p.decisions, n_train - offset)))
        if offset + p.decisions > n_train:
            tasks.append(_Part(p, max(0, n_train - offset)))
        offset += p.decisions
    train = concat_decisions(train_parts) if train_parts else None
    uses_q = any(ESTIMATORS[name].needs_q for name in estimators)
    model = reward_model_for(model_name, features, bool(len(table_features)))
    shared = {"kind": kind, "default_reward": default_reward, "n_items": n_items, "n_slots": n_slots, "seed": seed,
              "n_folds": n_folds, "model": model}
    stats = run_tasks(_fold_stats, tasks, client=client, shared=shared, progress=progress, desc="reward model")
    if not any(s["grams"] is not None or s["rows"] is not None for s in stats):
        raise ValidationError(f"the evaluation period of {root} has no logged rows", "parquet")
    fitted = _fit_on_driver(model, stats, n_folds, n_items, n_slots) if uses_q else None
    seen = np.zeros((n_items, n_slots), dtype=bool)
    for s in stats:
        seen[s["seen"][:, 0], s["seen"][:, 1]] = True
    logging_policies = sorted(set().union(*(s["policies"] for s in stats)) | _train_policies(ds, tasks, n_train))
    context_dim = int(ds_context_width(ds, tasks))
    env = candidate_env(context_dim, features, train, n_items)
    snapshots = [_snapshot_bytes(candidate_policy(spec, env, train, features)) for spec in all_specs]
    shared.update(features=features, fitted=fitted, seen=seen, env=env, policies=snapshots,
                  estimators=tuple(estimators), level=level)
    parts = run_tasks(_eval_moments, tasks, client=client, shared=shared, progress=progress, desc="evaluating")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        logging = IPS(level=level).finish(Moments.total(p["logging"] for p in parts))
    n_eval_rows = logging.n_rows
    result = Evaluation(db=str(root), kind=kind, n_train=0 if train is None else train.n_decisions,
                        n_eval=logging.n, n_rows=n_eval_rows, primary=primary, logging=logging,
                        logging_policies=logging_policies, reward_model=model_name)
    for j, spec in enumerate(all_specs):
        estimates = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OPEWarning)
            for name in estimators:
                est = ESTIMATORS[name](level=level, seed=seed)
                estimates[name] = est.finish(Moments.total(p["candidates"][j][name] for p in parts))
        share = sum(p["unsupported"][j] for p in parts if p["unsupported"]) / max(n_eval_rows, 1)
        estimates = {k: replace(e, unsupported=share) for k, e in estimates.items()}
        result.candidates.append(PolicyEvaluation(spec, estimates, *verdict(estimates[primary], primary, logging)))
    if settings:
        result.tuning = tuning.choose(result.candidates, settings, list(tune), primary, logging, level, verdict)
    if out is not None:
        result.report = write_report(result, Path(out))
    return result


def _train_policies(ds: Dataset, tasks: list[_Part], n_train: int) -> set[str]:
    evaluated = {t.partition.day for t in tasks}  # pass 1 read their policy column
    out: set[str] = set()
    for p in ds.partitions:
        if p.day not in evaluated:
            out |= set(read_partition(p, ["policy"]).column("policy").unique().to_pylist())
    return out


def ds_context_width(ds: Dataset, tasks: list[_Part]) -> int:
    """The context width of the export (the ``banditrec.context_width`` of a partition's metadata)."""
    import pyarrow.parquet as pq

    p = tasks[0].partition if tasks else ds.partitions[0]
    read_partition(p, ["seq"])  # a missing or corrupt file raises, naming it
    meta = pq.read_schema(p.path).metadata or {}
    return int(meta.get(b"banditrec.context_width", b"0"))


__all__ = ["COMPACT_COLUMNS", "MissingDaskError", "dask_client", "estimate_files", "evaluate_parquet", "run_tasks",
           "verdict"]
