"""``GET /api/v1/changes``: the notification feed for ingest pipelines and other clients.

File events (``file.create``, ``file.update``, ``file.delete``) in commit order, each with
its WAL sequence number, after ``after`` (default 0). Two ways to follow it:

- JSON long-poll: ``?after=SEQ&limit=N&wait=S`` answers as soon as there is at least one
  event (or after ``wait`` seconds with none): ``{"items": [...], "next_after": SEQ}``;
  ask again with ``after=next_after``. Nothing is missed and nothing repeats.
- Server-Sent Events (``Accept: text/event-stream``): one event per record (``id`` is the
  sequence, so a reconnecting EventSource resumes with ``Last-Event-ID``), and a comment
  line every 15 s to keep proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ..auth import roles as R
from ..changefeed import client_view
from ..engine.errors import BadRequest
from .app import requires
from .params import ascii_int
from .responses import json_response
from .state import services

HEARTBEAT_SECONDS = 15.0
MAX_WAIT = 60


def _after(request: web.Request) -> int:
    raw = request.query.get("after", request.headers.get("Last-Event-ID", "0"))
    value = ascii_int(raw, 0, 2 ** 62)
    if value is None:
        raise BadRequest("after must be a WAL sequence number (ASCII digits)",
                         code="invalid_after")
    return value


def _number(request: web.Request, name: str, low: int, high: int, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, low, high)
    if value is None:
        raise BadRequest(f"{name} must be {low}-{high}", code=f"invalid_{name}")
    return value


@requires(R.USER, R.FILES_READ)
async def changes(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    after = _after(request)
    limit = _number(request, "limit", 1, 1000, 100)
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await _stream(request, svc, after)
    wait = _number(request, "wait", 0, MAX_WAIT, 0)
    items: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        records = await svc.feed.after(after, limit, max(0.0, deadline - loop.time()))
        for record in records:
            after = record["seq"]
            view = client_view(record)
            if view is not None:
                items.append(view)
        if items or not records or loop.time() >= deadline:
            break
    return json_response({"items": items, "next_after": after})


async def _stream(request: web.Request, svc, after: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        while not svc.stopping:
            records = await svc.feed.after(after, 100, HEARTBEAT_SECONDS)
            if not records:
                await response.write(b": keep-alive\n\n")
                continue
            out = []
            for record in records:
                after = record["seq"]
                view = client_view(record)
                if view is not None:
                    out.append(f"id: {after}\nevent: {view['kind']}\n"
                               f"data: {json.dumps(view, ensure_ascii=False)}\n\n")
            if out:
                await response.write("".join(out).encode("utf-8"))
    except ConnectionResetError:
        pass                        # the client went away: nothing to answer
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/changes", changes)
