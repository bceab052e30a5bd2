"""Bucket operations: ListBuckets, Create/Head/DeleteBucket, ListObjects (V1 and V2),
ListObjectVersions, GetBucketLocation/Versioning/ObjectLockConfiguration.

Listings read one engine snapshot (``Snapshot.buckets()``): a page is consistent. Buckets are
always versioned (a PUT never overwrites) and report Object Lock as the element keeps it.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

from aiohttp import web

from ..api.state import SERVICES, blocking
from ..auth import roles as R
from ..engine import modes as M
from . import objects
from .context import caller, not_implemented, target
from .xml import S3Error, element, fields, iso_time, response

MAX_KEYS = 1000


def route(method: str, query: dict):
    if method == "GET":
        for name, handler in (("list-type", None), ("versions", list_versions),
                              ("location", location), ("versioning", versioning),
                              ("object-lock", object_lock), ("uploads", None)):
            if name in query:
                if name == "list-type":
                    return list_v2 if query[name] == "2" else _bad_list_type
                if name == "uploads":
                    from . import multipart
                    return multipart.list_uploads
                return handler
        unknown = _subresource(query)
        return not_implemented(f"GET ?{unknown}") if unknown else list_v1
    if method == "HEAD":
        return head_bucket
    if method == "PUT":
        unknown = _subresource(query)
        return not_implemented(f"PUT ?{unknown}") if unknown else create_bucket
    if method == "DELETE":
        unknown = _subresource(query)
        return not_implemented(f"DELETE ?{unknown}") if unknown else delete_bucket
    if method == "POST" and "delete" in query:
        return objects.delete_objects
    return not_implemented(f"{method} on a bucket")


_LIST_PARAMS = {"prefix", "delimiter", "marker", "max-keys", "encoding-type",
                "continuation-token", "start-after", "fetch-owner", "key-marker",
                "version-id-marker", "x-id"}


def _subresource(query: dict) -> str | None:
    for name in query:
        if name not in _LIST_PARAMS and not name.startswith("X-Amz-"):
            return name
    return None


async def _bad_list_type(request):
    raise S3Error("InvalidArgument", "list-type must be 2")


def _store(request):
    return request.app[SERVICES].store


def _require_bucket(snap, name: str) -> dict:
    return snap.buckets().require_bucket(name)


async def list_buckets(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    store = _store(request)

    def read():
        with store.view.snapshot() as snap:
            return snap.buckets().buckets()
    records = await blocking(read)
    root = element("ListAllMyBucketsResult")
    owner = element("Owner", root)
    fields(owner, ID=caller(request).account["client_id"],
           DisplayName=caller(request).account["name"])
    listed = element("Buckets", root)
    for record in records:
        fields(element("Bucket", listed), Name=record["name"],
               CreationDate=iso_time(record["created_at"]))
    return response(root)


async def create_bucket(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    store = _store(request)
    store.require(M.UPLOAD)
    await request.read()   # CreateBucketConfiguration (a location constraint): one region
    name = target(request).bucket
    try:
        await blocking(store.create_bucket, name, who.actor)
    except Exception as exc:
        if getattr(exc, "code", None) == "bucket_exists" and \
                exc.extra.get("owner") != who.account["client_id"]:
            raise S3Error("BucketAlreadyExists", f"bucket {name!r} exists and belongs to "
                          "another account", 409) from None
        raise
    return web.Response(status=200, headers={"Location": f"/{name}"})


async def head_bucket(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    store = _store(request)

    def read():
        with store.view.snapshot() as snap:
            _require_bucket(snap, target(request).bucket)
    await blocking(read)
    return web.Response(status=200, headers={"x-amz-bucket-region":
                                             request.app[SERVICES].config["s3.region"]})


async def delete_bucket(request: web.Request) -> web.Response:
    who = caller(request)
    who.need(R.FILES_WRITE)
    mode = _store(request).mode
    if not M.allows(mode, M.UPLOAD):
        raise S3Error("AccessDenied", f"the element is in mode {mode!r}: its buckets do not "
                      "change", 403)
    await blocking(_store(request).delete_bucket, target(request).bucket, who.actor)
    return web.Response(status=204)


async def location(request: web.Request) -> web.Response:
    await head_bucket(request)
    region = request.app[SERVICES].config["s3.region"]
    root = element("LocationConstraint", text=None if region == "us-east-1" else region)
    return response(root)


async def versioning(request: web.Request) -> web.Response:
    await head_bucket(request)
    root = element("VersioningConfiguration")
    fields(root, Status="Enabled")
    return response(root)


async def object_lock(request: web.Request) -> web.Response:
    """The element's retention as Object Lock: outside ``edit``, stored files are never
    deleted by a request, which S3 calls COMPLIANCE mode."""
    await head_bucket(request)
    root = element("ObjectLockConfiguration")
    fields(root, ObjectLockEnabled="Enabled")
    if _store(request).mode != M.EDIT:
        retention = element("DefaultRetention", element("Rule", root))
        fields(retention, Mode="COMPLIANCE", Years=100)
    return response(root)


def _max_keys(query: dict) -> int:
    raw = query.get("max-keys", str(MAX_KEYS))
    if not (raw.isascii() and raw.isdigit()):
        raise S3Error("InvalidArgument", "max-keys must be a non-negative integer")
    return min(int(raw), MAX_KEYS)


def _encoder(query: dict):
    kind = query.get("encoding-type")
    if kind not in (None, "url"):
        raise S3Error("InvalidArgument", "encoding-type must be url")
    if kind == "url":
        import urllib.parse
        return lambda text: urllib.parse.quote(text, safe="/")
    return lambda text: text


def _listing(request, *, after: str, versions: bool = False, after_version=None):
    """(listing, {file id: attr}) of one page, read in one snapshot."""
    query = target(request).query
    store = _store(request)
    store.require(M.READ_METADATA)
    limit = _max_keys(query)

    def read():
        with store.view.snapshot() as snap:
            index = snap.buckets()
            index.require_bucket(target(request).bucket)
            page = index.list(target(request).bucket, prefix=query.get("prefix", ""),
                              delimiter=query.get("delimiter", ""), after=after,
                              limit=limit, versions=versions, after_version=after_version)
            attrs = {}
            for item in page.keys:
                entry = snap.entry(item[1])
                if entry is not None:
                    attrs[item[1]] = entry.attr
            return page, attrs
    return limit, read


def _contents(parent, tag: str, key: str, attr: dict, enc, owner: bool = False):
    node = element(tag, parent)
    fields(node, Key=enc(key), LastModified=iso_time(attr["created_at"]),
           ETag=objects.etag(attr), Size=attr["file_size"], StorageClass="STANDARD")
    if owner:   # the account that stored this version
        fields(element("Owner", node), ID=attr.get("created_by_id"),
               DisplayName=attr.get("created_by_username"))
    return node


def _common(root, page, enc, query) -> None:
    for rolled in page.prefixes:
        fields(element("CommonPrefixes", root), Prefix=enc(rolled))
    if query.get("encoding-type"):
        fields(root, EncodingType="url")


async def list_v2(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    query = target(request).query
    token = query.get("continuation-token")
    after = query.get("start-after", "")
    if token is not None:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise S3Error("InvalidArgument", "the continuation token is not valid") from None
    limit, read = _listing(request, after=after)
    page, attrs = await blocking(read)
    enc = _encoder(query)
    root = element("ListBucketResult")
    fields(root, Name=target(request).bucket, Prefix=enc(query.get("prefix", "")),
           MaxKeys=limit, KeyCount=len(page.keys) + len(page.prefixes),
           IsTruncated=str(page.truncated).lower())
    if query.get("delimiter"):
        fields(root, Delimiter=enc(query["delimiter"]))
    if token is not None:
        fields(root, ContinuationToken=token)
    if "start-after" in query:
        fields(root, StartAfter=enc(query["start-after"]))
    if page.truncated:
        fields(root, NextContinuationToken=base64.urlsafe_b64encode(
            page.next_marker.encode("utf-8")).decode("ascii"))
    owner = query.get("fetch-owner") == "true"
    for key, file_id in page.keys:
        if file_id in attrs:
            _contents(root, "Contents", key, attrs[file_id], enc, owner)
    _common(root, page, enc, query)
    return response(root)


async def list_v1(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    query = target(request).query
    limit, read = _listing(request, after=query.get("marker", ""))
    page, attrs = await blocking(read)
    enc = _encoder(query)
    root = element("ListBucketResult")
    fields(root, Name=target(request).bucket, Prefix=enc(query.get("prefix", "")),
           Marker=enc(query.get("marker", "")), MaxKeys=limit,
           IsTruncated=str(page.truncated).lower())
    if query.get("delimiter"):
        fields(root, Delimiter=enc(query["delimiter"]))
        if page.truncated:
            fields(root, NextMarker=enc(page.next_marker))
    for key, file_id in page.keys:
        if file_id in attrs:
            _contents(root, "Contents", key, attrs[file_id], enc, True)
    _common(root, page, enc, query)
    return response(root)


async def list_versions(request: web.Request) -> web.Response:
    caller(request).need(R.FILES_READ)
    query = target(request).query
    limit, read = _listing(request, after=query.get("key-marker", ""), versions=True,
                           after_version=query.get("version-id-marker") or None)
    page, attrs = await blocking(read)
    enc = _encoder(query)
    root = element("ListVersionsResult")
    fields(root, Name=target(request).bucket, Prefix=enc(query.get("prefix", "")),
           KeyMarker=enc(query.get("key-marker", "")),
           VersionIdMarker=query.get("version-id-marker", ""), MaxKeys=limit,
           IsTruncated=str(page.truncated).lower())
    if query.get("delimiter"):
        fields(root, Delimiter=enc(query["delimiter"]))
    if page.truncated:
        fields(root, NextKeyMarker=enc(page.next_marker),
               NextVersionIdMarker=page.next_version)
    for key, file_id, latest in page.keys:
        if file_id in attrs:
            node = _contents(root, "Version", key, attrs[file_id], enc, True)
            version = ET.Element("VersionId")
            version.text = file_id
            node.insert(1, version)
            latest_node = ET.Element("IsLatest")
            latest_node.text = str(latest).lower()
            node.insert(2, latest_node)
    _common(root, page, enc, query)
    return response(root)
