"""Background jobs over HTTP: start one (``POST /api/v1/element/{kind}``), list them, look
at one, cancel one (``DELETE /api/v1/jobs/{id}``). The jobs themselves, their states and
their records are ``artstored.preservation.jobs``."""

from __future__ import annotations

import re

from aiohttp import web

from ..auth import roles as R
from ..engine.errors import BadRequest, NotFound, ValidationError
from ..preservation.jobs import ACTIVE, FINISHED, TRANSITIONS
from .app import actor_of, requires
from .params import ascii_int
from .responses import json_response, read_json
from .state import blocking, services

KINDS = ("gc", "rebuild", "reindex", "verify", "scrub", "export")
_BAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STATES = tuple(TRANSITIONS)


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("send a JSON object (or nothing)", code="invalid_job")
    return body


def _number(body: dict, name: str, low: float, high: float, default):
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not low <= value <= high:
        raise ValidationError(f"{name} must be a number from {low} to {high}",
                              code="invalid_job", field=name)
    return value


def _export_params(body: dict) -> dict:
    unknown = set(body) - {"name", "query", "file_ids", "organization"}
    if unknown:
        raise ValidationError(f"unknown parameter {sorted(unknown)[0][:40]!r}",
                              code="invalid_job")
    name = body.get("name")
    if not isinstance(name, str) or not _BAG_NAME.match(name):
        raise ValidationError("name: the bag's directory name under export.directory "
                              "(letters, digits, . _ -; at most 100)", code="invalid_job",
                              field="name")
    params = {"name": name}
    if "query" in body:
        if not isinstance(body["query"], str) or not body["query"].strip():
            raise ValidationError("query must be a search query", code="invalid_job")
        params["query"] = body["query"]
    if "file_ids" in body:
        ids = body["file_ids"]
        if not isinstance(ids, list) or not ids or len(ids) > 100_000 or \
                not all(isinstance(i, str) and len(i) <= 64 for i in ids):
            raise ValidationError("file_ids must be a list of file ids", code="invalid_job")
        params["file_ids"] = ids
    if "query" in params and "file_ids" in params:
        raise ValidationError("select by query or by file_ids, not both", code="invalid_job")
    if "organization" in body:
        if not isinstance(body["organization"], str) or len(body["organization"]) > 200:
            raise ValidationError("organization must be a short string", code="invalid_job")
        params["organization"] = body["organization"]
    return params


def _params(kind: str, body: dict, svc) -> dict:
    if kind == "export":
        return _export_params(body)
    unknown = set(body) - {"deep", "rate_mb_per_s", "concurrency"}
    if unknown:
        raise ValidationError(f"unknown parameter {sorted(unknown)[0][:40]!r}",
                              code="invalid_job")
    if kind == "verify":
        deep = body.get("deep", False)
        if not isinstance(deep, bool):
            raise ValidationError("deep must be true or false", code="invalid_job")
        return {"deep": deep}
    if kind == "scrub":
        return {"rate_mb_per_s": _number(body, "rate_mb_per_s", 0, 100_000,
                                         svc.config["scrub.rate_mb_per_s"]),
                "concurrency": int(_number(body, "concurrency", 1, 64,
                                           svc.config["scrub.concurrency"]))}
    if body:
        raise ValidationError(f"a {kind} job takes no parameters", code="invalid_job")
    return {}


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def start_job(request: web.Request) -> web.Response:
    svc = services(request)
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFound(f"no job kind {kind!r}; one of {', '.join(KINDS)}",
                       code="job_kind_unknown")
    params = _params(kind, await _body(request), svc)
    actor = actor_of(request)
    params["actor"] = {"id": actor.id, "name": actor.name}
    record = await blocking(svc.jobs.start, kind, actor.id, params)
    return json_response(record, status=202,
                         headers={"Location": f"/api/v1/jobs/{record['job_id']}"})


@requires(R.OPERATOR, R.STORAGE_READ)
async def list_jobs(request: web.Request) -> web.Response:
    svc = services(request)
    q = request.query
    unknown = set(q) - {"kind", "state", "limit"}
    if unknown:
        raise BadRequest(f"unknown parameter {sorted(unknown)[0][:40]!r}",
                         code="invalid_parameter")
    limit = ascii_int(q.get("limit", "100"), 1, 1000)
    if limit is None:
        raise BadRequest("limit must be 1-1000", code="invalid_limit")
    state = q.get("state")
    states = {"active": ACTIVE, "finished": FINISHED}.get(state) or \
        ((state,) if state in STATES else None)
    if state is not None and states is None:
        raise BadRequest(f"state must be one of {', '.join(STATES)}, active or finished",
                         code="invalid_parameter")
    items = await blocking(svc.jobs.list, limit=limit, kind=q.get("kind"), states=states)
    return json_response({"items": items, "next_cursor": None})


@requires(R.OPERATOR, R.STORAGE_READ)
async def get_job(request: web.Request) -> web.Response:
    record = await blocking(services(request).jobs.get, request.match_info["job_id"])
    if record is None:
        raise NotFound("no such job", code="job_not_found")
    return json_response(record)


@requires(R.OPERATOR, R.STORAGE_WRITE)
async def cancel_job(request: web.Request) -> web.Response:
    record = await blocking(services(request).jobs.cancel, request.match_info["job_id"])
    return json_response(record)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/element/{kind}", start_job)
    router.add_get("/api/v1/jobs", list_jobs)
    router.add_get("/api/v1/jobs/{job_id}", get_job)
    router.add_delete("/api/v1/jobs/{job_id}", cancel_job)
