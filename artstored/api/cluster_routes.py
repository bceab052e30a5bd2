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
from ..cluster import bundle as bundle_wire
from ..cluster import wire as RP
from ..cluster.repair import held_here, missing_here
from ..engine.errors import BadRequest, NotFound, UploadTooLarge, ValidationError
from . import download
from .app import actor_of, public, requires
from .responses import json_response, read_json
from .state import blocking, services

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


def _signed(request: web.Request, cluster, kind: str):
    """The signed envelope in the request's header (a roster member's, for this node)."""
    header = request.headers.get(RP.HEADER)
    if not header or len(header) > 64 * 1024:
        raise BadRequest(f"send a signed envelope in {RP.HEADER}", code="envelope_malformed")
    env = cluster.open_request(RP.decode_header(header))
    if env.message.get("t") != kind:
        raise BadRequest(f"the envelope is not a {kind} request", code="envelope_malformed")
    return env


async def _signed_body(request: web.Request, cluster, kind: str):
    """The signed envelope that is the request's body."""
    env = cluster.open_request(await _envelope(request))
    if env.message.get("t") != kind:
        raise BadRequest(f"the envelope is not a {kind} request", code="envelope_malformed")
    return env


def _answer(cluster, env, kind: str, body: dict) -> web.Response:
    """An answer signed by this node for the member that asked: nothing on the way can
    forge or replay it (the asker checks it with ``ClusterNode.open_answer``)."""
    return web.Response(body=cluster.sign_for(env.sender, {"t": kind, **body}),
                        content_type="application/msgpack")


def _path_file_id(request: web.Request, message: dict) -> str:
    file_id = request.match_info["file_id"]
    if message.get("file_id", (message.get("attr") or {}).get("file_id")) != file_id:
        raise BadRequest("the signed request names another file", code="envelope_malformed")
    return file_id


@public
async def put_replica(request: web.Request) -> web.Response:
    """A copy of a file another member stored (its attr in the signed header)."""
    cluster = _cluster(request)
    env = _signed(request, cluster, "replica")
    message = env.message
    file_id = _path_file_id(request, message)
    if not isinstance(message.get("attr"), dict) or not isinstance(message.get("origin"),
                                                                    dict):
        raise BadRequest("a replica request carries attr and origin", code="envelope_malformed")
    attr = await cluster.replicator.take_replica(message["attr"], message["origin"],
                                                 request.content.iter_chunked(1 << 20))
    response = _answer(cluster, env, "stored", {"file_id": file_id,
                                                "version": attr.get("version")})
    response.set_status(201)
    return response


def _attr_header(cluster, env, attr: dict) -> str:
    return RP.encode_header(cluster.sign_for(env.sender, {"t": "attr", "attr": attr}))


@public
async def get_replica(request: web.Request) -> web.StreamResponse:
    """A file's bytes (with the download's Range and ETag rules) and its attr, for a
    member that lacks it; ``?meta=1``: the attr only."""
    svc = services(request)
    cluster = _cluster(request)
    env = _signed(request, cluster, "fetch")
    file_id = _path_file_id(request, env.message)
    if request.query.get("meta") == "1":
        entry = await blocking(svc.store.get, file_id)
        return web.Response(status=200,
                            headers={RP.ATTR_HEADER: _attr_header(cluster, env, entry.attr)})

    def open_and_build():
        entry, fobj = svc.store.open_content(file_id)
        response = download.build_response(request, entry.attr, fobj)
        response.headers[RP.ATTR_HEADER] = _attr_header(cluster, env, entry.attr)
        return response
    return await blocking(open_and_build)


@public
async def bundle(request: web.Request) -> web.StreamResponse:
    """Many files' attrs and bytes in one answer (``cluster.bundle``), for a member that
    lacks them."""
    cluster = _cluster(request)
    env = await _signed_body(request, cluster, "bundle")
    return await bundle_wire.serve(request, cluster, env, services(request).store)


@public
async def changes(request: web.Request) -> web.Response:
    """Records of this node's WAL after a sequence, long-polled (for members)."""
    cluster = _cluster(request)
    env = await _signed_body(request, cluster, "changes")
    message = env.message
    after, limit, wait = message.get("after"), message.get("limit"), message.get("wait")
    if not (type(after) is int and after >= 0 and type(limit) is int and 1 <= limit <= 1000
            and isinstance(wait, (int, float)) and 0 <= wait <= 60):
        raise ValidationError("after >= 0, limit 1-1000, wait 0-60 s", code="invalid_changes")
    batch = await cluster.replicator.changes(after, limit, float(wait))
    return _answer(cluster, env, "changes", batch)


@public
async def have(request: web.Request) -> web.Response:
    """Which of the files a member names this node lacks (for anti-entropy)."""
    svc = services(request)
    cluster = _cluster(request)
    env = await _signed_body(request, cluster, "have")
    ids = env.message.get("ids")
    if not isinstance(ids, list) or len(ids) > 10_000:
        raise BadRequest("send {t: have, ids: [...]} (at most 10,000)",
                         code="envelope_malformed")
    if env.message.get("held"):
        # The tombstone question: which of these does this node still hold?
        return _answer(cluster, env, "have", {"held": await blocking(held_here, svc.store,
                                                                     ids)})
    missing = await blocking(missing_here, svc.store, ids)
    return _answer(cluster, env, "have",
                   {"missing": missing, "document_version": cluster.doc.version})


@public
async def digest(request: web.Request) -> web.Response:
    """Anti-entropy digests: of the files this node and the asking member both own, the
    digest of every bucket; or, with ``list``, file id → version in as many of those
    buckets as fit in one answer, and which buckets those are."""
    cluster = _cluster(request)
    env = await _signed_body(request, cluster, "digest")
    message = env.message
    wanted = message.get("list")
    if wanted is not None and not (isinstance(wanted, list) and len(wanted) <= 65_536 and
                                   all(type(b) is int and b >= 0 for b in wanted)):
        raise BadRequest("list: bucket numbers", code="envelope_malformed")
    repairer = cluster.replicator.repairer
    if wanted is None:
        answer = {"digests": await blocking(repairer.listing, env.sender, None)}
    else:
        files, listed = await blocking(repairer.listing_page, env.sender, wanted)
        answer = {"files": files, "buckets": listed}
    answer["document_version"] = cluster.doc.version
    return _answer(cluster, env, "digest", answer)


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def repair(request: web.Request) -> web.Response:
    """Start an anti-entropy pass now: over everything, or ``{"file_ids": [...]}`` first."""
    cluster = _cluster(request)
    body = await read_json(request) if request.can_read_body else {}
    ids = body.get("file_ids") if isinstance(body, dict) else None
    if ids is not None and (not isinstance(ids, list) or len(ids) > 100_000 or
                            not all(isinstance(i, str) and len(i) <= 64 for i in ids)):
        raise ValidationError("file_ids must be a list of file ids", code="invalid_repair")
    cluster.replicator.repairer.request(ids or None)
    return json_response({"queued": True, "file_ids": len(ids or [])}, status=202)


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
    router.add_put("/cluster/v1/objects/{file_id}", put_replica)
    router.add_get("/cluster/v1/objects/{file_id}", get_replica)
    router.add_post("/cluster/v1/changes", changes)
    router.add_post(RP.BUNDLE, bundle)
    router.add_post("/cluster/v1/have", have)
    router.add_post("/cluster/v1/digest", digest)
    router.add_post("/api/v1/cluster/repair", repair)
    router.add_get("/api/v1/cluster", status)
    router.add_put("/api/v1/cluster/members/{node_id}", admit)
    router.add_delete("/api/v1/cluster/members/{node_id}", remove)
    router.add_put("/api/v1/cluster/members/{node_id}/mode", set_mode)
