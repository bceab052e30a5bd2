"""Reads of files this node does not hold: served from a node that does.

``GET /api/v1/files/{id}`` and its ``/download`` ask the file's owners first (then the
other members, which may hold a hand-off copy) with a signed ``GET /cluster/v1/objects/
{id}``, passing the client's ``Range``, ``If-Range``, ``If-None-Match`` and ``If-Match``
through, so a proxied answer has the same status, ranges and ETag as a local one. The
answer says which node served it (``X-ArtStore-Served-By``).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from ..engine.errors import ArtStoreError, FileNotFound
from ..replication import envelope as E
from .wire import ATTR_HEADER, CONNECT_SECONDS, HEADER, OBJECTS, decode_header, encode_header

log = logging.getLogger("artstored.cluster.reads")

PASS_THROUGH = ("Range", "If-Range", "If-None-Match", "If-Match")
RELAYED = ("ETag", "Accept-Ranges", "Content-Type", "Content-Disposition", "Repr-Digest",
           "Cache-Control", "X-Content-Type-Options", "Content-Range", "Content-Length")
SERVED_BY = "X-ArtStore-Served-By"


def candidates(cluster, file_id: str) -> list[str]:
    """Who to ask, in order: the owners, then every other member (hand-off copies)."""
    doc = cluster.doc
    if doc is None:
        return []
    owners = cluster.replicator.owners(file_id)
    rest = sorted(n for n in doc.roster if n not in owners)
    return [n for n in owners + rest if n != cluster.id]


async def fetch_attr(cluster, session: aiohttp.ClientSession, file_id: str) -> tuple[str, dict]:
    """(node, attr) of ``file_id`` from the first member that holds it; FileNotFound if
    none does (or none answers)."""
    for node in candidates(cluster, file_id):
        try:
            async with fetch_object(cluster, session, node, file_id, {}, meta=True) as resp:
                if resp.status == 200:
                    return node, attr_of(cluster, resp, node, file_id)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError, ValueError,
                ArtStoreError) as exc:
            log.debug("asking %s for %s: %s", node, file_id, exc)
    raise FileNotFound(f"no file with id {file_id} on any member")


def attr_of(cluster, resp, node: str, file_id: str) -> dict:
    """The attr record in a file answer from ``node``, checked: signed by that node for
    this one, and about this file. Raises an EnvelopeError / KeyError otherwise."""
    answer = cluster.open_answer(decode_header(resp.headers[ATTR_HEADER]), node, "attr")
    attr = answer.get("attr")
    if not isinstance(attr, dict) or attr.get("file_id") != file_id:
        raise E.MalformedEnvelope(f"{node} answered with another file's record")
    return attr


async def proxy_download(cluster, session: aiohttp.ClientSession, request: web.Request,
                         file_id: str) -> web.StreamResponse:
    """Relay the download of ``file_id`` from the first member that holds it."""
    headers = {h: request.headers[h] for h in PASS_THROUGH if h in request.headers}
    for node in candidates(cluster, file_id):
        out = None
        try:
            async with fetch_object(cluster, session, node, file_id, headers, meta=False) as resp:
                if resp.status == 404:
                    continue
                if resp.status in (200, 206):
                    attr_of(cluster, resp, node, file_id)     # the answer is that node's
                out = web.StreamResponse(status=resp.status, headers={
                    **{h: resp.headers[h] for h in RELAYED if h in resp.headers},
                    SERVED_BY: node})
                await out.prepare(request)
                if request.method != "HEAD":
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError,
                ArtStoreError) as exc:
            if out is not None and out.prepared:
                # Part of the body is out: no second answer on this request. Closing
                # short of Content-Length tells the client it was cut.
                log.warning("download of %s from %s cut: %s", file_id, node, exc)
                out.force_close()
                return out
            log.debug("asking %s for %s: %s", node, file_id, exc)
    raise FileNotFound(f"no file with id {file_id} on any member")


def fetch_object(cluster, session, node: str, file_id: str, headers: dict, *, meta: bool):
    """A signed GET of a file (or, ``meta``, its attr) from ``node``: an aiohttp request
    context manager."""
    header = encode_header(cluster.sign_for(node, {"t": "fetch", "file_id": file_id}))
    return session.get(
        f"http://{cluster.doc.address(node)}{OBJECTS}{file_id}" + ("?meta=1" if meta else ""),
        headers={**headers, HEADER: header},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS, sock_read=60))
