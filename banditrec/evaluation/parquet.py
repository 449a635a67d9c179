"""Off-policy evaluation over Parquet: ``banditrec evaluate --parquet`` on the day-partitioned
export, and estimates over compact per-slot files; on Dask or in-process.

Each task reduces a partition to estimator moments, so a worker holds one partition at a time.

Details: docs/evaluation.md, "The Parquet backend (`evaluation/parquet.py`)".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from ..ope.estimators import ESTIMATORS, Moments
from ..store.partitioned import (
    Dataset,
    Partition,
    PartitionError,
    open_dataset,
    partition_decisions,
    read_items,
    read_partition,
)
from ..types import Estimate, LoggedBandit
from .pipeline import (
    DEFAULT_ESTIMATORS,
    Backend,
    Evaluation,
    Split,
    check_request,
    evaluate,
    item_features_or_one_hot,
)
from .tasks import MissingDaskError, dask_client, run_tasks

COMPACT_COLUMNS = ("decision", "slot", "reward", "pscore", "target_pscore", "q_hat_logged", "q_hat_target")
"""Columns of a compact OPE file: ``decision`` (int, unique across files; a decision's rows in
one file), ``slot`` (int), ``reward``, ``pscore`` (logged marginal), ``target_pscore`` (the
target's probability of the logged item in its slot) and, for DM/DR, ``q_hat_logged`` and
``q_hat_target`` (``sum_a pi(a|x,k) q(x,a,k)``)."""


# ---- the day-partitioned export: banditrec evaluate --parquet ---------------------------------
@dataclass(frozen=True)
class PartitionChunk:
    """One day's decisions from ``first`` on, ``count`` of them (None: to the end): the evaluated
    ones, or a training share's (``training``: without the analysis holdout)."""

    partition: Partition
    first: int
    kind: str
    default_reward: float
    n_items: int
    count: int | None = None
    training: bool = False

    def load(self):
        table = read_partition(self.partition)
        if self.count is not None:  # the share's decisions, counted with the holdout's
            seq = np.unique(table.column("seq").to_numpy())
            last = seq[min(len(seq), self.first + self.count) - 1] if len(seq) else 0
            import pyarrow as pa

            table = table.filter(pa.array(table.column("seq").to_numpy() <= last))
        logged = partition_decisions(
            table,
            kind=self.kind,
            default_reward=self.default_reward,
            first_decision=self.first,
            training=self.training,
        )
        if len(logged.row_action) and int(logged.row_action.max()) >= self.n_items:
            raise PartitionError(
                f"partition file {self.partition.path} shows item index "
                f"{int(logged.row_action.max())}, beyond the item table's {self.n_items} items",
                "parquet",
            )
        return logged


class ParquetBackend(Backend):
    """The day-partitioned export at ``root`` (``kind`` rewards, ``default_reward`` where none),
    read one partition at a time."""

    field = "parquet"

    def __init__(self, root, *, kind: str = "click", default_reward: float = 0.0):
        self.root = Path(root)
        self.name = str(root)
        self.kind, self.default_reward = kind, default_reward
        self.ds = open_dataset(self.root)
        self.n_decisions = self.ds.n_decisions
        table_features = read_items(self.root)
        self.features = item_features_or_one_hot(table_features, self.ds.max_item + 1)
        self.has_item_table = bool(len(table_features))
        self.context_dim = 0

    def split(self, n_train: int) -> Split:
        train, chunks, offset = [], [], 0
        for p in self.ds.partitions:
            if offset < n_train:
                count = min(p.decisions, n_train - offset)
                train.append(
                    PartitionChunk(p, 0, self.kind, self.default_reward, len(self.features), count, training=True)
                )
            if offset + p.decisions > n_train:
                chunks.append(
                    PartitionChunk(p, max(0, n_train - offset), self.kind, self.default_reward, len(self.features))
                )
            offset += p.decisions
        self.context_dim = context_width(self.ds, chunks)
        return Split(train, chunks, self.ds.n_slots)

    def logging_policies(self) -> list[str]:
        out: set[str] = set()
        for p in self.ds.partitions:
            out |= set(read_partition(p, ["policy"]).column("policy").unique().to_pylist())
        return sorted(out)


def context_width(ds: Dataset, chunks: list[PartitionChunk]) -> int:
    """The context width of the export (the ``banditrec.context_width`` of a partition's metadata)."""
    import pyarrow.parquet as pq

    p = chunks[0].partition if chunks else ds.partitions[0]
    read_partition(p, ["seq"])  # a missing or corrupt file raises, naming it
    meta = pq.read_schema(p.path).metadata or {}
    return int(meta.get(b"banditrec.context_width", b"0"))


def evaluate_parquet(
    root,
    specs: list[str],
    *,
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS,
    primary: str = "DR",
    kind: str = "click",
    default_reward: float = 0.0,
    train_frac: float = 0.5,
    level: float = 0.95,
    seed: int | None = 0,
    client=None,
    out=None,
    progress: bool = False,
    n_folds: int = 2,
    tune: tuple[str, ...] = (),
    reward_model: str | None = None,
) -> Evaluation:
    """:func:`~banditrec.evaluation.sqlite.evaluate_log` over the day-partitioned export at
    ``root``, one task per day on ``client`` (in this process without one)."""
    request = check_request(
        specs,
        estimators=estimators,
        primary=primary,
        tune=tune,
        train_frac=train_frac,
        reward_model=reward_model,
        kind=kind,
        default_reward=default_reward,
        level=level,
        seed=seed,
        n_folds=n_folds,
    )
    backend = ParquetBackend(root, kind=kind, default_reward=default_reward)
    return evaluate(backend, request, client=client, progress=progress, out=out)


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
        data = LoggedBandit(
            reward=arr["reward"],
            action=np.zeros(len(arr["reward"]), dtype=np.int64),
            slot=arr["slot"],
            pscore=arr["pscore"],
            decision=arr["decision"],
            n_actions=1,
            n_slots=int(arr["slot"].max()) + 1,
        )
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


def estimate_files(
    paths,
    estimators=("IPS", "SNIPS", "DR"),
    *,
    client=None,
    slot: int | None = None,
    level: float = 0.95,
    progress: bool = False,
) -> dict[str, Estimate]:
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
            raise ValidationError(
                f"{e.name} is not a sum of per-decision terms and cannot run on partitions", "estimator"
            )
        objs.append(e)
    parts = run_tasks(
        _compact_moments,
        paths,
        client=client,
        shared={"estimators": objs, "slot": slot},
        progress=progress,
        desc="estimating",
    )
    return {e.name: e.finish(Moments.total(p[e.name] for p in parts)) for e in objs}


__all__ = [
    "COMPACT_COLUMNS",
    "MissingDaskError",
    "ParquetBackend",
    "dask_client",
    "estimate_files",
    "evaluate_parquet",
    "run_tasks",
]
