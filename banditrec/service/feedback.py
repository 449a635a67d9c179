"""Feedback routes: rewards joined to decisions, and interaction events (session state)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from . import auth
from .errors import json_body
from .openapi import endpoint
from .schemas import EventRequest, EventResponse, RewardRequest, RewardResponse

bp = Blueprint("feedback", __name__, url_prefix="/v1")


@auth.requires("write")
def reward():
    req = RewardRequest.model_validate(json_body())
    status = current_app.extensions["banditrec.engine"].reward(
        req.event_id, req.reward, position=req.position, kind=req.kind
    )
    current_app.extensions["banditrec.metrics"].rewards.labels(status).inc()
    return jsonify(
        RewardResponse(event_id=req.event_id, position=req.position, kind=req.kind, status=status).model_dump()
    )


endpoint(
    bp,
    "POST",
    "/reward",
    summary="Join a reward to a logged decision (idempotent; late ones flagged)",
    body=RewardRequest,
    response=RewardResponse,
    errors=(404, 409),
)(reward)


@auth.requires("write")
def event():
    req = EventRequest.model_validate(json_body())
    engine = current_app.extensions["banditrec.engine"]
    ts = float(engine.clock()) if req.ts is None else req.ts
    seq = engine.log.write_event(req.user_id, req.item_id, req.kind, ts=ts, event_id=req.event_id)
    current_app.extensions["banditrec.metrics"].events.labels(req.kind).inc()
    return jsonify(
        EventResponse(
            seq=seq, user_id=req.user_id, item_id=req.item_id, kind=req.kind, ts=ts, status="recorded"
        ).model_dump()
    )


endpoint(
    bp,
    "POST",
    "/events",
    summary="Record a view, cart add or purchase; the next decision sees it",
    body=EventRequest,
    response=EventResponse,
    errors=(404,),
)(event)
