"""S3's XML: the answers (ListBuckets, ListObjects, ...) and the error documents.

Every S3 failure is an ``S3Error`` with the code clients branch on; ``from_engine`` maps an
engine error to one, once, here (the S3 boundary's only mapping). Bodies are built with
ElementTree (text is escaped by it) in S3's 2006-03-01 namespace.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from aiohttp import web

from ..engine.errors import ArtStoreError

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_TYPE = "application/xml"


class S3Error(Exception):
    """An S3 error answer: ``code`` (AccessDenied, NoSuchKey, ...), HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int = 400, **extra):
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra


# engine code → (S3 code, status); by class status when the code is not named here.
_BY_CODE = {
    "bucket_not_found": ("NoSuchBucket", 404),
    "bucket_exists": ("BucketAlreadyOwnedByYou", 409),
    "bucket_not_empty": ("BucketNotEmpty", 409),
    "file_not_found": ("NoSuchKey", 404),
    "file_deleted": ("NoSuchKey", 404),
    "invalid_bucket_name": ("InvalidBucketName", 400),
    "invalid_object_key": ("InvalidArgument", 400),
    "mode_not_allowed": ("AccessDenied", 403),
    "checksum_mismatch": ("BadDigest", 400),
    "upload_too_large": ("EntityTooLarge", 400),
    "attr_too_large": ("MetadataTooLarge", 400),
    "precondition_failed": ("PreconditionFailed", 412),
    "range_not_satisfiable": ("InvalidRange", 416),
    "storage_full": ("InsufficientStorage", 507),
    "not_ready": ("ServiceUnavailable", 503),
    "busy": ("SlowDown", 503),
    "disk_offline": ("ServiceUnavailable", 503),
    "quarantined": ("ServiceUnavailable", 503),
    "upload_not_found": ("NoSuchUpload", 404),
    "invalid_part": ("InvalidPart", 400),
    "part_too_small": ("EntityTooSmall", 400),
    "invalid_part_order": ("InvalidPartOrder", 400),
    "invalid_part_number": ("InvalidArgument", 400),
    "malformed_parts": ("MalformedXML", 400),
    "upload_completing": ("OperationAborted", 409),
}
_BY_STATUS = {400: "InvalidArgument", 401: "AccessDenied", 403: "AccessDenied",
              404: "NoSuchKey", 409: "OperationAborted", 412: "PreconditionFailed",
              413: "EntityTooLarge", 415: "InvalidArgument", 422: "InvalidArgument",
              503: "ServiceUnavailable"}


def from_engine(exc: ArtStoreError) -> S3Error:
    code, status = _BY_CODE.get(exc.code, (None, None))
    if code is None:
        status = exc.status if exc.status < 500 or exc.status == 503 else 500
        code = _BY_STATUS.get(status, "InternalError")
        if status == 422:
            status = 400
    return S3Error(code, exc.detail, status)


def element(tag: str, parent=None, text=None):
    node = ET.Element(tag) if parent is None else ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def fields(parent, **values) -> None:
    for tag, text in values.items():
        if text is not None:
            element(tag, parent, text)


def response(root, status: int = 200, headers: dict | None = None) -> web.Response:
    if root.tag != "Error":
        root.set("xmlns", NS)
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + \
        ET.tostring(root, encoding="unicode").encode("utf-8")
    return web.Response(status=status, body=body, content_type=XML_TYPE,
                        headers=headers or {})


def error_response(exc: S3Error, resource: str, request_id: str,
                   head: bool = False) -> web.Response:
    root = element("Error")
    fields(root, Code=exc.code, Message=exc.message, Resource=resource, RequestId=request_id,
           **{k: v for k, v in exc.extra.items() if v is not None})
    headers = {"x-amz-request-id": request_id}
    if head:   # a HEAD answer has no body: the code travels in a header only
        return web.Response(status=exc.status, headers={**headers,
                                                        "x-amz-error-code": exc.code})
    return response(root, exc.status, headers)


def iso_time(text_or_ts) -> str:
    """S3's time stamps: ISO 8601 UTC with milliseconds."""
    if isinstance(text_or_ts, (int, float)):
        moment = datetime.fromtimestamp(text_or_ts, timezone.utc)
    else:
        moment = datetime.fromisoformat(text_or_ts.replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def http_time(text: str) -> str:
    """An attr's ISO time as an HTTP date (Last-Modified), remembered: a busy object's GETs
    ask for the same one again and again."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
