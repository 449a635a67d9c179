"""The serving-mode routes: read the mode, switch between apprentice and live."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..apprentice import switch_mode
from . import auth
from .errors import json_body
from .openapi import endpoint
from .schemas import ModeRequest, ModeResponse

bp = Blueprint("modes", __name__, url_prefix="/v1")


def _state(engine) -> dict:
    row = engine.log.serving_mode()
    if row is None:
        return ModeResponse(mode=engine.modes.default, since=None, actor=None, reason=None, gate=None).model_dump()
    return ModeResponse(
        mode=row["mode"], since=row["ts"], actor=row["actor"], reason=row["reason"], gate=row["gate"]
    ).model_dump()


@auth.requires("write")
def get_mode():
    return jsonify(_state(current_app.extensions["banditrec.engine"]))


endpoint(
    bp, "GET", "/mode", summary="The serving mode (apprentice or live) and its last switch", response=ModeResponse
)(get_mode)


@auth.requires("admin")
def set_mode():
    req = ModeRequest.model_validate(json_body())
    engine = current_app.extensions["banditrec.engine"]
    switch_mode(
        engine.log,
        req.mode,
        policy=engine.policy.name,
        actor=req.actor,
        reason=req.reason,
        force=req.force,
        ts=float(engine.clock()),
    )
    engine.modes.refresh()  # this process at once; the others within their refresh interval
    return jsonify(_state(engine))


endpoint(
    bp,
    "POST",
    "/mode",
    summary="Switch apprentice/live for every process on this log (live needs a recorded safe verdict)",
    body=ModeRequest,
    response=ModeResponse,
    errors=(409,),
)(set_mode)
