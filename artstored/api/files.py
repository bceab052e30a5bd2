"""``/api/v1/files``: upload, list, metadata, download, merge-patch, delete."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

from aiohttp import web

from ..auth import roles as R
from ..engine import attrs as A
from ..engine import catalog, replica
from ..engine.node import b64url
from ..engine import modes as M
from ..cluster import reads
from ..cluster.replicator import QuorumNotReached
from ..engine.errors import (BadRequest, FileNotFound, NotReady, PreconditionFailed,
                             ValidationError)
from . import download
from .params import ascii_int
from .app import actor_of, requires
from .responses import json_response, read_json
from .state import blocking, quick_read, services
from .upload import receive_upload

ACKS = ("local", "quorum", "all")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def metadata_etag(attr: dict) -> str:
    return f'"v{attr.get("version", 1)}"'


def parse_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    value = ascii_int(raw, 1, MAX_LIMIT)
    if value is None:
        raise BadRequest(f"limit must be 1-{MAX_LIMIT}", code="invalid_limit")
    return value


@requires(R.USER, R.FILES_WRITE)
async def upload(request: web.Request) -> web.Response:
    svc = services(request)
    if svc.stopping:
        raise NotReady("the daemon is shutting down; retry on another node or later")
    ack = parse_ack(request)
    prepared = await receive_upload(request, svc.store, actor_of(request),
                                    svc.config["server.client_max_fields_bytes"])
    attr = await asyncio.wrap_future(svc.store.commit_upload(prepared))
    return await answer_stored(svc, attr, prepared.seq, ack)


def parse_ack(request: web.Request) -> str | None:
    ack = request.query.get("ack")
    if ack is not None and ack not in ACKS:
        raise BadRequest("ack must be local, quorum or all", code="invalid_ack")
    return ack


async def answer_stored(svc, attr: dict, seq: int, ack: str | None) -> web.Response:
    """The 201 for a file just committed here, once ``ack`` (or the configured one) is met
    in a cluster: the record, and which nodes hold it. QuorumNotReached (503) otherwise;
    the file stays stored here either way."""
    location = f"/api/v1/files/{attr['file_id']}"
    holders = await replicate_stored(svc, attr, seq, ack)
    body = attr if holders is None else {**attr, "replicas": holders}
    return json_response(body, status=201,
                         headers={"Location": location, "ETag": metadata_etag(attr)})


async def replicate_stored(svc, attr: dict, seq: int, ack: str | None) -> list | None:
    """In a cluster, wait until ``ack`` (or the configured one) is met for a file just
    committed here and return the nodes holding it; None outside a cluster. Raises
    QuorumNotReached (503; the file stays stored here and is replicated later)."""
    if svc.cluster is None:
        return None
    ack = ack or svc.config["replication.ack"]
    if svc.cluster.membership is None:
        if ack != "local":
            # Waiting to join (or taken off the roster): there is nobody to copy it to.
            raise QuorumNotReached(
                f"stored durably here; this node is not on the cluster's roster, so "
                f"ack={ack} cannot be met yet", file_id=attr["file_id"],
                holders=[svc.cluster.id])
        return [svc.cluster.id]
    return await svc.cluster.replicator.replicate_upload(attr, seq, ack)


@requires(R.USER, R.FILES_READ)
async def list_files(request: web.Request) -> web.Response:
    svc = services(request)
    svc.store.require(M.READ_METADATA)
    order = request.query.get("order", catalog.DESC)
    if order not in (catalog.ASC, catalog.DESC):
        raise BadRequest("order must be asc or desc", code="invalid_order")
    limit = parse_limit(request)
    # A page of the default size is a short read; a larger one is CPU enough for the pool.
    read = quick_read if limit <= DEFAULT_LIMIT else blocking
    items, next_cursor = await read(svc.store.list, limit=limit,
                                    cursor=request.query.get("cursor"), order=order)
    return json_response({"items": items, "next_cursor": next_cursor})


@requires(R.USER, R.FILES_READ)
async def get_file(request: web.Request) -> web.Response:
    svc = services(request)
    svc.store.require(M.READ_METADATA)
    file_id = request.match_info["file_id"]
    headers = {}
    try:
        attr = (await quick_read(svc.store.get, file_id)).attr
    except FileNotFound:
        if not _in_cluster(svc):
            raise
        # Not held here: from a node that holds it.
        node, attr = await reads.fetch_attr(svc.cluster, svc.cluster.replicator.session,
                                            file_id)
        headers[reads.SERVED_BY] = node
    etag = metadata_etag(attr)
    if request.headers.get("If-None-Match", "").strip() == etag:
        return web.Response(status=304, headers={"ETag": etag, **headers})
    return json_response(attr, headers={"ETag": etag, **headers})


def _in_cluster(svc) -> bool:
    return svc.cluster is not None and svc.cluster.membership is not None


@requires(R.USER, R.FILES_READ)
async def download_file(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    def open_and_build():
        entry, fobj = svc.store.open_content(request.match_info["file_id"])
        return download.build_response(request, entry.attr, fobj)
    try:
        # In the pool, never on the loop: opening and reading touch the file's disk, and a
        # disk that hangs must stall only the requests for its files.
        return await blocking(open_and_build)
    except FileNotFound:
        if not _in_cluster(svc):
            raise
        return await reads.proxy_download(svc.cluster, svc.cluster.replicator.session,
                                          request, request.match_info["file_id"])


def _expected_version(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tag = header.strip()
    version = ascii_int(tag[2:-1], 1, 2 ** 62) \
        if tag.startswith('"v') and tag.endswith('"') else None
    if version is not None:
        return version
    raise PreconditionFailed("If-Match takes the ETag of the metadata, such as \"v3\"")


@requires(R.USER, R.FILES_WRITE)
async def patch_file(request: web.Request) -> web.Response:
    svc = services(request)
    if request.content_type not in ("application/merge-patch+json", "application/json"):
        raise ValidationError("send a JSON merge patch (application/merge-patch+json)",
                              code="unsupported_media_type")
    patch = await read_json(request)
    file_id = request.match_info["file_id"]
    try:
        attr = await blocking(svc.store.patch, file_id, patch, actor_of(request),
                              expected_version=_expected_version(request))
    except FileNotFound:
        if not _in_cluster(svc):
            raise
        # Not held here: changed on a node that holds it (and from there everywhere).
        return await reads.forward_change(svc.cluster, svc.cluster.replicator.session,
                                          request, file_id, json.dumps(patch).encode())
    return json_response(attr, headers={"ETag": metadata_etag(attr)})


@requires(R.OPERATOR, R.FILES_WRITE)
async def delete_file(request: web.Request) -> web.Response:
    svc = services(request)
    file_id = request.match_info["file_id"]
    try:
        await blocking(svc.store.delete, file_id, actor_of(request))
    except FileNotFound:
        if not _in_cluster(svc):
            raise
        return await reads.forward_change(svc.cluster, svc.cluster.replicator.session,
                                          request, file_id, None)
    return web.Response(status=204)


def fixity_report(store, file_id: str) -> dict:
    """What can be proven about a file: its digests, the signature over them and the key
    that checks it, and its last fixity check (``null`` if never)."""
    entry = store.get(file_id)
    attr = entry.attr
    record = store.view.fixity(file_id)
    last = None
    if record is not None:
        last = {"checked_at": A.format_time(datetime.fromtimestamp(
                    record["last_verified"] / 1e6, tz=timezone.utc)),
                "outcome": record["outcome"], "detail": record.get("detail")}
        if record.get("quarantine"):
            last["quarantine"] = {"reason": record["quarantine"]["reason"],
                                  "path": record["quarantine"]["path"]}
    signature = attr.get("signature") or {}
    return {
        "file_id": file_id, "file_size": attr["file_size"],
        "digests": {"sha256": attr.get("checksum_sha256"), "xxh3_128": attr.get("xxh3_128")},
        "signature": {"algorithm": signature.get("alg"), "key_id": signature.get("key_id"),
                      "value": signature.get("value"),
                      "valid": replica.signature_valid(store, attr)},
        "public_key": {"algorithm": "Ed25519", "key_id": store.node.node_id,
                       "value": b64url(bytes(store.node.key.verify_key))},
        "origin_node": attr.get("origin_node"),
        "last_verification": last,
        # One node holds one copy; the cluster will list its replicas here.
        "replicas": [{"node_id": store.node.node_id, "disk": entry.disk,
                      "state": "quarantined" if last and last.get("quarantine") else "stored"}],
    }


@requires(R.USER, R.FILES_READ)
async def get_fixity(request: web.Request) -> web.Response:
    svc = services(request)
    svc.store.require(M.READ_METADATA)
    return json_response(await blocking(fixity_report, svc.store,
                                        request.match_info["file_id"]))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/files", upload)
    router.add_get("/api/v1/files", list_files)
    router.add_get("/api/v1/files/{file_id}", get_file)
    router.add_get("/api/v1/files/{file_id}/download", download_file)  # HEAD too
    router.add_get("/api/v1/files/{file_id}/fixity", get_fixity)
    router.add_patch("/api/v1/files/{file_id}", patch_file)
    router.add_delete("/api/v1/files/{file_id}", delete_file)
