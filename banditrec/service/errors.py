"""Every error leaves the service as JSON naming the problem; never an HTML page or a bare 500."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from pydantic import ValidationError as PydanticValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import BanditRecError, ConflictError, NotFoundError, ValidationError
from . import jsonio

log = logging.getLogger("banditrec.service")


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


class Unauthorized(Exception):
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750); the field named is the header."""

    def __init__(self, message: str, invalid: bool = False):
        super().__init__(message)
        self.message, self.invalid = message, invalid


DRAIN_BYTES = 8 << 20  # how much of an over-limit chunked body is read and dropped (read_body)

# what an HTTP-level error is about, so that every 4xx names a field
HTTP_FIELDS = {404: "path", 405: "method", 413: "body", 415: "Content-Type", 431: "headers"}


def error_body(status: int, message: str, fields: list[dict] | None = None):
    body = {"error": {"status": status, "message": message, "fields": fields or []}}
    return jsonify(body), status


def read_body() -> bytes:
    """The request body, at most ``request.max_content_length`` bytes, whatever its transfer
    encoding; a longer body is a 413, never cut at the limit.

    Werkzeug checks a declared ``Content-Length`` against the limit, but a chunked body (no
    length; the server sets ``wsgi.input_terminated``) is read through a stream that stops at
    the limit without saying there was more. So the raw stream is read here, to one byte past
    the limit; nothing past the limit is ever parsed.
    """
    limit = request.max_content_length
    environ = request.environ
    if limit is None or request.content_length is not None or "wsgi.input_terminated" not in environ:
        return request.get_data(cache=True)  # a declared length: werkzeug refuses one over the limit
    stream, parts, size = environ["wsgi.input"], [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        # Read on (and drop) up to DRAIN_BYTES more, so that the server can keep the connection
        # and the client, which may still be sending, reads the 413 instead of a reset; past
        # that the server closes the connection (gunicorn drains at most 64 KiB itself).
        drained = 0
        while drained < DRAIN_BYTES:
            chunk = stream.read(min(1 << 16, DRAIN_BYTES - drained))
            if not chunk:
                break
            drained += len(chunk)
        raise RequestEntityTooLarge(f"the request body is larger than {limit} bytes")
    return b"".join(parts)


def json_body() -> dict:
    """The request body as a JSON object, or a :class:`BadRequest` saying what is wrong."""
    raw = read_body()
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object", "body")
    try:
        data = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to parse", "body") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}", "body")
    return data


def _field_name(loc) -> str:
    return ".".join(str(p) for p in loc) or "body"


def register(app: Flask) -> None:
    @app.errorhandler(PydanticValidationError)
    def _pydantic(exc: PydanticValidationError):
        fields = [
            {"field": _field_name(e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error_body(400, message, fields)

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest):
        return error_body(exc.status, exc.message, [{"field": exc.field or "body", "message": exc.message}])

    @app.errorhandler(Unauthorized)
    def _unauthorized(exc: Unauthorized):
        response, status = error_body(401, exc.message, [{"field": "Authorization", "message": exc.message}])
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if exc.invalid else "Bearer"
        return response, status

    @app.errorhandler(BanditRecError)
    def _domain(exc: BanditRecError):
        status = 400
        if isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, ConflictError):
            status = 409
        elif not isinstance(exc, ValidationError):
            status = 422
        message = getattr(exc, "message", str(exc))
        field = getattr(exc, "field", None) or "body"
        index = getattr(exc, "index", None)
        if index is not None and getattr(exc, "batch_field", None):
            field = f"{exc.batch_field}.{index}.{field}"
        return error_body(status, message, [{"field": field, "message": message}])

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = exc.code or 500
        message = exc.description or exc.name
        fields = [{"field": HTTP_FIELDS.get(code, "request"), "message": message}] if code < 500 else []
        response, status = error_body(code, message, fields)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # pragma: no cover - exercised only by bugs
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_body(500, "internal error; the request was not processed")
