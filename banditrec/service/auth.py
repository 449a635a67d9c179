"""Bearer-token auth (RFC 6750) with a constant-time comparison."""

from __future__ import annotations

import functools
import hmac

from flask import current_app, request

from .errors import Unauthorized

SCOPES = ("decide", "write", "admin")


def check(scope: str) -> None:
    """Raise :class:`Unauthorized` unless the request carries the configured token.

    ``decide`` routes are checked only when the config says so; ``write`` (reward, events) and
    ``admin`` routes always, once a token is configured.
    """
    settings = current_app.extensions["banditrec.settings"]
    if settings.token is None or (scope == "decide" and not settings.decide_requires_auth):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise Unauthorized("this route needs 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    # compare bytes of equal type; compare_digest takes time independent of where they differ
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), settings.token.encode()):
        raise Unauthorized("the bearer token is not valid", invalid=True)


def requires(scope: str):
    """Decorate a view: the request must pass :func:`check` for ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown auth scope {scope!r}")

    def wrap(view):
        @functools.wraps(view)
        def inner(*args, **kwargs):
            check(scope)
            return view(*args, **kwargs)

        inner.auth_scope = scope
        return inner

    return wrap
