"""gunicorn settings for ``banditrec serve`` (command-line flags override them)."""

bind = "127.0.0.1:8000"
workers = 1
worker_class = "sync"
timeout = 30
graceful_timeout = 10
max_requests = 0
# Each worker builds its own engine after the fork (banditrec.service.wsgi), so no two workers
# share a random stream or a SQLite connection. Keep it that way.
preload_app = False
accesslog = "-"
