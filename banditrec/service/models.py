"""Model routes: what is served, what the learner published, and reloading (admin)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..errors import ValidationError
from . import auth
from .openapi import endpoint
from .schemas import ModelsResponse, ReloadResponse

bp = Blueprint("models", __name__, url_prefix="/v1")


def serving_status(watcher) -> dict:
    """``snapshot``, ``source``, ``loaded_ts`` and ``last_reload_error`` of this worker."""
    if watcher is None:
        return {"snapshot": None, "source": "built", "loaded_ts": None, "last_reload_error": None}
    return watcher.status()


@auth.requires("admin")
def models():
    engine = current_app.extensions["banditrec.engine"]
    watcher = current_app.extensions.get("banditrec.watcher")
    shop = current_app.extensions.get("banditrec.shop_watcher")
    serving = {
        "policy": engine.policy.name,
        "model_version": engine.model_version,
        "params": engine.policy.params,
        **serving_status(watcher),
        "shop_build": engine.build,
        "last_shop_error": shop.last_error if shop else None,
    }
    return jsonify(ModelsResponse(serving=serving, versions=engine.log.model_versions()).model_dump())


endpoint(bp, "GET", "/models", summary="The served model and every registered version", response=ModelsResponse)(models)


@auth.requires("admin")
def reload():
    watcher = current_app.extensions.get("banditrec.watcher")
    if watcher is None:
        raise ValidationError("this service has no snapshot directory configured (BANDITREC_SNAPSHOTS)", "snapshot")
    status, version, previous = watcher.reload()
    return jsonify(ReloadResponse(status=status, model_version=version, previous=previous).model_dump())


endpoint(
    bp,
    "POST",
    "/models/reload",
    summary="Load the newest published snapshot now (this worker); a corrupt one is refused",
    response=ReloadResponse,
    errors=(400,),
)(reload)
