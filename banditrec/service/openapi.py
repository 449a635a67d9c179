"""The OpenAPI 3.1 document, generated from the routes and the pydantic models they use.

A view declares its models with :func:`endpoint`; :func:`document` walks the app's URL map,
so every registered route is documented by the same models that validate its requests.
"""

from __future__ import annotations

from flask import Blueprint, Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .schemas import ErrorResponse

REF = "#/components/schemas/{model}"


def endpoint(bp: Blueprint, method: str, rule: str, *, summary: str, body: type[BaseModel] | None = None,
             response: type[BaseModel] | None = None, errors: tuple[int, ...] = (),
             content_type: str = "application/json"):
    """Register the view on ``bp`` and remember its request and response models."""

    def wrap(view):
        view.openapi = {"summary": summary, "body": body, "response": response, "errors": errors,
                        "content_type": content_type}
        bp.add_url_rule(rule, view_func=view, methods=[method])
        return view

    return wrap


def document(app: Flask) -> dict:
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "openapi", None)
        if meta is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((rule.rule, method.lower(), view, meta))
    models = {ErrorResponse}
    for *_, meta in routes:
        models.update(m for m in (meta["body"], meta["response"]) if m is not None)
    keyed = sorted(((m, mode) for m in models for mode in ("validation", "serialization")),
                   key=lambda t: (t[0].__name__, t[1]))
    refs, defs = models_json_schema(keyed, ref_template=REF)
    schemas = defs.get("$defs", {})

    def ref(model, mode):
        return refs[(model, mode)]

    paths: dict = {}
    needs_auth = False
    for path, method, view, meta in sorted(routes, key=lambda r: (r[0], r[1])):
        op: dict = {"summary": meta["summary"], "operationId": view.__name__, "responses": {}}
        scope = getattr(view, "auth_scope", None)
        if scope is not None:
            op["security"] = [{"bearer": []}]
            op["x-auth-scope"] = scope
            needs_auth = True
        if meta["body"] is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": ref(meta["body"], "validation")}}}
        if meta["response"] is not None:
            ok = {"description": "OK", "content": {"application/json": {"schema": ref(meta["response"],
                                                                                     "serialization")}}}
        else:
            ok = {"description": "OK", "content": {meta["content_type"]: {"schema": {"type": "string"}}}}
        op["responses"]["200"] = ok
        codes = set(meta["errors"]) | ({400, 413} if meta["body"] is not None else set())
        if scope is not None:
            codes.add(401)
        for code in sorted(codes):
            op["responses"][str(code)] = {"description": "error; `fields` names what is wrong",
                                          "content": {"application/json": {"schema": ref(ErrorResponse,
                                                                                         "serialization")}}}
        paths.setdefault(path, {})[method] = op
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "banditrec decision service", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if needs_auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
