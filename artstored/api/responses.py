"""JSON response bodies, encoded one way (UTF-8, no ASCII escaping)."""

from __future__ import annotations

import json

from aiohttp import web

from ..engine.errors import BadRequest


def json_response(body, status: int = 200, headers: dict | None = None,
                  content_type: str = "application/json") -> web.Response:
    return web.Response(status=status, headers=headers,
                        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                        content_type=content_type, charset="utf-8")


async def read_json(request: web.Request):
    """The request body as JSON (bounded by the app's client_max_size); BadRequest
    ``invalid_json`` if it is not."""
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
