"""Moving decision logs in and out, by format name: the front door the ``banditrec import`` and
``banditrec export`` commands use, and one place to import the whole public API from.

- :mod:`banditrec.store.export`: CSV and Parquet, one row per logged slot (columns documented there)
- :mod:`banditrec.store.vw`: Vowpal Wabbit text and DSJSON, one example per logged slot
- :mod:`banditrec.store.importer`: the Open Bandit Dataset's CSV and mapped CSVs in, with
  :mod:`banditrec.store.csvrows` reading the file
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from .export import (
    SCHEMA_VERSION,
    ExportResult,
    MissingDependencyError,
    export_csv,
    export_interactions,
    export_parquet,
)
from .importer import (
    ImportFailedError,
    ImportResult,
    import_csv,
    import_obd,
    parse_mapping,
)
from .log import DecisionLog
from .vw import export_dsjson, export_vw, vw_escape

EXPORT_FORMATS = ("csv", "parquet", "vw", "dsjson", "interactions")
IMPORT_FORMATS = ("obd", "csv")

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "SCHEMA_VERSION",
    "ExportResult",
    "ImportFailedError",
    "ImportResult",
    "MissingDependencyError",
    "export_csv",
    "export_dsjson",
    "export_log",
    "export_parquet",
    "export_vw",
    "import_csv",
    "import_file",
    "import_obd",
    "parse_mapping",
    "vw_escape",
]


def export_log(
    log: DecisionLog,
    path: str | Path,
    format: str,
    *,
    kind: str = "click",
    default_reward: float = 0.0,
    min_probability: float | None = None,
    candidates: bool = False,
) -> ExportResult:
    """Export ``log`` to ``path`` in ``format`` (one of :data:`EXPORT_FORMATS`).

    ``kind``, ``default_reward`` and ``min_probability`` apply to the VW formats, which carry
    one reward per example; CSV and Parquet carry every kind. ``candidates`` adds the
    decision's candidate ids and catalog indices (JSON lists) to CSV and Parquet rows.
    """
    if format in ("csv", "parquet"):
        fn = export_csv if format == "csv" else export_parquet
        return fn(log, path, candidates=candidates)
    if format in ("vw", "dsjson"):
        write = export_vw if format == "vw" else export_dsjson
        return write(log, path, kind=kind, default_reward=default_reward, min_probability=min_probability)
    if format == "interactions":
        return export_interactions(log, path)
    raise ValidationError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}", "format")


def import_file(
    path: str | Path, log: DecisionLog, format: str, mapping: Mapping[str, str] | None = None, **kw: Any
) -> ImportResult:
    """Import ``path`` in ``format`` (one of :data:`IMPORT_FORMATS`)."""
    if format == "obd":
        return import_obd(path, log, mapping=mapping, **kw)
    if format == "csv":
        return import_csv(path, log, mapping, **kw)
    raise ValidationError(f"unknown import format {format!r}; expected one of {', '.join(IMPORT_FORMATS)}", "format")
