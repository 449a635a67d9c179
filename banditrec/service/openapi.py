"""The OpenAPI 3.1 document, generated from the routes and the pydantic models they use.

A view declares its models and error statuses with :func:`endpoint`; :func:`document` walks
the app's URL map, so every registered route is documented by the same models that validate
its requests. The document says what *this* app enforces: bearer auth (and its 401) only on
the routes its settings protect, the configured batch size and body limits, the engine's
context length.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .schemas import ErrorResponse

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    400: "invalid request (schema, or a value the service refuses, e.g. an unknown item id); `fields` names it",
    401: "missing or wrong bearer token; `fields` names the Authorization header",
    404: "unknown event_id",
    409: "a different reward was already recorded for this (event_id, position, kind)",
    413: "request body larger than the route's limit, whatever its transfer encoding",
}


def protected(scope: str | None, settings) -> bool:
    """Whether a route of auth ``scope`` needs the token under ``settings`` (as :func:`auth.check`)."""
    if scope is None or settings is None or settings.token is None:
        return False
    return scope != "decide" or settings.decide_requires_auth


def endpoint(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    content_type: str = "application/json",
):
    """Register the view on ``bp`` and remember its request and response models."""

    def wrap(view):
        view.openapi = {
            "summary": summary,
            "body": body,
            "response": response,
            "errors": errors,
            "content_type": content_type,
        }
        bp.add_url_rule(rule, view_func=view, methods=[method])
        return view

    return wrap


def context_schema(engine) -> dict:
    """A decide request's ``context`` as ``engine`` takes it: an object of the shop's request
    fields (each one of its values, or a number) when the shop computes the context, else a list
    of exactly ``context_dim`` numbers; absent or null either way."""
    featurizer = engine.parts.context
    if featurizer is None:
        n = int(engine.context_dim)
        given = {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}
    else:
        props: dict[str, dict[str, Any]] = {}
        for name in featurizer.field_names():
            vocab = featurizer.fields.get(name)
            if vocab == "number":
                props[name] = {"type": "number"}
            elif vocab is not None:
                props[name] = {"type": "string", "enum": list(vocab)}
            else:  # a column of an imported log's encoding: its values, or a number
                levels = [c.split("=", 1)[1] for c in featurizer.columns if c.startswith(name + "=")]
                props[name] = {"type": "string", "enum": levels} if levels else {"type": "number"}
        given = {"type": "object", "properties": props, "additionalProperties": False}
    return {"anyOf": [given, {"type": "null"}], "default": None, "title": "Context"}


def openapi_path(rule: str) -> tuple[str, list[str]]:
    """A Flask rule as an OpenAPI path (``/v1/blocklist/<path:item_id>`` -> ``/v1/blocklist/{item_id}``)
    and its path parameters."""
    names = re.findall(r"<(?:[^:<>]+:)?([^:<>]+)>", rule)
    return re.sub(r"<(?:[^:<>]+:)?([^:<>]+)>", r"{\1}", rule), names


def document(app: Flask) -> dict:
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "openapi", None)
        if view is None or meta is None:
            continue
        assert rule.methods is not None  # Flask gives every rule its methods
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((*openapi_path(rule.rule), method.lower(), view, meta))
    models: set[type[BaseModel]] = {ErrorResponse}
    for *_, meta in routes:
        models.update(m for m in (meta["body"], meta["response"]) if m is not None)
    modes: tuple[JsonSchemaMode, ...] = ("validation", "serialization")
    keyed = sorted(((m, mode) for m in models for mode in modes), key=lambda t: (t[0].__name__, t[1]))
    refs, defs = models_json_schema(keyed, ref_template=REF)
    schemas = defs.get("$defs", {})

    def ref(model, mode):
        return refs[(model, mode)]

    settings = app.extensions.get("banditrec.settings")
    engine = app.extensions.get("banditrec.engine")
    if settings is not None:  # the batch size this app enforces, not the models' hard maximum
        schemas["BatchDecideRequest"]["properties"]["requests"]["maxItems"] = settings.batch_max
    if engine is not None:  # the context this engine takes: its shop's named fields, or its length
        schemas["DecideRequest"]["properties"]["context"] = context_schema(engine)
    paths: dict = {}
    needs_auth = False
    for path, params, method, view, meta in sorted(routes, key=lambda r: (r[0], r[2])):
        op: dict = {"summary": meta["summary"], "operationId": view.__name__, "responses": {}}
        if params:
            op["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in params
            ]
        scope = getattr(view, "auth_scope", None)
        secured = protected(scope, settings)
        if scope is not None:
            op["x-auth-scope"] = scope
        if secured:
            op["security"] = [{"bearer": []}]
            needs_auth = True
        else:
            op["security"] = []
        if meta["body"] is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(meta["body"], "validation")}},
            }
            if settings is not None:
                limit = (
                    settings.max_batch_bytes
                    if meta["body"].__name__ == "BatchDecideRequest"
                    else settings.max_body_bytes
                )
                op["requestBody"]["x-max-body-bytes"] = limit
        if meta["response"] is not None:
            ok = {
                "description": "OK",
                "content": {"application/json": {"schema": ref(meta["response"], "serialization")}},
            }
        else:
            ok = {"description": "OK", "content": {meta["content_type"]: {"schema": {"type": "string"}}}}
        op["responses"]["200"] = ok
        codes = set(meta["errors"]) | ({400, 413} if meta["body"] is not None else set())
        if secured:
            codes.add(401)
        for code in sorted(codes):
            op["responses"][str(code)] = {
                "description": STATUS_TEXT[code],
                "content": {"application/json": {"schema": ref(ErrorResponse, "serialization")}},
            }
        paths.setdefault(path, {})[method] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "banditrec decision service", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if needs_auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
