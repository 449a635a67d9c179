"""Operations routes: health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .metrics import CONTENT_TYPE_LATEST
from .models import serving_status
from .openapi import endpoint
from .schemas import HealthResponse

bp = Blueprint("ops", __name__)


def healthz():
    engine = current_app.extensions["banditrec.engine"]
    serving = serving_status(current_app.extensions.get("banditrec.watcher"))
    error = serving["last_reload_error"]
    shop = current_app.extensions.get("banditrec.shop_watcher")
    shop_error = shop.last_error if shop else None
    return jsonify(
        HealthResponse(
            status="degraded" if error or shop_error else "ok",
            policy=engine.policy.name,
            model_version=engine.model_version,
            source=serving["source"],
            last_reload_error=error,
            shop_build=engine.build,
            last_shop_error=shop_error,
        ).model_dump()
    )


endpoint(
    bp,
    "GET",
    "/healthz",
    summary="Liveness, the served model and shop build, and whether their last check was refused",
    response=HealthResponse,
)(healthz)


def metrics():
    m = current_app.extensions["banditrec.metrics"]
    return Response(
        m.exposition(
            current_app.extensions["banditrec.engine"], current_app.extensions["banditrec.settings"].monitor_prom
        ),
        mimetype=CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


endpoint(bp, "GET", "/metrics", summary="Prometheus text format", content_type="text/plain")(metrics)


def openapi():
    return jsonify(current_app.extensions["banditrec.openapi"])


endpoint(bp, "GET", "/openapi.json", summary="This document")(openapi)
