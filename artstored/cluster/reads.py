"""Reads of files this node does not hold: served from a node that does.

``GET /api/v1/files/{id}`` and its ``/download`` ask the file's owners first (then the
other members, which may hold a hand-off copy) with a signed ``GET /cluster/v1/objects/
{id}``, passing the client's ``Range``, ``If-Range``, ``If-None-Match`` and ``If-Match``
through, so a proxied answer has the same status, ranges and ETag as a local one. The
answer says which node served it (``X-ArtStore-Served-By``).

A metadata change or delete (``PATCH`` / ``DELETE /api/v1/files/{id}``) of a file not held
here is forwarded the same way, as the client sent it (its token is checked again by the
node that holds the file: every member verifies the admin's tokens), and that node's answer
is relayed; the change then reaches the other copies through the change feed.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

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
FORWARDED = "X-ArtStore-Forwarded"   # a forwarded request is not forwarded again
FORWARD_HEADERS = ("Authorization", "Content-Type", "If-Match", "Accept")


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


class HolderUnreachable(ArtStoreError):
    """No member that may hold the file answered: the change was not made (or, if a
    holder went silent after taking the request, may have been)."""

    code = "holder_unreachable"
    status = 503
    title = "The nodes holding this file did not answer"


async def forward_change(cluster, session: aiohttp.ClientSession, request: web.Request,
                         file_id: str, body: bytes | None) -> web.Response:
    """Send the client's PATCH or DELETE of ``file_id`` to the first member that holds it
    (owners first) and relay its answer. The next member is asked only when one refused
    the connection or said it has no such file, so a change is never made twice.
    FileNotFound if every member said so; HolderUnreachable if one could not be asked or
    went silent. A request that was itself forwarded is not forwarded again."""
    if request.headers.get(FORWARDED):
        raise FileNotFound(f"no file with id {file_id} here")
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers[FORWARDED] = cluster.id
    path = f"/api/v1/files/{quote(file_id, safe='')}"
    unreachable = []
    for node in candidates(cluster, file_id):
        address = cluster.doc.address(node)
        if address is None:
            continue
        try:
            async with session.request(
                    request.method, f"http://{address}{path}", data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30, sock_connect=CONNECT_SECONDS)
                    ) as resp:
                answer = await resp.read()
        except aiohttp.ClientConnectorError as exc:
            unreachable.append(node)       # never got the request: ask the next one
            log.debug("forwarding %s of %s to %s: %s", request.method, file_id, node, exc)
            continue
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # It may have made the change: asking another could make it twice.
            raise HolderUnreachable(f"{node} took the {request.method} of {file_id} and did "
                                    f"not answer ({exc}); check the file before retrying",
                                    node=node) from None
        if resp.status == 404 and _not_found(answer):
            continue
        return web.Response(status=resp.status, body=answer, headers={
            **{h: resp.headers[h] for h in ("ETag", "Content-Type") if h in resp.headers},
            SERVED_BY: node})
    if unreachable:
        raise HolderUnreachable(f"no member that answered holds {file_id}; unreachable: "
                                f"{', '.join(unreachable)}", unreachable=unreachable)
    raise FileNotFound(f"no file with id {file_id} on any member")


def _not_found(body: bytes) -> bool:
    """Whether a 404 says the file is not there (rather than something else missing)."""
    return b'"file_not_found"' in body[:2000]
