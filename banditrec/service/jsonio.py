"""JSON in and out of the service through orjson, with the standard library's semantics: what
orjson refuses or would write differently goes through ``json`` or Flask's provider.

Details: docs/service.md, "JSON (`service/jsonio.py`)".
"""

from __future__ import annotations

import json
import math

import orjson
from flask.json.provider import DefaultJSONProvider

# dates and dataclasses raise in orjson, so that they are written as Flask writes them
_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def loads(raw: bytes | str):
    """``json.loads(raw)`` through orjson, with ``json.loads`` for what orjson refuses."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _has_non_finite(value) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider whose ``jsonify`` writes with orjson whatever it can write as the
    default provider would (compact; UTF-8 rather than ``\\u`` escapes, which decode to the
    same text); indented output (debug mode) and sorted keys go through the default."""

    def response(self, *args, **kwargs):
        return self._response(self._prepare_response_obj(args, kwargs), finite=False)

    def finite_response(self, obj):
        """``response(obj)`` for an ``obj`` whose floats the caller has checked to be finite:
        the whole of ``obj`` is not searched for NaN when orjson writes a ``null``."""
        return self._response(obj, finite=True)

    def _response(self, obj, *, finite: bool):
        if self.sort_keys or self.compact is False or (self.compact is None and self._app.debug):
            return super().response(obj)
        try:
            text = orjson.dumps(obj, option=_DUMP_OPTIONS)
        except TypeError:
            return super().response(obj)
        if not finite and b"null" in text and _has_non_finite(obj):  # orjson writes NaN as null; json, NaN
            return super().response(obj)
        # Flask types _app as the sansio App, whose response class takes no body
        return self._app.response_class(text + b"\n", mimetype=self.mimetype)  # type: ignore[arg-type]
