"""The v1 routes: decide and reward. Thin: validate, call the engine, shape the answer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..engine import Engine
from .errors import json_body
from .schemas import DecideRequest, DecideResponse, RewardRequest, RewardResponse, SlotOut

v1 = Blueprint("v1", __name__, url_prefix="/v1")


def engine() -> Engine:
    return current_app.extensions["banditrec.engine"]


@v1.post("/decide")
def decide():
    req = DecideRequest.model_validate(json_body())
    decision = engine().decide(
        req.user_id,
        req.slots,
        context=req.context,
        candidates=req.candidates,
        exclude=req.exclude,
        surface=req.surface,
    )
    out = DecideResponse(
        event_id=decision.event_id,
        policy=decision.policy,
        model_version=decision.model_version,
        slots=[
            SlotOut(position=s.position, item_id=s.item_id, propensity=s.propensity, marginal=s.marginal, source=s.source)
            for s in decision.slots
        ],
    )
    return jsonify(out.model_dump())


@v1.post("/reward")
def reward():
    req = RewardRequest.model_validate(json_body())
    status = engine().reward(req.event_id, req.reward, position=req.position, kind=req.kind)
    out = RewardResponse(event_id=req.event_id, position=req.position, kind=req.kind, status=status)
    return jsonify(out.model_dump())
