"""The cluster over HTTP.

Between daemons (no OAuth: every body is an envelope signed with a node key, checked by
``replication.envelope``): ``POST /cluster/v1/swim`` (one membership message) and
``POST /cluster/v1/join`` (a node asking to be put on the roster).

For people and tools: ``GET /api/v1/cluster`` (members, their states and incarnations,
the document version each holds, join requests), and on the admin
``PUT|DELETE /api/v1/cluster/members/{node_id}`` (join / leave) and
``PUT /api/v1/cluster/members/{node_id}/mode``.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..replication.envelope import MAX_ENVELOPE_BYTES

from ..auth import roles as R
from ..engine.errors import BadRequest, NotFound, UploadTooLarge, ValidationError
from .app import actor_of, public, requires
from .responses import json_response, read_json
from .state import services

_NODE_ID = re.compile(r"^n-[0-9a-f]{16}$")


class ClusterDisabled(NotFound):
    code = "cluster_disabled"
    title = "This node is not in a cluster"


def _cluster(request: web.Request):
    svc = services(request)
    if svc.cluster is None:
        raise ClusterDisabled("this daemon runs without [cluster]: it is a single node")
    return svc.cluster


async def _envelope(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_ENVELOPE_BYTES:
        raise UploadTooLarge("a cluster message is at most 8 MiB", code="message_too_large")
    data = await request.content.read(MAX_ENVELOPE_BYTES + 1)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise UploadTooLarge("a cluster message is at most 8 MiB", code="message_too_large")
    if not data:
        raise BadRequest("send a signed envelope", code="envelope_malformed")
    return data


@public
async def swim(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    cluster.receive_swim(await _envelope(request))
    return web.Response(status=204)


@public
async def join(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    body = cluster.receive_join(await _envelope(request))
    return web.Response(body=body, content_type="application/msgpack")


@requires(R.USER, R.STORAGE_READ)
async def status(request: web.Request) -> web.Response:
    svc = services(request)
    if svc.cluster is None:
        return json_response({"enabled": False, "node_id": svc.store.node.node_id,
                              "state": "single", "members": []})
    return json_response(svc.cluster.status())


def _node_id(request: web.Request) -> str:
    node_id = request.match_info["node_id"]
    if not _NODE_ID.match(node_id):
        raise ValidationError("a node id is n- and 16 hex digits", code="invalid_node_id")
    return node_id


@requires(R.ADMIN, R.ADMIN_WRITE)
async def admit(request: web.Request) -> web.Response:
    return json_response(await _cluster(request).admit(_node_id(request),
                                                       actor_of(request)))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def remove(request: web.Request) -> web.Response:
    return json_response(await _cluster(request).remove(_node_id(request),
                                                        actor_of(request)))


@requires(R.ADMIN, R.ADMIN_WRITE)
async def set_mode(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    node_id = _node_id(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("mode"), str) or \
            set(body) - {"mode"}:
        raise ValidationError('send {"mode": "rw|ro|ar"}', code="invalid_mode")
    return json_response(await cluster.set_mode(node_id, body["mode"], actor_of(request)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/cluster/v1/swim", swim)
    router.add_post("/cluster/v1/join", join)
    router.add_get("/api/v1/cluster", status)
    router.add_put("/api/v1/cluster/members/{node_id}", admit)
    router.add_delete("/api/v1/cluster/members/{node_id}", remove)
    router.add_put("/api/v1/cluster/members/{node_id}/mode", set_mode)
