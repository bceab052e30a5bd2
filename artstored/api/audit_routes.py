"""``GET /api/v1/audit``: the audit trail, filtered and paged (admin).

Filters: ``actor`` (client id or name), ``kind`` (exact, or a prefix ending in a dot such as
``file.``), ``file_id``, ``from`` and ``to`` (ISO 8601), ``order`` (desc | asc), ``limit``
(1-1000), ``cursor``. ``GET /api/v1/audit/verify`` checks the hash chain.
"""

from __future__ import annotations

from aiohttp import web

from .. import audit
from ..auth import roles as R
from ..engine.errors import BadRequest
from .params import ascii_int, time_param
from .app import requires
from .responses import json_response
from .state import blocking, services

PARAMS = {"actor", "kind", "file_id", "from", "to", "order", "limit", "cursor"}


@requires(R.ADMIN, R.ADMIN_READ)
async def list_events(request: web.Request) -> web.Response:
    svc = services(request)
    q = request.query
    unknown = set(q) - PARAMS
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0][:60]!r}",
                         code="invalid_parameter")
    limit = q.get("limit", "100")
    if ascii_int(limit, 1, 1000) is None:
        raise BadRequest("limit must be 1-1000", code="invalid_limit")
    items, cursor = await blocking(
        audit.page, svc.view, actor=q.get("actor"), kind=q.get("kind"),
        file_id=q.get("file_id"),
        since=time_param("from", q["from"]) if "from" in q else None,
        until=time_param("to", q["to"]) if "to" in q else None,
        cursor=q.get("cursor"), limit=int(limit), order=q.get("order", "desc"))
    return json_response({"items": items, "next_cursor": cursor})


@requires(R.ADMIN, R.ADMIN_READ)
async def verify(request: web.Request) -> web.Response:
    svc = services(request)
    return json_response(await blocking(audit.verify, svc.view))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/audit", list_events)
    router.add_get("/api/v1/audit/verify", verify)
