"""Object operations: PutObject, GetObject, HeadObject, DeleteObject(s), CopyObject,
GetObjectRetention.

An object is one ArtStore file whose attr.json names its bucket and key. A PUT never
overwrites: it stores a new file and the key's newest file is its current version (the
version id is the file id). ``x-amz-meta-*`` headers become ``custom_attributes``. The ETag is
the content's SHA-256 in quotes (as the native download's), not an MD5: clients that take a
32-digit ETag for an MD5 then never compare it with one.

Deletes go through the engine's delete, so the element's mode and retention decide: outside
``edit`` every delete is AccessDenied, naming the mode. A DeleteObject without a version id
removes every version of the key (the key is gone, as a client of an unversioned bucket
expects); with one, that version only.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import timezone
from email.utils import parsedate_to_datetime

from aiohttp import web

from ..api import download
from ..api.files import replicate_stored
from ..api.state import SERVICES, blocking
from ..auth import roles as R
from ..engine import attrs as A
from ..engine import buckets
from ..engine import modes as M
from ..engine.errors import ArtStoreError, FileNotFound, ModeNotAllowed
from ..engine.uploads import UploadRequest
from ..streaming import stream_to_writer
from .context import answer_when_done, caller, not_implemented, target
from .body import Body
from .xml import S3Error, element, fields, http_time, iso_time, response

SMALL_BYTES = 256 * 1024
META_PREFIX = "x-amz-meta-"
FAR_FUTURE = "9999-12-31T00:00:00.000Z"
MAX_DELETE_KEYS = 1000


def route(method: str, query: dict, headers):
    if method in ("GET", "HEAD"):
        if "retention" in query:
            return get_retention
        if "legal-hold" in query or "tagging" in query or "acl" in query:
            return not_implemented("object subresources other than retention")
        return get_object
    if method == "PUT":
        if "tagging" in query or "acl" in query or "retention" in query or \
                "legal-hold" in query:
            return not_implemented("changing an object's tags, ACL or retention")
        return copy_object if "x-amz-copy-source" in headers else put_object
    if method == "DELETE":
        return delete_object
    return not_implemented(f"{method} on an object")


def etag(attr: dict) -> str:
    return f'"{attr["checksum_sha256"]}"'


def _store(request):
    return request.app[SERVICES].store


def user_metadata(headers) -> dict:
    """``x-amz-meta-*`` headers as custom attributes (names lowercased, values as sent)."""
    meta = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(META_PREFIX) and len(lower) > len(META_PREFIX):
            meta[lower[len(META_PREFIX):]] = value
    return meta


def _upload_request(where, *, meta: dict, content_type: str | None,
                    declared_sha256: str | None) -> UploadRequest:
    return UploadRequest(original_filename=buckets.filename_of(where.key), content_type=content_type,
                         custom_attributes=meta, declared_sha256=declared_sha256,
                         bucket=where.bucket, object_key=where.key)


async def store_body(request: web.Request, body: Body, make_request) -> dict:
    """Stream ``body`` into a new file and commit it once every check passed; returns the
    attr once it is durable here (and, in a cluster, on as many nodes as replication.ack
    asks). ``make_request()`` builds the UploadRequest after the body (a trailer may declare
    the SHA-256). Nothing is kept when a check fails."""
    store = _store(request)
    writer = None
    try:
        if body.expected_size <= SMALL_BYTES:
            pieces = [bytes(p) async for p in body.pieces()]
            prepared = store.prepare_buffered(pieces, make_request(), caller(request).actor)
            writer = prepared.writer     # aborted below if the body fails its checks
            body.verify(prepared.entry.attr["checksum_sha256"])
        else:
            writer = await blocking(store.begin_upload, body.expected_size)
            await stream_to_writer(body.pieces(), writer)
            prepared = await blocking(store.finish_upload, writer, make_request(),
                                      caller(request).actor)
            body.verify(writer.sha256_hex)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    attr = await asyncio.wrap_future(store.commit_upload(prepared))
    await replicate_stored(request.app[SERVICES], attr, prepared.seq, None)
    return attr


def _object_headers(attr: dict, mode: str, *, checksum: bool) -> dict:
    """S3's headers of an object; ``checksum``: the whole object's SHA-256 too (asked for
    with ``x-amz-checksum-mode: ENABLED``; never with a part of it, which clients check
    against it)."""
    headers = {"ETag": etag(attr), "Last-Modified": http_time(attr["created_at"]),
               "x-amz-version-id": attr["file_id"]}
    if checksum:
        headers["x-amz-checksum-sha256"] = base64.b64encode(
            bytes.fromhex(attr["checksum_sha256"])).decode("ascii")
        headers["x-amz-checksum-type"] = "FULL_OBJECT"
    for name, value in (attr.get("custom_attributes") or {}).items():
        text = value if isinstance(value, str) else A._dumps(value)
        if text.isascii() and text.isprintable():
            headers[META_PREFIX + name] = text
    lock = lock_of(attr, mode)
    if lock is not None:
        headers["x-amz-object-lock-mode"] = "COMPLIANCE"
        headers["x-amz-object-lock-retain-until-date"] = lock
    return headers


def lock_of(attr: dict, mode: str) -> str | None:
    """When the file's retention ends, as Object Lock reports it; None if a request may
    delete it (an ``edit`` element). Permanent files are kept for ever."""
    if mode == M.EDIT:
        return None
    if attr.get("retention_policy") == "temporary" and attr.get("expires_at"):
        return iso_time(attr["expires_at"])
    return FAR_FUTURE


async def put_object(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    where = target(request)
    store = _store(request)
    store.require(M.UPLOAD)
    body = Body(request, who.signed, store.config.max_upload_bytes)
    meta = user_metadata(request.headers)
    _check_name_first(store, where)
    attr = await store_body(request, body, lambda: _upload_request(
        where, meta=meta, content_type=request.headers.get("Content-Type"),
        declared_sha256=body.declared_sha256()))
    return web.Response(status=200, headers={"ETag": etag(attr),
                                             "x-amz-version-id": attr["file_id"]})


def _check_name_first(store, where) -> None:
    """NoSuchBucket / InvalidArgument before a byte of the body is read (the engine checks
    again when it prepares the file)."""
    buckets.validate_object_key(where.key)
    with store.view.snapshot() as snap:
        snap.buckets().require_bucket(where.bucket)


def resolve(snap, where, version: str | None):
    """The catalog entry of the object (its newest version, or ``version``)."""
    index = snap.buckets()
    index.require_bucket(where.bucket)
    versions = index.versions(where.bucket, where.key)
    if version is not None and version != "null":
        if version not in versions:
            raise S3Error("NoSuchVersion", "the specified version does not exist", 404,
                          Key=where.key, VersionId=version)
        file_id = version
    elif not versions:
        raise S3Error("NoSuchKey", "the specified key does not exist", 404, Key=where.key)
    else:
        file_id = versions[-1]
    entry = snap.entry(file_id)
    if entry is None:
        raise S3Error("NoSuchKey", "the specified key does not exist", 404, Key=where.key)
    return entry


def _check_dates(request: web.Request, attr: dict) -> None:
    """If-Modified-Since (304) and If-Unmodified-Since (412), at one-second precision."""
    if "If-Unmodified-Since" not in request.headers and \
            "If-Modified-Since" not in request.headers:
        return
    modified = A.parse_time(attr["created_at"]).replace(microsecond=0)

    def when(name):
        raw = request.headers.get(name)
        if not raw:
            return None
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        # "-0000" parses without a zone: it is UTC all the same.
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    since = when("If-Unmodified-Since")
    if since is not None and "If-Match" not in request.headers and modified > since:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                      "specified did not hold", 412, Condition="If-Unmodified-Since")
    since = when("If-Modified-Since")
    if since is not None and "If-None-Match" not in request.headers and modified <= since:
        raise _NotModified()


class _NotModified(Exception):
    pass


async def get_object(request: web.Request) -> web.StreamResponse:
    caller(request).need(R.FILES_READ)
    where = target(request)
    store = _store(request)
    version = where.query.get("versionId")

    def open_and_build():
        store.require(M.READ_METADATA if request.method == "HEAD" else M.READ_CONTENT)
        with store.view.snapshot() as snap:
            entry = resolve(snap, where, version)
        attr = entry.attr
        try:
            _check_dates(request, attr)
        except _NotModified:
            return web.Response(status=304, headers={"ETag": etag(attr)})
        if request.method == "HEAD" and store.mode == M.AR:
            # Archived: the content is offline, its size and metadata are not.
            built = web.StreamResponse(status=200, headers={
                "Accept-Ranges": "bytes", "Content-Type": attr["content_type"]})
            built.content_length = attr["file_size"]
        else:
            _, fobj = store.open_entry(entry)
            built = download.build_response(request, attr, fobj, native_headers=False)
        if built.status < 300:
            wants = request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
            built.headers.update(_object_headers(attr, store.mode,
                                                 checksum=wants and built.status == 200))
        return built
    try:
        return await blocking(open_and_build)
    except ArtStoreError as exc:
        if exc.code == "precondition_failed":
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold", 412, Condition="If-Match") from None
        raise


async def get_retention(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    store = _store(request)

    def read():
        with store.view.snapshot() as snap:
            return resolve(snap, target(request), target(request).query.get("versionId"))
    attr = (await blocking(read)).attr
    until = lock_of(attr, store.mode)
    if until is None:
        raise S3Error("NoSuchObjectLockConfiguration", "the object has no retention: this "
                      "element (mode edit) lets requests delete it", 404)
    root = element("Retention")
    fields(root, Mode="COMPLIANCE", RetainUntilDate=until)
    return response(root)


def _deletable(store) -> None:
    """AccessDenied naming the mode unless the element allows deletes."""
    try:
        store.require(M.DELETE)
    except ModeNotAllowed:
        raise S3Error("AccessDenied", f"deletes are not allowed: the element is in mode "
                      f"{store.mode!r} (only an edit element deletes files)", 403) from None


def _delete_key(store, actor, bucket: str, key: str, version: str | None) -> list[str]:
    """Delete one version, or every version of a key; the file ids removed. A key or
    version that is not there is no error (S3 answers 204 alike)."""
    with store.view.snapshot() as snap:
        snap.buckets().require_bucket(bucket)
        versions = snap.buckets().versions(bucket, key)
    if version is not None:
        versions = [v for v in versions if v == version]
    removed = []
    for file_id in versions:
        try:
            store.delete(file_id, actor, reason="s3 delete")
        except FileNotFound:
            continue
        removed.append(file_id)
    return removed


async def delete_object(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    store = _store(request)
    _deletable(store)
    where = target(request)
    version = where.query.get("versionId")
    await blocking(_delete_key, store, who.actor, where.bucket, where.key, version)
    headers = {"x-amz-version-id": version} if version else {}
    return web.Response(status=204, headers=headers)


async def delete_objects(request: web.Request) -> web.Response:
    """POST /bucket?delete: up to 1,000 keys; each is reported Deleted or as an Error."""
    who = caller(request)
    who.need(R.FILES_WRITE)
    store = _store(request)
    body = Body(request, who.signed, 2 << 20, hash_here=True)
    raw = b"".join([bytes(p) async for p in body.pieces()])
    body.verify()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    items = [(o.findtext(f"{ns}Key"), o.findtext(f"{ns}VersionId"))
             for o in root.findall(f"{ns}Object")]
    quiet = (root.findtext(f"{ns}Quiet") or "").strip().lower() == "true"
    if not items or len(items) > MAX_DELETE_KEYS or any(not k for k, _ in items):
        raise S3Error("MalformedXML", f"name 1-{MAX_DELETE_KEYS} objects, each with a Key")
    bucket = target(request).bucket
    result = element("DeleteResult")
    for key, version in items:
        try:
            _deletable(store)
            await blocking(_delete_key, store, who.actor, bucket, key, version)
            if not quiet:
                fields(element("Deleted", result), Key=key, VersionId=version)
        except (S3Error, ArtStoreError) as exc:
            if isinstance(exc, ArtStoreError):
                from .xml import from_engine
                exc = from_engine(exc)
            if exc.code == "NoSuchBucket":
                raise
            fields(element("Error", result), Key=key, VersionId=version, Code=exc.code,
                   Message=exc.message)
    return response(result)


class CopySource:
    """The object ``x-amz-copy-source`` names: /bucket/key, maybe ?versionId=."""

    def __init__(self, bucket: str, key: str, version: str | None):
        self.bucket, self.key, self.version = bucket, key, version


def copy_source(request: web.Request) -> CopySource:
    raw = request.headers["x-amz-copy-source"]
    path, _, query = raw.partition("?")
    path = urllib.parse.unquote(path).lstrip("/")
    bucket, _, key = path.partition("/")
    version = dict(urllib.parse.parse_qsl(query)).get("versionId") if query else None
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be /bucket/key")
    return CopySource(bucket, key, version)


async def copy_object(request: web.Request) -> web.Response:
    """A new file under the target key with the source's bytes (read from the archive,
    hashed again and checked against the source's SHA-256 before it is committed)."""
    who = caller(request)
    who.need(R.FILES_WRITE)
    who.need(R.FILES_READ)
    store = _store(request)
    store.require(M.UPLOAD)
    where = target(request)
    source = copy_source(request)
    src_version = source.version

    def copy():
        with store.view.snapshot() as snap:
            entry = resolve(snap, source, src_version)
        attr = entry.attr
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "x-amz-metadata-directive must be COPY or "
                          "REPLACE")
        if directive == "COPY":
            meta, content_type = attr.get("custom_attributes") or {}, attr["content_type"]
        else:
            meta = user_metadata(request.headers)
            content_type = request.headers.get("Content-Type")
        _, fobj = store.open_entry(entry)
        writer = store.begin_upload(attr["file_size"])
        try:
            with fobj:
                while chunk := fobj.read(1 << 20):
                    writer.write(chunk)
            prepared = store.finish_upload(writer, _upload_request(
                where, meta=meta, content_type=content_type,
                declared_sha256=attr["checksum_sha256"]), who.actor)
        except BaseException:
            writer.abort()
            raise
        attr = store.commit_upload(prepared).result()
        return attr, prepared.seq
    await request.read()

    def render(done):
        attr, _ = done
        root = element("CopyObjectResult")
        fields(root, ETag=etag(attr), LastModified=iso_time(attr["created_at"]))
        return root, {"x-amz-version-id": attr["file_id"],
                      **({"x-amz-copy-source-version-id": src_version}
                         if src_version else {})}
    return await answer_when_done(
        request, copy, render,
        after=lambda done: replicate_stored(request.app[SERVICES], done[0], done[1], None))
