"""``POST /api/v1/files``: a multipart upload streamed to disk, never buffered whole.

Fields: ``file`` (required, with a filename), ``description``, ``custom_attributes`` (a JSON
object), ``retention_policy``, ``ttl_days``, ``sha256`` (declared checksum). Fields may come
before or after the file; each is validated as soon as it arrives, so a bad field that comes
first fails before a byte of content is written. On any failure the temporary file is
removed: nothing of a refused upload stays on disk or in the catalog.

The socket's buffers are collected into batches of about 1 MiB and handed to a worker thread
that hashes and writes them, while the event loop receives the next batch (one batch in
flight per upload: bounded memory, and disk and network overlap).
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from ..engine import attrs as A
from ..engine import modes as M
from ..engine.errors import BadRequest, UploadTooLarge, ValidationError
from ..engine.uploads import UploadRequest
from ..engine.wal import Actor
from ..streaming import stream_to_writer
from .multipart import MultipartStream, boundary_of
from .params import ascii_int
from .state import blocking

# A request this small is read into memory and handed to the group commit as bytes: the
# request does no disk I/O and no thread hop (the committer writes its files with the
# batch), and a file creation that stalls behind a journal commit never blocks the loop.
SMALL_BYTES = 256 * 1024
FIELD_NAMES = ("description", "custom_attributes", "retention_policy", "ttl_days", "sha256")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Room for the non-file fields and part headers on top of the file itself.
FIELDS_SLACK = 256 * 1024


def _parse_field(name: str, raw: bytes, fields: dict) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"field {name} is not valid UTF-8", code="invalid_field") \
            from None
    if name == "description":
        fields[name] = A.validate_description(text)
    elif name == "custom_attributes":
        fields[name] = A.parse_custom_attributes(text)
        try:  # an escaped lone surrogate ("\\ud800") parses, but cannot be stored
            json.dumps(fields[name], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("custom_attributes: a \\u escape names a lone surrogate",
                                  code="invalid_json") from None
    elif name == "retention_policy":
        fields[name] = text.strip() or None
    elif name == "ttl_days":
        days = ascii_int(text.strip(), 0, 10 ** 6)
        if days is None:
            raise ValidationError("ttl_days must be a whole number of days",
                                  code="invalid_retention")
        fields[name] = days
    elif name == "sha256":
        if not _SHA256_RE.match(text.strip()):
            raise ValidationError("sha256 must be 64 hexadecimal digits",
                                  code="invalid_checksum")
        fields[name] = text.strip().lower()


async def receive_upload(request: web.Request, store, actor: Actor, max_field_bytes: int):
    """Stream the request into a new upload and return the PreparedUpload (not yet
    committed). Raises an engine error for anything wrong, with nothing left on disk."""
    if request.content_type != "multipart/form-data":
        raise ValidationError("send the file as multipart/form-data",
                              code="unsupported_media_type")
    store.require(M.UPLOAD)
    limit = store.config.max_upload_bytes
    declared = request.content_length
    if declared is not None and declared > limit + FIELDS_SLACK:
        raise UploadTooLarge(f"request of {declared} bytes exceeds the upload limit of "
                             f"{limit} bytes", limit=limit)
    stream = MultipartStream(request.content, boundary_of(request.headers["Content-Type"]))
    small = declared is not None and declared <= SMALL_BYTES
    fields: dict = {}
    writer = None
    pieces: list | None = None
    part_meta = None
    try:
        while (part := await stream.next_part()) is not None:
            if part.name == "file":
                if part_meta is not None:
                    raise BadRequest("only one file per upload", code="multiple_files")
                if part.filename is None:
                    raise ValidationError("the file part needs a filename",
                                          code="invalid_filename")
                A.validate_original_filename(part.filename)
                part_meta = part
                if small:
                    pieces = [piece async for piece in stream.iter_body()]
                else:
                    writer = await blocking(store.begin_upload, min(declared or 0, limit))
                    await stream_to_writer(stream.iter_body(), writer)
            elif part.name in FIELD_NAMES:
                if part.name in fields:
                    raise BadRequest(f"field {part.name} given twice", code="duplicate_field")
                _parse_field(part.name, await stream.read_all(max_field_bytes), fields)
            else:
                raise ValidationError(f"unknown field {part.name[:60]!r}; known: file, "
                                      + ", ".join(FIELD_NAMES), code="unknown_field")
        if part_meta is None:
            raise ValidationError("no file part in the upload", code="missing_file")
        upload = UploadRequest(
            original_filename=part_meta.filename,
            content_type=part_meta.content_type,
            description=fields.get("description"),
            custom_attributes=fields.get("custom_attributes"),
            retention_policy=fields.get("retention_policy"),
            ttl_days=fields.get("ttl_days"),
            declared_sha256=fields.get("sha256"),
        )
        if small:
            return store.prepare_buffered(pieces, upload, actor)
        return await blocking(store.finish_upload, writer, upload, actor)
    except BaseException:
        if writer is not None:
            writer.abort()  # quick (close + unlink); must run even when cancelled
        raise
