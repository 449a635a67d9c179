"""Block-list routes (admin): items no user may be shown, effective at once in every serving
process, each change written to the log's audit trail (docs/feedback.md)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from . import auth
from .errors import BadRequest, json_body
from .openapi import endpoint
from .schemas import BlocklistResponse, BlockRequest, BlockResponse, BlockStatus

bp = Blueprint("blocklist", __name__, url_prefix="/v1")


@auth.requires("admin")
def block():
    req = BlockRequest.model_validate(json_body())
    if (req.item_id is None) == (req.item_ids is None):
        raise BadRequest("give exactly one of item_id and item_ids", "item_ids" if req.item_ids else "item_id")
    field = "item_id" if req.item_id is not None else "item_ids"
    ids = [req.item_id] if req.item_id is not None else list(req.item_ids or [])
    engine = current_app.extensions["banditrec.engine"]
    found = engine.items.lookup(ids)
    if (found < 0).any():
        j = int((found < 0).argmax())
        where = field if field == "item_id" else f"item_ids.{j}"
        raise BadRequest(f"{where}: item {ids[j]!r} is not in the served catalog", where)
    statuses = engine.log.block(ids, reason=req.reason, actor=req.actor, ts=float(engine.clock()))
    items = [BlockStatus(item_id=i, status=s) for i, s in zip(ids, statuses)]
    return jsonify(BlockResponse(items=items).model_dump())


endpoint(
    bp,
    "POST",
    "/blocklist",
    summary="Block items for every user (legal, recall); audited, effective in every worker at once",
    body=BlockRequest,
    response=BlockResponse,
)(block)


@auth.requires("admin")
def unblock(item_id: str):
    engine = current_app.extensions["banditrec.engine"]
    reason = request.args.get("reason", "")
    actor = request.args.get("actor") or "api"
    if len(reason) > 1000 or len(actor) > 256:
        raise BadRequest(
            "reason (1000 characters) or actor (256) is too long", "reason" if len(reason) > 1000 else "actor"
        )
    engine.log.unblock(item_id, actor=actor, reason=reason, ts=float(engine.clock()))
    return jsonify(BlockResponse(items=[BlockStatus(item_id=item_id, status="unblocked")]).model_dump())


endpoint(
    bp,
    "DELETE",
    "/blocklist/<path:item_id>",
    summary="Lift an item's block (?reason=...&actor=... go to the audit trail); 404 if not blocked",
    response=BlockResponse,
    errors=(404,),
)(unblock)


@auth.requires("admin")
def blocklist():
    engine = current_app.extensions["banditrec.engine"]
    rows = [r._asdict() for r in engine.log.blocklist()]
    return jsonify(BlocklistResponse.model_validate({"items": rows}).model_dump())


endpoint(bp, "GET", "/blocklist", summary="The blocked items, with when, why and by whom", response=BlocklistResponse)(
    blocklist
)
