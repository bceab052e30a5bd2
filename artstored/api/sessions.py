"""``/api/v1/uploads``: resumable upload sessions for one large file (``engine.sessions``).

1. ``POST /api/v1/uploads`` with JSON ``{"original_filename", "size", ...}`` (the fields of
   an upload: ``content_type``, ``description``, ``custom_attributes``,
   ``retention_policy``, ``ttl_days``, ``sha256``) → 201 ``{"upload_id", "size",
   "received": 0}``. The fields are checked here, before any byte is sent.
2. ``PUT /api/v1/uploads/{id}?offset=N`` with the bytes from offset N (any number of them,
   up to the size) → 200 ``{"received"}``. N must be the received count (409
   ``offset_mismatch`` says it otherwise). A transfer cut short keeps what reached the disk.
3. ``GET /api/v1/uploads/{id}`` → the session's state: resume from ``received``.
4. ``POST /api/v1/uploads/{id}/complete`` → 201 and the file's record, as an upload's
   (``?ack=`` too). The session is kept (without its bytes, naming ``file_id``) until it
   expires: a client that lost the answer asks again and gets the same file.
   ``DELETE /api/v1/uploads/{id}`` → 204, bytes gone.

A session belongs to the account that made it: to any other it does not exist (404).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..auth import roles as R
from ..engine import attrs as A
from ..engine.errors import BadRequest, NotReady, ValidationError
from ..engine.uploads import UploadRequest
from ..streaming import stream_to_writer
from .app import actor_of, requires
from .files import answer_stored, parse_ack
from .params import ascii_int
from .responses import json_response, read_json
from .state import blocking, services

class TransferInterrupted(BadRequest):
    code = "transfer_interrupted"


FIELDS = ("original_filename", "content_type", "description", "custom_attributes",
          "retention_policy", "ttl_days", "sha256")


def _view(record: dict) -> dict:
    view = {"upload_id": record["session_id"], "size": record["size"],
            "received": record["received"], "original_filename":
            record["fields"].get("original_filename"), "created_at": record["created_at"],
            "updated_at": record["updated_at"]}
    if record.get("file_id"):
        view["file_id"] = record["file_id"]     # complete: this is the file it made
    return view


# A transfer that sends nothing for this long is ended (what arrived counts): a half-open
# connection must not hold the session until TCP gives up, hours later.
IDLE_SECONDS = 60.0


async def _pieces(content):
    while True:
        try:
            piece = await asyncio.wait_for(content.readany(), IDLE_SECONDS)
        except asyncio.TimeoutError:
            raise ConnectionResetError(f"nothing received for {IDLE_SECONDS:.0f} s") \
                from None
        if not piece:
            return
        yield piece


def _request_of(fields: dict) -> UploadRequest:
    return UploadRequest(
        original_filename=fields.get("original_filename"),
        content_type=fields.get("content_type"), description=fields.get("description"),
        custom_attributes=fields.get("custom_attributes"),
        retention_policy=fields.get("retention_policy"), ttl_days=fields.get("ttl_days"),
        declared_sha256=fields.get("sha256"))


def _check_fields(svc, body: dict) -> tuple[int, dict]:
    unknown = sorted(set(body) - set(FIELDS) - {"size"})
    if unknown:
        raise ValidationError(f"unknown fields {', '.join(unknown)[:200]}; known: size, "
                              + ", ".join(FIELDS), code="unknown_field")
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValidationError("size must be the file's size in bytes", code="invalid_size")
    fields = {k: body[k] for k in FIELDS if body.get(k) is not None}
    A.validate_original_filename(fields.get("original_filename"))
    A.validate_description(fields.get("description"))
    A.validate_content_type(fields.get("content_type"))
    A.validate_custom_attributes(fields.get("custom_attributes"))
    svc.store.retention_for(fields.get("retention_policy"), fields.get("ttl_days"))
    sha = fields.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise ValidationError("sha256 must be 64 hexadecimal digits", code="invalid_checksum")
    return size, fields


@requires(R.USER, R.FILES_WRITE)
async def create(request: web.Request) -> web.Response:
    svc = services(request)
    if svc.stopping:
        raise NotReady("the daemon is shutting down; retry on another node or later")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("send a JSON object", code="invalid_session")
    size, fields = _check_fields(svc, body)
    record = await blocking(svc.sessions.create, size, fields, actor_of(request))
    return json_response(_view(record), status=201,
                         headers={"Location": f"/api/v1/uploads/{record['session_id']}"})


@requires(R.USER, R.FILES_WRITE)
async def state(request: web.Request) -> web.Response:
    svc = services(request)
    record = await blocking(svc.sessions.get, request.match_info["upload_id"],
                            actor_of(request).id)
    return json_response(_view(record))


@requires(R.USER, R.FILES_WRITE)
async def append(request: web.Request) -> web.Response:
    svc = services(request)
    if svc.stopping:
        raise NotReady("the daemon is shutting down; resume later")
    offset = ascii_int(request.query.get("offset", ""), 0, 1 << 62)
    if offset is None:
        raise BadRequest("give ?offset=N, where the bytes start", code="invalid_offset")
    part = await blocking(svc.sessions.append, request.match_info["upload_id"], offset,
                          actor_of(request).id, request.content_length)
    try:
        await stream_to_writer(_pieces(request.content), part, keep_partial=True)
    except ConnectionError:
        # The client went away mid-transfer: what arrived counts (it resumes from there).
        received = await blocking(part.close)
        raise TransferInterrupted(f"the transfer was cut short; {received} bytes are kept: "
                                  f"resume from offset {received}", received=received) \
            from None
    finally:
        received = await blocking(part.close)   # idempotent
    return json_response({"upload_id": part.record["session_id"],
                          "size": part.record["size"], "received": received})


@requires(R.USER, R.FILES_WRITE)
async def complete(request: web.Request) -> web.Response:
    svc = services(request)
    ack = parse_ack(request)
    attr, seq = await blocking(svc.sessions.complete, request.match_info["upload_id"],
                               actor_of(request).id, _request_of)
    if seq is None:
        # Completed before (its answer was lost): the same file, as it was stored then.
        return json_response(attr, status=201,
                             headers={"Location": f"/api/v1/files/{attr['file_id']}"})
    return await answer_stored(svc, attr, seq, ack)


@requires(R.USER, R.FILES_WRITE)
async def abort(request: web.Request) -> web.Response:
    svc = services(request)
    await blocking(svc.sessions.abort, request.match_info["upload_id"], actor_of(request).id)
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/uploads", create)
    router.add_get("/api/v1/uploads/{upload_id}", state)
    router.add_put("/api/v1/uploads/{upload_id}", append)
    router.add_post("/api/v1/uploads/{upload_id}/complete", complete)
    router.add_delete("/api/v1/uploads/{upload_id}", abort)
