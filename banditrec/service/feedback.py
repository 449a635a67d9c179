"""Feedback routes: rewards joined to decisions, interaction events (session state), and hides
(negative feedback; docs/feedback.md)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..store.blocklist import HIDE_KINDS
from ..types import Reward
from . import auth
from .errors import BadRequest, json_body
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
    if req.kind in HIDE_KINDS:
        return _hide(req, engine, ts)
    for name in ("scope", "ttl_s", "position"):
        if getattr(req, name) is not None:
            raise BadRequest(f"{name} applies to hide and not_interested events only, not to {req.kind}", name)
    seq = engine.log.write_event(req.user_id, req.item_id, req.kind, ts=ts, event_id=req.event_id)
    current_app.extensions["banditrec.metrics"].events.labels(req.kind).inc()
    return jsonify(
        EventResponse(
            seq=seq, user_id=req.user_id, item_id=req.item_id, kind=req.kind, ts=ts, status="recorded"
        ).model_dump()
    )


def _hide(req: EventRequest, engine, ts: float):
    """A hide or not-interested event: logged with its scope and expiry, and the configured
    negative reward for the slot it names (docs/feedback.md)."""
    settings = current_app.extensions["banditrec.settings"]
    log = engine.log
    scope = req.scope or "item"
    if scope == "type":
        items = engine.items
        if items.types is None:
            raise BadRequest("scope 'type' needs the items' product types, and this catalog has none", "scope")
        if items.lookup([req.item_id])[0] < 0:
            raise BadRequest(f"item_id {req.item_id!r} is not in the catalog, so its type is unknown", "item_id")
    position = req.position
    if position is not None:
        if req.event_id is None:
            raise BadRequest("position names a slot of the decision event_id; give event_id too", "position")
        shown = log.shown_at(req.event_id, position)
        if shown is None and log.has_decision(req.event_id):
            raise BadRequest(f"decision {req.event_id!r} has no slot at position {position}", "position")
        if shown is not None and shown != req.item_id:
            raise BadRequest(
                f"position {position} of decision {req.event_id!r} showed {shown!r}, not {req.item_id!r}", "position"
            )
    reward = None
    if settings.hide_reward is not None and req.event_id is not None:
        if position is None:
            position = log.slot_of(req.event_id, req.item_id)
        if position is not None:
            reward = Reward(req.event_id, float(settings.hide_reward), position, settings.hide_reward_kind, ts)
    ttl = settings.hide_window_s if req.ttl_s is None else req.ttl_s
    done = log.write_hide(
        req.user_id, req.item_id, kind=req.kind, scope=scope, ts=ts, ttl_s=ttl, event_id=req.event_id, reward=reward
    )
    metrics = current_app.extensions["banditrec.metrics"]
    metrics.events.labels(req.kind).inc()
    if done.reward_status is not None:
        metrics.rewards.labels(done.reward_status).inc()
    return jsonify(
        EventResponse(
            seq=done.seq,
            user_id=req.user_id,
            item_id=req.item_id,
            kind=req.kind,
            ts=ts,
            status="recorded",
            scope=scope,
            expires_ts=done.expires_ts,
            reward_status=done.reward_status,
        ).model_dump()
    )


endpoint(
    bp,
    "POST",
    "/events",
    summary="Record a view, cart add or purchase (the next decision sees it), or a hide that suppresses an item",
    body=EventRequest,
    response=EventResponse,
    errors=(404,),
)(event)
