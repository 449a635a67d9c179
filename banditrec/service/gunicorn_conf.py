"""gunicorn settings for ``banditrec serve`` (its command-line flags override them).

gthread workers: keep-alive connections (a sync worker closes every connection after one
response) and a few threads per worker so that one slow client or a reload does not stall the
worker; the engine's lock serialises scoring within a worker, SQLite's lock the log writes.
"""

import os
import shutil
import tempfile

# One BLAS thread per worker: the workers are the parallelism. numpy's OpenBLAS otherwise starts
# a thread per core in every worker, and on a 2-core machine two workers' BLAS threads spin and
# wait for each other's time slices (docs/benchmarks.md, "Gunicorn settings"). Set before the
# workers import numpy.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

bind = os.environ.get("BANDITREC_BIND", "127.0.0.1:8000")
# Other worker and thread counts served within noise of this on 2 cores, so the smallest
# footprint stays (docs/benchmarks.md, "Gunicorn settings").
workers = int(os.environ.get("BANDITREC_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("BANDITREC_THREADS", "2"))
# Listening sockets: one shared by the workers (default), or one per worker with SO_REUSEPORT
# (BANDITREC_REUSE_PORT=1; gunicorn opens them after the fork and the kernel spreads new
# connections by a hash of their addresses). With the shared socket whichever worker wakes first
# accepts, and a gthread worker keeps the keep-alive connections it accepted. For /v1/decide the
# shared socket spreads the load by itself (a worker busy with a decision is not the one that
# wakes first), while the kernel's hash can put most connections on one worker; only a route
# that answers far faster spreads better with per-worker sockets (docs/benchmarks.md, "Gunicorn
# settings"). So per-worker sockets stay opt-in; a worker that dies
# with them loses the connections in its own accept queue (resets, never a 2xx).
reuse_port = os.environ.get("BANDITREC_REUSE_PORT", "0") not in ("", "0", "false", "no")
keepalive = 5
timeout = 30
graceful_timeout = 10
max_requests = 0
# request line and headers: gunicorn's own limits (bodies are limited by the app, per route)
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# Each worker builds its own engine after the fork (banditrec.service.wsgi), so no two workers
# share a random stream or a SQLite connection. Keep it that way.
preload_app = False
# gunicorn 24+ opens a control socket at one fixed path per user; two servers on one machine
# (tests, a benchmark beside a running service) would fight over it, and nothing here uses it
control_socket_disable = True
accesslog = os.environ.get("BANDITREC_ACCESSLOG", None)  # "-" for stdout
errorlog = "-"

# Prometheus multiprocess mode: every worker writes its metrics to files in this directory and
# a scrape of any worker sums them (docs/service.md, "Metrics", says why). Set before the
# workers import prometheus_client; emptied when the server starts.
_created_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _created_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="banditrec-metrics-")


def on_starting(server):
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.unlink(path)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _created_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_fork(server, worker):
    # A thread that holds the log's write lock and returns from SQLite (which releases the GIL)
    # must get the GIL back before it can commit; with Python's default 5 ms switch interval
    # it may wait that long behind the worker's other thread, and every other process waits on
    # the lock meanwhile. 0.5 ms keeps the lock convoy short.
    import sys

    sys.setswitchinterval(0.0005)
