"""The decision endpoint: a Flask application factory around an :class:`~banditrec.engine.Engine`."""

from __future__ import annotations

from flask import Flask, jsonify

from ..engine import Engine
from . import errors
from .routes import v1


def create_app(engine: Engine, config: dict | None = None) -> Flask:
    """Build the app serving ``engine``. ``config`` overrides Flask settings."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=1 << 20)
    app.json.sort_keys = False  # keep the response models' field order
    if config:
        app.config.update(config)
    app.extensions["banditrec.engine"] = engine
    errors.register(app)
    app.register_blueprint(v1)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "policy": engine.policy.name, "model_version": engine.policy.model_version})

    return app


__all__ = ["create_app"]
