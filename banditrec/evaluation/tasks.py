"""Running a function over a list of items, in this process or as Dask tasks.

:func:`run_tasks` is what the evaluation pipeline (:mod:`banditrec.evaluation.pipeline`) maps
over a log's partitions, and what simulation sweeps (:mod:`simulator.sweep`) map over runs;
:func:`dask_client` opens the cluster both use. Dask is an optional extra, imported only when
a client is asked for.
"""

from __future__ import annotations

import contextlib
import os

from ..errors import ValidationError


class MissingDaskError(ValidationError, ImportError):
    """Dask is an optional extra that is not installed."""


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDaskError(
            "this needs Dask, which is not installed: pip install 'banditrec[dask]'", "scheduler"
        ) from None
    return distributed


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1, processes: bool = True
):
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
    cluster = distributed.LocalCluster(
        n_workers=n_workers or os.cpu_count() or 1,
        threads_per_worker=threads_per_worker,
        processes=processes,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
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


__all__ = ["MissingDaskError", "dask_client", "run_tasks"]
