"""JSON responses with orjson."""

from __future__ import annotations

from typing import Any

import falcon
import orjson

__all__ = ["error_body", "send_json"]


def send_json(resp: falcon.asgi.Response, body: Any, status: int = 200) -> None:
    """Write ``body`` as JSON with ``status``."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(code: str, message: str, parameter: str | None = None) -> dict[str, Any]:
    """Return the error shape every endpoint uses."""
    return {"error": {"code": code, "message": message, "parameter": parameter}}
