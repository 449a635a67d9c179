"""Decide routes: one carousel, or a batch logged in one transaction."""

from __future__ import annotations

import math
from typing import cast

from flask import Blueprint, current_app, jsonify, request

from ..errors import ValidationError
from . import auth
from .errors import BadRequest, json_body
from .jsonio import OrjsonProvider
from .openapi import endpoint
from .schemas import BatchDecideRequest, BatchDecideResponse, DecideRequest, DecideResponse

bp = Blueprint("decisions", __name__, url_prefix="/v1")


def engine():
    return current_app.extensions["banditrec.engine"]


def engine_args(req: DecideRequest) -> dict:
    """:meth:`Engine.decide`'s keyword arguments (``explain`` only when asked: a batch refuses it)."""
    args = dict(
        user_id=req.user_id,
        n_slots=req.slots,
        context=req.context,
        candidates=req.candidates,
        exclude=req.exclude,
        surface=req.surface,
        candidate_sources=req.candidate_sources,
        pinned=req.pinned,
        promoted=req.promoted,
        baseline=req.baseline,
    )
    if req.explain:
        args["explain"] = True
    return args


def shaped(decision) -> dict:
    # built as plain dicts (the response model's fields, in order): this is the hot path, and
    # DecideResponse documents it in /openapi.json; tests check the two agree
    body = {
        "event_id": decision.event_id,
        "policy": decision.policy,
        "model_version": decision.model_version,
        "shop_build": decision.build,
        "served": decision.served,
        "arm": decision.arm,
        "slots": [
            {
                "position": s.position,
                "item_id": s.item_id,
                "propensity": s.propensity if s.propensity == s.propensity else None,  # NaN: pending
                "marginal": s.marginal if s.marginal == s.marginal else None,
                "source": s.source,
            }
            for s in decision.slots
        ],
    }
    if decision.explanations is not None:
        for slot, e in zip(body["slots"], decision.explanations):
            slot["explanation"] = e.to_dict()
    return body


def answer(body: dict, decisions: list):
    """``jsonify(body)`` of shaped ``decisions``, without searching the body for non-finite
    floats (which orjson would write as ``null``) when one sum shows that the slots'
    propensities and marginals, its only floats, are finite (a decision's are, except those
    left for later, which :func:`shaped` writes as ``None``)."""
    try:
        finite = math.isfinite(sum(s.propensity + s.marginal for d in decisions for s in d.slots))
    except TypeError:  # a value that is not a number: the full search decides
        finite = False
    if not finite or any(d.explanations is not None for d in decisions):  # explanations: searched too
        return jsonify(body)
    return cast(OrjsonProvider, current_app.json).finite_response(body)  # create_app installs it


@auth.requires("decide")
def decide():
    req = DecideRequest.model_validate(json_body())
    decision = engine().decide(**engine_args(req))
    current_app.extensions["banditrec.metrics"].observe_decisions([decision], "/v1/decide")
    return answer(shaped(decision), [decision])


endpoint(
    bp,
    "POST",
    "/decide",
    summary="Fill a carousel's slots, log the decision with its propensities",
    body=DecideRequest,
    response=DecideResponse,
)(decide)


@auth.requires("decide")
def decide_batch():
    settings = current_app.extensions["banditrec.settings"]
    request.max_content_length = settings.max_batch_bytes
    req = BatchDecideRequest.model_validate(json_body())
    if len(req.requests) > settings.batch_max:
        raise BadRequest(f"a batch holds at most {settings.batch_max} requests, got {len(req.requests)}", "requests")
    try:
        decisions = engine().decide_batch([engine_args(r) for r in req.requests])
    except ValidationError as exc:
        exc.batch_field = "requests"
        raise
    current_app.extensions["banditrec.metrics"].observe_decisions(decisions, "/v1/decide/batch")
    return answer({"decisions": [shaped(d) for d in decisions]}, decisions)


endpoint(
    bp,
    "POST",
    "/decide/batch",
    summary="Decide many carousels in one call, logged in one transaction",
    body=BatchDecideRequest,
    response=BatchDecideResponse,
)(decide_batch)
