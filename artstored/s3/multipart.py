"""Multipart upload: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads.

Parts are stored durably as they arrive (``engine.multipart``): a client whose connection
dropped mid-part lists the parts (ListParts) and sends again only what is missing. A part's
ETag is its SHA-256 in quotes; the completed object is one ArtStore file with the SHA-256 of
the whole as its ETag. An upload that gets no part for ``uploads.abandoned_days`` is
aborted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from aiohttp import web

from ..api.files import replicate_stored
from ..api.state import SERVICES, blocking
from ..auth import roles as R
from ..engine import modes as M
from ..streaming import stream_to_writer
from .context import answer_when_done, caller, not_implemented, target
from .body import Body
from . import objects
from .objects import etag, user_metadata
from .xml import S3Error, element, fields, iso_time, response

MAX_LISTED = 1000


def route(method: str, query: dict):
    if method == "POST" and "uploads" in query:
        return create
    if "uploadId" in query:
        if method == "PUT":
            return upload_part
        if method == "POST":
            return complete
        if method == "DELETE":
            return abort
        if method == "GET":
            return list_parts
    return not_implemented(f"{method} with ?uploads/?uploadId")


def _uploads(request):
    return request.app[SERVICES].multipart


def _upload_of(request) -> dict:
    """The upload named by ?uploadId, which must be of this bucket and key."""
    where = target(request)
    try:
        record = _uploads(request).get(where.query["uploadId"])
    except Exception:
        record = None
    if record is None or (record["bucket"], record["key"]) != (where.bucket, where.key):
        raise S3Error("NoSuchUpload", "the specified multipart upload does not exist", 404,
                      UploadId=where.query.get("uploadId"))
    return record


async def create(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    where = target(request)
    await request.read()
    upload_id = await blocking(_uploads(request).create, where.bucket, where.key, who.actor,
                               content_type=request.headers.get("Content-Type"),
                               custom_attributes=user_metadata(request.headers))
    root = element("InitiateMultipartUploadResult")
    fields(root, Bucket=where.bucket, Key=where.key, UploadId=upload_id)
    return response(root)


def _part_target(request: web.Request):
    """(store, target, part number) of an UploadPart(Copy), its upload checked."""
    store = request.app[SERVICES].store
    store.require(M.UPLOAD)
    where = target(request)
    raw = where.query.get("partNumber", "")
    if not (raw.isascii() and raw.isdigit()):
        raise S3Error("InvalidArgument", "partNumber must be 1-10000")
    _upload_of(request)
    return store, where, int(raw)


async def upload_part(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    if "x-amz-copy-source" in request.headers:
        return await upload_part_copy(request)
    store, where, number = _part_target(request)
    body = Body(request, who.signed, store.config.max_upload_bytes)
    writer = await blocking(_uploads(request).part_writer, where.query["uploadId"], number)
    try:
        await stream_to_writer(body.pieces(), writer)
        body.verify(writer.sha256_hex)
        declared = body.declared_sha256()
        if declared is not None and declared != writer.sha256_hex:
            raise S3Error("BadDigest", "the SHA256 you specified did not match the "
                          "calculated checksum")
        part = await blocking(writer.commit)
    except BaseException:
        writer.abort()
        raise
    return web.Response(status=200, headers={"ETag": f'"{part["sha256"]}"'})


def _copy_range(header: str | None, size: int) -> tuple[int, int]:
    """(offset, length) of ``x-amz-copy-source-range: bytes=first-last`` (inclusive)."""
    if header is None:
        return 0, size
    text = header.strip()
    first, sep, last = text.removeprefix("bytes=").partition("-")
    if not text.startswith("bytes=") or not sep or not all(
            v.isascii() and v.isdigit() for v in (first, last)):
        raise S3Error("InvalidArgument", "x-amz-copy-source-range must be bytes=first-last")
    start, end = int(first), int(last)
    if start > end or end >= size:
        raise S3Error("InvalidRange", f"the range {text[:60]} does not fit the source's "
                      f"{size} bytes", 416)
    return start, end - start + 1


async def upload_part_copy(request: web.Request) -> web.StreamResponse:
    """UploadPartCopy: a part made of (a range of) a stored object's bytes."""
    who = caller(request)
    who.need(R.FILES_READ)
    store, where, number = _part_target(request)
    source = objects.copy_source(request)
    await request.read()

    def work():
        with store.view.snapshot() as snap:
            entry = objects.resolve(snap, source, source.version)
        offset, length = _copy_range(request.headers.get("x-amz-copy-source-range"),
                                     entry.size)
        _, fobj = store.open_entry(entry)
        writer = _uploads(request).part_writer(where.query["uploadId"], number)
        try:
            with fobj:
                fobj.seek(offset)
                left = length
                while left > 0:
                    chunk = fobj.read(min(4 << 20, left))
                    if not chunk:
                        raise S3Error("InternalError", "the source ended early", 500)
                    writer.write_many([chunk])
                    left -= len(chunk)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def render(part):
        root = element("CopyPartResult")
        fields(root, ETag=f'"{part["sha256"]}"', LastModified=iso_time(part["at"]))
        return root, {}
    return await answer_when_done(request, work, render)


def _parse_completion(raw: bytes) -> list[tuple[int, str | None]]:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    parts = []
    for node in root.findall(f"{ns}Part"):
        number = (node.findtext(f"{ns}PartNumber") or "").strip()
        tag = (node.findtext(f"{ns}ETag") or "").strip().strip('"').lower() or None
        if not (number.isascii() and number.isdigit()):
            raise S3Error("MalformedXML", "each Part needs a PartNumber")
        parts.append((int(number), tag))
    if not parts:
        raise S3Error("MalformedXML", "name at least one Part")
    return parts


async def complete(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    where = target(request)
    _upload_of(request)
    body = Body(request, who.signed, 4 << 20, hash_here=True)
    raw = b"".join([bytes(p) async for p in body.pieces()])
    body.verify()
    parts = _parse_completion(raw)

    def render(done):
        attr, _ = done
        root = element("CompleteMultipartUploadResult")
        fields(root, Location=f"/{where.bucket}/{where.key}", Bucket=where.bucket,
               Key=where.key, ETag=etag(attr))
        return root, {"x-amz-version-id": attr["file_id"]}
    return await answer_when_done(
        request, lambda: _uploads(request).complete(where.query["uploadId"], parts), render,
        after=lambda done: replicate_stored(request.app[SERVICES], done[0], done[1], None))


async def abort(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_WRITE)
    _upload_of(request)
    await blocking(_uploads(request).abort, target(request).query["uploadId"])
    return web.Response(status=204)


def _limit(query: dict, name: str) -> int:
    raw = query.get(name, str(MAX_LISTED))
    if not (raw.isascii() and raw.isdigit()):
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer")
    return min(int(raw), MAX_LISTED)


async def list_parts(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    record = _upload_of(request)
    query = target(request).query
    limit = _limit(query, "max-parts")
    raw = query.get("part-number-marker") or "0"
    marker = int(raw) if raw.isascii() and raw.isdigit() else 0
    parts = sorted((p for p in record["parts"].values() if p["number"] > marker),
                   key=lambda p: p["number"])
    page, truncated = parts[:limit], len(parts) > limit
    root = element("ListPartsResult")
    fields(root, Bucket=record["bucket"], Key=record["key"], UploadId=record["upload_id"],
           PartNumberMarker=marker, MaxParts=limit, IsTruncated=str(truncated).lower())
    if truncated:
        fields(root, NextPartNumberMarker=page[-1]["number"])
    fields(element("Initiator", root), ID=record["actor"]["id"],
           DisplayName=record["actor"]["name"])
    fields(root, StorageClass="STANDARD")
    for part in page:
        fields(element("Part", root), PartNumber=part["number"],
               LastModified=iso_time(part["at"]), ETag=f'"{part["sha256"]}"',
               Size=part["size"])
    return response(root)


async def list_uploads(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_WRITE)
    where = target(request)
    query = where.query

    def read():
        with request.app[SERVICES].store.view.snapshot() as snap:
            snap.buckets().require_bucket(where.bucket)
        return _uploads(request).list(where.bucket)
    records = await blocking(read)
    prefix = query.get("prefix", "")
    after = query.get("key-marker", "")
    after_id = query.get("upload-id-marker", "")
    # In (key, initiated) order; resume after the marker's upload inside its key.
    position = None
    if after and after_id:
        position = next((i for i, r in enumerate(records)
                         if (r["key"], r["upload_id"]) == (after, after_id)), None)
    if position is not None:
        records = records[position + 1:]
    else:
        records = [r for r in records if r["key"].encode() > after.encode()]
    records = [r for r in records if r["key"].startswith(prefix)]
    limit = _limit(query, "max-uploads")
    page, truncated = records[:limit], len(records) > limit
    root = element("ListMultipartUploadsResult")
    fields(root, Bucket=where.bucket, KeyMarker=after, UploadIdMarker=after_id, Prefix=prefix,
           MaxUploads=limit, IsTruncated=str(truncated).lower())
    if truncated:
        fields(root, NextKeyMarker=page[-1]["key"], NextUploadIdMarker=page[-1]["upload_id"])
    for record in page:
        node = element("Upload", root)
        fields(node, Key=record["key"], UploadId=record["upload_id"])
        fields(element("Initiator", node), ID=record["actor"]["id"],
               DisplayName=record["actor"]["name"])
        fields(node, StorageClass="STANDARD", Initiated=iso_time(record["initiated"]))
    return response(root)
