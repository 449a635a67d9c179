"""Off-policy evaluation of candidate policies on a log: ``banditrec evaluate``.

One pipeline (:mod:`.pipeline`: split, candidates, reward model, estimators, verdict, report)
and two backends that read the log for it: :mod:`.sqlite` (``--db``, a decision log) and
:mod:`.parquet` (``--parquet``, the day-partitioned export, on Dask when given a client; also
estimates over compact per-slot files). :mod:`.tasks` runs work in-process or on Dask.
"""

from .parquet import COMPACT_COLUMNS, ParquetBackend, estimate_files, evaluate_parquet
from .pipeline import (
    DEFAULT_ESTIMATORS,
    Backend,
    Evaluation,
    PolicyEvaluation,
    Request,
    check_request,
    evaluate,
    verdict,
    write_report,
)
from .sqlite import ObjectiveSensitivity, SensitivityRow, SQLiteBackend, evaluate_log, objective_sensitivity
from .tasks import MissingDaskError, dask_client, run_tasks

__all__ = [
    "COMPACT_COLUMNS",
    "DEFAULT_ESTIMATORS",
    "Backend",
    "Evaluation",
    "MissingDaskError",
    "ObjectiveSensitivity",
    "ParquetBackend",
    "PolicyEvaluation",
    "Request",
    "SQLiteBackend",
    "SensitivityRow",
    "check_request",
    "dask_client",
    "estimate_files",
    "evaluate",
    "evaluate_log",
    "evaluate_parquet",
    "objective_sensitivity",
    "run_tasks",
    "verdict",
    "write_report",
]
