"""``GET /api/v1/search``: full-text query plus filters, sorted, paged, with snippets.

Parameters: ``q`` (Tantivy syntax), ``created_from``, ``created_to`` (ISO 8601),
``content_type``, ``created_by``, ``size_min``, ``size_max``, ``attr.<key>=<value>`` (exact),
``sort`` (``relevance`` | ``created_at``), ``order`` (``desc`` | ``asc``), ``limit`` (1-1000,
default 20), ``cursor``, ``scope`` (``local`` | ``cluster``: every member's hits merged,
paged by a cluster cursor; ``cluster.search``). Answer: ``{"items": [attr + score +
snippets], "next_cursor", "total_hits"}``. Records come from the catalog, so they are always current; a hit whose file
was deleted a moment ago is left out.
"""

from __future__ import annotations

import dataclasses
import re

from aiohttp import web

from ..auth import roles as R
from ..cluster import search as cluster_search
from ..engine import modes as M
from ..engine.errors import BadRequest
from ..index.search import SearchRequest
from .params import ascii_int, time_param
from .app import requires
from .responses import json_response
from .state import blocking, services

MAX_LIMIT = 1000
PARAMS = {"q", "created_from", "created_to", "content_type", "created_by", "size_min",
          "size_max", "sort", "order", "limit", "cursor", "scope"}


def _int_param(name: str, value: str, low: int, high: int, code: str) -> int:
    if ascii_int(value, low, high) is None:
        raise BadRequest(f"{name} must be a whole number {low}-{high}", code=code)
    return int(value)


def parse_request(query) -> SearchRequest:
    req = SearchRequest()
    for name, value in query.items():
        if name.startswith("attr."):
            req.attrs[name[5:]] = value
        elif name not in PARAMS:
            raise BadRequest(f"unknown parameter {name[:60]!r}", code="invalid_parameter")
    req.q = query.get("q", "")
    if "created_from" in query:
        req.created_from = time_param("created_from", query["created_from"])
    if "created_to" in query:
        req.created_to = time_param("created_to", query["created_to"])
    req.content_type = query.get("content_type") or None
    req.created_by = query.get("created_by") or None
    if "size_min" in query:
        req.size_min = _int_param("size_min", query["size_min"], 0, 2 ** 63, "invalid_filter")
    if "size_max" in query:
        req.size_max = _int_param("size_max", query["size_max"], 0, 2 ** 63, "invalid_filter")
    req.sort = query.get("sort") or None
    req.order = query.get("order", "desc")
    if "limit" in query:
        req.limit = _int_param("limit", query["limit"], 1, MAX_LIMIT, "invalid_limit")
    req.cursor = query.get("cursor") or None
    cluster_cursor = query.get("scope") == "cluster" and req.cursor is not None
    if req.cursor is not None and not cluster_cursor and not _cursor_ok(req.cursor):
        raise BadRequest(f"invalid cursor {req.cursor[:60]!r}", code="invalid_cursor")
    return req


# The cursors the search hands out: a keyset ("k", the order's initial, a signed 64-bit
# creation key) or a snapshot ("r", its id, "." and an offset). Anything else would reach
# the index as a number it cannot hold.
_CURSOR_RE = re.compile(r"k[ad](-?[0-9]{1,19})|r[A-Za-z0-9_-]{1,64}\.[0-9]{1,12}", re.ASCII)


def _cursor_ok(cursor: str) -> bool:
    m = _CURSOR_RE.fullmatch(cursor)
    return m is not None and (m.group(1) is None or
                              -(2 ** 63) < int(m.group(1)) < 2 ** 63 - 1)


def run_search(svc, req: SearchRequest) -> dict:
    try:
        page = svc.search.search(req)
    except ValueError as exc:
        # Tantivy parses some queries it then refuses to run ("attr.n:[0 TO 5]": a range
        # over the JSON field): its InvalidArgument, raised as ValueError, is the client's.
        if not str(exc).startswith("An invalid argument was passed"):
            raise
        raise BadRequest(f"the query cannot run: {str(exc)[:200]}",
                         code="invalid_query") from None
    attrs: dict[str, dict] = {}
    with svc.view.snapshot() as snap:
        for hit in page.hits:
            entry = snap.entry(hit.file_id)
            if entry is not None:
                attrs[hit.file_id] = entry.attr
    snippets = svc.search.snippets(page, attrs)
    items = []
    for hit in page.hits:
        attr = attrs.get(hit.file_id)
        if attr is None:
            continue
        item = dict(attr)
        item["score"] = hit.score
        item["snippets"] = snippets.get(hit.file_id, {})
        items.append(item)
    return {"items": items, "next_cursor": page.next_cursor, "total_hits": page.total}


@requires(R.USER, R.FILES_READ)
async def search(request: web.Request) -> web.Response:
    svc = services(request)
    svc.store.require(M.READ_METADATA)
    req = parse_request(request.query)
    scope = request.query.get("scope", "local")
    if scope not in ("local", "cluster"):
        raise BadRequest("scope must be local or cluster", code="invalid_scope")
    in_cluster = scope == "cluster" and svc.cluster is not None and \
        svc.cluster.membership is not None
    if not in_cluster:
        if scope == "cluster" and req.cursor is not None:
            raise BadRequest("this node is not in a cluster: no cluster cursor applies",
                             code="invalid_cursor")
        return json_response(await blocking(run_search, svc, req))

    async def ask_local(node_cursor: str | None, node_limit: int) -> dict:
        return await blocking(run_search, svc, dataclasses.replace(
            req, cursor=node_cursor, limit=node_limit))
    query = [(k, v) for k, v in request.query.items() if k != "scope"]
    return json_response(await cluster_search.fan_out(
        svc.cluster, svc.cluster.replicator.session, query,
        request.headers.get("Authorization", ""), ask_local,
        sort=req.effective_sort, order=req.order, limit=req.limit, cursor=req.cursor,
        node_cursor_ok=_cursor_ok))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/search", search)
